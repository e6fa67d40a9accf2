//! Fuzzes bearer-token verification with and without an expected audience
//! and issuer: no input may panic, an accepted token verifies to the same
//! claims again, the accepted claims re-sign to a token that verifies to them
//! too, and the keys that require `aud`/`iss` accept only tokens that carry
//! them (and nothing the plain keys refuse).
//!
//! Arbitrary bytes almost never carry a valid HMAC, so fuzzing only whole
//! tokens would stop at the signature. The input is therefore also signed
//! with the fixed key: as the payload under a good header, or, split at the
//! first 0xFF byte (never part of UTF-8), as header and payload; and spliced
//! into a payload that is valid as it stands (`{"tenant":"acme","exp":NOW`,
//! input, `}`), so that accepted tokens, and the assertions on them, are
//! reached without the fuzzer first having to invent a whole claim set.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use spendstream_http::JwtKeys;
use spendstream_http::auth::MAX_TOKEN_BYTES;

const KEY: &[u8; 32] = b"spendstream-fuzz-key-0123456789!";
const AUDIENCE: &str = "spendstream";
const ISSUER: &str = "https://id.example";
const NOW: i64 = 1_700_000_000;
const GOOD_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

/// `header.payload.signature` over raw JSON bytes, signed with `KEY`.
fn sign_raw(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn check(plain: &JwtKeys, scoped: &JwtKeys, token: &str) {
    let accepted = plain.verify_at(token, NOW);
    if let Ok(claims) = &accepted {
        assert_eq!(plain.verify_at(token, NOW).as_ref(), Ok(claims));
        let resigned = plain.sign(claims);
        // The re-signed token may be longer (our header, `roles` written out),
        // and past the size limit it is refused by design.
        if resigned.len() <= MAX_TOKEN_BYTES {
            assert_eq!(plain.verify_at(&resigned, NOW).as_ref(), Ok(claims));
        }
    }
    if let Ok(claims) = scoped.verify_at(token, NOW) {
        assert_eq!(scoped.verify_at(token, NOW).as_ref(), Ok(&claims));
        assert!(claims.aud.as_ref().is_some_and(|a| a.contains(AUDIENCE)));
        assert_eq!(claims.iss.as_deref(), Some(ISSUER));
        // Requiring more may only refuse more.
        assert_eq!(accepted.as_ref(), Ok(&claims));
    }
}

fuzz_target!(|data: &[u8]| {
    let plain = JwtKeys::new(KEY).expect("32-byte key");
    let scoped = plain
        .clone()
        .with_audience(Some(AUDIENCE.into()))
        .with_issuer(Some(ISSUER.into()));

    check(&plain, &scoped, &String::from_utf8_lossy(data));
    let signed = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => sign_raw(&data[..at], &data[at + 1..]),
        None => sign_raw(GOOD_HEADER, data),
    };
    check(&plain, &scoped, &signed);
    let mut spliced = format!(r#"{{"tenant":"acme","exp":{NOW}"#).into_bytes();
    spliced.extend_from_slice(data);
    spliced.push(b'}');
    check(&plain, &scoped, &sign_raw(GOOD_HEADER, &spliced));
});
