//! The reports' current state: the latest version of each expense of every
//! tenant, the columns reports read, in memory, kept up to date by reading
//! only the data files each new table version added.
//!
//! Reports over the lake otherwise dedupe every version of the tenant on
//! every computed answer (a hash aggregate and a join over all its files).
//! Here the dedupe happens once per row, when its file is first read: each
//! expense keeps one slot, replaced by a higher version and left alone by an
//! equal or lower one, so reading a file twice (a compaction's rewrite of
//! rows already held) changes nothing. The lake never drops a row version
//! except by compaction, which moves it to a new file, so the state of a
//! table version is a function of the files it reads; a table version lower
//! than the one held (a table restored from a backup) starts the state over.
//!
//! It also keeps every (expense, version) that is not its expense's latest,
//! so SQL sessions read `expenses_latest` as the lake minus those (an
//! anti-join with a small table) instead of deduping every version.
//!
//! Memory is bounded: past `max_rows` entries (an expense is about 70
//! bytes, 82 in a tenant where any expense has an amount in its base
//! currency, a superseded version about 40; interned texts come on top) the
//! state is dropped for good and reports fall back to the SQL path, with a
//! warning. A refresh that fails leaves the state at no version until one
//! succeeds, so a half-read table version never answers.

use crate::report::{Filters, GroupBy, Part, SpendRow};
use crate::{Error, Result};
use chrono::{Datelike as _, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayAccessor as _, BooleanArray, Date32Array, DictionaryArray, Int64Array, RecordBatch,
    StringArray, TypedDictionaryArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
use futures::{StreamExt as _, TryStreamExt as _};
use hashbrown::HashTable;
use spendstream_lake::{DataFileRef, Lake};
use spendstream_schemas::Status;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard, RwLock};

/// Entries the current state holds by default (about 150 MB, 175 MB with
/// base-currency amounts): room for
/// 2,000,000 expenses with their ingest batches (one entry per request) and
/// some superseded versions or lifecycle links. Past the bound reports read
/// the lake (measured: 1.6–2.3 s a report for 2M expenses, within the
/// default 256 MiB SQL memory pool).
pub const DEFAULT_REPORT_STATE_ROWS: usize = 2_100_000;

/// The lake columns the state reads, in this order.
const COLUMNS: [&str; 16] = [
    "expense_id",
    "version",
    "status",
    "transaction_date",
    "amount_minor",
    "currency",
    "category",
    "account_id",
    "employee_id",
    "merchant_normalized",
    "merchant_name",
    "batch_id",
    "source",
    "related_external_id",
    "base_amount_minor",
    "base_currency",
];

/// Files read at once while catching up.
const READ_AHEAD: usize = 4;

/// How long a reader waits for a refresh before answering at the version
/// the state holds.
const REFRESH_WAIT: Duration = Duration::from_secs(1);

/// How long after a failed refresh the next one starts.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01 (Arrow's day 0).
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// No text (id 0), or an unknown status.
const NONE: u32 = 0;
const UNKNOWN_STATUS: u8 = u8::MAX;

/// The text values of one tenant, each stored once; id 0 is null.
#[derive(Default)]
struct Strings {
    ids: HashMap<Arc<str>, u32>,
    texts: Vec<Arc<str>>,
}

impl Strings {
    fn intern(&mut self, text: Option<&str>) -> u32 {
        let Some(text) = text else { return NONE };
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let text: Arc<str> = text.into();
        self.texts.push(text.clone());
        let id = u32::try_from(self.texts.len()).unwrap_or(u32::MAX);
        self.ids.insert(text, id);
        id
    }

    fn find(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    fn text(&self, id: u32) -> Option<&str> {
        id.checked_sub(1)
            .and_then(|i| self.texts.get(i as usize))
            .map(|t| &**t)
    }
}

/// Each expense's slot and the version held there. The index holds only
/// slot numbers (4 bytes a bucket, where a map of 128-bit ids to slots and
/// versions took 32): at 2M expenses it is about 21 MB instead of 138, and
/// growing it (old and new table at once) takes about 31 MB, not 207.
#[derive(Default)]
struct Latest {
    /// Slots, found by their expense's hash.
    index: HashTable<u32>,
    /// By slot: the expense and the version held.
    held: Vec<Held>,
    hasher: RandomState,
}

#[derive(Clone, Copy)]
struct Held {
    /// The expense id's 128 bits as two halves (8-byte aligned: 24 bytes).
    id: [u64; 2],
    version: i64,
}

impl Held {
    fn id(&self) -> u128 {
        (u128::from(self.id[0]) << 64) | u128::from(self.id[1])
    }
}

impl Latest {
    /// The slot and version held for expense `id`.
    fn get(&self, id: u128) -> Option<(u32, i64)> {
        let held = &self.held;
        self.index
            .find(self.hasher.hash_one(id), |slot| {
                held[*slot as usize].id() == id
            })
            .map(|slot| (*slot, held[*slot as usize].version))
    }

    /// A new expense (not held yet) in the next slot; returns the slot.
    fn push(&mut self, id: u128, version: i64) -> Result<u32> {
        let slot = u32::try_from(self.held.len())
            .map_err(|_| Error::Shape("more than 2^32 expenses".into()))?;
        self.held.push(Held {
            id: [(id >> 64) as u64, id as u64],
            version,
        });
        let (held, hasher) = (&self.held, &self.hasher);
        self.index.insert_unique(hasher.hash_one(id), slot, |slot| {
            hasher.hash_one(held[*slot as usize].id())
        });
        Ok(slot)
    }

    /// A higher version of the expense at `slot`.
    fn set_version(&mut self, slot: u32, version: i64) {
        self.held[slot as usize].version = version;
    }
}

/// The latest version of one expense, as reports read it: 36 bytes, 4-byte
/// aligned (48 with the base amount in it, which only tenants with FX
/// rates have: it is kept apart, in [`Tenant::base`]). At 2M expenses the
/// state's largest allocation.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Row {
    amount_minor: i64,
    /// Days since 1970-01-01.
    date: i32,
    category: u32,
    /// `COALESCE(merchant_normalized, merchant_name)`.
    merchant: u32,
    account: u32,
    employee: u32,
    currency: u32,
    /// Index in [`Status::ALL`].
    status: u8,
}

/// The amount of one expense in its tenant's base currency.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Base {
    minor: i64,
    /// [`NONE`]: no rate was known.
    currency: u32,
}

impl Base {
    const NONE: Base = Base {
        minor: 0,
        currency: NONE,
    };
}

/// One tenant's expenses.
#[derive(Default)]
struct Tenant {
    strings: Strings,
    rows: Vec<Row>,
    /// By slot as `rows`, the amounts in the base currency; empty until
    /// the first one arrives.
    base: Vec<Base>,
    /// Each expense's slot in `rows` and the version held there, by its
    /// id as the 128 bits of its UUID (a quarter of the text's memory).
    latest: Latest,
    /// Every (expense, version) read that is not the expense's latest.
    superseded: HashSet<(u128, i64)>,
    /// `superseded` as a table, built at the first SQL session after a
    /// change.
    superseded_table: std::sync::Mutex<Option<RecordBatch>>,
    /// The rows of each ingest batch the state holds (every version, each
    /// once), by the batch id's 128 bits.
    batches: HashMap<u128, BatchSeen>,
    /// The lifecycle (`docs/lifecycle.md`): the expense each latest row
    /// names in `related_external_id` (with the row's own id), by its
    /// slot ...
    links: HashMap<u32, (u128, u128)>,
    /// ... the slots naming each expense ...
    linkers: HashMap<u128, Vec<u32>>,
    /// ... and the slots that do not count because of it (a pending one
    /// another record names; a reversal of a pending one).
    excluded: HashSet<u32>,
}

/// What the state holds of one ingest batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSeen {
    /// Its rows (expense versions) the state has read.
    pub rows: u64,
    /// When the state took the last of them in (ms since the epoch): from
    /// then on reports counted it.
    pub last_at_ms: i64,
}

impl Tenant {
    /// The superseded versions as a table (built once per change).
    fn superseded_batch(&self) -> RecordBatch {
        let mut table = self
            .superseded_table
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        table
            .get_or_insert_with(|| superseded_batch(self.superseded.iter()))
            .clone()
    }

    /// The rows of `batch` (columns as [`COLUMNS`]) that [`Tenant::merge`]
    /// would change anything for: a new expense, a higher version, or a
    /// lower version not known as superseded. When under half the rows
    /// are kept, their text is plain.
    fn changes(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = Text::of(batch.column(0).as_ref())
            .ok_or_else(|| Error::Shape("expense_id is not text".into()))?;
        let versions = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Shape("version is not Int64".into()))?;
        let keep = (0..batch.num_rows())
            .map(|i| {
                let id = expense_key(ids.get(i).unwrap_or_default())?;
                let version = versions.value(i);
                Ok(Some(match self.latest.get(id) {
                    None => true,
                    Some((_, held)) if held < version => true,
                    Some((_, held)) if held == version => false,
                    Some(_) => !self.superseded.contains(&(id, version)),
                }))
            })
            .collect::<Result<BooleanArray>>()?;
        let arrow = |e| Error::DataFusion(datafusion::error::DataFusionError::from(e));
        let kept = filter_record_batch(batch, &keep).map_err(arrow)?;
        if kept.num_rows() == 0 || kept.num_rows() * 2 > batch.num_rows() {
            return Ok(kept);
        }
        // Kept until the refresh applies, a few rows would hold each
        // column's whole dictionary (a compaction's files): their own text
        // is smaller.
        let (mut fields, mut columns) = (Vec::new(), Vec::new());
        for (field, column) in kept.schema().fields().iter().zip(kept.columns()) {
            let column = match column.data_type() {
                DataType::Dictionary(_, values) => {
                    datafusion::arrow::compute::cast(column, values).map_err(arrow)?
                }
                _ => column.clone(),
            };
            fields.push(
                field
                    .as_ref()
                    .clone()
                    .with_data_type(column.data_type().clone()),
            );
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow)
    }

    /// Takes each row of `batch` (columns as [`COLUMNS`]) whose version is
    /// higher than the one held for its expense. Returns how many entries
    /// (expenses and superseded versions) it added.
    fn merge(&mut self, tenant_id: &str, batch: &RecordBatch) -> Result<usize> {
        let before = self.entries();
        let now_ms = chrono::Utc::now().timestamp_millis();
        *self
            .superseded_table
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let text = |i: usize| {
            Text::of(batch.column(i).as_ref())
                .ok_or_else(|| Error::Shape(format!("{} is not text", COLUMNS[i])))
        };
        let int = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Shape(format!("{} is not Int64", COLUMNS[i])))
        };
        let (ids, versions, statuses) = (text(0)?, int(1)?, text(2)?);
        let dates = batch
            .column(3)
            .as_any()
            .downcast_ref::<Date32Array>()
            .ok_or_else(|| Error::Shape("transaction_date is not Date32".into()))?;
        let (amounts, currencies, categories) = (int(4)?, text(5)?, text(6)?);
        let (accounts, employees, normalized, names) = (text(7)?, text(8)?, text(9)?, text(10)?);
        let batch_ids = text(11)?;
        let (sources, related) = (text(12)?, text(13)?);
        let (base_amounts, base_currencies) = (int(14)?, text(15)?);
        // Expenses whose lifecycle may have changed: settled at the end.
        let mut unsettled: HashSet<u128> = HashSet::new();
        for i in 0..batch.num_rows() {
            let id = expense_key(ids.get(i).unwrap_or_default())?;
            let version = versions.value(i);
            let held = self.latest.get(id);
            match held {
                Some((_, v)) if v == version => continue,
                Some((_, v)) if v > version => {
                    if self.superseded.insert((id, version)) {
                        self.seen(batch_ids, i, now_ms);
                    }
                    continue;
                }
                _ => {}
            }
            self.seen(batch_ids, i, now_ms);
            let status = statuses.get(i).unwrap_or_default();
            let row = Row {
                amount_minor: amounts.value(i),
                date: dates.value(i),
                category: self.strings.intern(categories.get(i)),
                merchant: self
                    .strings
                    .intern(normalized.get(i).or_else(|| names.get(i))),
                account: self.strings.intern(accounts.get(i)),
                employee: self.strings.intern(employees.get(i)),
                currency: self.strings.intern(currencies.get(i)),
                status: Status::ALL
                    .iter()
                    .position(|s| s.as_str() == status)
                    .and_then(|p| u8::try_from(p).ok())
                    .unwrap_or(UNKNOWN_STATUS),
            };
            let base = if base_amounts.is_null(i) {
                Base::NONE
            } else {
                Base {
                    minor: base_amounts.value(i),
                    currency: self.strings.intern(base_currencies.get(i)),
                }
            };
            let slot = match held {
                Some((slot, older)) => {
                    self.rows[slot as usize] = row;
                    self.latest.set_version(slot, version);
                    self.superseded.insert((id, older));
                    slot
                }
                None => {
                    let slot = self.latest.push(id, version)?;
                    self.rows.push(row);
                    slot
                }
            };
            self.set_base(slot, base);
            // The expense this version names, in the same tenant and
            // source (never itself).
            let target = match (related.get(i), sources.get(i)) {
                (Some(related), Some(source)) => {
                    let target =
                        spendstream_schemas::expense_id(tenant_id, source, related).as_u128();
                    (target != id).then_some(target)
                }
                _ => None,
            };
            if let Some((_, old)) = self.links.remove(&slot) {
                if let Some(slots) = self.linkers.get_mut(&old) {
                    slots.retain(|s| *s != slot);
                    if slots.is_empty() {
                        self.linkers.remove(&old);
                    }
                }
                unsettled.insert(old);
            }
            if let Some(target) = target {
                self.links.insert(slot, (id, target));
                self.linkers.entry(target).or_default().push(slot);
                unsettled.insert(target);
            }
            // Its own status may have changed what its linkers count.
            unsettled.insert(id);
        }
        for id in unsettled {
            self.settle(id);
        }
        Ok(self.entries() - before)
    }

    /// Sets the base amount of the row at `slot`, keeping [`Tenant::base`]
    /// empty while no row has one.
    fn set_base(&mut self, slot: u32, base: Base) {
        if base.currency == NONE && self.base.is_empty() {
            return;
        }
        if self.base.len() < self.rows.len() {
            self.base.resize(self.rows.len(), Base::NONE);
        }
        self.base[slot as usize] = base;
    }

    /// The base amount of the row at `slot`.
    fn base(&self, slot: usize) -> Base {
        self.base.get(slot).copied().unwrap_or(Base::NONE)
    }

    /// Entries held, for the memory bound.
    fn entries(&self) -> usize {
        self.rows.len() + self.superseded.len() + self.batches.len() + self.links.len()
    }

    /// Applies the lifecycle rules to expense `id` and to the rows naming
    /// it (whose counting depends on its status).
    fn settle(&mut self, id: u128) {
        let mut slots: Vec<(u32, u128)> = self
            .linkers
            .get(&id)
            .map(|l| {
                l.iter()
                    .filter_map(|s| Some((*s, self.links.get(s)?.0)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some((slot, _)) = self.latest.get(id) {
            slots.push((slot, id));
        }
        for (slot, own) in slots {
            if self.excluded_now(slot, own) {
                self.excluded.insert(slot);
            } else {
                self.excluded.remove(&slot);
            }
        }
    }

    /// Whether the row at `slot` (expense `own`) does not count: pending
    /// and named by another row, or a reversal of a row that never moved
    /// money (pending, declined, or itself a reversal).
    fn excluded_now(&self, slot: u32, own: u128) -> bool {
        let status = Status::ALL.get(usize::from(self.rows[slot as usize].status));
        match status {
            Some(Status::Pending) => self.linkers.get(&own).is_some_and(|l| !l.is_empty()),
            Some(Status::Reversed) => self
                .links
                .get(&slot)
                .is_some_and(|(_, target)| self.released_by_reversal(*target)),
            _ => false,
        }
    }

    /// Whether a reversal of expense `id` counts nothing: `id` is pending
    /// (the reversal released it), declined or reversed (nothing moved).
    fn released_by_reversal(&self, id: u128) -> bool {
        self.latest.get(id).is_some_and(|(slot, _)| {
            matches!(
                Status::ALL.get(usize::from(self.rows[slot as usize].status)),
                Some(Status::Pending | Status::Declined | Status::Reversed)
            )
        })
    }

    /// Counts row `i` (new to the state) for its batch. A batch id that is
    /// not a UUID (written by another tool) is not counted.
    fn seen(&mut self, batch_ids: Text<'_>, i: usize, now_ms: i64) {
        let Some(batch_id) = batch_ids.get(i) else {
            return;
        };
        if let Ok(key) = expense_key(batch_id) {
            let seen = self.batches.entry(key).or_default();
            seen.rows += 1;
            seen.last_at_ms = now_ms;
        }
    }
}

/// The state at one table version.
#[derive(Default)]
struct State {
    /// The table version the state is of; `None` before the first refresh
    /// completes and after a failed one (which also drops every row: what
    /// changed meanwhile is unknown).
    version: Option<u64>,
    files: HashSet<String>,
    tenants: HashMap<String, Tenant>,
    rows: usize,
    /// Over the row limit: dropped for good.
    off: bool,
    /// After a failed refresh: no refresh before this (readers use the
    /// lake meanwhile), so a file that cannot be read is not read again
    /// every second.
    retry_after: Option<std::time::Instant>,
}

/// The current state of every tenant's expenses.
pub struct CurrentState {
    max_rows: usize,
    state: RwLock<State>,
    /// Held through a refresh: one at a time.
    refreshing: Arc<Mutex<()>>,
    served: Served,
}

/// What the state answered.
#[derive(Default)]
struct Served {
    reports: AtomicU64,
    sessions: AtomicU64,
}

impl std::fmt::Debug for CurrentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentState")
            .field("max_rows", &self.max_rows)
            .finish_non_exhaustive()
    }
}

impl CurrentState {
    /// A state holding up to `max_rows` expenses; 0 turns it off.
    pub fn new(max_rows: usize) -> Self {
        Self {
            max_rows,
            state: RwLock::new(State {
                off: max_rows == 0,
                ..State::default()
            }),
            refreshing: Arc::new(Mutex::new(())),
            served: Served::default(),
        }
    }

    /// Brings the state towards the table version readers see: returns
    /// once it is there, or after [`REFRESH_WAIT`] while the refresh goes on
    /// in a task of its own (a caller that gives up does not cancel a
    /// refresh others wait for), or at once when it is off, already there,
    /// or waiting out a failure. One refresh runs at a time; a reader that
    /// finds one running waits for it rather than queue another.
    async fn catch_up(self: &Arc<Self>, lake: &Arc<Lake>) {
        let target = match lake.version().await {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!(error = %spendstream_schemas::error::Chain(&e), "Could not read the lake's version for the reports' state.");
                return;
            }
        };
        {
            let state = self.state.read().await;
            if state.off
                || state.version.is_some_and(|held| held >= target)
                || state
                    .retry_after
                    .is_some_and(|t| t > std::time::Instant::now())
            {
                return;
            }
        }
        match self.refreshing.clone().try_lock_owned() {
            Ok(one_at_a_time) => {
                let (this, lake) = (self.clone(), lake.clone());
                let refresh = tokio::spawn(async move { this.refresh(one_at_a_time, &lake).await });
                // A timeout: the refresh goes on; readers answer at the
                // version held.
                if let Ok(Err(e)) = tokio::time::timeout(REFRESH_WAIT, refresh).await {
                    tracing::warn!(error = %e, "The reports' state refresh task failed.");
                }
            }
            Err(_) => {
                // The running refresh is waited for, not repeated.
                let _ = tokio::time::timeout(REFRESH_WAIT, self.refreshing.lock()).await;
            }
        }
    }

    /// Reads the table now (at start-up) and then every `interval` the
    /// files new commits added, so a report seldom waits for them. Ends
    /// when the state or the lake is dropped, or the state is off; a
    /// failure is logged and tried again after [`RETRY_AFTER_FAILURE`].
    pub fn follow(self: &Arc<Self>, lake: &Arc<Lake>, interval: Duration) {
        let (this, lake) = (Arc::downgrade(self), Arc::downgrade(lake));
        tokio::spawn(async move {
            loop {
                let (Some(state), Some(lake)) = (this.upgrade(), lake.upgrade()) else {
                    return;
                };
                let waiting = state
                    .state
                    .read()
                    .await
                    .retry_after
                    .is_some_and(|t| t > std::time::Instant::now());
                if !waiting {
                    let one_at_a_time = state.refreshing.clone().lock_owned().await;
                    state.refresh(one_at_a_time, &lake).await;
                }
                if state.state.read().await.off {
                    return;
                }
                drop((state, lake));
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Brings the state to the newest table version, holding
    /// `_one_at_a_time`. On failure it logs it and drops the state (rows
    /// read before the failure may since have been deleted, and the state
    /// no longer knows from which version it would check): readers use
    /// the lake, and the next refresh, after [`RETRY_AFTER_FAILURE`],
    /// reads the table from nothing.
    async fn refresh(&self, _one_at_a_time: OwnedMutexGuard<()>, lake: &Arc<Lake>) {
        if let Err(e) = self.try_refresh(lake).await {
            spendstream_schemas::metrics::error("report_state", e.kind());
            tracing::warn!(error = %spendstream_schemas::error::Chain(&e), retry_in = ?RETRY_AFTER_FAILURE, "Reading new lake files into the reports' state failed: reports and SQL read the lake until a later read succeeds.");
            let mut state = self.state.write().await;
            *state = State {
                off: state.off,
                retry_after: Some(std::time::Instant::now() + RETRY_AFTER_FAILURE),
                ..State::default()
            };
            metrics::gauge!(crate::metrics::REPORT_STATE_ENTRIES.name).set(0.0);
        }
    }

    /// The first read (and a read after a failed one, or after a commit
    /// that removed rows rather than moving them) merges file by file at no
    /// version; later ones read and sift the new files while readers go on
    /// at the version held, then apply what changes in one step, so a
    /// compaction's rewrite of every row never stops them.
    async fn try_refresh(&self, lake: &Arc<Lake>) -> Result<()> {
        let (version, files) = lake.snapshot_files().await?;
        let mut held = {
            let state = self.state.read().await;
            if state.off || state.version == Some(version) {
                return Ok(());
            }
            state.version
        };
        if let Some(from) = held
            && (from > version || lake.rows_removed_between(from, version).await?)
        {
            tracing::info!(
                held = from,
                version,
                "The lake table lost rows (a delete, an overwrite or a restore): reading it again."
            );
            *self.state.write().await = State::default();
            held = None;
        }
        let new: Vec<DataFileRef> = {
            let state = self.state.read().await;
            files
                .iter()
                .filter(|f| !state.files.contains(&f.path))
                .cloned()
                .collect()
        };
        let mut reads = futures::stream::iter(new)
            .map(|file| {
                let lake = lake.clone();
                async move {
                    let batches = lake.read_columns(&file, &COLUMNS).await?;
                    Ok::<_, Error>((file, batches))
                }
            })
            .buffered(READ_AHEAD);
        if held.is_some() {
            let mut changes = Vec::new();
            while let Some((file, batches)) = reads.try_next().await? {
                let state = self.state.read().await;
                let tenant = state.tenants.get(&file.tenant);
                for batch in batches {
                    let batch = match tenant {
                        Some(tenant) => tenant.changes(&batch)?,
                        None => batch,
                    };
                    if batch.num_rows() > 0 {
                        changes.push((file.tenant.clone(), batch));
                    }
                }
            }
            let mut state = self.state.write().await;
            // Half applied is of no version (a failure leaves it so).
            state.version = None;
            for (tenant, batch) in changes {
                state.rows += state
                    .tenants
                    .entry(tenant.clone())
                    .or_default()
                    .merge(&tenant, &batch)?;
            }
            self.finish(&mut state, version, &files);
        } else {
            // Of no version until every new file is merged; each merge holds
            // the state briefly, so readers fall back to the lake meanwhile.
            self.state.write().await.version = None;
            while let Some((file, batches)) = reads.try_next().await? {
                let mut state = self.state.write().await;
                let tenant = state.tenants.entry(file.tenant.clone()).or_default();
                let mut added = 0;
                for batch in &batches {
                    added += tenant.merge(&file.tenant, batch)?;
                }
                state.rows += added;
                state.files.insert(file.path.clone());
                if state.rows > self.max_rows {
                    break;
                }
            }
            self.finish(&mut *self.state.write().await, version, &files);
        }
        Ok(())
    }

    /// Ends a refresh to `version`, whose files are `files`: the state is
    /// of that version, or off past its row limit.
    fn finish(&self, state: &mut State, version: u64, files: &[DataFileRef]) {
        if state.rows > self.max_rows {
            tracing::warn!(
                max_rows = self.max_rows,
                "The lake holds more expenses than the reports' current state may (--report-state-rows): reports now read the lake on each computed answer."
            );
            *state = State {
                off: true,
                ..State::default()
            };
        } else {
            // Files a compaction removed: their rows are in the files it added.
            state.files = files.iter().map(|f| f.path.clone()).collect();
            state.version = Some(version);
            state.retry_after = None;
        }
        metrics::gauge!(crate::metrics::REPORT_STATE_ENTRIES.name).set(state.rows as f64);
    }

    /// The report rows of `tenant` (as [`crate::report::spend_rows`] gives
    /// them: one per group and currency, ranked) at the newest table version
    /// the state has (see [`CurrentState::catch_up`]), and that version;
    /// `None` when the state has none (off, loading, or failed).
    pub async fn spend_rows(
        self: &Arc<Self>,
        lake: &Arc<Lake>,
        tenant: &str,
        ask: &Ask<'_>,
    ) -> Option<(u64, Vec<SpendRow>)> {
        self.catch_up(lake).await;
        let state = self.state.read().await;
        let version = state.version.filter(|_| !state.off)?;
        let rows = crate::report::fold(
            state
                .tenants
                .get(tenant)
                .map(|held| aggregate(held, ask))
                .unwrap_or_default(),
            ask.filters.in_base,
        );
        self.served.reports.fetch_add(1, Ordering::Relaxed);
        Some((version, rows))
    }

    /// What the state holds of ingest batch `batch_id` of `tenant` at the
    /// newest table version it has (after [`CurrentState::catch_up`]), and
    /// that version; `None` when the state has none (off, loading, or
    /// failed): ask the lake.
    pub async fn batch(
        self: &Arc<Self>,
        lake: &Arc<Lake>,
        tenant: &str,
        batch_id: &str,
    ) -> Option<(u64, BatchSeen)> {
        self.catch_up(lake).await;
        let state = self.state.read().await;
        let version = state.version.filter(|_| !state.off)?;
        let seen = expense_key(batch_id)
            .ok()
            .and_then(|key| state.tenants.get(tenant)?.batches.get(&key).copied())
            .unwrap_or_default();
        Some((version, seen))
    }

    /// The row versions of `tenant` that are not the latest of their
    /// expense, as a table (`expense_id`, `version`), when the state is at
    /// exactly table version `version`; `None` otherwise.
    pub async fn superseded(
        self: &Arc<Self>,
        lake: &Arc<Lake>,
        tenant: &str,
        version: u64,
    ) -> Option<RecordBatch> {
        // Behind the provider's version: catch up; at or past it: waiting
        // cannot bring it to exactly that version.
        if self
            .state
            .read()
            .await
            .version
            .is_none_or(|held| held < version)
        {
            self.catch_up(lake).await;
        }
        let state = self.state.read().await;
        if state.off || state.version != Some(version) {
            return None;
        }
        let batch = match state.tenants.get(tenant) {
            Some(held) => held.superseded_batch(),
            None => superseded_batch(std::iter::empty()),
        };
        self.served.sessions.fetch_add(1, Ordering::Relaxed);
        Some(batch)
    }

    /// How many report answers and SQL sessions the state has served.
    pub fn served(&self) -> (u64, u64) {
        (
            self.served.reports.load(Ordering::Relaxed),
            self.served.sessions.load(Ordering::Relaxed),
        )
    }
}

/// An `expense_id` as its UUID's 128 bits. Every id the processors write
/// is a UUID in its lowercase hyphenated form (`expense_id` in the
/// schemas crate); anything else is refused rather than read as another
/// id, since [`superseded_batch`] writes the ids back as that text.
fn expense_key(text: &str) -> Result<u128> {
    uuid::Uuid::try_parse(text)
        .ok()
        .filter(|id| {
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                == text
        })
        .map(|id| id.as_u128())
        .ok_or_else(|| Error::Shape(format!("expense_id `{text}` is not a lowercase UUID")))
}

/// `pairs` as a table (`expense_id`, `version`).
fn superseded_batch<'a>(pairs: impl Iterator<Item = &'a (u128, i64)> + Clone) -> RecordBatch {
    let ids: StringArray = pairs
        .clone()
        .map(|(id, _)| Some(uuid::Uuid::from_u128(*id).to_string()))
        .collect();
    let versions: Int64Array = pairs.map(|(_, v)| *v).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("expense_id", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(versions)])
        .unwrap_or_else(|e| unreachable!("two non-null columns of one length: {e}"))
}

/// What a report asks for.
pub struct Ask<'a> {
    pub group_by: GroupBy,
    pub statuses: &'a [Status],
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub filters: &'a Filters,
}

/// A text column as the lake gives it: plain, or as the file's dictionary
/// (see `Lake::read_columns`).
#[derive(Clone, Copy)]
enum Text<'a> {
    Plain(&'a StringArray),
    Dictionary(TypedDictionaryArray<'a, Int32Type, StringArray>),
}

impl<'a> Text<'a> {
    fn of(column: &'a dyn Array) -> Option<Self> {
        if let Some(plain) = column.as_any().downcast_ref::<StringArray>() {
            return Some(Self::Plain(plain));
        }
        column
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()?
            .downcast_dict::<StringArray>()
            .map(Self::Dictionary)
    }

    /// The text at `i`, or `None`.
    fn get(self, i: usize) -> Option<&'a str> {
        match self {
            Self::Plain(a) => (!a.is_null(i)).then(|| a.value(i)),
            Self::Dictionary(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

fn days(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// One row per group and currency of the expenses of `tenant` that `ask`
/// selects: their count and exact total.
fn aggregate(tenant: &Tenant, ask: &Ask<'_>) -> Vec<Part> {
    let strings = &tenant.strings;
    // A filter value the tenant never used selects nothing.
    let ids = |values: &mut dyn Iterator<Item = &str>| -> HashSet<u32> {
        values.filter_map(|v| strings.find(v)).collect()
    };
    let filters = ask.filters;
    let categories = (!filters.categories.is_empty())
        .then(|| ids(&mut filters.categories.iter().map(|c| c.as_str())));
    let currencies = (!filters.currencies.is_empty())
        .then(|| ids(&mut filters.currencies.iter().map(String::as_str)));
    let one = |value: &Option<String>| {
        value
            .as_deref()
            .map(|v| strings.find(v).unwrap_or(u32::MAX))
    };
    let (account, employee) = (one(&filters.account), one(&filters.employee));
    let mut statuses = [false; Status::ALL.len()];
    for status in ask.statuses {
        if let Some(i) = Status::ALL.iter().position(|s| s == status) {
            statuses[i] = true;
        }
    }
    let (from, to) = (ask.from.map(days), ask.to.map(days));
    let period = matches!(ask.group_by, GroupBy::Day | GroupBy::Week | GroupBy::Month);
    let mut groups: HashMap<(i64, u32, u32), Totals> = HashMap::new();
    let index = |status: Status| Status::ALL.iter().position(|s| *s == status);
    let (declined, reversed) = (index(Status::Declined), index(Status::Reversed));
    for (slot, row) in tenant.rows.iter().enumerate() {
        // The lifecycle first (`docs/lifecycle.md`): a declined record never
        // counts, nor one a later record superseded; a reversal counts
        // against what it reverses.
        let status = Some(usize::from(row.status));
        if status == declined || tenant.excluded.contains(&(slot as u32)) {
            continue;
        }
        let counts_as = |amount: i64| {
            if status == reversed {
                -i128::from(amount).abs()
            } else {
                i128::from(amount)
            }
        };
        let counted = counts_as(row.amount_minor);
        let selected = statuses
            .get(usize::from(row.status))
            .copied()
            .unwrap_or(false)
            && from.is_none_or(|f| row.date >= f)
            && to.is_none_or(|t| row.date <= t)
            && categories
                .as_ref()
                .is_none_or(|c| c.contains(&{ row.category }))
            && currencies
                .as_ref()
                .is_none_or(|c| c.contains(&{ row.currency }))
            && account.is_none_or(|a| row.account == a)
            && employee.is_none_or(|e| row.employee == e)
            && filters
                .min_amount_minor
                .is_none_or(|m| counted >= i128::from(m))
            && filters
                .max_amount_minor
                .is_none_or(|m| counted <= i128::from(m));
        if !selected {
            continue;
        }
        let group = match ask.group_by {
            GroupBy::Category => i64::from(row.category),
            GroupBy::Merchant => i64::from(row.merchant),
            GroupBy::Account => i64::from(row.account),
            GroupBy::Employee => i64::from(row.employee),
            GroupBy::Currency => i64::from(row.currency),
            GroupBy::Day | GroupBy::Week | GroupBy::Month => i64::from(row.date),
        };
        let base = tenant.base(slot);
        let total = groups
            .entry((group, row.currency, base.currency))
            .or_default();
        total.count += 1;
        total.minor += counted;
        if base.currency != NONE {
            total.base_minor += counts_as(base.minor);
        }
    }
    groups
        .into_iter()
        .map(|((group, currency, base_currency), totals)| {
            let group = if period {
                i32::try_from(group)
                    .ok()
                    .and_then(|d| NaiveDate::from_num_days_from_ce_opt(d + UNIX_EPOCH_DAYS_FROM_CE))
                    .map(|d| d.to_string())
            } else {
                u32::try_from(group)
                    .ok()
                    .and_then(|id| strings.text(id))
                    .map(str::to_string)
            };
            let text = |id: u32| strings.text(id).map(str::to_string);
            Part {
                group,
                currency: text(currency).unwrap_or_default(),
                base_currency: text(base_currency),
                count: totals.count,
                minor: totals.minor,
                base_minor: totals.base_minor,
            }
        })
        .collect()
}

#[derive(Default)]
struct Totals {
    count: i64,
    minor: i128,
    base_minor: i128,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record of a lifecycle scenario.
    #[derive(Debug, Clone)]
    struct Rec {
        external_id: String,
        status: Status,
        related: Option<String>,
        amount: i64,
    }

    fn rec(external_id: String, status: Status, related: Option<String>, amount: i64) -> Rec {
        Rec {
            external_id,
            status,
            related,
            amount,
        }
    }

    /// The records of purchase `i` of `kind` (see `docs/lifecycle.md`).
    fn purchase(i: usize, kind: u8, amount: i64) -> Vec<Rec> {
        use Status::*;
        let (p, t, r) = (format!("p{i}"), format!("t{i}"), format!("r{i}"));
        match kind {
            0 => vec![rec(p, Pending, None, amount)],
            1 => vec![
                rec(p.clone(), Pending, None, amount),
                rec(t, Posted, Some(p), amount + 3),
            ],
            // One id, pending then posted: whichever arrives last is its
            // latest version.
            2 => vec![
                rec(p.clone(), Pending, None, amount),
                rec(p, Posted, None, amount + 1),
            ],
            3 => vec![
                rec(t.clone(), Posted, None, amount),
                rec(r, Reversed, Some(t), amount / 2),
            ],
            4 => vec![
                rec(p.clone(), Pending, None, amount),
                rec(r, Reversed, Some(p), amount),
            ],
            5 => vec![rec(p, Declined, None, amount)],
            // Signed as some importers sign a reversal: taken back all the same.
            6 => vec![rec(r, Reversed, Some(format!("gone{i}")), -amount)],
            7 => vec![
                rec(p.clone(), Pending, None, amount),
                rec(t.clone(), Posted, Some(p), amount),
                rec(r, Reversed, Some(t), amount),
            ],
            8 => vec![
                rec(p.clone(), Pending, None, amount),
                rec(format!("d{i}"), Declined, Some(p), amount),
            ],
            // A declined authorisation released all the same, and that
            // reversal reversed again: nothing moved.
            _ => vec![
                rec(p.clone(), Declined, None, amount),
                rec(r.clone(), Reversed, Some(p), amount),
                rec(t, Reversed, Some(r), amount),
            ],
        }
    }

    /// Every status, by currency, under `filters`.
    fn by_currency(filters: &Filters) -> Ask<'_> {
        Ask {
            group_by: GroupBy::Currency,
            statuses: &Status::ALL,
            from: None,
            to: None,
            filters,
        }
    }

    /// The rules of `docs/lifecycle.md` over the latest record of each id:
    /// (records counted, their sum).
    fn model(latest: &[Rec]) -> (i64, i128) {
        let linked: HashSet<&str> = latest
            .iter()
            .filter_map(|r| r.related.as_deref().filter(|x| *x != r.external_id))
            .collect();
        let released: HashSet<&str> = latest
            .iter()
            .filter(|r| {
                matches!(
                    r.status,
                    Status::Pending | Status::Declined | Status::Reversed
                )
            })
            .map(|r| r.external_id.as_str())
            .collect();
        let mut out = (0, 0i128);
        for r in latest {
            let counted = match r.status {
                Status::Declined => None,
                Status::Pending if linked.contains(r.external_id.as_str()) => None,
                Status::Reversed if r.related.as_deref().is_some_and(|x| released.contains(x)) => {
                    None
                }
                Status::Reversed => Some(-i128::from(r.amount).abs()),
                _ => Some(i128::from(r.amount)),
            };
            if let Some(c) = counted {
                out.0 += 1;
                out.1 += c;
            }
        }
        out
    }

    /// Records as the lake holds them (the columns the state reads), with
    /// their versions.
    fn lake_batch(records: &[(Rec, i64)]) -> RecordBatch {
        with_external_id(records, false)
    }

    /// [`lake_batch`], with `external_id` too when `sql` (the view reads it).
    fn with_external_id(records: &[(Rec, i64)], sql: bool) -> RecordBatch {
        use datafusion::arrow::array::ArrayRef;
        let texts = |f: &dyn Fn(&(Rec, i64)) -> Option<String>| -> ArrayRef {
            Arc::new(records.iter().map(f).collect::<StringArray>())
        };
        let mut columns: Vec<ArrayRef> = vec![
            texts(&|(r, _)| {
                Some(spendstream_schemas::expense_id("t", "s", &r.external_id).to_string())
            }),
            Arc::new(records.iter().map(|(_, v)| *v).collect::<Int64Array>()),
            texts(&|(r, _)| Some(r.status.as_str().to_string())),
            Arc::new(
                records
                    .iter()
                    .map(|_| Some(20_000i32))
                    .collect::<Date32Array>(),
            ),
            Arc::new(
                records
                    .iter()
                    .map(|(r, _)| r.amount)
                    .collect::<Int64Array>(),
            ),
            texts(&|_| Some("USD".into())),
            texts(&|_| None),
            texts(&|_| Some("a".into())),
            texts(&|_| None),
            texts(&|_| None),
            texts(&|_| None),
            texts(&|_| Some(uuid::Uuid::new_v4().to_string())),
            texts(&|_| Some("s".into())),
            texts(&|(r, _)| r.related.clone()),
            // Base amounts twice the amounts (a reversal's signed as sent,
            // like its amount): they count by the same rules.
            Arc::new(
                records
                    .iter()
                    .map(|(r, _)| 2 * r.amount)
                    .collect::<Int64Array>(),
            ),
            texts(&|_| Some("USD".into())),
        ];
        let mut names = COLUMNS.to_vec();
        if sql {
            columns.push(texts(&|(r, _)| Some(r.external_id.clone())));
            names.push("external_id");
        } else {
            // As `Lake::read_columns` gives them: text that repeats as
            // dictionaries, the expense ids plain.
            let dictionary =
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
            for column in columns.iter_mut().skip(1) {
                if *column.data_type() == DataType::Utf8 {
                    *column = datafusion::arrow::compute::cast(column, &dictionary).unwrap();
                }
            }
        }
        let fields: Vec<Field> = names
            .iter()
            .zip(&columns)
            .map(|(name, c)| Field::new(*name, c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever order the records of a tenant arrive in, and however
        /// they are split into files, the reports' state counts what the
        /// lifecycle rules say of the latest record of each id, and so does
        /// the SQL view `expenses_counted`.
        #[test]
        fn every_order_of_arrival_counts_as_the_rules_say(
            kinds in proptest::collection::vec((0u8..10, 1i64..10_000), 1..8),
            order in proptest::prelude::any::<proptest::sample::Index>(),
            seed in proptest::prelude::any::<u64>(),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..4),
        ) {
            let mut records: Vec<Rec> = kinds
                .iter()
                .enumerate()
                .flat_map(|(i, (kind, amount))| purchase(i, *kind, *amount))
                .collect();
            // A permutation from the seed (Fisher–Yates with a small LCG).
            let mut state = seed | 1;
            for i in (1..records.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let j = (state >> 33) as usize % (i + 1);
                records.swap(i, j);
            }
            let _ = order;
            // Versions as the log gives them: by arrival.
            let arrived: Vec<(Rec, i64)> = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r, i as i64 + 1))
                .collect();
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(arrived.len() + 1)).collect();
            bounds.push(0);
            bounds.push(arrived.len());
            bounds.sort_unstable();
            bounds.dedup();
            let mut tenant = Tenant::default();
            for pair in bounds.windows(2) {
                let batch = lake_batch(&arrived[pair[0]..pair[1]]);
                let batch = tenant.changes(&batch).unwrap();
                tenant.merge("t", &batch).unwrap();
            }
            let mut latest: HashMap<String, (Rec, i64)> = HashMap::new();
            for (r, v) in &arrived {
                let held = latest.entry(r.external_id.clone()).or_insert((r.clone(), *v));
                if held.1 < *v {
                    *held = (r.clone(), *v);
                }
            }
            let latest: Vec<(Rec, i64)> = latest.into_values().collect();
            let recs: Vec<Rec> = latest.iter().map(|(r, _)| r.clone()).collect();
            let want = model(&recs);

            let filters = Filters::default();
            let rows = aggregate(&tenant, &by_currency(&filters));
            let got = rows.iter().fold((0, 0i128), |(c, s), r| (c + r.count, s + r.minor));
            proptest::prop_assert_eq!(got, want, "state, arrivals {:?}", arrived);
            let base: i128 = rows.iter().map(|r| r.base_minor).sum();
            proptest::prop_assert_eq!(base, 2 * want.1, "base amounts count as amounts do");

            // The same over SQL.
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sql = runtime.block_on(async {
                let ctx = datafusion::prelude::SessionContext::new();
                let batch = with_external_id(&latest, true);
                let table =
                    datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                        .unwrap();
                ctx.register_table("latest", Arc::new(table)).unwrap();
                let text = format!(
                    "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(counted_amount_minor), 0) AS BIGINT) AS s, \
                     CAST(COALESCE(SUM(counted_base_amount_minor), 0) AS BIGINT) AS b FROM ({})",
                    crate::sql::counted_sql("SELECT * FROM latest")
                );
                let batches = ctx.sql(&text).await.unwrap().collect().await.unwrap();
                let col = |i: usize| {
                    batches[0]
                        .column(i)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .value(0)
                };
                ((col(0), i128::from(col(1))), i128::from(col(2)))
            });
            proptest::prop_assert_eq!(sql, (want, 2 * want.1), "SQL, latest {:?}", latest);
        }
    }

    /// The slot index finds every expense through its growth, by all 128
    /// bits (ids equal in either half are told apart), with the version
    /// last set.
    #[test]
    fn the_slot_index_finds_every_expense_by_its_whole_id() {
        let mut latest = Latest::default();
        let id = |i: u128| (i << 64) | (i % 7);
        for i in 0..100_000u128 {
            assert_eq!(latest.push(id(i), 1).unwrap(), i as u32);
        }
        for slot in (0..100_000u32).step_by(3) {
            latest.set_version(slot, 5);
        }
        for i in 0..100_000u128 {
            let want = if i % 3 == 0 { 5 } else { 1 };
            assert_eq!(latest.get(id(i)), Some((i as u32, want)));
        }
        assert_eq!(latest.get(id(100_000)), None);
        assert_eq!(latest.get((1 << 64) | 2), None, "low half differs");
        assert_eq!(latest.get((2 << 64) | 1), None, "high half differs");
    }

    /// Base amounts live beside the rows, only once a row has one, and
    /// follow each expense's latest version either way.
    #[test]
    fn base_amounts_are_held_apart_from_the_first_one_on() {
        assert_eq!(std::mem::size_of::<Row>(), 36, "the state's row grew");
        let posted = |from: usize, version: i64| -> Vec<(Rec, i64)> {
            (from..from + 3)
                .map(|i| (rec(format!("p{i}"), Status::Posted, None, 100), version))
                .collect()
        };
        // Columns 14 and 15 (base amount, base currency) all null.
        let without_base = |batch: RecordBatch| {
            let mut columns = batch.columns().to_vec();
            for i in [14, 15] {
                columns[i] = datafusion::arrow::array::new_null_array(
                    columns[i].data_type(),
                    batch.num_rows(),
                );
            }
            RecordBatch::try_new(batch.schema(), columns).unwrap()
        };
        let mut tenant = Tenant::default();
        tenant
            .merge("t", &without_base(with_external_id(&posted(0, 1), false)))
            .unwrap();
        assert!(tenant.base.is_empty(), "no row has a base amount yet");
        tenant
            .merge("t", &with_external_id(&posted(3, 1), false))
            .unwrap();
        // p3 again, a later version without a base amount.
        let later: Vec<(Rec, i64)> = posted(3, 2).into_iter().take(1).collect();
        tenant
            .merge("t", &without_base(with_external_id(&later, false)))
            .unwrap();
        assert_eq!(tenant.base.len(), tenant.rows.len());
        let filters = Filters::default();
        let mut parts: Vec<(Option<String>, i64, i128, i128)> =
            aggregate(&tenant, &by_currency(&filters))
                .into_iter()
                .map(|p| (p.base_currency, p.count, p.minor, p.base_minor))
                .collect();
        parts.sort();
        assert_eq!(
            parts,
            vec![(None, 4, 400, 0), (Some("USD".into()), 2, 200, 400)]
        );
    }

    /// A refresh keeps the rows that change the state; when most rows of a
    /// file are held already (a compaction's), the few kept carry their
    /// own text, not every column's whole dictionary.
    #[test]
    fn the_few_changes_of_a_mostly_held_file_hold_plain_text() {
        let records = |n: usize| -> Vec<(Rec, i64)> {
            (0..n)
                .map(|i| (rec(format!("p{i}"), Status::Posted, None, 100), 1))
                .collect()
        };
        let mut tenant = Tenant::default();
        tenant.merge("t", &lake_batch(&records(3))).unwrap();
        let file = lake_batch(&records(4));
        assert!(matches!(
            file.column(2).data_type(),
            DataType::Dictionary(..)
        ));
        let kept = tenant.changes(&file).unwrap();
        assert_eq!(kept.num_rows(), 1);
        for column in kept.columns() {
            assert!(!matches!(column.data_type(), DataType::Dictionary(..)));
        }
        // Most rows new: kept as read.
        let kept = Tenant::default().changes(&file).unwrap();
        assert_eq!(kept.num_rows(), 4);
        assert!(matches!(
            kept.column(2).data_type(),
            DataType::Dictionary(..)
        ));
        tenant.merge("t", &tenant.changes(&file).unwrap()).unwrap();
        assert_eq!(tenant.rows.len(), 4);
    }

    #[test]
    fn expense_ids_are_held_as_uuids_and_written_back_the_same() {
        let id = spendstream_schemas::expense_id("t1", "visa", "123").to_string();
        let key = expense_key(&id).unwrap();
        let batch = superseded_batch([(key, 7)].iter());
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(ids.value(0), id);
        // Another spelling of the same UUID would not match the lake's text
        // in the SQL anti-join: refused, as is anything not a UUID.
        for bad in [
            id.to_uppercase(),
            id.replace('-', ""),
            "x".into(),
            String::new(),
        ] {
            assert!(expense_key(&bad).is_err(), "{bad}");
        }
    }
}
