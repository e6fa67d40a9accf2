//! The same test bodies on both backends: the embedded SQLite file, and the
//! real Redis that scripts/test starts (`SPENDSTREAM_TEST_REDIS`).

use spendstream_state::{Claim, IdempotencyStore, Revocation, State, StateTarget};
use std::sync::Arc;
use std::time::Duration;

/// Two openings of one store, as two ingest nodes (or processes) have.
struct Nodes {
    a: State,
    b: State,
    /// Keys of different test runs on one Redis never meet.
    tenant: String,
    _dir: Option<tempfile::TempDir>,
}

fn unique_tenant() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}-{nanos}", std::process::id())
}

async fn embedded() -> Nodes {
    let dir = tempfile::tempdir().unwrap();
    let target = StateTarget::parse(&format!("embedded://{}", dir.path().display())).unwrap();
    Nodes {
        a: target.open().await.unwrap(),
        b: target.open().await.unwrap(),
        tenant: unique_tenant(),
        _dir: Some(dir),
    }
}

async fn redis() -> Nodes {
    let url = std::env::var("SPENDSTREAM_TEST_REDIS").expect(
        "SPENDSTREAM_TEST_REDIS is not set: run the tests with scripts/test, which starts redis-server",
    );
    let target = StateTarget::parse(&url).unwrap();
    Nodes {
        a: target.open().await.unwrap(),
        b: target.open().await.unwrap(),
        tenant: unique_tenant(),
        _dir: None,
    }
}

async fn claim_complete_release(nodes: Nodes) {
    let (t, store) = (nodes.tenant.as_str(), &nodes.a.idempotency);
    let u = format!("{t}-u");
    let long = Duration::from_secs(300);
    // Keys may hold `:`; tenants cannot, so keys of tenants never meet.
    let k1 = "import:2026-11:k1";
    assert_eq!(
        store.claim(t, k1, "o1", long).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(t, k1, "o2", long).await.unwrap(),
        Claim::InProgress
    );
    // The other node sees the claim.
    assert_eq!(
        nodes.b.idempotency.claim(t, k1, "o3", long).await.unwrap(),
        Claim::InProgress
    );
    // Keys are per tenant.
    assert_eq!(
        store.claim(&u, k1, "o4", long).await.unwrap(),
        Claim::Acquired
    );
    // Only the owner completes or releases a claim.
    store.release(t, k1, "o2").await.unwrap();
    store.complete(t, k1, "o2", "fp", 500, b"no").await.unwrap();
    assert_eq!(
        store.claim(t, k1, "o5", long).await.unwrap(),
        Claim::InProgress
    );
    let body = b"{\"accepted\":1}\n\x00\xff".to_vec();
    store.complete(t, k1, "o1", "fp", 202, &body).await.unwrap();
    let done = Claim::Completed {
        fingerprint: "fp".into(),
        status: 202,
        body,
    };
    assert_eq!(store.claim(t, k1, "o6", long).await.unwrap(), done);
    assert_eq!(
        nodes.b.idempotency.claim(t, k1, "o7", long).await.unwrap(),
        done
    );
    // Release gives a running claim up, never a completed one.
    store.release(t, k1, "o1").await.unwrap();
    assert_eq!(store.claim(t, k1, "o8", long).await.unwrap(), done);
    nodes.b.idempotency.release(&u, k1, "o4").await.unwrap();
    assert_eq!(
        store.claim(&u, k1, "o9", long).await.unwrap(),
        Claim::Acquired
    );
    // A claim whose holder vanished is taken over once stale, and the old
    // holder can no longer complete it.
    assert_eq!(
        nodes
            .b
            .idempotency
            .claim(&u, k1, "o10", Duration::ZERO)
            .await
            .unwrap(),
        Claim::Acquired
    );
    store
        .complete(&u, k1, "o9", "old", 202, b"old")
        .await
        .unwrap();
    store
        .complete(&u, k1, "o10", "new", 202, b"new")
        .await
        .unwrap();
    assert_eq!(
        store.claim(&u, k1, "o11", long).await.unwrap(),
        Claim::Completed {
            fingerprint: "new".into(),
            status: 202,
            body: b"new".to_vec(),
        }
    );
}

/// 50 claims at once on one key, half through each node: one acquires.
async fn concurrent_claims_acquire_once(nodes: Nodes) {
    let claims = (0..50).map(|i| {
        let store: Arc<dyn IdempotencyStore> = if i % 2 == 0 {
            nodes.a.idempotency.clone()
        } else {
            nodes.b.idempotency.clone()
        };
        let tenant = nodes.tenant.clone();
        tokio::spawn(async move {
            store
                .claim(
                    &tenant,
                    "same",
                    &format!("owner-{i}"),
                    Duration::from_secs(300),
                )
                .await
                .unwrap()
        })
    });
    let mut acquired = 0;
    for claim in join_all(claims).await {
        match claim {
            Claim::Acquired => acquired += 1,
            Claim::InProgress => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}

async fn join_all<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

/// A revocation made through one node is read by the other until it
/// expires; revocations are per tenant.
async fn revocations_are_shared_until_they_expire(nodes: Nodes) {
    let t = nodes.tenant.as_str();
    let u = format!("{t}-u");
    // The real time: other tests' revocations on the same Redis (an hour
    // ahead) outlive the expiries this one moves past.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mine = |all: Vec<Revocation>| -> Vec<(String, String, i64)> {
        let mut mine: Vec<_> = all
            .into_iter()
            .filter(|r| r.tenant.starts_with(t))
            .map(|r| (r.tenant, r.jti, r.expires_at))
            .collect();
        mine.sort();
        mine
    };
    let revoke = |tenant: &str, jti: &str, expires_at: i64| Revocation {
        tenant: tenant.into(),
        jti: jti.into(),
        expires_at,
    };
    nodes
        .a
        .revocations
        .revoke(&revoke(t, "j1", now + 10))
        .await
        .unwrap();
    nodes
        .a
        .revocations
        .revoke(&revoke(t, "j2", now + 100))
        .await
        .unwrap();
    nodes
        .a
        .revocations
        .revoke(&revoke(&u, "j1", now + 100))
        .await
        .unwrap();
    assert_eq!(
        mine(nodes.b.revocations.revoked(now).await.unwrap()),
        vec![
            (t.to_string(), "j1".into(), now + 10),
            (t.to_string(), "j2".into(), now + 100),
            (u.clone(), "j1".into(), now + 100),
        ]
    );
    // Past its expiry a revocation is forgotten; revoking again moves it.
    assert_eq!(
        mine(nodes.b.revocations.revoked(now + 10).await.unwrap()).len(),
        2
    );
    nodes
        .b
        .revocations
        .revoke(&revoke(t, "j2", now + 500))
        .await
        .unwrap();
    assert_eq!(
        mine(nodes.a.revocations.revoked(now + 200).await.unwrap()),
        vec![(t.to_string(), "j2".into(), now + 500)]
    );
}

/// The bucket size is admitted, each answer counting down, then refused
/// with the wait for one token; records are charged afterwards and a
/// tenant in debt waits; other tenants are untouched; buckets refill.
async fn token_buckets_admit_exactly_their_size(nodes: Nodes) {
    use spendstream_state::rate::Limits;
    let limiter = &nodes.a.limiter;
    let t = nodes.tenant.as_str();
    // One request per 100 s, five in a bucket: nothing refills meanwhile.
    let slow = Limits {
        requests_per_sec: 0.01,
        records_per_sec: 0.0,
        burst_secs: 500.0,
    };
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let d = limiter.admit(t, &slow).await.unwrap();
        assert!(d.admitted, "{d:?}");
        assert_eq!(d.limit, 5);
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    let refused = limiter.admit(t, &slow).await.unwrap();
    assert!(!refused.admitted);
    assert_eq!((refused.limit, refused.remaining), (5, 0));
    assert!(
        (99..=100).contains(&refused.retry_after_secs),
        "{refused:?}"
    );
    assert!((499..=500).contains(&refused.reset_secs), "{refused:?}");
    // Another tenant has its own bucket.
    let u = format!("{t}-u");
    assert!(limiter.admit(&u, &slow).await.unwrap().admitted);

    // Records: five in the bucket; a request of seven leaves a debt of two.
    let v = format!("{t}-v");
    let records = Limits {
        requests_per_sec: 0.0,
        records_per_sec: 0.01,
        burst_secs: 500.0,
    };
    let d = limiter.admit(&v, &records).await.unwrap();
    assert!(d.admitted);
    assert_eq!((d.limit, d.remaining), (5, 5));
    limiter.charge(&v, &records, 7).await.unwrap();
    let refused = limiter.admit(&v, &records).await.unwrap();
    assert!(!refused.admitted);
    assert!(
        (299..=300).contains(&refused.retry_after_secs),
        "{refused:?}"
    );

    // A fast bucket refills by itself.
    let w = format!("{t}-w");
    let fast = Limits {
        requests_per_sec: 50.0,
        records_per_sec: 0.0,
        burst_secs: 0.1,
    };
    while limiter.admit(&w, &fast).await.unwrap().admitted {}
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !limiter.admit(&w, &fast).await.unwrap().admitted {
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket never refilled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Rates put on one node are read on the other, per scope, and the
/// version moves with every put.
async fn fx_rates_are_shared_per_scope(nodes: Nodes) {
    let (a, b) = (&nodes.a.fx, &nodes.b.fx);
    let t = nodes.tenant.as_str();
    assert_eq!(b.fx_rates(t).await.unwrap(), None);
    let before = b.fx_version().await.unwrap();
    a.put_fx_rates(t, "Date,USD\n2026-03-02,1.0812\n")
        .await
        .unwrap();
    let after = b.fx_version().await.unwrap();
    assert_ne!(after, before, "a put moves the version");
    assert_eq!(
        b.fx_rates(t).await.unwrap().as_deref(),
        Some("Date,USD\n2026-03-02,1.0812\n")
    );
    a.put_fx_rates(t, "Date,USD\n2026-03-03,1.09\n")
        .await
        .unwrap();
    assert_ne!(b.fx_version().await.unwrap(), after);
    assert_eq!(
        b.fx_rates(t).await.unwrap().as_deref(),
        Some("Date,USD\n2026-03-03,1.09\n"),
        "a put replaces the scope's text"
    );
    assert_eq!(b.fx_rates(&format!("{t}-other")).await.unwrap(), None);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::embedded().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::redis().await).await;
            }
        }
    )*};
}

on_both_backends!(
    claim_complete_release,
    concurrent_claims_acquire_once,
    revocations_are_shared_until_they_expire,
    token_buckets_admit_exactly_their_size,
    fx_rates_are_shared_per_scope,
);

/// A Redis that cannot be reached fails the start with a transient error
/// that does not print the password.
#[tokio::test]
async fn an_unreachable_redis_fails_fast_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = StateTarget::parse(&format!("redis://:hunter2@127.0.0.1:{port}"))
        .unwrap()
        .open()
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
}
