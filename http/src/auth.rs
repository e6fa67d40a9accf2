//! Bearer-token authentication: HS256 JWTs with claims `tenant`, `roles`,
//! `exp`. The tenant of every request comes from here and nowhere else.

use crate::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spendstream_schemas::valid_tenant_id;
use std::sync::Arc;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Push records (`POST /v1/expenses`).
    Ingest,
    /// Read reports.
    Read,
    /// Operate: dead letters, replays.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingest" => Ok(Role::Ingest),
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role `{other}` (ingest, read, admin)")),
        }
    }
}

/// The claims Spendstream reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    /// Unknown role names are ignored, so older servers accept newer tokens.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl Claims {
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm; HS256 is required")]
    Algorithm,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token has no valid tenant")]
    Tenant,
}

/// Signs and verifies HS256 tokens with one shared secret.
#[derive(Clone)]
pub struct JwtKeys {
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

const HEADER_HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: i64 = 30;

impl JwtKeys {
    /// The secret must be at least 32 bytes: HS256 keys shorter than the hash
    /// are guessable.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the JWT secret must be at least 32 bytes".into());
        }
        Ok(Self {
            secret: secret.into(),
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = B64.encode(HEADER_HS256);
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    pub fn verify_at(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(AuthError::Algorithm);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.exp + LEEWAY_SECS < now {
            return Err(AuthError::Expired);
        }
        if !valid_tenant_id(&claims.tenant) {
            return Err(AuthError::Tenant);
        }
        Ok(claims)
    }
}

/// An authenticated caller. Extracting it requires a valid bearer token.
#[derive(Debug, Clone)]
pub struct Auth(pub Claims);

impl Auth {
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }

    /// 403 unless the token carries `role`.
    pub fn require(&self, role: Role) -> Result<&Self, ApiError> {
        if self.0.has(role) {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{}` role",
                role.as_str()
            )))
        }
    }
}

impl<S> FromRequestParts<S> for Auth
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = JwtKeys::from_ref(state);
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::Unauthenticated(AuthError::Missing.to_string()))?;
        keys.verify(token)
            .map(Auth)
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32]).unwrap()
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            tenant: "acme".into(),
            roles: vec!["ingest".into()],
            exp,
            sub: None,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let k = keys();
        let token = k.sign(&claims(1_000));
        assert_eq!(k.verify_at(&token, 900).unwrap(), claims(1_000));
        assert_eq!(k.verify_at(&token, 2_000), Err(AuthError::Expired));
        let other = JwtKeys::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify_at(&token, 900), Err(AuthError::Signature));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64.encode(
            serde_json::to_vec(&Claims {
                tenant: "evil".into(),
                ..claims(1_000)
            })
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            k.verify_at(&parts.join("."), 900),
            Err(AuthError::Signature)
        );
        let none_alg = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode("{}"));
        assert_eq!(k.verify_at(&none_alg, 900), Err(AuthError::Algorithm));
        assert_eq!(k.verify_at("abc", 900), Err(AuthError::Malformed));
        let bad_tenant = k.sign(&Claims {
            tenant: "a b".into(),
            ..claims(1_000)
        });
        assert_eq!(k.verify_at(&bad_tenant, 900), Err(AuthError::Tenant));
        assert!(JwtKeys::new(b"short").is_err());
    }
}
