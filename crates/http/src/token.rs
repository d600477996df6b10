//! `switchboard gentoken`: connection tokens for development and tests.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::config::Config;

/// Signs an HS256 connection token for `user` valid for `ttl` seconds (0 = no expiry) with the
/// configured `client.token.hmac_secret_key`.
pub fn generate(config: &Config, user: &str, ttl: u64) -> anyhow::Result<String> {
    let secret = &config.client.token.hmac_secret_key;
    anyhow::ensure!(
        !secret.is_empty(),
        "client.token.hmac_secret_key is not set (config file, or SWITCHBOARD_CLIENT__TOKEN__HMAC_SECRET_KEY)"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({ "sub": user, "iat": now });
    if ttl > 0 {
        claims["exp"] = json!(now + ttl);
    }
    let token = &config.client.token;
    if !token.audience.is_empty() {
        claims["aud"] = json!(token.audience);
    }
    if !token.issuer.is_empty() {
        claims["iss"] = json!(token.issuer);
    }
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
