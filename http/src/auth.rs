//! Bearer-token authentication: JWTs with claims `tenant` (its name is
//! configurable), `roles`, `exp`, and the registered `nbf`, `iat`, `aud`,
//! `iss`, `jti`. The tenant of every request comes from here and nowhere
//! else.
//!
//! Signatures are checked by `jsonwebtoken` (aws-lc-rs): HS256 with the
//! shared secret, and RS256, ES256 or EdDSA with the public key the
//! header's `kid` names in the identity provider's JWKS ([`Jwks`], replaced
//! when the set is reloaded). The rules around it are lines here rather
//! than library defaults, each with its own refusal code: the algorithm
//! pinned by the key, no critical header extensions, a bounded token size,
//! 30 s of leeway, `aud`/`iss` required only when configured, revocation.

use crate::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use spendstream_schemas::valid_tenant_id;
use std::collections::{HashMap, HashSet};
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

/// A JWT `aud`: RFC 7519 §4.1.3 allows one string or an array of strings.
/// Both are read, and each is written back in the shape it came in, so a
/// verified token's claims serialise to what the issuer meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Audience::One(aud) => std::slice::from_ref(aud),
            Audience::Many(auds) => auds,
        }
    }

    /// Whether `aud` is one of the audiences the token names.
    pub fn contains(&self, aud: &str) -> bool {
        self.as_slice().iter().any(|a| a == aud)
    }
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Audience::One(aud)
    }
}

/// The claims Spendstream reads.
///
/// `Default` exists for `Claims { tenant, exp, ..Default::default() }`; a
/// default claim set on its own is refused (empty tenant, expired in 1970).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    /// Unknown role names are ignored, so older servers accept newer tokens.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at, seconds since the epoch. Carried, not checked: `exp` and
    /// `nbf` already bound the validity window, and a clock-skewed issuer
    /// would otherwise lock its tokens out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Required to name the keys' audience only when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Required to equal the keys' issuer only when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
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
    #[error("unsupported token algorithm: HS256, or RS256, ES256 or EdDSA with a key of the JWKS")]
    Algorithm,
    #[error("the token's kid names no key of the identity provider's JWKS")]
    UnknownKey,
    #[error("the token is signed by another key of the JWKS than the one its kid names")]
    WrongKey,
    #[error("token requires an unsupported critical header extension")]
    Critical,
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another audience")]
    Audience,
    #[error("token is from another issuer")]
    Issuer,
    #[error("token has no valid tenant")]
    Tenant,
    #[error("token has been revoked")]
    Revoked,
}

/// Token ids revoked by admins, per tenant, as last read from the state
/// store (every second: ADR 0011), plus those revoked through this node
/// that a read has not returned yet. Shared by every clone of the keys.
#[derive(Clone, Default)]
pub struct Revocations(Arc<std::sync::RwLock<RevokedSets>>);

#[derive(Default)]
struct RevokedSets {
    read: HashMap<String, HashSet<String>>,
    /// Revoked here, until a read has them (a read begun before the
    /// revocation was written must not undo it): `(tenant, jti)` → until.
    pending: HashMap<(String, String), i64>,
}

impl Revocations {
    /// Replaces what was read from the store with `revoked` (`(tenant,
    /// jti)` pairs) as of `now` (seconds since the epoch).
    pub fn replace(&self, revoked: impl IntoIterator<Item = (String, String)>, now: i64) {
        let mut by_tenant: HashMap<String, HashSet<String>> = HashMap::new();
        for (tenant, jti) in revoked {
            by_tenant.entry(tenant).or_default().insert(jti);
        }
        let mut sets = self.0.write().unwrap_or_else(|e| e.into_inner());
        sets.pending.retain(|(tenant, jti), until| {
            *until > now && !by_tenant.get(tenant).is_some_and(|j| j.contains(jti))
        });
        sets.read = by_tenant;
    }

    /// Adds one revoked through this node, in force until `until` or until
    /// a read returns it.
    pub fn insert(&self, tenant: &str, jti: &str, until: i64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .insert((tenant.to_owned(), jti.to_owned()), until);
    }

    pub fn contains(&self, tenant: &str, jti: &str) -> bool {
        let sets = self.0.read().unwrap_or_else(|e| e.into_inner());
        sets.read.get(tenant).is_some_and(|jtis| jtis.contains(jti))
            || sets
                .pending
                .contains_key(&(tenant.to_owned(), jti.to_owned()))
    }
}

/// Signs HS256 tokens with one shared secret; verifies them, and tokens of
/// an identity provider's JWKS, optionally requiring an audience and an
/// issuer.
#[derive(Clone)]
pub struct JwtKeys {
    hs256: Arc<(EncodingKey, DecodingKey)>,
    audience: Option<Arc<str>>,
    issuer: Option<Arc<str>>,
    /// The claim that names the tenant (`tenant` unless configured).
    tenant_claim: Arc<str>,
    jwks: Jwks,
    revocations: Revocations,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs; audience and issuer are not secret
        // and help explain a refusal.
        f.debug_struct("JwtKeys")
            .field("audience", &self.audience())
            .field("issuer", &self.issuer())
            .field("tenant_claim", &self.tenant_claim)
            .field("jwks_keys", &self.jwks.current().map(|set| set.len()))
            .finish_non_exhaustive()
    }
}

const HEADER_HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;
/// Longest token `verify` looks at. Checked before any decoding so a huge
/// header costs neither base64 nor JSON work; Spendstream's own tokens are a
/// few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The JOSE header fields the verifier reads; the rest are ignored. Being a
/// struct rather than a `Value`, a repeated name is an error instead of "last
/// one wins", so `{"alg":"none","alg":"HS256"}` cannot mean two things.
#[derive(Deserialize)]
struct Header {
    /// Any JSON value, so a non-string `alg` is `Algorithm`, not `Malformed`.
    #[serde(default)]
    alg: Option<serde_json::Value>,
    /// Which key of the JWKS signed it.
    #[serde(default)]
    kid: Option<String>,
    /// Present at all, even as `null`: RFC 7515 §4.1.11 says a recipient
    /// that does not understand the listed extensions must refuse the token,
    /// and this verifier understands none.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Decodes one base64url segment holding a JSON object. The `{` check is
/// there because serde also fills a struct from a JSON array, positionally,
/// and RFC 7519 §7.2 requires objects.
fn decode_object<T: DeserializeOwned>(segment: &str) -> Result<T, AuthError> {
    let bytes = B64.decode(segment).map_err(|_| AuthError::Malformed)?;
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(AuthError::Malformed);
    }
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

impl JwtKeys {
    /// The secret must be at least 32 bytes: HS256 keys shorter than the hash
    /// are guessable.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the JWT secret must be at least 32 bytes".into());
        }
        Ok(Self {
            hs256: Arc::new((
                EncodingKey::from_secret(secret),
                DecodingKey::from_secret(secret),
            )),
            audience: None,
            issuer: None,
            tenant_claim: Arc::from("tenant"),
            jwks: Jwks::default(),
            revocations: Revocations::default(),
        })
    }

    /// With `Some`, tokens must name this audience in `aud`; with `None`,
    /// `aud` is ignored.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience.map(Arc::from);
        self
    }

    /// With `Some`, tokens must carry exactly this `iss`; with `None`, `iss`
    /// is ignored.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer.map(Arc::from);
        self
    }

    /// Reads the tenant from this claim instead of `tenant` (identity
    /// providers name it differently: `org_id`, `tid`, …).
    pub fn with_tenant_claim(mut self, claim: &str) -> Self {
        self.tenant_claim = Arc::from(claim);
        self
    }

    /// Also accepts RS256, ES256 and EdDSA tokens signed with a key of
    /// `set`, chosen by the header's `kid`; [`JwtKeys::jwks`] replaces it.
    pub fn with_jwks(mut self, set: KeySet) -> Self {
        self.jwks = Jwks::new(set);
        self
    }

    /// The identity provider's keys, to replace when they are reloaded.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The revoked token ids these keys refuse (kept current by the
    /// process; empty until it has read them).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Claims for a token these keys mint: issued at `now`, expiring
    /// `ttl_secs` later, with the configured audience and issuer filled in so
    /// the keys' own `verify` accepts it, and a random `jti` to revoke it by.
    pub fn claims_for(&self, tenant: &str, roles: &[Role], ttl_secs: i64, now: i64) -> Claims {
        Claims {
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            exp: now.saturating_add(ttl_secs),
            iat: Some(now),
            aud: self.audience().map(Audience::from),
            iss: self.issuer().map(str::to_owned),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            ..Claims::default()
        }
    }

    /// An HS256 token of `claims`, signed with the shared secret (the
    /// tenant written in the configured claim).
    pub fn sign(&self, claims: &Claims) -> String {
        let header = B64.encode(HEADER_HS256);
        let mut payload = serde_json::to_value(claims).unwrap_or_default();
        if *self.tenant_claim != *"tenant"
            && let Some(object) = payload.as_object_mut()
            && let Some(tenant) = object.remove("tenant")
        {
            object.insert(self.tenant_claim.to_string(), tenant);
        }
        let payload = B64.encode(serde_json::to_vec(&payload).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        // HMAC signing cannot fail.
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.hs256.0, Algorithm::HS256)
                .unwrap_or_default();
        format!("{signing_input}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    pub fn verify_at(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        // The header is read before the signature is checked: it says how to
        // check it, and refusing `none` early costs no signature check.
        let header: Header = decode_object(h)?;
        let alg = header.alg.as_ref().and_then(serde_json::Value::as_str);
        if !matches!(alg, Some("HS256" | "RS256" | "ES256" | "EdDSA")) {
            return Err(AuthError::Algorithm);
        }
        if header.crit {
            return Err(AuthError::Critical);
        }
        // Asymmetric: only with a JWKS, and only with the key its kid
        // names, for the algorithm that key is for.
        let set = match alg {
            Some("HS256") => None,
            _ => Some(self.jwks.current().ok_or(AuthError::Algorithm)?),
        };
        let (key, algorithm) = match &set {
            None => (&self.hs256.1, Algorithm::HS256),
            Some(set) => {
                let Some((key_alg, key)) = header.kid.as_deref().and_then(|kid| set.keys.get(kid))
                else {
                    self.jwks.note_unknown_kid();
                    return Err(AuthError::UnknownKey);
                };
                if alg != Some(alg_name(*key_alg)) {
                    return Err(AuthError::Algorithm);
                }
                (key, *key_alg)
            }
        };
        let signing_input = &token[..h.len() + 1 + p.len()];
        let verifies = |key: &DecodingKey| {
            jsonwebtoken::crypto::verify(s, signing_input.as_bytes(), key, algorithm)
        };
        match verifies(key) {
            Ok(true) => {}
            Ok(false) if set.is_some() => {
                // Signed by another key of the set than its kid names (an
                // identity provider's misconfiguration), or by none of them
                // (a forgery).
                let other = set
                    .iter()
                    .flat_map(|set| set.keys.values())
                    .any(|(alg, other)| {
                        *alg == algorithm
                            && !std::ptr::eq(other, key)
                            && matches!(verifies(other), Ok(true))
                    });
                return Err(if other {
                    AuthError::WrongKey
                } else {
                    AuthError::Signature
                });
            }
            Ok(false) => return Err(AuthError::Signature),
            Err(e) => {
                return Err(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::Base64(_) => AuthError::Malformed,
                    _ => AuthError::Signature,
                });
            }
        }
        let claims = self.claims_of(p)?;
        // Saturating: `exp` and `nbf` are whatever the issuer wrote, and
        // `i64::MAX + LEEWAY_SECS` must neither panic nor wrap into the past.
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECS) > now)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(expected) = self.audience()
            && !claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains(expected))
        {
            return Err(AuthError::Audience);
        }
        if let Some(expected) = self.issuer()
            && claims.iss.as_deref() != Some(expected)
        {
            return Err(AuthError::Issuer);
        }
        if let Some(jti) = &claims.jti
            && self.revocations.contains(&claims.tenant, jti)
        {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }
}

impl JwtKeys {
    /// The payload as [`Claims`], the tenant read from the configured claim
    /// (a string of 1 to 64 of `A-Z a-z 0-9 _ . -`, or `Tenant`).
    fn claims_of(&self, payload: &str) -> Result<Claims, AuthError> {
        let UniqueObject(mut object) = decode_object(payload)?;
        let tenant = if *self.tenant_claim == *"tenant" {
            object.remove("tenant")
        } else {
            object.remove("tenant");
            object.remove(&*self.tenant_claim)
        };
        let tenant = match tenant {
            Some(serde_json::Value::String(t)) if valid_tenant_id(&t) => t,
            _ => return Err(AuthError::Tenant),
        };
        object.insert("tenant".into(), tenant.into());
        Claims::deserialize(serde_json::Value::Object(object)).map_err(|_| AuthError::Malformed)
    }
}

/// A JSON object whose keys are all different: a claim written twice
/// (`{"tenant":"a","tenant":"b"}`) is refused, not read as the last one.
struct UniqueObject(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.insert(key, value).is_some() {
                        return Err(serde::de::Error::custom("a claim written twice"));
                    }
                }
                Ok(UniqueObject(object))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "HS256",
    }
}

/// Public keys of an identity provider by `kid`: RS256 (RSA), ES256 (EC
/// P-256) and EdDSA (Ed25519).
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys without a `kid`, for
    /// encryption, or of another type or algorithm are left out; a set left
    /// with no key is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (Some(KeyAlgorithm::EdDSA) | None, AlgorithmParameters::OctetKeyPair(okp))
                    if okp.curve == EllipticCurve::Ed25519 =>
                {
                    Algorithm::EdDSA
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
            keys.insert(kid.clone(), (alg, key));
        }
        if keys.is_empty() {
            return Err("no RS256, ES256 or EdDSA signing key with a kid".into());
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The identity provider's current [`KeySet`], shared by every clone of
/// the keys; none when no JWKS is configured.
#[derive(Clone, Default)]
pub struct Jwks(Option<Arc<JwksInner>>);

struct JwksInner {
    set: std::sync::RwLock<Arc<KeySet>>,
    /// A token named a kid the set lacks since the last
    /// [`Jwks::take_unknown_kid`]: the provider may have rotated.
    unknown_kid: std::sync::atomic::AtomicBool,
}

impl Jwks {
    fn new(set: KeySet) -> Self {
        Self(Some(Arc::new(JwksInner {
            set: std::sync::RwLock::new(Arc::new(set)),
            unknown_kid: Default::default(),
        })))
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.0
            .as_ref()
            .map(|jwks| jwks.set.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Replaces the set (a rotation); ignored when no JWKS is configured.
    pub fn replace(&self, set: KeySet) {
        if let Some(jwks) = &self.0 {
            *jwks.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        }
    }

    /// Whether a token named an unknown kid since the last call.
    pub fn take_unknown_kid(&self) -> bool {
        self.0.as_ref().is_some_and(|jwks| {
            jwks.unknown_kid
                .swap(false, std::sync::atomic::Ordering::Relaxed)
        })
    }

    fn note_unknown_kid(&self) {
        if let Some(jwks) = &self.0 {
            jwks.unknown_kid
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// An authenticated caller. Extracting it requires a valid bearer token.
#[derive(Debug, Clone)]
pub struct Auth(pub Claims);

impl Auth {
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }

    /// 403 unless the token carries `role` (audited).
    pub fn require(&self, role: Role) -> Result<&Self, ApiError> {
        if self.0.has(role) {
            Ok(self)
        } else {
            crate::audit::authorization_rejected(self.tenant(), role.as_str());
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{}` role",
                role.as_str()
            )))
        }
    }
}

impl AuthError {
    /// A short fixed word: the 401 answer's `error` and the audit log's
    /// `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::Algorithm => "unsupported_algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::WrongKey => "wrong_key",
            AuthError::Critical => "unsupported_critical_header",
            AuthError::Signature => "bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Audience => "wrong_audience",
            AuthError::Issuer => "wrong_issuer",
            AuthError::Tenant => "no_valid_tenant",
            AuthError::Revoked => "token_revoked",
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
            .map(str::trim);
        let rejected = |e: AuthError| {
            crate::audit::authentication_rejected(e.code());
            ApiError::Unauthenticated {
                code: e.code(),
                message: e.to_string(),
            }
        };
        keys.verify(token.ok_or(AuthError::Missing).map_err(rejected)?)
            .map(Auth)
            .map_err(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32]).unwrap()
    }

    fn scoped() -> JwtKeys {
        keys()
            .with_audience(Some("spendstream".into()))
            .with_issuer(Some("https://id.example".into()))
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            tenant: "acme".into(),
            roles: vec!["ingest".into()],
            exp,
            ..Claims::default()
        }
    }

    /// Signs raw header and payload JSON, so tests reach the rules behind
    /// the signature check with inputs `sign` would never produce.
    fn sign_raw(k: &JwtKeys, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &k.hs256.0, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
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

    #[test]
    fn exp_leeway_boundary() {
        let k = keys();
        let token = k.sign(&claims(NOW));
        assert!(k.verify_at(&token, NOW + LEEWAY_SECS).is_ok());
        assert_eq!(
            k.verify_at(&token, NOW + LEEWAY_SECS + 1),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn exp_extremes_neither_overflow_nor_wrap() {
        let k = keys();
        // `i64::MAX + 30` panics in a debug build and wraps to the past in a
        // release build; either way this token would not come back `Ok`.
        let forever = k.sign(&claims(i64::MAX));
        assert_eq!(k.verify_at(&forever, NOW), Ok(claims(i64::MAX)));
        assert_eq!(k.verify_at(&forever, i64::MAX), Ok(claims(i64::MAX)));
        let ancient = k.sign(&claims(i64::MIN));
        assert_eq!(k.verify_at(&ancient, NOW), Err(AuthError::Expired));
        assert_eq!(
            k.verify_at(&ancient, i64::MIN + LEEWAY_SECS + 1),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused_beyond_the_leeway_only() {
        let k = keys();
        let later = Claims {
            nbf: Some(NOW + 100),
            ..claims(NOW + 1_000)
        };
        let token = k.sign(&later);
        assert_eq!(k.verify_at(&token, NOW), Err(AuthError::NotYetValid));
        assert_eq!(
            k.verify_at(&token, NOW + 100 - LEEWAY_SECS - 1),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            k.verify_at(&token, NOW + 100 - LEEWAY_SECS),
            Ok(later.clone())
        );
        assert_eq!(k.verify_at(&token, NOW + 100), Ok(later));
    }

    #[test]
    fn nbf_extremes_neither_overflow_nor_wrap() {
        let k = keys();
        // `i64::MIN - 30` would panic or wrap into the far future.
        let always = k.sign(&Claims {
            nbf: Some(i64::MIN),
            ..claims(NOW)
        });
        assert!(k.verify_at(&always, NOW).is_ok());
        let never = k.sign(&Claims {
            nbf: Some(i64::MAX),
            ..claims(i64::MAX)
        });
        assert_eq!(k.verify_at(&never, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn audience_is_read_as_a_string_or_an_array() {
        let k = scoped();
        let header = HEADER_HS256;
        let one = sign_raw(
            &k,
            header,
            r#"{"tenant":"acme","exp":1000000,"aud":"spendstream","iss":"https://id.example"}"#,
        );
        let got = k.verify_at(&one, NOW).unwrap();
        assert_eq!(got.aud, Some(Audience::One("spendstream".into())));
        let many = sign_raw(
            &k,
            header,
            r#"{"tenant":"acme","exp":1000000,"aud":["billing","spendstream"],"iss":"https://id.example"}"#,
        );
        let got = k.verify_at(&many, NOW).unwrap();
        assert_eq!(
            got.aud,
            Some(Audience::Many(vec!["billing".into(), "spendstream".into()]))
        );
        // Each shape is written back as it came, so re-signing keeps it.
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["aud"], serde_json::json!(["billing", "spendstream"]));
        let json = serde_json::to_value(k.verify_at(&one, NOW).unwrap()).unwrap();
        assert_eq!(json["aud"], serde_json::json!("spendstream"));
    }

    #[test]
    fn audience_is_required_when_configured_and_ignored_when_not() {
        let k = scoped();
        let with = |aud: Option<Audience>| Claims {
            aud,
            iss: Some("https://id.example".into()),
            ..claims(NOW)
        };
        for aud in [
            None,
            Some(Audience::from("billing")),
            Some(Audience::Many(vec![])),
            Some(Audience::Many(vec!["billing".into(), "Spendstream".into()])),
        ] {
            let token = k.sign(&with(aud.clone()));
            assert_eq!(
                k.verify_at(&token, NOW),
                Err(AuthError::Audience),
                "{aud:?}"
            );
            let plain = keys();
            let token = plain.sign(&with(aud.clone()));
            assert_eq!(plain.verify_at(&token, NOW), Ok(with(aud)));
        }
        let good = with(Some(Audience::from("spendstream")));
        assert_eq!(k.verify_at(&k.sign(&good), NOW), Ok(good));
    }

    #[test]
    fn issuer_is_required_when_configured_and_ignored_when_not() {
        let k = scoped();
        let with = |iss: Option<&str>| Claims {
            aud: Some(Audience::from("spendstream")),
            iss: iss.map(str::to_owned),
            ..claims(NOW)
        };
        for iss in [
            None,
            Some("https://evil.example"),
            Some("https://id.example/"),
        ] {
            assert_eq!(
                k.verify_at(&k.sign(&with(iss)), NOW),
                Err(AuthError::Issuer),
                "{iss:?}"
            );
            let plain = keys();
            assert_eq!(plain.verify_at(&plain.sign(&with(iss)), NOW), Ok(with(iss)));
        }
        let good = with(Some("https://id.example"));
        assert_eq!(k.verify_at(&k.sign(&good), NOW), Ok(good));
    }

    #[test]
    fn claims_for_fills_what_the_keys_require() {
        let k = scoped();
        let c = k.claims_for("acme", &[Role::Ingest, Role::Read], 60, NOW);
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.iat, Some(NOW));
        assert_eq!(c.aud, Some(Audience::from("spendstream")));
        assert_eq!(c.iss.as_deref(), Some("https://id.example"));
        assert!(c.has(Role::Read) && !c.has(Role::Admin));
        assert_eq!(k.verify_at(&k.sign(&c), NOW), Ok(c));
        let plain = keys().claims_for("acme", &[], i64::MAX, NOW);
        assert_eq!((plain.aud, plain.iss, plain.exp), (None, None, i64::MAX));
    }

    #[test]
    fn revoked_ids_are_refused_per_tenant_and_minted_tokens_carry_one() {
        let k = keys();
        let a = k.claims_for("acme", &[Role::Read], 60, NOW);
        let b = k.claims_for("acme", &[Role::Read], 60, NOW);
        let jti = a.jti.clone().unwrap();
        assert_ne!(a.jti, b.jti);
        let mut other = a.clone();
        other.tenant = "globex".into();
        // Revoked through a clone: every clone of the keys shares the set.
        k.clone()
            .revocations()
            .replace([("acme".to_string(), jti.clone())], NOW);
        assert_eq!(k.verify_at(&k.sign(&a), NOW), Err(AuthError::Revoked));
        assert_eq!(AuthError::Revoked.code(), "token_revoked");
        assert_eq!(k.verify_at(&k.sign(&b), NOW), Ok(b));
        // The same id under another tenant is another token.
        assert_eq!(k.verify_at(&k.sign(&other), NOW), Ok(other));
        k.revocations().replace([], NOW);
        assert_eq!(k.verify_at(&k.sign(&a), NOW), Ok(a.clone()));
        // Revoked here: in force even after a read that began before the
        // store had it, until a read returns it or it expires.
        k.revocations().insert("acme", &jti, NOW + 60);
        k.revocations().replace([], NOW);
        assert_eq!(k.verify_at(&k.sign(&a), NOW), Err(AuthError::Revoked));
        k.revocations()
            .replace([("acme".to_string(), jti.clone())], NOW);
        k.revocations().replace([], NOW);
        assert_eq!(k.verify_at(&k.sign(&a), NOW), Ok(a.clone()));
        k.revocations().insert("acme", &jti, NOW + 60);
        k.revocations().replace([], NOW + 60);
        assert_eq!(k.verify_at(&k.sign(&a), NOW), Ok(a));
    }

    fn set(signers: &[&Signer]) -> KeySet {
        KeySet::parse(crate::testing::jwks(signers).as_bytes()).unwrap()
    }

    use crate::testing::Signer;

    #[test]
    fn asymmetric_tokens_need_the_key_their_kid_names() {
        let es = Signer::new("ES256", "es-1");
        let ed = Signer::new("EdDSA", "ed-1");
        let rs = Signer::new("RS256", "rs-1");
        let k = keys().with_jwks(set(&[&es, &ed, &rs]));
        let payload = serde_json::json!({"tenant": "acme", "roles": ["read"], "exp": NOW + 60});
        for signer in [&es, &ed, &rs] {
            let got = k.verify_at(&signer.token(&payload), NOW).unwrap();
            assert_eq!(got.tenant, "acme", "{}", signer.alg_name);
        }
        // HS256 with the shared secret still works beside them.
        assert!(k.verify_at(&k.sign(&claims(NOW + 60)), NOW).is_ok());
        // Another key under a known kid: a forgery.
        let impostor = Signer::new("ES256", "es-1");
        assert_eq!(
            k.verify_at(&impostor.token(&payload), NOW),
            Err(AuthError::Signature)
        );
        // Another key of the set than the kid names: the provider's mistake,
        // told apart from a forgery.
        let sibling = Signer::new("ES256", "es-9");
        let k2 = keys().with_jwks(set(&[&es, &sibling]));
        let misnamed = sibling.sign(serde_json::json!({"alg": "ES256", "kid": "es-1"}), &payload);
        assert_eq!(k2.verify_at(&misnamed, NOW), Err(AuthError::WrongKey));
        assert_eq!(
            k2.verify_at(&impostor.token(&payload), NOW),
            Err(AuthError::Signature)
        );
        // A kid the set lacks, or none, and the rotation hint it leaves.
        assert!(!k.jwks().take_unknown_kid());
        let stranger = Signer::new("ES256", "es-2");
        assert_eq!(
            k.verify_at(&stranger.token(&payload), NOW),
            Err(AuthError::UnknownKey)
        );
        assert!(k.jwks().take_unknown_kid());
        let no_kid = es.sign(serde_json::json!({"alg": "ES256"}), &payload);
        assert_eq!(k.verify_at(&no_kid, NOW), Err(AuthError::UnknownKey));
        // The header's alg must be the key's.
        let mixed = es.sign(serde_json::json!({"alg": "RS256", "kid": "es-1"}), &payload);
        assert_eq!(k.verify_at(&mixed, NOW), Err(AuthError::Algorithm));
        // Without a JWKS, asymmetric tokens are refused by algorithm.
        assert_eq!(
            keys().verify_at(&es.token(&payload), NOW),
            Err(AuthError::Algorithm)
        );
        // A rotation: the new key works at once, the old kid is unknown.
        k.clone().jwks().replace(set(&[&stranger]));
        assert!(k.verify_at(&stranger.token(&payload), NOW).is_ok());
        assert_eq!(
            k.verify_at(&es.token(&payload), NOW),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn asymmetric_claims_get_the_same_checks() {
        let es = Signer::new("ES256", "es-1");
        let k = scoped().with_jwks(set(&[&es]));
        let base = serde_json::json!({
            "tenant": "acme", "exp": NOW + 60, "aud": "spendstream", "iss": "https://id.example"
        });
        let with = |field: &str, value: serde_json::Value| {
            let mut payload = base.clone();
            payload[field] = value;
            es.token(&payload)
        };
        assert!(k.verify_at(&es.token(&base), NOW).is_ok());
        let cases = [
            (with("exp", (NOW - 100).into()), AuthError::Expired),
            (with("nbf", (NOW + 100).into()), AuthError::NotYetValid),
            (with("aud", "billing".into()), AuthError::Audience),
            (
                with("iss", "https://evil.example".into()),
                AuthError::Issuer,
            ),
            (with("tenant", "a b".into()), AuthError::Tenant),
            (with("tenant", 7.into()), AuthError::Tenant),
        ];
        for (token, error) in cases {
            assert_eq!(k.verify_at(&token, NOW), Err(error.clone()), "{error:?}");
        }
        let mut parts: Vec<String> = es.token(&base).split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(r#"{"tenant":"evil","exp":1000060}"#);
        assert_eq!(
            k.verify_at(&parts.join("."), NOW),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn a_claim_written_twice_is_refused() {
        let k = keys();
        for payload in [
            r#"{"tenant":"acme","tenant":"globex","exp":1000060}"#,
            r#"{"tenant":"acme","exp":1000060,"exp":9999999999}"#,
        ] {
            let token = sign_raw(&k, HEADER_HS256, payload);
            assert_eq!(
                k.verify_at(&token, NOW),
                Err(AuthError::Malformed),
                "{payload}"
            );
        }
        let once = sign_raw(&k, HEADER_HS256, r#"{"tenant":"acme","exp":1000060}"#);
        assert!(k.verify_at(&once, NOW).is_ok());
    }

    #[test]
    fn the_tenant_claim_is_configurable() {
        let k = keys().with_tenant_claim("org_id");
        let c = k.claims_for("acme", &[Role::Read], 60, NOW);
        let token = k.sign(&c);
        let payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["org_id"], "acme");
        assert!(payload.get("tenant").is_none());
        assert_eq!(k.verify_at(&token, NOW), Ok(c));
        // A `tenant` claim is not read in its place.
        let plain = keys().sign(&claims(NOW));
        assert_eq!(k.verify_at(&plain, NOW), Err(AuthError::Tenant));
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(br#"{"keys": []}"#).is_err());
        let es = Signer::new("ES256", "es-1");
        let mut no_kid = es.jwk();
        no_kid.as_object_mut().unwrap().remove("kid");
        let doc = serde_json::json!({"keys": [no_kid]}).to_string();
        assert!(KeySet::parse(doc.as_bytes()).is_err());
        let mut for_encryption = es.jwk();
        for_encryption["use"] = "enc".into();
        let doc = serde_json::json!({"keys": [for_encryption, es.jwk()]}).to_string();
        assert_eq!(KeySet::parse(doc.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn absent_options_are_not_serialised() {
        assert_eq!(
            serde_json::to_string(&claims(NOW)).unwrap(),
            r#"{"tenant":"acme","roles":["ingest"],"exp":1000000}"#
        );
    }

    #[test]
    fn alg_is_pinned_to_hs256() {
        let k = keys();
        let payload = r#"{"tenant":"acme","exp":1000000}"#;
        assert!(
            k.verify_at(&sign_raw(&k, r#"{"alg":"HS256"}"#, payload), NOW)
                .is_ok()
        );
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":null}"#,
            r#"{"alg":1}"#,
        ] {
            let token = sign_raw(&k, header, payload);
            assert_eq!(
                k.verify_at(&token, NOW),
                Err(AuthError::Algorithm),
                "{header}"
            );
        }
        // A repeated name could be read either way by another parser, and a
        // header must be an object, not an array read positionally.
        for header in [
            r#"{"alg":"none","alg":"HS256"}"#,
            r#"{"alg":"HS256","alg":"none"}"#,
            r#"["HS256"]"#,
        ] {
            let token = sign_raw(&k, header, payload);
            assert_eq!(
                k.verify_at(&token, NOW),
                Err(AuthError::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn crit_header_is_refused() {
        let k = keys();
        let payload = r#"{"tenant":"acme","exp":1000000}"#;
        for header in [
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"crit":[],"alg":"HS256"}"#,
        ] {
            let token = sign_raw(&k, header, payload);
            assert_eq!(
                k.verify_at(&token, NOW),
                Err(AuthError::Critical),
                "{header}"
            );
        }
        let token = sign_raw(&k, r#"{"alg":"HS256","kid":"k1"}"#, payload);
        assert!(k.verify_at(&token, NOW).is_ok());
    }

    #[test]
    fn payload_must_be_an_object() {
        let k = keys();
        // serde would otherwise fill `Claims` from this array, positionally.
        let token = sign_raw(&k, HEADER_HS256, r#"["acme",["admin"],1000000]"#);
        assert_eq!(k.verify_at(&token, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn oversized_token_is_refused() {
        let k = keys();
        let with_jti = |len: usize| {
            k.sign(&Claims {
                jti: Some("x".repeat(len)),
                ..claims(NOW)
            })
        };
        // Longest first, from where base64's 4/3 growth puts the limit.
        let fits = (0..MAX_TOKEN_BYTES * 3 / 4)
            .rev()
            .map(with_jti)
            .find(|t| t.len() <= MAX_TOKEN_BYTES)
            .unwrap();
        assert!(fits.len() > MAX_TOKEN_BYTES - 4, "{}", fits.len());
        assert!(k.verify_at(&fits, NOW).is_ok());
        let too_long = with_jti(MAX_TOKEN_BYTES);
        assert!(too_long.len() > MAX_TOKEN_BYTES);
        assert_eq!(k.verify_at(&too_long, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let shown = format!("{:?}", scoped());
        assert!(shown.contains("spendstream"), "{shown}");
        assert!(!shown.contains("7, 7"), "{shown}");
    }
}
