//! The ingested record (contract v1) and its validation from raw JSON.
//!
//! Validation reads the raw JSON text so that numbers are never parsed as
//! floats: an amount sent as the JSON number `12.34` is taken from its exact
//! decimal text.

use crate::category::Category;
use crate::currency::Currency;
use crate::error::{ErrorCode, RecordError};
use crate::money::{AmountError, Money};
use crate::pan::contains_pan;
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Lifecycle status of a card transaction or expense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Posted,
    Reversed,
    Declined,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Posted,
        Status::Reversed,
        Status::Declined,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Posted => "posted",
            Status::Reversed => "reversed",
            Status::Declined => "declined",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Status::ALL.into_iter().find(|x| x.as_str() == s).ok_or(())
    }
}

/// A validated expense record as sent by an importer. Its serde form keeps
/// money as `{"minor": 1234, "currency": "USD"}`; the wire form importers send
/// is read by [`ExpenseRecord::from_json`].
pub type ExpenseRecord = ExpenseRecordOf<String>;

/// A validated record whose text is borrowed from the JSON it was read
/// from (owned only where the JSON held escapes): what the edge checks
/// and packs into the log, without a copy of every field.
pub type RecordView<'a> = ExpenseRecordOf<Cow<'a, str>>;

/// A validated expense record, its text held as `S`: see [`ExpenseRecord`]
/// and [`RecordView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Ord"))]
pub struct ExpenseRecordOf<S> {
    pub source: S,
    pub external_id: S,
    pub account_id: S,
    pub status: Status,
    pub related_external_id: Option<S>,
    pub transaction_date: NaiveDate,
    pub posted_at: Option<DateTime<Utc>>,
    pub amount: Money,
    pub billed: Option<Money>,
    pub merchant_name: Option<S>,
    pub merchant_mcc: Option<u16>,
    pub employee_id: Option<S>,
    pub memo: Option<S>,
    pub metadata: BTreeMap<S, S>,
    /// A category chosen by the sender; wins over the MCC mapping.
    pub category_hint: Option<Category>,
}

/// Field limits (characters). Part of the contract; see the JSON Schema.
pub mod limits {
    pub const SOURCE: usize = 64;
    pub const EXTERNAL_ID: usize = 128;
    pub const ACCOUNT_ID: usize = 64;
    pub const MERCHANT_NAME: usize = 256;
    pub const EMPLOYEE_ID: usize = 128;
    pub const MEMO: usize = 1024;
    pub const METADATA_KEYS: usize = 32;
    pub const METADATA_KEY: usize = 64;
    pub const METADATA_VALUE: usize = 256;
}

/// Every field name a record may carry.
pub const FIELDS: &[&str] = &[
    "source",
    "external_id",
    "account_id",
    "status",
    "related_external_id",
    "transaction_date",
    "posted_at",
    "amount",
    "amount_minor",
    "currency",
    "billed_amount",
    "billed_amount_minor",
    "billed_currency",
    "merchant_name",
    "merchant_mcc",
    "employee_id",
    "memo",
    "metadata",
    "category",
];

/// Earliest and latest transaction dates accepted: outside this window a
/// date is a typo, not an expense.
const MIN_DATE: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
const MAX_DATE: NaiveDate = NaiveDate::from_ymd_opt(2199, 12, 31).unwrap();

impl ExpenseRecord {
    /// Validates one record given as the raw text of a JSON object.
    pub fn from_json(raw: &str) -> Result<Self, RecordError> {
        fields(raw)?.validate()
    }
}

impl<S> ExpenseRecordOf<S> {
    /// The record with its text converted by `f` (borrowed to owned, or
    /// owned to [`Cow`]): every text field, metadata included.
    pub fn map_text<T: Ord>(self, mut f: impl FnMut(S) -> T) -> ExpenseRecordOf<T> {
        ExpenseRecordOf {
            source: f(self.source),
            external_id: f(self.external_id),
            account_id: f(self.account_id),
            status: self.status,
            related_external_id: self.related_external_id.map(&mut f),
            transaction_date: self.transaction_date,
            posted_at: self.posted_at,
            amount: self.amount,
            billed: self.billed,
            merchant_name: self.merchant_name.map(&mut f),
            merchant_mcc: self.merchant_mcc,
            employee_id: self.employee_id.map(&mut f),
            memo: self.memo.map(&mut f),
            metadata: self
                .metadata
                .into_iter()
                .map(|(k, v)| (f(k), f(v)))
                .collect(),
            category_hint: self.category_hint,
        }
    }
}

impl<'a> RecordView<'a> {
    /// [`ExpenseRecord::from_json`] without copying the record's text.
    pub fn from_json(raw: &'a str) -> Result<Self, RecordError> {
        fields(raw)?.validate()
    }
}

/// A record's fields, or why its text is not a record object.
fn fields(raw: &str) -> Result<Fields<'_>, RecordError> {
    record_object(raw).map_err(|e| match e {
        Unique::Duplicate(name) => RecordError::new(
            ErrorCode::DuplicateField,
            None,
            format!("field `{}` appears more than once", echo(&name, 64)),
        ),
        Unique::Json(e) => RecordError::new(
            ErrorCode::InvalidJson,
            None,
            format!("record is not a JSON object: {e}"),
        ),
    })
}

/// The position of a field name in [`FIELDS`]: a `match` compiles to a
/// switch on length and a compare, cheaper than any map of the names.
fn field_index(name: &str) -> Option<usize> {
    Some(match name {
        "source" => 0,
        "external_id" => 1,
        "account_id" => 2,
        "status" => 3,
        "related_external_id" => 4,
        "transaction_date" => 5,
        "posted_at" => 6,
        "amount" => 7,
        "amount_minor" => 8,
        "currency" => 9,
        "billed_amount" => 10,
        "billed_amount_minor" => 11,
        "billed_currency" => 12,
        "merchant_name" => 13,
        "merchant_mcc" => 14,
        "employee_id" => 15,
        "memo" => 16,
        "metadata" => 17,
        "category" => 18,
        _ => return None,
    })
}

/// A record's fields, each in its [`FIELDS`] slot, read in one pass.
struct Fields<'a> {
    slots: [Option<&'a RawValue>; FIELDS.len()],
    /// Names outside [`FIELDS`] (a set: a record of 1 MiB can hold
    /// 100,000 of them, and each is checked for a duplicate).
    unknown: std::collections::BTreeSet<String>,
}

impl<'a> Fields<'a> {
    fn validate<S>(&self) -> Result<ExpenseRecordOf<S>, RecordError>
    where
        S: From<Cow<'a, str>> + std::ops::Deref<Target = str> + Ord,
    {
        // The first in name order, as before fields were read into slots.
        if let Some(unknown) = self.unknown.first() {
            return Err(RecordError::new(
                ErrorCode::UnknownField,
                None,
                format!("unknown field `{}`", echo(unknown, 64)),
            ));
        }
        let source = S::from(self.identifier("source", limits::SOURCE)?);
        let external_id = S::from(self.identifier("external_id", limits::EXTERNAL_ID)?);
        let account_id = S::from(self.required_text("account_id", limits::ACCOUNT_ID)?);
        let status = match self.text("status", 16)? {
            None => Status::Posted,
            Some(s) => s.parse().map_err(|_| {
                RecordError::field(
                    ErrorCode::InvalidStatus,
                    "status",
                    "status must be one of pending, posted, reversed, declined",
                )
            })?,
        };
        let related_external_id = self
            .text("related_external_id", limits::EXTERNAL_ID)?
            .map(|v| no_control("related_external_id", v).map(S::from))
            .transpose()?;
        let transaction_date = self.date("transaction_date")?;
        let posted_at = self.timestamp("posted_at")?;
        let amount = self
            .money("amount", "amount_minor", "currency")?
            .ok_or_else(|| missing("amount"))?;
        let billed = self.money("billed_amount", "billed_amount_minor", "billed_currency")?;
        let merchant_name = self
            .text("merchant_name", limits::MERCHANT_NAME)?
            .map(S::from);
        let merchant_mcc = self.mcc()?;
        let employee_id = self.text("employee_id", limits::EMPLOYEE_ID)?.map(S::from);
        let memo = self.text("memo", limits::MEMO)?.map(S::from);
        let metadata = self.metadata::<S>()?;
        let category_hint = match self.text("category", 32)? {
            None => None,
            Some(c) => Some(c.parse().map_err(|_| {
                RecordError::field(
                    ErrorCode::InvalidCategory,
                    "category",
                    format!("unknown category `{}`", echo(&c, 32)),
                )
            })?),
        };

        // Every string the record carries, keys included: a card number in
        // an id or a metadata key is stored as surely as one in a memo.
        for (field, value) in [
            ("source", Some(&source)),
            ("external_id", Some(&external_id)),
            ("account_id", Some(&account_id)),
            ("related_external_id", related_external_id.as_ref()),
            ("merchant_name", merchant_name.as_ref()),
            ("employee_id", employee_id.as_ref()),
            ("memo", memo.as_ref()),
        ] {
            if value.is_some_and(|v| contains_pan(v)) {
                return Err(pan(field));
            }
        }
        if metadata
            .iter()
            .any(|(k, v)| contains_pan(k) || contains_pan(v))
        {
            return Err(pan("metadata"));
        }

        Ok(ExpenseRecordOf {
            source,
            external_id,
            account_id,
            status,
            related_external_id,
            transaction_date,
            posted_at,
            amount,
            billed,
            merchant_name,
            merchant_mcc,
            employee_id,
            memo,
            metadata,
            category_hint,
        })
    }

    /// A present, non-null value.
    fn get(&self, field: &str) -> Option<&'a RawValue> {
        let at = field_index(field)?;
        self.slots[at].filter(|v| v.get() != "null")
    }

    /// An optional string field; empty strings count as absent. Borrowed
    /// from the record's text unless it holds escapes: most fields are
    /// only looked at (dates, codes, amounts), not kept.
    fn text(&self, field: &'static str, max: usize) -> Result<Option<Cow<'a, str>>, RecordError> {
        let Some(raw) = self.get(field) else {
            return Ok(None);
        };
        let value = json_string(raw).ok_or_else(|| {
            RecordError::field(
                ErrorCode::InvalidField,
                field,
                format!("`{field}` must be a string"),
            )
        })?;
        if value.is_empty() {
            return Ok(None);
        }
        // No more bytes than `max` means no more characters either.
        if value.len() > max && value.chars().count() > max {
            return Err(RecordError::field(
                ErrorCode::FieldTooLong,
                field,
                format!("`{field}` is longer than {max} characters"),
            ));
        }
        Ok(Some(value))
    }

    fn required_text(&self, field: &'static str, max: usize) -> Result<Cow<'a, str>, RecordError> {
        self.text(field, max)?.ok_or_else(|| missing(field))
    }

    /// A required identity field: no control characters, no surrounding
    /// whitespace (they would make two spellings of one identity).
    fn identifier(&self, field: &'static str, max: usize) -> Result<Cow<'a, str>, RecordError> {
        let value = self.required_text(field, max)?;
        if value.trim() != value.as_ref() {
            return Err(RecordError::field(
                ErrorCode::InvalidField,
                field,
                format!("`{field}` has leading or trailing whitespace"),
            ));
        }
        no_control(field, value)
    }

    /// The raw text of a scalar: string contents or the literal number token.
    fn scalar(&self, field: &'static str) -> Result<Option<Cow<'a, str>>, RecordError> {
        let Some(raw) = self.get(field) else {
            return Ok(None);
        };
        let text = raw.get();
        if text.starts_with('"') {
            let s = json_string(raw).ok_or_else(|| {
                RecordError::field(ErrorCode::InvalidField, field, "invalid string")
            })?;
            Ok(if s.is_empty() { None } else { Some(s) })
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            Ok(Some(Cow::Borrowed(text)))
        } else {
            Err(RecordError::field(
                ErrorCode::InvalidField,
                field,
                format!("`{field}` must be a string or a number"),
            ))
        }
    }

    fn date(&self, field: &'static str) -> Result<NaiveDate, RecordError> {
        let text = self.text(field, 32)?.ok_or_else(|| missing(field))?;
        strict_date(&text).ok_or_else(|| {
            RecordError::field(
                ErrorCode::InvalidDate,
                field,
                format!("`{field}` must be a date YYYY-MM-DD between 1970 and 2199"),
            )
        })
    }

    fn timestamp(&self, field: &'static str) -> Result<Option<DateTime<Utc>>, RecordError> {
        let Some(text) = self.text(field, 40)? else {
            return Ok(None);
        };
        let invalid = || {
            RecordError::field(
                ErrorCode::InvalidDate,
                field,
                format!("`{field}` must be an RFC 3339 timestamp"),
            )
        };
        // chrono is more lenient than RFC 3339 (a Unicode minus in the
        // offset, second 60 in any minute); the contract is not.
        if !text.is_ascii() {
            return Err(invalid());
        }
        let parsed = match DateTime::parse_from_rfc3339(&text) {
            Ok(t) => Some(t.with_timezone(&Utc)).filter(|t| {
                // chrono marks a leap second with nanoseconds past 1e9;
                // RFC 3339 allows one only as the last second of a UTC
                // June 30 or December 31.
                t.nanosecond() < 1_000_000_000
                    || (t.hour(), t.minute(), t.second()) == (23, 59, 59)
                        && matches!((t.month(), t.day()), (6, 30) | (12, 31))
            }),
            Err(_) => {
                strict_date(&text).map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
            }
        };
        parsed
            .filter(|t| (MIN_DATE..=MAX_DATE).contains(&t.date_naive()))
            .map(Some)
            .ok_or_else(invalid)
    }

    /// An amount as a decimal (`amount_field`) or integer minor units
    /// (`minor_field`), exactly one of them, with its currency.
    fn money(
        &self,
        amount_field: &'static str,
        minor_field: &'static str,
        currency_field: &'static str,
    ) -> Result<Option<Money>, RecordError> {
        let decimal = self.scalar(amount_field)?;
        let minor = self.scalar(minor_field)?;
        let (field, text, is_minor) = match (decimal, minor) {
            (None, None) => {
                // A currency without an amount is not dropped unread: a
                // wrong one is a mistake the sender should hear about.
                if let Some(code) = self.text(currency_field, 8)? {
                    Currency::from_code(&code).ok_or_else(|| {
                        RecordError::field(
                            ErrorCode::InvalidCurrency,
                            currency_field,
                            format!("`{}` is not an ISO 4217 currency", echo(&code, 8)),
                        )
                    })?;
                }
                return Ok(None);
            }
            (Some(d), None) => (amount_field, d, false),
            (None, Some(m)) => (minor_field, m, true),
            (Some(_), Some(_)) => {
                return Err(RecordError::field(
                    ErrorCode::InvalidAmount,
                    minor_field,
                    format!("send either `{amount_field}` or `{minor_field}`, not both"),
                ));
            }
        };
        let code = self
            .text(currency_field, 8)?
            .ok_or_else(|| missing(currency_field))?;
        let currency = Currency::from_code(&code).ok_or_else(|| {
            RecordError::field(
                ErrorCode::InvalidCurrency,
                currency_field,
                format!("`{}` is not an ISO 4217 currency", echo(&code, 8)),
            )
        })?;
        let parsed = if is_minor {
            crate::money::parse_minor(&text, 0).map(|m| Money::new(m, currency))
        } else {
            Money::parse(&text, currency)
        };
        parsed
            .map(Some)
            .map_err(|e| amount_error(field, e, currency))
    }

    fn mcc(&self) -> Result<Option<u16>, RecordError> {
        let Some(text) = self.scalar("merchant_mcc")? else {
            return Ok(None);
        };
        let invalid = || {
            RecordError::field(
                ErrorCode::InvalidMcc,
                "merchant_mcc",
                "`merchant_mcc` must be a four-digit ISO 18245 code",
            )
        };
        if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse().map(Some).map_err(|_| invalid())
    }

    /// Metadata keys and values are always copied: the keys are read as
    /// strings of their own (to find one sent twice), and a CSV cell's
    /// metadata is unescaped into a string of its own first.
    fn metadata<S: From<Cow<'a, str>> + Ord>(&self) -> Result<BTreeMap<S, S>, RecordError> {
        let Some(raw) = self.get("metadata") else {
            return Ok(BTreeMap::new());
        };
        let invalid =
            |message: String| RecordError::field(ErrorCode::InvalidMetadata, "metadata", message);
        // CSV carries metadata as a JSON object in a string cell.
        let inner: Cow<'_, str>;
        let text = if raw.get().starts_with('"') {
            inner = json_string(raw).ok_or_else(|| invalid("invalid string".into()))?;
            inner.as_ref()
        } else {
            raw.get()
        };
        let map = unique_object(text).map_err(|e| match e {
            Unique::Duplicate(key) => invalid(format!(
                "metadata key `{}` appears more than once",
                echo(&key, 64)
            )),
            Unique::Json(_) => invalid("`metadata` must be a JSON object".into()),
        })?;
        if map.len() > limits::METADATA_KEYS {
            return Err(invalid(format!(
                "`metadata` has more than {} keys",
                limits::METADATA_KEYS
            )));
        }
        let mut out = BTreeMap::new();
        for (key, value) in map {
            if key.is_empty() || key.chars().count() > limits::METADATA_KEY {
                return Err(invalid(format!(
                    "metadata keys must be 1 to {} characters",
                    limits::METADATA_KEY
                )));
            }
            let v = value.get();
            let value = if v.starts_with('"') {
                json_string(value)
                    .ok_or_else(|| invalid("invalid string".into()))?
                    .into_owned()
            } else if v.starts_with(['{', '[']) {
                return Err(invalid(format!(
                    "metadata value of `{}` must be a string, number or boolean",
                    echo(&key, 64)
                )));
            } else {
                v.to_string()
            };
            if value.chars().count() > limits::METADATA_VALUE {
                return Err(invalid(format!(
                    "metadata values must be at most {} characters",
                    limits::METADATA_VALUE
                )));
            }
            out.insert(S::from(Cow::Owned(key)), S::from(Cow::Owned(value)));
        }
        Ok(out)
    }
}

/// `YYYY-MM-DD` exactly (ASCII digits, zero-padded, no sign or spaces)
/// within the accepted years.
fn strict_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        b[range]
            .iter()
            .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'))
    };
    let year = i32::try_from(number(0..4)).ok()?;
    NaiveDate::from_ymd_opt(year, number(5..7), number(8..10))
        .filter(|d| (MIN_DATE..=MAX_DATE).contains(d))
}

fn missing(field: &'static str) -> RecordError {
    RecordError::field(
        ErrorCode::MissingField,
        field,
        format!("`{field}` is required"),
    )
}

fn pan(field: &'static str) -> RecordError {
    RecordError::field(
        ErrorCode::PanDetected,
        field,
        format!(
            "`{field}` contains what looks like a card number; send a token or a masked value such as **** 1234"
        ),
    )
}

fn no_control<T: std::ops::Deref<Target = str>>(
    field: &'static str,
    value: T,
) -> Result<T, RecordError> {
    if value.chars().any(char::is_control) {
        return Err(RecordError::field(
            ErrorCode::InvalidField,
            field,
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(value)
}

fn amount_error(field: &'static str, error: AmountError, currency: Currency) -> RecordError {
    let code = match error {
        AmountError::NotANumber => ErrorCode::InvalidAmount,
        AmountError::TooManyDecimals(_) => ErrorCode::AmountPrecision,
        AmountError::Overflow => ErrorCode::AmountOverflow,
    };
    let message = match error {
        AmountError::TooManyDecimals(exp) => {
            format!("`{field}` has more than {exp} decimal places, the minor unit of {currency}")
        }
        AmountError::NotANumber if field.ends_with("_minor") => {
            format!("`{field}` must be an integer count of minor units")
        }
        other => format!("`{field}`: {other}"),
    };
    RecordError::field(code, field, message)
}

/// Why an object could not be read with unique keys.
enum Unique {
    Json(serde_json::Error),
    Duplicate(String),
}

/// Reads a JSON object's fields, refusing a key that appears twice. JSON
/// parsers keep the last duplicate, but another reader of the same text
/// (an older edge's log, an importer's own copy) may keep the first: a
/// first `"memo"` holding a card number must not pass as valid.
fn unique_object(text: &str) -> Result<BTreeMap<String, &RawValue>, Unique> {
    use serde::de::{DeserializeSeed, MapAccess, Visitor};

    struct Seed<'d>(&'d std::cell::Cell<Option<String>>);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = BTreeMap<String, &'de RawValue>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = BTreeMap<String, &'de RawValue>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                if out.contains_key(&key) {
                    self.0.set(Some(key));
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    let duplicate = std::cell::Cell::new(None);
    read_whole(text, Seed(&duplicate), &duplicate)
}

/// Reads all of `text` with `seed`, which leaves a key it saw twice in
/// `duplicate`; that key wins over any other error.
fn read_whole<'t, S: serde::de::DeserializeSeed<'t>>(
    text: &'t str,
    seed: S,
    duplicate: &std::cell::Cell<Option<String>>,
) -> Result<S::Value, Unique> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = seed
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    match (parsed, duplicate.take()) {
        (_, Some(key)) => Err(Unique::Duplicate(key)),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(Unique::Json(e)),
    }
}

/// Reads a record object into [`Fields`] in one pass, refusing a key that
/// appears twice (see [`unique_object`]). Keys without escapes are borrowed
/// from the text, so a record's fields cost no allocation of their names.
fn record_object(text: &str) -> Result<Fields<'_>, Unique> {
    use serde::de::{DeserializeSeed, MapAccess, Visitor};

    /// A key as the parser saw it: borrowed unless it held escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    struct Seed<'d>(&'d std::cell::Cell<Option<String>>);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Fields<'de>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Fields<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Fields {
                slots: [None; FIELDS.len()],
                unknown: std::collections::BTreeSet::new(),
            };
            while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                let taken = match field_index(&key) {
                    Some(at) => fields.slots[at].replace(value).is_some(),
                    None => !fields.unknown.insert(key.to_string()),
                };
                if taken {
                    self.0.set(Some(key.into_owned()));
                    return Err(serde::de::Error::custom("duplicate key"));
                }
            }
            Ok(fields)
        }
    }

    let duplicate = std::cell::Cell::new(None);
    read_whole(text, Seed(&duplicate), &duplicate)
}

/// The contents of a JSON string token, or `None` for any other value. A
/// token the parser accepted that holds no backslash is its own contents
/// (JSON strings cannot hold raw control characters), the common case; the
/// rest are unescaped by serde_json.
fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        Some(_) => serde_json::from_str(text).ok().map(Cow::Owned),
        None => None,
    }
}

/// A sent value as it may be quoted back: card numbers masked first (so a
/// cut cannot leave most of one), then cut to `max` characters.
fn echo(s: &str, max: usize) -> String {
    truncate(&crate::pan::mask_pans(s), max).to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({
            "source": "visa-feed",
            "external_id": "tx-1",
            "account_id": "card_tok_1",
            "transaction_date": "2026-11-02",
            "amount": "12.34",
            "currency": "USD",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn with(pairs: &[(&str, serde_json::Value)]) -> Result<ExpenseRecord, RecordError> {
        let mut m = base();
        for (k, v) in pairs {
            if v.is_null() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.clone());
            }
        }
        ExpenseRecord::from_json(&serde_json::Value::Object(m).to_string())
    }

    fn code(r: Result<ExpenseRecord, RecordError>) -> &'static str {
        r.unwrap_err().code.as_str()
    }

    #[test]
    fn minimal_record_is_valid_with_defaults() {
        let r = with(&[]).unwrap();
        assert_eq!(r.amount.minor, 1234);
        assert_eq!(r.amount.currency.code(), "USD");
        assert_eq!(r.status, Status::Posted);
        assert!(r.billed.is_none());
    }

    #[test]
    fn json_numbers_are_read_exactly() {
        // 0.1 + 0.2 style values must not pick up float noise.
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":1234567890123.45,"currency":"USD"}"#;
        assert_eq!(
            ExpenseRecord::from_json(raw).unwrap().amount.minor,
            123456789012345
        );
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount_minor":-500,"currency":"JPY"}"#;
        assert_eq!(ExpenseRecord::from_json(raw).unwrap().amount.minor, -500);
    }

    #[test]
    fn each_rule_has_its_code() {
        use serde_json::json;
        assert_eq!(code(with(&[("source", json!(null))])), "missing_field");
        assert_eq!(code(with(&[("amount", json!(null))])), "missing_field");
        assert_eq!(
            code(with(&[("currency", json!("ABC"))])),
            "invalid_currency"
        );
        assert_eq!(code(with(&[("amount", json!("NaN"))])), "invalid_amount");
        assert_eq!(code(with(&[("amount", json!(true))])), "invalid_field");
        assert_eq!(
            code(with(&[("amount", json!("12.345"))])),
            "amount_precision"
        );
        assert_eq!(
            code(with(&[
                ("currency", json!("JPY")),
                ("amount", json!("1.5"))
            ])),
            "amount_precision"
        );
        assert_eq!(code(with(&[("amount", json!("1e40"))])), "amount_overflow");
        assert_eq!(code(with(&[("amount_minor", json!(5))])), "invalid_amount");
        assert_eq!(
            code(with(&[("transaction_date", json!("2026-13-01"))])),
            "invalid_date"
        );
        assert_eq!(
            code(with(&[("transaction_date", json!("02/11/2026"))])),
            "invalid_date"
        );
        assert_eq!(
            code(with(&[("posted_at", json!("yesterday"))])),
            "invalid_date"
        );
        assert_eq!(
            code(with(&[("merchant_mcc", json!("58123"))])),
            "invalid_mcc"
        );
        assert_eq!(
            code(with(&[("merchant_mcc", json!("5a12"))])),
            "invalid_mcc"
        );
        assert_eq!(
            code(with(&[("status", json!("settled"))])),
            "invalid_status"
        );
        assert_eq!(
            code(with(&[("category", json!("food"))])),
            "invalid_category"
        );
        assert_eq!(
            code(with(&[("account_id", json!("4111 1111 1111 1111"))])),
            "pan_detected"
        );
        assert_eq!(
            code(with(&[("memo", json!("paid with 5500-0000-0000-0004"))])),
            "pan_detected"
        );
        assert_eq!(
            code(with(&[("metadata", json!({"card": "4242424242424242"}))])),
            "pan_detected"
        );
        for (field, value) in [
            ("source", json!("feed-4111111111111111")),
            ("external_id", json!("4111-1111-1111-1111")),
            ("related_external_id", json!("auth 5500 0000 0000 0004")),
            ("employee_id", json!("378282246310005")),
            ("metadata", json!({"4242424242424242": "x"})),
        ] {
            let err = with(&[(field, value)]).unwrap_err();
            assert_eq!(
                (err.code.as_str(), err.field),
                ("pan_detected", Some(field))
            );
        }
        assert_eq!(
            code(with(&[("merchant_name", json!("x".repeat(257)))])),
            "field_too_long"
        );
        assert_eq!(code(with(&[("colour", json!("red"))])), "unknown_field");
        assert_eq!(
            code(with(&[("metadata", json!({"a": {"b": 1}}))])),
            "invalid_metadata"
        );
        assert_eq!(
            code(with(&[("external_id", json!(" tx-1"))])),
            "invalid_field"
        );
        assert_eq!(code(ExpenseRecord::from_json("[1,2]")), "invalid_json");
    }

    /// No rejection message echoes a card number, whatever field or parser
    /// quoted the input.
    #[test]
    fn rejection_messages_never_echo_a_card_number() {
        use serde_json::json;
        let pan = "4111111111111111";
        for (field, value) in [
            ("category", json!(pan)),
            ("4111111111111111", json!("x")),
            ("metadata", json!({ "4111111111111111": {"a": 1} })),
            ("merchant_mcc", json!(pan)),
            ("transaction_date", json!(pan)),
        ] {
            let err = with(&[(field, value)]).unwrap_err();
            assert!(!contains_pan(&err.message), "{field}: {}", err.message);
        }
        let err = ExpenseRecord::from_json(&format!("\"{pan}\"")).unwrap_err();
        assert!(!contains_pan(&err.message), "{}", err.message);
    }

    /// Parsers keep the last of two equal keys, but another reader may
    /// keep the first: a duplicate is refused, so the first cannot smuggle
    /// anything past validation.
    #[test]
    fn a_field_or_metadata_key_sent_twice_is_refused() {
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","memo":"4111 1111 1111 1111","memo":"x"}"#;
        let err = ExpenseRecord::from_json(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::DuplicateField);
        assert!(err.message.contains("`memo`"), "{}", err.message);
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","metadata":{"k":"4111 1111 1111 1111","k":"x"}}"#;
        let err = ExpenseRecord::from_json(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidMetadata);
        assert!(err.message.contains("`k`"), "{}", err.message);
        // The same key in two different objects is fine.
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","metadata":{"memo":"x"},"memo":"y"}"#;
        ExpenseRecord::from_json(raw).unwrap();
    }

    #[test]
    fn every_field_has_its_slot() {
        for (at, name) in FIELDS.iter().enumerate() {
            assert_eq!(field_index(name), Some(at), "{name}");
        }
        assert_eq!(field_index("sourc"), None);
    }

    #[test]
    fn escaped_names_and_values_read_as_their_text() {
        // `\u0063` is `c`: the same field spelled twice is still twice.
        let raw = r#"{"sour\u0063e":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","source":"t"}"#;
        let err = ExpenseRecord::from_json(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::DuplicateField);
        assert!(err.message.contains("`source`"), "{}", err.message);
        let raw = r#"{"sour\u0063e":"s","external_id":"e\"1","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","memo":"caf\u00e9 \ud83c\udf75"}"#;
        let record = ExpenseRecord::from_json(raw).unwrap();
        assert_eq!(record.source, "s");
        assert_eq!(record.external_id, "e\"1");
        assert_eq!(record.memo.as_deref(), Some("café 🍵"));
        // Unknown names are refused after duplicates, the first in name
        // order.
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","zeta":1,"beta":2}"#;
        let err = ExpenseRecord::from_json(raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert!(err.message.contains("`beta`"), "{}", err.message);
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"USD","zeta":1,"zeta":2}"#;
        assert_eq!(
            ExpenseRecord::from_json(raw).unwrap_err().code,
            ErrorCode::DuplicateField
        );
    }

    /// A record of 100,000 unknown names is refused in time linear in its
    /// size (a list checked for duplicates took quadratic time).
    #[test]
    fn many_unknown_names_are_refused_quickly() {
        let mut raw = String::from("{");
        for i in 0..100_000 {
            raw.push_str(&format!("\"k{i}\":0,"));
        }
        raw.push_str("\"k5\":1}");
        let err = ExpenseRecord::from_json(&raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::DuplicateField);
        raw.truncate(raw.len() - "\"k5\":1}".len() - 1);
        raw.push('}');
        let err = ExpenseRecord::from_json(&raw).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert!(err.message.contains("`k0`"), "{}", err.message);
    }

    #[test]
    fn dates_are_read_exactly() {
        assert_eq!(
            strict_date("2024-02-29"),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-01-32",
            "1969-12-31",
            "2200-01-01",
            "2026-1-011",
            "+026-01-01",
            "0000-01-01",
            "２０２６-01-01",
        ] {
            assert_eq!(strict_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn masked_cards_and_hints_are_accepted() {
        use serde_json::json;
        let r = with(&[
            ("account_id", json!("**** 1234")),
            ("category", json!("software")),
            ("merchant_mcc", json!(5812)),
            (
                "metadata",
                json!("{\"cost_center\":\"42\",\"billable\":true}"),
            ),
            ("billed_amount", json!("10.000")),
            ("billed_currency", json!("bhd")),
            ("posted_at", json!("2026-11-03T10:00:00+01:00")),
        ])
        .unwrap();
        assert_eq!(r.category_hint, Some(Category::Software));
        assert_eq!(r.merchant_mcc, Some(5812));
        assert_eq!(r.metadata["billable"], "true");
        assert_eq!(r.billed.unwrap().minor, 10_000);
        assert_eq!(r.billed.unwrap().currency.code(), "BHD");
        assert_eq!(
            r.posted_at.unwrap().to_rfc3339(),
            "2026-11-03T09:00:00+00:00"
        );
    }

    /// The record with its text copied.
    fn owned(v: RecordView<'_>) -> ExpenseRecord {
        let own = |s: Cow<'_, str>| s.into_owned();
        ExpenseRecord {
            source: own(v.source),
            external_id: own(v.external_id),
            account_id: own(v.account_id),
            status: v.status,
            related_external_id: v.related_external_id.map(own),
            transaction_date: v.transaction_date,
            posted_at: v.posted_at,
            amount: v.amount,
            billed: v.billed,
            merchant_name: v.merchant_name.map(own),
            merchant_mcc: v.merchant_mcc,
            employee_id: v.employee_id.map(own),
            memo: v.memo.map(own),
            metadata: v
                .metadata
                .into_iter()
                .map(|(k, v)| (own(k), own(v)))
                .collect(),
            category_hint: v.category_hint,
        }
    }

    #[test]
    fn a_view_borrows_the_text_that_holds_no_escapes() {
        let raw = r#"{"source":"s","external_id":"e\"1","account_id":"a","transaction_date":"2026-01-01","amount":"1","currency":"usd","memo":"caf\u00e9"}"#;
        let view = RecordView::from_json(raw).unwrap();
        assert!(matches!(view.source, Cow::Borrowed("s")));
        assert!(matches!(view.account_id, Cow::Borrowed("a")));
        assert!(matches!(&view.external_id, Cow::Owned(e) if e == "e\"1"));
        assert!(matches!(&view.memo, Some(Cow::Owned(m)) if m == "café"));
        assert_eq!(
            view.amount,
            Money::new(100, Currency::from_code("USD").unwrap())
        );
    }

    /// Text, escaped or not (a line break is refused in identifiers).
    fn text_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-zA-Z0-9 _.-]{0,12}",
            "[a-z\"\\\\\u{e9}\u{1f375}]{1,6}",
            "[a-z\n]{1,3}"
        ]
        .prop_map(serde_json::Value::String)
    }

    /// A field value of any kind a record may carry, valid for some field
    /// or for none.
    fn any_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::{Value, json};
        let shaped = proptest::sample::select(vec![
            "2026-02-03",
            "12.34",
            "usd",
            "EUR",
            "5814",
            "posted",
            "travel",
            "4111 1111 1111 1111",
            "2026-02-03T04:05:06Z",
            " x",
        ])
        .prop_map(|s| Value::String(s.into()));
        prop_oneof![
            text_value(),
            shaped,
            (-100_000i64..100_000).prop_map(Value::from),
            Just(json!({"k": "v", "n": 1})),
            Just(Value::String(r#"{"k":"v"}"#.into())),
            Just(Value::Null),
        ]
    }

    proptest::proptest! {
        /// The view and the owned record are one validation: for any mix
        /// of fields, both accept the same record or refuse it with the
        /// same error. And the view copies no text field whose JSON holds
        /// no escape.
        #[test]
        fn the_view_and_the_record_agree(
            texts in proptest::collection::vec(proptest::option::weighted(0.5, text_value()), 7),
            values in proptest::collection::vec(proptest::option::weighted(0.05, any_value()), FIELDS.len()),
            from_base in proptest::bool::weighted(0.9),
        ) {
            let mut object = if from_base { base() } else { serde_json::Map::new() };
            let text_fields = [
                "source", "external_id", "account_id", "related_external_id",
                "merchant_name", "employee_id", "memo",
            ];
            let fields = text_fields.iter().zip(texts).chain(FIELDS.iter().zip(values));
            for (name, value) in fields {
                if let Some(value) = value {
                    object.insert(name.to_string(), value);
                }
            }
            let escaped = |name: &str| object.get(name).is_some_and(|v| v.to_string().contains('\\'));
            let expect_borrowed: Vec<bool> = text_fields.iter().map(|f| !escaped(f)).collect();
            let raw = serde_json::Value::Object(object).to_string();
            let record = ExpenseRecord::from_json(&raw);
            let view = RecordView::from_json(&raw);
            if let Ok(v) = &view {
                let held = [
                    Some(&v.source), Some(&v.external_id), Some(&v.account_id),
                    v.related_external_id.as_ref(), v.merchant_name.as_ref(),
                    v.employee_id.as_ref(), v.memo.as_ref(),
                ];
                for ((name, text), borrowed) in text_fields.iter().zip(held).zip(&expect_borrowed) {
                    let is_borrowed = matches!(text, None | Some(Cow::Borrowed(_)));
                    proptest::prop_assert!(!borrowed || is_borrowed, "`{}` was copied", name);
                }
            }
            proptest::prop_assert_eq!(record, view.map(owned));
        }
    }
}
