//! The backend proxy over HTTP: `POST <endpoint>` with a JSON body, answer in JSON.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_hub::{Proxy, ProxyConfig, ProxyError, ProxyKind};

/// Calls proxy endpoints with a shared HTTP client (connection pooling, keep-alive).
#[derive(Debug, Clone)]
pub struct HttpProxy {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpProxy {
    /// A proxy client with the configured timeout.
    pub fn new(config: &ProxyConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            timeout: config.timeout,
        })
    }
}

#[async_trait]
impl Proxy for HttpProxy {
    async fn call(
        &self,
        kind: ProxyKind,
        endpoint: &str,
        headers: &[(String, String)],
        body: Value,
    ) -> Result<Value, ProxyError> {
        let mut request = self
            .client
            .post(endpoint)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .json(&body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                ProxyError::Timeout
            } else {
                ProxyError::Failed(format!("{} proxy: {e}", kind.name()))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProxyError::Failed(format!(
                "{} proxy answered HTTP {status}",
                kind.name()
            )));
        }
        response.json::<Value>().await.map_err(|e| {
            if e.is_timeout() {
                ProxyError::Timeout
            } else {
                ProxyError::Failed(format!("{} proxy: invalid JSON answer: {e}", kind.name()))
            }
        })
    }
}
