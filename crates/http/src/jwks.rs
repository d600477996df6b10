//! Fetches JWKS documents for token verification and refreshes them periodically.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use switchboard_hub::auth::TokenVerifier;
use switchboard_hub::Hub;

use crate::config::Config;

/// How often JWKS documents are fetched again (key rotation).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// How soon a failed fetch is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Starts background tasks that keep the hub's verifiers' JWKS keys fresh.
pub fn spawn_refresh(hub: Hub, config: &Config) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the JWKS HTTP client");
            return;
        }
    };
    let sub_url = if config.client.subscription_token.is_configured() {
        config.client.subscription_token.jwks_url.clone()
    } else {
        config.client.token.jwks_url.clone()
    };
    for (which, url) in [
        ("connect", config.client.token.jwks_url.clone()),
        ("subscription", sub_url),
    ] {
        if url.is_empty() {
            continue;
        }
        let hub = hub.clone();
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let verifier = match which {
                    "connect" => hub.connect_tokens(),
                    _ => hub.subscription_tokens(),
                };
                let Some(verifier) = verifier else { return };
                let next = match fetch(&client, &url, verifier).await {
                    Ok(n) => {
                        tracing::info!(%url, keys = n, "JWKS loaded");
                        REFRESH_INTERVAL
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "JWKS fetch failed");
                        RETRY_INTERVAL
                    }
                };
                tokio::time::sleep(next).await;
            }
        });
    }
}

/// Fetches `url` once and installs its keys; returns how many keys were usable.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    verifier: &TokenVerifier,
) -> anyhow::Result<usize> {
    let set: JwkSet = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(verifier.set_jwks(&set))
}
