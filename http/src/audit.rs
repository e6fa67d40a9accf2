//! The audit log: one structured line (target `spendstream::audit`) for
//! every rejected authentication or authorization and every admin action,
//! with what happened, the tenant when it is known (a verified token's),
//! the request id and the remote address. Never a token or a secret: only
//! fixed words and ids go in. Keep these lines when quieting logs with
//! `SPENDSTREAM_LOG_LEVEL=warn,spendstream::audit=info`.

use crate::request_id::current_request_id;

pub const TARGET: &str = "spendstream::audit";

fn remote() -> String {
    crate::request_id::current_remote().map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// A request without a valid token (answered 401); `reason` is an
/// `AuthError` code.
pub fn authentication_rejected(reason: &str) {
    tracing::warn!(
        target: TARGET,
        event = "authentication_rejected",
        reason,
        request_id = %current_request_id(),
        remote = %remote(),
        "Audit: a request without a valid token was refused."
    );
}

/// A valid token without the role a route needs (answered 403).
pub fn authorization_rejected(tenant: &str, missing_role: &str) {
    tracing::warn!(
        target: TARGET,
        event = "authorization_rejected",
        reason = "missing_role",
        missing_role,
        tenant,
        request_id = %current_request_id(),
        remote = %remote(),
        "Audit: a token without the role the route needs was refused."
    );
}

/// An admin action of `tenant` and its outcome (`ok` or an error code).
pub fn admin_action(action: &str, tenant: &str, outcome: &str) {
    tracing::info!(
        target: TARGET,
        event = "admin_action",
        action,
        tenant,
        outcome,
        request_id = %current_request_id(),
        remote = %remote(),
        "Audit: an admin action."
    );
}

/// [`admin_action`] with the outcome of `answer`: `ok`, or its error code.
pub fn audited<T>(action: &str, tenant: &str, answer: &Result<T, crate::ApiError>) {
    let outcome = match answer {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    admin_action(action, tenant, outcome);
}
