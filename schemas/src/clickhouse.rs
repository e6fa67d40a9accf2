//! The ClickHouse side of the contract: numbered migrations whose DDL runs on
//! ClickHouse 18.16 (Debian's) and on current ClickHouse alike. The
//! `expenses` table has the columns of the lake's Arrow schema, so the two
//! sinks cannot drift apart. No I/O here: the processors run them.

use crate::enriched::arrow_schema;
use arrow::datatypes::DataType;

/// The table expenses are written to.
pub const EXPENSES_TABLE: &str = "expenses";
/// The table of what the sink holds per log partition.
pub const SINK_OFFSETS_TABLE: &str = "spendstream_sink_offsets";
/// The table of applied migrations.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// Latest day ClickHouse 18.16 can show for `Date` and `DateTime` (its
/// date table ends in 2105); later values are refused by the sink.
pub const MAX_DATE: (i32, u32, u32) = (2105, 12, 31);

/// One migration: applied in order of `version`, once, recorded with the
/// checksum of its statements so that an edited migration is noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// Idempotent statements (`IF NOT EXISTS`), so a migration interrupted
    /// halfway, or run by two processes at once, can run again.
    pub statements: Vec<String>,
}

impl Migration {
    /// A stable fingerprint of the statements (a UUIDv5 of their text).
    pub fn checksum(&self) -> String {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x5e1c_2a7d_90b4_4f0e_8d6a_1c3f_7b2e_94d1);
        uuid::Uuid::new_v5(&NAMESPACE, self.statements.join(";\n").as_bytes())
            .simple()
            .to_string()
    }
}

/// The ClickHouse type of one lake column: money stays integer minor
/// units, timestamps are `DateTime('UTC')` (seconds; 18.16 has no
/// `DateTime64`).
fn column_type(data_type: &DataType, nullable: bool) -> String {
    let base = match data_type {
        DataType::Utf8 => "String",
        DataType::Int64 => "Int64",
        DataType::Int32 => "Int32",
        DataType::Int16 => "Int16",
        DataType::Date32 => "Date",
        DataType::Timestamp(..) => "DateTime('UTC')",
        // A new Arrow type needs a deliberate ClickHouse type here; the
        // unit test below fails until it has one.
        other => unreachable!("no ClickHouse type for {other}"),
    };
    if nullable {
        format!("Nullable({base})")
    } else {
        base.to_string()
    }
}

/// `name Type` of every column of the lake's schema, in its order.
pub fn expenses_columns() -> Vec<(String, String)> {
    arrow_schema()
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                column_type(f.data_type(), f.is_nullable()),
            )
        })
        .collect()
}

/// Migration 1's table, frozen: a migration's statements never change once
/// released (databases record their checksum). A new lake column is a new
/// migration (`ALTER TABLE … ADD COLUMN`); a test compares the columns all
/// migrations make with [`expenses_columns`].
const CREATE_EXPENSES: &str = "CREATE TABLE IF NOT EXISTS expenses (
    expense_id String,
    tenant_id String,
    month String,
    version Int64,
    source String,
    external_id String,
    account_id String,
    status String,
    related_external_id Nullable(String),
    transaction_date Date,
    posted_at Nullable(DateTime('UTC')),
    amount_minor Int64,
    currency String,
    billed_amount_minor Nullable(Int64),
    billed_currency Nullable(String),
    merchant_name Nullable(String),
    merchant_normalized Nullable(String),
    merchant_mcc Nullable(Int16),
    category String,
    employee_id Nullable(String),
    memo Nullable(String),
    metadata Nullable(String),
    batch_id String,
    ingested_at DateTime('UTC'),
    processed_at DateTime('UTC'),
    log_partition Int32,
    log_offset Int64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(transaction_date)
ORDER BY (tenant_id, expense_id)";

/// The columns migration 4 adds (FX, `docs/fx.md`), frozen.
const FX_COLUMNS: [(&str, &str); 4] = [
    ("base_amount_minor", "Nullable(Int64)"),
    ("base_currency", "Nullable(String)"),
    ("fx_rate", "Nullable(String)"),
    ("fx_rate_date", "Nullable(Date)"),
];

/// The newest version of each expense: `FINAL` folds copies of one version
/// (a replayed insert) and the `IN` keeps the newest version even when
/// versions sit in different monthly partitions (a corrected transaction
/// date), which `FINAL` alone never merges.
fn latest_view() -> String {
    format!(
        "CREATE VIEW IF NOT EXISTS expenses_latest AS\nSELECT *\nFROM {EXPENSES_TABLE} FINAL\n\
         WHERE (tenant_id, expense_id, version) IN (\n    \
         SELECT tenant_id, expense_id, max(version)\n    FROM {EXPENSES_TABLE}\n    \
         GROUP BY tenant_id, expense_id\n)"
    )
}

const DAILY_SPEND_VIEW: &str = "CREATE VIEW IF NOT EXISTS daily_spend AS\nSELECT\n    tenant_id,\n    \
     transaction_date AS day,\n    category,\n    merchant_normalized,\n    currency,\n    \
     status,\n    count() AS expenses,\n    sum(amount_minor) AS amount_minor\n\
     FROM expenses_latest\n\
     GROUP BY tenant_id, day, category, merchant_normalized, currency, status";

/// docs/lifecycle.md: a declined row never counts; a pending row another
/// row names (same tenant and source) was superseded; a reversal of a
/// pending row released it (neither counts), one of a declined or reversed
/// row reverses nothing; any other reversal takes its amount back (minus
/// its absolute value). Tuples with IN: ClickHouse 18.16 has no JOIN ON of
/// several keys. Frozen as migration 3 made it; migration 4 makes it again
/// with [`counted_view_with_base`].
const COUNTED_VIEW: &str = "CREATE VIEW IF NOT EXISTS expenses_counted AS\n\
                 SELECT *, if(status = 'reversed' AND amount_minor > 0, -amount_minor, amount_minor) AS counted_amount_minor\n\
                 FROM expenses_latest\n\
                 WHERE status != 'declined'\n    \
                 AND NOT (status = 'pending' AND (tenant_id, source, external_id) IN (\n        \
                 SELECT tenant_id, source, assumeNotNull(related_external_id)\n        \
                 FROM expenses_latest\n        \
                 WHERE isNotNull(related_external_id) AND assumeNotNull(related_external_id) != external_id\n    \
                 ))\n    \
                 AND NOT (status = 'reversed' AND (tenant_id, source, ifNull(related_external_id, '')) IN (\n        \
                 SELECT tenant_id, source, external_id FROM expenses_latest\n        \
                 WHERE status IN ('pending', 'declined', 'reversed')\n    \
                 ))";

/// [`COUNTED_VIEW`] with what each row counts as in the base currency.
fn counted_view_with_base() -> String {
    COUNTED_VIEW.replace(
        " AS counted_amount_minor\n",
        " AS counted_amount_minor, \
         if(status = 'reversed' AND base_amount_minor > 0, -base_amount_minor, base_amount_minor) \
         AS counted_base_amount_minor\n",
    )
}

/// Every migration, in order.
pub fn migrations() -> Vec<Migration> {
    let mut all = vec![
        Migration {
            version: 1,
            name: "expenses and sink offsets",
            statements: vec![
                CREATE_EXPENSES.to_string(),
                format!(
                    "CREATE TABLE IF NOT EXISTS {SINK_OFFSETS_TABLE} (\n    app_id String,\n    \
                     committed_offset Int64,\n    updated_at DateTime('UTC')\n) ENGINE = \
                     ReplacingMergeTree(committed_offset)\nORDER BY app_id"
                ),
            ],
        },
        Migration {
            version: 2,
            name: "latest version of each expense, daily spend",
            statements: vec![
                // The newest version of each expense: `FINAL` folds copies
                // of one version (a replayed insert) and the `IN` keeps the
                // newest version even when versions sit in different
                // monthly partitions (a corrected transaction date), which
                // `FINAL` alone never merges.
                latest_view(),
                DAILY_SPEND_VIEW.to_string(),
            ],
        },
        Migration {
            version: 4,
            name: "amounts in the tenant's base currency",
            statements: {
                // 18.16 has no `ADD COLUMN IF NOT EXISTS`: `migrate` takes
                // "already exists" from an `ADD COLUMN` as done. Views keep
                // the columns they were made with, so they are made again
                // (dependants first); queries in between fail, once.
                let mut statements: Vec<String> = FX_COLUMNS
                    .iter()
                    .map(|(name, ty)| {
                        format!("ALTER TABLE {EXPENSES_TABLE} ADD COLUMN {name} {ty}")
                    })
                    .collect();
                for view in ["daily_spend", "expenses_counted", "expenses_latest"] {
                    statements.push(format!("DROP TABLE IF EXISTS {view}"));
                }
                statements.extend([
                    latest_view(),
                    DAILY_SPEND_VIEW.to_string(),
                    counted_view_with_base(),
                ]);
                statements
            },
        },
        Migration {
            version: 3,
            name: "what counts under the lifecycle rules",
            statements: vec![
                // docs/lifecycle.md: a declined row never counts; a pending
                // row another row names (same tenant and source) was
                // superseded; a reversal of a pending row released it
                // (neither counts), one of a declined or reversed row
                // reverses nothing; any other reversal takes its amount
                // back (minus its absolute value). Tuples with IN: ClickHouse 18.16 has no JOIN ON
                // of several keys.
                COUNTED_VIEW.to_string(),
            ],
        },
    ];
    all.sort_by_key(|m| m.version);
    all
}

/// The statement that creates the migrations table itself (not a
/// migration: it must exist before any is recorded).
pub fn create_migrations_table() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (\n    version UInt32,\n    name String,\n    \
         checksum String,\n    applied_at DateTime\n) ENGINE = ReplacingMergeTree\nORDER BY version"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns the migrations make are the lake's: when a lake column
    /// is added, this fails until a migration adds it to ClickHouse too.
    #[test]
    fn the_migrations_make_every_lake_column_and_no_float() {
        let columns = expenses_columns();
        assert_eq!(columns.len(), arrow_schema().fields().len());
        let mut created: Vec<(String, String)> = CREATE_EXPENSES
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with(')'))
            .map(|l| {
                let (name, ty) = l.trim().trim_end_matches(',').split_once(' ').unwrap();
                (name.to_string(), ty.to_string())
            })
            .collect();
        let add = format!("ALTER TABLE {EXPENSES_TABLE} ADD COLUMN ");
        for statement in migrations().iter().flat_map(|m| &m.statements) {
            if let Some(column) = statement.strip_prefix(&add) {
                let (name, ty) = column.split_once(' ').unwrap();
                created.push((name.to_string(), ty.to_string()));
            }
        }
        assert_eq!(created, columns);
        for (name, ty) in &columns {
            assert!(
                !ty.contains("Float") && !ty.contains("Decimal") && !ty.contains("DateTime64"),
                "{name} {ty}"
            );
        }
    }

    /// Checksums of migrations 1–3 as released.
    const RELEASED_CHECKSUMS: [&str; 3] = [
        "fcf033e43fd1566487bd2d62a7b82d47",
        "8ac77d0ffd4456e08c53ebc20330ca9d",
        "d69dd086bbe45a82bad96f333f33f1d3",
    ];

    #[test]
    fn migrations_are_numbered_in_order_and_idempotent() {
        let all = migrations();
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            for s in &m.statements {
                assert!(
                    s.contains("IF NOT EXISTS")
                        || s.contains("IF EXISTS")
                        || s.starts_with("ALTER TABLE expenses ADD COLUMN "),
                    "not idempotent: {s}"
                );
            }
        }
        assert_ne!(all[0].checksum(), all[1].checksum());
        assert_eq!(all[0].checksum(), migrations()[0].checksum());
        // Released migrations never change: databases hold these.
        let released: Vec<String> = all[..3].iter().map(Migration::checksum).collect();
        assert_eq!(released, RELEASED_CHECKSUMS, "a released migration changed");
        assert!(
            all[3]
                .statements
                .last()
                .unwrap()
                .contains("counted_base_amount_minor")
        );
    }
}
