//! Test helpers (feature `testing`): an identity provider's key pairs, to
//! sign RS256, ES256 and EdDSA tokens and publish their JWKS.

use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A key pair of the identity provider, published under `kid`.
pub struct Signer {
    pub alg: Algorithm,
    pub alg_name: &'static str,
    pub kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    /// A new key pair for `alg_name` (`ES256`, `EdDSA` or `RS256`).
    pub fn new(alg_name: &'static str, kid: &str) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let (alg, key) = match alg_name {
            "ES256" => {
                let pair = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &rng,
                )
                .unwrap();
                (Algorithm::ES256, EncodingKey::from_ec_der(pair.as_ref()))
            }
            "EdDSA" => {
                let pair = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
                (Algorithm::EdDSA, EncodingKey::from_ed_der(pair.as_ref()))
            }
            "RS256" => {
                let pair =
                    aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
                let pkcs8 = pair.as_der().unwrap();
                (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_der(pkcs1(pkcs8.as_ref())),
                )
            }
            other => panic!("no test keys for {other}"),
        };
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            alg,
            alg_name,
            kid: kid.to_owned(),
            key,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token of `header` and `payload` as given, signed with this key.
    pub fn sign(&self, header: Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(payload.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, self.alg).unwrap();
        format!("{input}.{sig}")
    }

    /// A token of `payload` with this key's `alg` and `kid`.
    pub fn token(&self, payload: &Value) -> String {
        self.sign(json!({"alg": self.alg_name, "kid": self.kid}), payload)
    }
}

/// The JWKS document publishing `signers`.
pub fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// The `RSAPrivateKey` (PKCS#1) inside a PKCS#8 `PrivateKeyInfo` of a
/// 2048-bit key, which is what jsonwebtoken signs with: the last field, an
/// OCTET STRING after the version and the algorithm identifier.
fn pkcs1(pkcs8: &[u8]) -> &[u8] {
    // SEQUENCE (4) | INTEGER 0 (3) | SEQUENCE rsaEncryption, NULL (15) |
    // OCTET STRING with a two-byte length (4).
    assert_eq!(&pkcs8[4..7], &[0x02, 0x01, 0x00], "a PKCS#8 v1 key");
    assert_eq!(&pkcs8[22..24], &[0x04, 0x82], "a 2048-bit RSA key");
    &pkcs8[26..]
}
