//! The hostile-SQL corpus: statements that must each end in a clean
//! refusal within the limits, over HTTP (`query-api/tests/sql.rs`) and over
//! the Postgres wire (`tests/pg.rs`). `secret` is the path of a file no
//! statement may read.

#![allow(dead_code)]

/// Statements that are refused over HTTP, where a request is one statement
/// and nothing else, but are harmless over the Postgres wire: session
/// statements clients need, and the empty statement (a driver cuts the NUL
/// one down to it).
pub const HARMLESS_OVER_THE_WIRE: [&str; 6] = [
    "SET TIME ZONE 'UTC'",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "",
    "\u{0}",
];

pub fn corpus(secret: &str) -> Vec<String> {
    let nested = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    let long = format!("SELECT 1{}", " + 1".repeat(20_000));
    let corpus: Vec<String> = [
        // DDL
        "CREATE TABLE t (a INT)",
        "CREATE TABLE t AS SELECT * FROM expenses",
        "CREATE VIEW v AS SELECT * FROM expenses",
        "CREATE OR REPLACE VIEW expenses AS SELECT 1",
        "DROP TABLE expenses",
        "DROP VIEW expenses_latest",
        "CREATE SCHEMA s",
        "CREATE DATABASE d",
        "CREATE FUNCTION f(INT) RETURNS INT RETURN 1",
        "DROP FUNCTION f",
        "ALTER TABLE expenses ADD COLUMN x INT",
        "TRUNCATE expenses",
        "CREATE UNLOGGED TABLE t (a INT)",
        // DML
        "INSERT INTO expenses SELECT * FROM expenses",
        "INSERT INTO expenses (tenant_id) VALUES ('globex')",
        "DELETE FROM expenses",
        "UPDATE expenses SET tenant_id = 'globex'",
        "MERGE INTO expenses USING expenses_latest ON true WHEN MATCHED THEN DELETE",
        // COPY and files
        "COPY expenses TO '/tmp/spendstream-exfiltrated.csv'",
        "COPY (SELECT * FROM expenses) TO '/tmp/x.parquet' STORED AS PARQUET",
        "COPY expenses FROM '/etc/passwd'",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/passwd'",
        "SELECT * FROM 's3://bucket/key.parquet'",
        "SELECT * FROM 'http://127.0.0.1:1/x.csv'",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        // Session and engine settings
        "SET datafusion.execution.enable_recursive_ctes = true",
        "SET datafusion.catalog.information_schema = false",
        "SET TIME ZONE 'UTC'",
        "RESET datafusion.execution.batch_size",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        // Cursors (their FETCHes would each get fresh limits) and INTO
        "DECLARE c CURSOR FOR SELECT * FROM expenses",
        "FETCH 100000 FROM c",
        "SELECT * INTO stolen FROM expenses",
        // The table under the views, other catalogs and tenants
        "SELECT * FROM spendstream_lake_base",
        "SELECT * FROM datafusion.public.expenses",
        "SELECT * FROM globex.expenses",
        "SELECT * FROM spendstream.globex.expenses",
        "SELECT * FROM expenses_globex",
        // Plans that list files
        "EXPLAIN SELECT * FROM expenses",
        "EXPLAIN ANALYZE SELECT * FROM expenses",
        "EXPLAIN VERBOSE SELECT COUNT(*) FROM expenses_latest",
        // Resource exhaustion
        "SELECT COUNT(DISTINCT a.expense_id || b.expense_id || c.expense_id || d.expense_id) FROM expenses a JOIN expenses b ON a.tenant_id = b.tenant_id JOIN expenses c ON b.tenant_id = c.tenant_id JOIN expenses d ON c.tenant_id = d.tenant_id",
        "SELECT a.expense_id, b.expense_id, c.expense_id FROM expenses a JOIN expenses b ON a.currency = b.currency JOIN expenses c ON b.currency = c.currency ORDER BY 1, 2, 3",
        "SELECT * FROM expenses a JOIN expenses b ON a.tenant_id = b.tenant_id",
        "SELECT * FROM expenses a JOIN expenses b ON a.amount_minor < b.amount_minor",
        "SELECT SUM(LENGTH(a.merchant_name || b.account_id)) FROM expenses a, expenses b, expenses c, expenses d, expenses e, expenses f",
        "SELECT a.*, b.*, c.* FROM expenses a, expenses b, expenses c ORDER BY a.expense_id, b.expense_id, c.expense_id",
        "SELECT * FROM expenses a, expenses b",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r",
        "SELECT * FROM generate_series(1, 10000000000)",
        "SELECT * FROM range(10000000000)",
        "SELECT generate_series(1, 10000000000)",
        "SELECT repeat('x', 2000000000)",
        "SELECT lpad('x', 2000000000)",
        "SELECT array_repeat(1, 2000000000)",
        "SELECT string_agg(a.merchant_name || b.merchant_name || c.merchant_name, ',') FROM expenses a, expenses b, expenses c, expenses d",
        // Broken text
        "SELECT 1; DROP TABLE expenses",
        "SELECT * FROM expenses WHERE",
        "SELECT pg_sleep(60)",
        "",
        "\u{0}",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        nested,
        long,
        format!("SELECT * FROM '{secret}'"),
        format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{secret}'"),
    ])
    .collect();
    corpus
}
