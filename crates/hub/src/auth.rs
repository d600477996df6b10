//! Connection and subscription tokens (JWT), compatible with Centrifugo's claims.
//!
//! HS256/384/512 with a shared secret, RS256/384/512 and PS* with an RSA public key, ES256/384
//! with an ECDSA public key, and keys from a JWKS document (looked up by `kid`). The algorithm
//! must match a configured key; `alg: none` and unknown algorithms are refused. Expiry is checked
//! here against the `now` the caller passes, so an expired token can be told apart (error 109, the
//! client refreshes) from an invalid one (close 3500). `nbf` (not before) is checked against the
//! same `now` with the same leeway as `exp` (none): a token used before its `nbf` is invalid.
//!
//! The hub does not fetch JWKS documents itself (it does no HTTP): the server fetches them and
//! hands the parsed set to [`TokenVerifier::set_jwks`].

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Where token keys come from and which claims to check. Section `[client.token]` (and
/// `[client.subscription_token]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TokenConfig {
    /// Shared secret for HS256/HS384/HS512.
    pub hmac_secret_key: String,
    /// RSA public key (PEM) for RS256/384/512 and PS256/384/512.
    pub rsa_public_key: String,
    /// ECDSA public key (PEM) for ES256/ES384.
    pub ecdsa_public_key: String,
    /// URL of a JWKS document; keys are selected by the token's `kid`.
    pub jwks_url: String,
    /// When set, the token's `aud` must contain it.
    pub audience: String,
    /// When set, the token's `iss` must equal it.
    pub issuer: String,
}

impl TokenConfig {
    /// Whether any key is configured.
    pub fn is_configured(&self) -> bool {
        !(self.hmac_secret_key.is_empty()
            && self.rsa_public_key.is_empty()
            && self.ecdsa_public_key.is_empty()
            && self.jwks_url.is_empty())
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is valid but its `exp` has passed: the client should get a new one.
    #[error("token expired")]
    Expired,
    /// The token cannot be accepted; the message says why (never contains the token).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims of a connection token.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct ConnectClaims {
    /// User id; empty means anonymous.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch; 0 or absent = never.
    #[serde(default)]
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Not before, seconds since the Unix epoch; 0 or absent = no such bound.
    #[serde(default)]
    pub nbf: u64,
    /// Connection info shown to others (presence, publications).
    pub info: Option<Box<RawValue>>,
    /// Base64-encoded connection info (alternative to `info`).
    #[serde(default)]
    pub b64info: String,
    /// Channels to subscribe the connection to at connect (server-side subscriptions).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Metadata visible to the server only (proxies, API).
    pub meta: Option<Box<RawValue>>,
    /// Alternative expiry for the connection (Centrifugo's `expire_at`), overriding `exp`.
    pub expire_at: Option<u64>,
}

/// Claims of a subscription token.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct SubscriptionClaims {
    /// User id; must equal the connection's user.
    #[serde(default)]
    pub sub: String,
    /// The channel the token grants.
    #[serde(default)]
    pub channel: String,
    /// Expiry, seconds since the Unix epoch; 0 or absent = never.
    #[serde(default)]
    pub exp: u64,
    /// Not before, seconds since the Unix epoch; 0 or absent = no such bound.
    #[serde(default)]
    pub nbf: u64,
    /// Channel info for this subscriber (presence, publications).
    pub info: Option<Box<RawValue>>,
    /// Base64-encoded channel info.
    #[serde(default)]
    pub b64info: String,
    /// Alternative expiry of the subscription, overriding `exp`.
    pub expire_at: Option<u64>,
}

/// Decodes `info`/`b64info` into one raw JSON value.
pub(crate) fn info_from(info: Option<Box<RawValue>>, b64info: &str) -> Option<Box<RawValue>> {
    if info.is_some() {
        return info;
    }
    if b64info.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64info)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    RawValue::from_string(text).ok()
}

/// Verifies tokens with the configured keys. See the module docs.
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    jwks: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    audience: String,
    issuer: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("jwks_keys", &self.jwks.read().len())
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier for `config`; fails with a message when a PEM key does not parse.
    pub fn new(config: &TokenConfig) -> Result<Self, String> {
        let rsa = (!config.rsa_public_key.is_empty())
            .then(|| DecodingKey::from_rsa_pem(config.rsa_public_key.as_bytes()))
            .transpose()
            .map_err(|e| format!("rsa_public_key: {e}"))?;
        let ecdsa = (!config.ecdsa_public_key.is_empty())
            .then(|| DecodingKey::from_ec_pem(config.ecdsa_public_key.as_bytes()))
            .transpose()
            .map_err(|e| format!("ecdsa_public_key: {e}"))?;
        Ok(Self {
            hmac: (!config.hmac_secret_key.is_empty())
                .then(|| DecodingKey::from_secret(config.hmac_secret_key.as_bytes())),
            rsa,
            ecdsa,
            jwks: RwLock::new(HashMap::new()),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        })
    }

    /// Replaces the keys taken from a JWKS document; returns how many keys were usable.
    pub fn set_jwks(&self, set: &JwkSet) -> usize {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                .unwrap_or(match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => Algorithm::RS256,
                });
            keys.insert(kid, (key, alg));
        }
        let n = keys.len();
        *self.jwks.write() = keys;
        n
    }

    /// Verifies a connection token at time `now` (seconds since the Unix epoch).
    pub fn verify_connect(&self, token: &str, now: u64) -> Result<ConnectClaims, TokenError> {
        let claims: ConnectClaims = self.decode(token)?;
        check_not_before(claims.nbf, now)?;
        check_expiry(claims.expire_at.unwrap_or(claims.exp), now)?;
        Ok(claims)
    }

    /// Verifies a subscription token at time `now`.
    pub fn verify_subscription(
        &self,
        token: &str,
        now: u64,
    ) -> Result<SubscriptionClaims, TokenError> {
        let claims: SubscriptionClaims = self.decode(token)?;
        check_not_before(claims.nbf, now)?;
        check_expiry(claims.expire_at.unwrap_or(claims.exp), now)?;
        Ok(claims)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed token: {e}")))?;
        let alg = header.alg;
        let key: DecodingKey = match (&header.kid, alg) {
            // JWKS documents carry public keys: HMAC tokens always use the shared secret.
            (Some(kid), alg)
                if !self.jwks.read().is_empty()
                    && !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) =>
            {
                let keys = self.jwks.read();
                let (key, key_alg) = keys
                    .get(kid)
                    .ok_or_else(|| TokenError::Invalid(format!("unknown key id {kid:?}")))?;
                if *key_alg != alg {
                    return Err(TokenError::Invalid(
                        "algorithm does not match the key".into(),
                    ));
                }
                Some(key.clone())
            }
            (_, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => self.hmac.clone(),
            (
                _,
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            ) => self.rsa.clone(),
            (_, Algorithm::ES256 | Algorithm::ES384) => self.ecdsa.clone(),
            (_, Algorithm::EdDSA) => None,
        }
        .ok_or_else(|| TokenError::Invalid(format!("algorithm {alg:?} is not configured")))?;
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&[&self.issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        jsonwebtoken::decode::<T>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds: none. A token is expired from its `exp`
/// second on and valid from its `nbf` second on, by this node's clock; keep the clocks of the
/// token issuer and the nodes synchronised (NTP).
const LEEWAY: u64 = 0;

fn check_expiry(exp: u64, now: u64) -> Result<(), TokenError> {
    if exp != 0 && exp.saturating_add(LEEWAY) <= now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// A token presented before its `nbf` is invalid (not "expired": getting a new one does not
/// help), as in Centrifugo.
fn check_not_before(nbf: u64, now: u64) -> Result<(), TokenError> {
    if nbf != 0 && nbf > now.saturating_add(LEEWAY) {
        return Err(TokenError::Invalid("token not valid yet (nbf)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verifier(config: TokenConfig) -> TokenVerifier {
        TokenVerifier::new(&config).unwrap()
    }

    fn hmac(secret: &str) -> TokenConfig {
        TokenConfig {
            hmac_secret_key: secret.into(),
            ..Default::default()
        }
    }

    #[test]
    fn hs256_claims() {
        let v = verifier(hmac("s3cret"));
        let t = hs(
            json!({"sub":"42","exp":2000,"info":{"name":"Ann"},"channels":["news"]}),
            "s3cret",
        );
        let c = v.verify_connect(&t, 1000).unwrap();
        assert_eq!(c.sub, "42");
        assert_eq!(c.channels, vec!["news".to_string()]);
        assert_eq!(c.info.unwrap().get(), r#"{"name":"Ann"}"#);
    }

    #[test]
    fn expired_is_told_apart() {
        let v = verifier(hmac("s"));
        let t = hs(json!({"sub":"1","exp":1000}), "s");
        assert_eq!(v.verify_connect(&t, 1000).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn not_before_is_enforced_for_both_kinds() {
        let v = verifier(hmac("s"));
        let t = hs(json!({"sub":"1","nbf":1000,"exp":2000}), "s");
        let err = v.verify_connect(&t, 999).unwrap_err();
        assert!(
            matches!(&err, TokenError::Invalid(m) if m.contains("nbf")),
            "{err:?}"
        );
        assert!(v.verify_connect(&t, 1000).is_ok());
        assert!(v.verify_connect(&t, 1500).is_ok());
        assert_eq!(v.verify_connect(&t, 2000).unwrap_err(), TokenError::Expired);
        let s = hs(json!({"sub":"1","channel":"$c","nbf":1000}), "s");
        assert!(matches!(
            v.verify_subscription(&s, 999),
            Err(TokenError::Invalid(_))
        ));
        assert!(v.verify_subscription(&s, 1000).is_ok());
        // Absent or 0: no bound.
        let t = hs(json!({"sub":"1","nbf":0}), "s");
        assert!(v.verify_connect(&t, 0).is_ok());
    }

    #[test]
    fn refusals() {
        let v = verifier(hmac("s"));
        let wrong_secret = hs(json!({"sub":"1"}), "other");
        assert!(matches!(
            v.verify_connect(&wrong_secret, 0),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connect("garbage", 0),
            Err(TokenError::Invalid(_))
        ));
        // alg: none
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"1"}"#)
        );
        assert!(matches!(
            v.verify_connect(&none, 0),
            Err(TokenError::Invalid(_))
        ));
        // RS256 header when only HMAC is configured.
        let rs = format!(
            "{}.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"1"}"#)
        );
        let err = v.verify_connect(&rs, 0).unwrap_err();
        assert!(matches!(err, TokenError::Invalid(m) if m.contains("not configured")));
    }

    #[test]
    fn audience_and_issuer() {
        let v = verifier(TokenConfig {
            hmac_secret_key: "s".into(),
            audience: "app".into(),
            issuer: "auth".into(),
            ..Default::default()
        });
        assert!(v
            .verify_connect(&hs(json!({"sub":"1","aud":"app","iss":"auth"}), "s"), 0)
            .is_ok());
        assert!(v
            .verify_connect(&hs(json!({"sub":"1","aud":"other","iss":"auth"}), "s"), 0)
            .is_err());
        assert!(v
            .verify_connect(&hs(json!({"sub":"1","aud":"app"}), "s"), 0)
            .is_err());
    }

    #[test]
    fn subscription_claims_and_b64info() {
        let v = verifier(hmac("s"));
        let t = hs(
            json!({"sub":"1","channel":"$secret","b64info":"eyJhIjoxfQ=="}),
            "s",
        );
        let c = v.verify_subscription(&t, 0).unwrap();
        assert_eq!(c.channel, "$secret");
        assert_eq!(info_from(c.info, &c.b64info).unwrap().get(), r#"{"a":1}"#);
    }
}
