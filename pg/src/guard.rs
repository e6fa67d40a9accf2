//! The check before every statement, in both protocols.

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use spendstream_http::ApiError;
use spendstream_query_api::sql::{Catalogs, check_statement, refused_or_invalid};

/// Whether `statement` may run in the tenant session `ctx`. Queries (and
/// the query of a cursor) are planned and checked as over HTTP; `SET` may
/// change client settings but no engine option; showing settings,
/// transactions and cursor moves carry no data; nothing else runs.
pub async fn check(statement: &Statement, ctx: &SessionContext) -> Result<(), ApiError> {
    match statement {
        Statement::Query(_) => plan_and_check(statement.clone(), ctx).await.map(drop),
        // A cursor's FETCHes are separate statements, each under its own
        // limits: together they would read past the row cap and the time
        // limit. Clients page with LIMIT/OFFSET instead.
        Statement::Declare { .. } | Statement::Fetch { .. } => Err(not_allowed(
            "cursors are not available: page with LIMIT and OFFSET",
        )),
        Statement::Set(_) => {
            if statement
                .to_string()
                .to_ascii_lowercase()
                .contains("datafusion")
            {
                Err(not_allowed(
                    "SET may change client settings, not engine options (datafusion.*)",
                ))
            } else {
                Ok(())
            }
        }
        Statement::ShowVariable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. } => Ok(()),
        other => {
            let text = other.to_string();
            let verb = text.split_whitespace().next().unwrap_or("this statement");
            Err(not_allowed(format!(
                "only read-only queries run here, not {}",
                verb.to_ascii_uppercase()
            )))
        }
    }
}

async fn plan_and_check(
    statement: Statement,
    ctx: &SessionContext,
) -> Result<LogicalPlan, ApiError> {
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(statement)))
        .await
        .map_err(|e| refused_or_invalid(&e))?;
    check_statement(ctx, &plan, Catalogs::WithPgCatalog)?;
    Ok(plan)
}

fn not_allowed(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("statement_not_allowed", message)
}
