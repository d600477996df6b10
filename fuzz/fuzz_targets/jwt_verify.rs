//! JWT verification (`switchboard_hub::auth::TokenVerifier`) with a fixed HMAC key: arbitrary
//! token strings must be refused or accepted, never panic.
//!
//! Input: one flags byte, then the rest.
//! - bits 0-1 = 0 (raw): the rest, as (lossy) UTF-8, is the token.
//! - bits 0-1 = 1 or 2 (signed): the rest is `header JSON` NUL `claims JSON`; the target
//!   base64url-encodes both and signs them with the verifier's key, so the fuzzer reaches the
//!   header and claims parsing behind the signature check.
//! - bits 0-1 = 3 (jwks): the rest is a JWKS document handed to `set_jwks` (what the server does
//!   with the document it fetched); then tokens naming each of its key ids are verified.
//! - bit 2: a verifier that also requires `aud` and `iss`; bit 3: `now` is 1.7e9 instead of 0;
//!   bits 4-5: sign with HS256 (0, 3), HS384 (1) or HS512 (2).
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use switchboard_hub::auth::{TokenConfig, TokenError, TokenVerifier};

const SECRET: &str = "fuzz-hmac-secret";

fn config(claims: bool) -> TokenConfig {
    let mut c = TokenConfig::default();
    c.hmac_secret_key = SECRET.into();
    if claims {
        c.audience = "fuzz-aud".into();
        c.issuer = "fuzz-iss".into();
    }
    c
}

static PLAIN: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new(&config(false)).expect("HMAC config is valid"));
static CLAIMS: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new(&config(true)).expect("HMAC config is valid"));
static KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(SECRET.as_bytes()));

fn verify(verifier: &TokenVerifier, token: &str, now: u64) {
    match verifier.verify_connect(token, now) {
        Ok(c) => {
            let exp = c.expire_at.unwrap_or(c.exp);
            assert!(exp == 0 || exp > now, "expired connect token accepted");
        }
        Err(TokenError::Expired | TokenError::Invalid(_)) => {}
    }
    match verifier.verify_subscription(token, now) {
        Ok(c) => {
            let exp = c.expire_at.unwrap_or(c.exp);
            assert!(exp == 0 || exp > now, "expired subscription token accepted");
        }
        Err(TokenError::Expired | TokenError::Invalid(_)) => {}
    }
}

fn sign(header: &[u8], claims: &[u8], alg: Algorithm) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    // HMAC signs any message.
    let signature = jsonwebtoken::crypto::sign(token.as_bytes(), &KEY, alg).expect("HMAC signs");
    token.push('.');
    token.push_str(&signature);
    token
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let verifier: &TokenVerifier = if flags & 4 == 0 { &PLAIN } else { &CLAIMS };
    let now = if flags & 8 == 0 { 0 } else { 1_700_000_000 };
    let alg = match (flags >> 4) & 3 {
        0 | 3 => Algorithm::HS256,
        1 => Algorithm::HS384,
        _ => Algorithm::HS512,
    };
    match flags & 3 {
        0 => verify(verifier, &String::from_utf8_lossy(rest), now),
        1 | 2 => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            verify(verifier, &sign(header, claims, alg), now);
        }
        _ => {
            let Ok(set) = serde_json::from_slice::<JwkSet>(rest) else {
                return;
            };
            let jwks = TokenVerifier::new(&config(flags & 4 != 0)).expect("HMAC config is valid");
            let usable = jwks.set_jwks(&set);
            assert!(usable <= set.keys.len());
            // A token naming each key id, signed with HMAC (so refused unless the algorithm
            // check is wrong) and one with RS256 in the header and a garbage signature.
            for jwk in &set.keys {
                let kid = jwk.common.key_id.as_deref().unwrap_or("");
                let kid = serde_json::to_string(kid).expect("a str serialises");
                for alg_name in ["RS256", "ES256", "PS512", "EdDSA"] {
                    let header = format!(r#"{{"alg":"{alg_name}","kid":{kid}}}"#);
                    let mut token = sign(header.as_bytes(), b"{\"sub\":\"u\"}", alg);
                    token.push('x');
                    verify(&jwks, &token, now);
                }
            }
        }
    }
});
