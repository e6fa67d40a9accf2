//! Lakes of known records for the query tests.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use serde_json::{Value, json};
use spendstream_http::{Claims, JwtKeys};
use spendstream_lake::{AppTxn, Lake};
use spendstream_query_api::sql::SqlLimits;
use spendstream_query_api::{QueryState, router};
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, to_record_batch};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

/// The `version` of the expense `external_id` of `tenant` (source `s`) whose
/// other fields are the record-contract JSON members in `fields` (e.g.
/// `"transaction_date":"2026-01-02","amount":"1.00","currency":"EUR"`).
pub fn enriched(
    tenant: &str,
    external_id: &str,
    version: i64,
    fields: &str,
    category: Category,
    merchant_normalized: Option<&str>,
) -> EnrichedRecord {
    let raw = format!(
        r#"{{"source":"s","external_id":"{external_id}","account_id":"a-{tenant}",{fields}}}"#
    );
    let now = Utc::now();
    EnrichedRecord {
        expense_id: expense_id(tenant, "s", external_id),
        tenant_id: tenant.into(),
        version,
        record: ExpenseRecord::from_json(&raw).unwrap_or_else(|e| panic!("{raw}: {e:?}")),
        category,
        merchant_normalized: merchant_normalized.map(str::to_string),
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: 0,
        log_offset: version,
        base: None,
    }
}

/// A lake in a new directory holding `rows` in one commit.
pub async fn lake_with(rows: &[EnrichedRecord]) -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&format!("file://{}", dir.path().join("lake").display()))
        .await
        .unwrap();
    lake.commit_once(
        &[AppTxn {
            app_id: "g-0".into(),
            version: 0,
        }],
        |_| to_record_batch(rows),
    )
    .await
    .unwrap();
    (dir, lake)
}

/// Small limits, so the hostile corpus breaks them quickly.
pub fn limits() -> SqlLimits {
    SqlLimits {
        timeout: Duration::from_secs(5),
        memory_bytes: 16 << 20,
        max_rows: 1_000,
        max_result_bytes: 4 << 20,
        max_sql_bytes: 16 << 10,
    }
}

/// The query routes over a lake, called as one tenant with role `read`.
pub struct QueryApp {
    app: axum::Router,
    bearer: String,
}

impl QueryApp {
    pub fn new(lake: Lake, tenant: &str, report_cache_rows: usize) -> Self {
        Self::with_state_rows(
            lake,
            tenant,
            report_cache_rows,
            spendstream_query_api::current::DEFAULT_REPORT_STATE_ROWS,
        )
    }

    /// [`QueryApp::new`] whose reports' current state holds up to
    /// `report_state_rows` expenses (0: none, reports read the lake).
    pub fn with_state_rows(
        lake: Lake,
        tenant: &str,
        report_cache_rows: usize,
        report_state_rows: usize,
    ) -> Self {
        let state = (report_state_rows > 0).then(|| {
            Arc::new(spendstream_query_api::current::CurrentState::new(
                report_state_rows,
            ))
        });
        Self::with_state(lake, tenant, report_cache_rows, state)
    }

    /// [`QueryApp::new`] whose reports and SQL read `state` (None: the
    /// lake alone).
    pub fn with_state(
        lake: Lake,
        tenant: &str,
        report_cache_rows: usize,
        state: Option<Arc<spendstream_query_api::current::CurrentState>>,
    ) -> Self {
        let keys = JwtKeys::new(b"query-tests-secret-query-tests-secret").unwrap();
        let token = keys.sign(&Claims {
            tenant: tenant.into(),
            roles: vec!["read".into()],
            exp: Utc::now().timestamp() + 3600,
            ..Claims::default()
        });
        let state = QueryState::new(
            keys,
            Arc::new(lake),
            SqlLimits::default(),
            report_cache_rows,
        )
        .with_report_state(state);
        Self {
            app: spendstream_http::finish(router(state)),
            bearer: format!("Bearer {token}"),
        }
    }

    /// The JSON answer of a 200 (any other status fails the test).
    async fn send(&self, request: Request<Body>) -> Value {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// `GET /v1/reports/spend?{query}`.
    pub async fn report(&self, query: &str) -> Value {
        self.send(
            Request::get(format!("/v1/reports/spend?{query}"))
                .header("authorization", &self.bearer)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// `POST /v1/sql` with `sql`.
    pub async fn sql(&self, sql: &str) -> Value {
        self.send(
            Request::post("/v1/sql")
                .header("authorization", &self.bearer)
                .header("content-type", "application/json")
                .body(Body::from(json!({ "sql": sql }).to_string()))
                .unwrap(),
        )
        .await
    }
}
