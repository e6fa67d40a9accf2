//! Tokens of the user's identity provider: RS256, ES256 and EdDSA signed by
//! the key the header's `kid` names in a JWKS file or URL, each refusal with
//! its own 401 code, and a key rotated in the JWKS accepted without a
//! restart.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::Deadline;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spendstream::{Roles, Running, Settings};
use spendstream_http::testing::{Signer, jwks};
use std::path::Path;
use std::time::Duration;

/// Writes the JWKS the way a deployment tool would: whole, then renamed.
fn publish(path: &Path, signers: &[&Signer]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwks(signers)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims an identity provider would issue for acme's importer.
fn payload() -> Value {
    json!({
        "tenant": "acme",
        "roles": ["ingest"],
        "exp": now() + 600,
        "aud": "spendstream",
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

async fn start(dir: &Path, jwks: String) -> Running {
    let settings = Settings {
        roles: Roles::INGEST,
        keys: common::keys().with_audience(Some("spendstream".into())),
        jwks: Some(jwks),
        ..common::settings_without_clickhouse(dir)
    };
    spendstream::start(settings).await.unwrap()
}

/// POSTs one record with `token`: the status and the error code, if any.
async fn send(base: &str, token: &str) -> (StatusCode, Option<String>) {
    let (body, _) = common::acme_records(0, 1);
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_are_checked_with_distinct_codes_and_a_rotated_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let (es, ed, rs, spare) = (
        Signer::new("ES256", "es-2026-11"),
        Signer::new("EdDSA", "ed-2026-11"),
        Signer::new("RS256", "rs-2026-11"),
        Signer::new("ES256", "es-2026-11-spare"),
    );
    publish(&path, &[&es, &ed, &rs, &spare]);
    let running = start(dir.path(), path.display().to_string()).await;
    let base = format!("http://{}", running.addr);
    for signer in [&es, &ed, &rs] {
        assert_eq!(
            send(&base, &signer.token(&payload())).await,
            (StatusCode::ACCEPTED, None),
            "{}",
            signer.alg_name
        );
    }

    let with = |field: &str, value: Value| {
        let mut p = payload();
        p[field] = value;
        p
    };
    let forged = {
        let mut parts: Vec<String> = es.token(&payload()).split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(with("tenant", "globex".into()).to_string());
        parts.join(".")
    };
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","kid":"es-2026-11"}"#),
        B64.encode(payload().to_string())
    );
    let cases = [
        (
            es.token(&with("exp", (now() - 600).into())),
            "token_expired",
        ),
        (
            es.token(&with("nbf", (now() + 600).into())),
            "token_not_yet_valid",
        ),
        (forged, "bad_signature"),
        (none, "unsupported_algorithm"),
        // Signed by another key of the set than the kid names.
        (
            spare.sign(json!({"alg": "ES256", "kid": "es-2026-11"}), &payload()),
            "wrong_key",
        ),
        (
            Signer::new("ES256", "es-unknown").token(&payload()),
            "unknown_key",
        ),
        (ed.token(&with("aud", "billing".into())), "wrong_audience"),
    ];
    for (token, code) in &cases {
        assert_eq!(
            send(&base, token).await,
            (StatusCode::UNAUTHORIZED, Some(code.to_string())),
            "{code}"
        );
    }
    let codes: std::collections::BTreeSet<_> = cases.iter().map(|(_, code)| code).collect();
    assert_eq!(codes.len(), cases.len(), "each refusal has its own code");

    // The provider rotates: a new key is published, the old one retired.
    let next = Signer::new("ES256", "es-2026-12");
    let rotated = next.token(&payload());
    assert_eq!(
        send(&base, &rotated).await,
        (StatusCode::UNAUTHORIZED, Some("unknown_key".into()))
    );
    publish(&path, &[&next, &ed, &rs, &spare]);
    let mut deadline = Deadline::new(Duration::from_secs(10), Duration::from_millis(200));
    while send(&base, &rotated).await.0 != StatusCode::ACCEPTED {
        deadline.tick("the rotated key to be accepted").await;
    }
    assert_eq!(
        send(&base, &es.token(&payload())).await,
        (StatusCode::UNAUTHORIZED, Some("unknown_key".into()))
    );
    // A half-written JWKS (counted as an error once read) leaves the keys
    // in force.
    let failed = || common::counter_sum(&base, "spendstream_errors_total", &[("stage", "jwks")]);
    let before = failed().await;
    std::fs::write(&path, "{\"keys\": [").unwrap();
    let mut deadline = Deadline::new(Duration::from_secs(10), Duration::from_millis(200));
    while failed().await == before {
        deadline.tick("the half-written JWKS to be read").await;
    }
    assert_eq!(send(&base, &rotated).await.0, StatusCode::ACCEPTED);
    running.shutdown().await.unwrap();
}

/// The JWKS at the provider's URL; a token naming a kid the set lacks makes
/// the edge fetch it again soon, so a rotation is picked up without waiting
/// for the regular refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_url_is_fetched_again_after_an_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let old = Signer::new("EdDSA", "ed-1");
    let served = std::sync::Arc::new(std::sync::Mutex::new(jwks(&[&old])));
    let provider = {
        let served = served.clone();
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let body = served.lock().unwrap().clone();
                async move { body }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, provider).await });
    let running = start(dir.path(), url).await;
    let base = format!("http://{}", running.addr);
    assert_eq!(
        send(&base, &old.token(&payload())).await.0,
        StatusCode::ACCEPTED
    );

    let new = Signer::new("EdDSA", "ed-2");
    *served.lock().unwrap() = jwks(&[&old, &new]);
    let mut deadline = Deadline::new(
        spendstream::jwks::URL_ON_UNKNOWN_KID + Duration::from_secs(10),
        Duration::from_millis(500),
    );
    loop {
        match send(&base, &new.token(&payload())).await {
            (StatusCode::ACCEPTED, _) => break,
            (StatusCode::UNAUTHORIZED, Some(code)) if code == "unknown_key" => {
                deadline.tick("the new key to be fetched").await
            }
            other => panic!("{other:?}"),
        }
    }
    running.shutdown().await.unwrap();
}

/// An identity provider's JWKS over HTTPS, its certificate trusted the way
/// the system's roots are (`SSL_CERT_FILE`, in the real binary's
/// environment): fetched and used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_fetched_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("idp.pem"), dir.path().join("idp-key.pem"));
    common::self_signed(&cert, &key, "localhost");
    let signer = Signer::new("ES256", "es-https");
    let published = jwks(&[&signer]);
    let provider = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = published.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = spendstream_http::tls::Tls::load(&cert, &key, &[b"http/1.1"]).unwrap();
    tokio::spawn(spendstream_http::serve(
        listener,
        provider,
        spendstream_http::ServerLimits::default(),
        Some(tls),
        std::future::pending(),
    ));
    let args: Vec<String> = vec![
        "ingest".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--jwt-jwks".into(),
        format!("https://localhost:{port}/.well-known/jwks.json"),
    ];
    let (mut server, _) = common::spawn_with(&args, |cmd| {
        cmd.env("SSL_CERT_FILE", &cert);
    });
    common::wait_healthy(&mut server).await;
    assert_eq!(
        send(&server.base, &signer.token(&payload())).await,
        (StatusCode::ACCEPTED, None)
    );
}
