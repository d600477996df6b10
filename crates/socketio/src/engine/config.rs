//! Engine.IO server options.

use std::time::Duration;

/// Engine.IO options, with the reference server's defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How often the server pings (default 25 s).
    pub ping_interval: Duration,
    /// How long after a ping the pong may take before the session is closed (default 20 s).
    pub ping_timeout: Duration,
    /// Largest message or polling payload accepted, in bytes (`maxPayload` in the handshake,
    /// `maxHttpBufferSize` in the reference server; default 1 000 000). Larger POST bodies get
    /// 413 and close the session; larger WebSocket messages close the connection (1009).
    pub max_payload: usize,
    /// How long a WebSocket may take to complete an upgrade (`2probe` ... `5`; default 10 s).
    pub upgrade_timeout: Duration,
    /// Whether HTTP long-polling is served.
    pub polling: bool,
    /// Whether WebSocket is served (and offered as an upgrade).
    pub websocket: bool,
    /// Origins allowed cross-origin (CORS): exact origins, or `*` for any. Empty: no CORS
    /// headers are sent (browsers then refuse cross-origin polling).
    pub cors_origins: Vec<String>,
    /// Bytes of packets a session may have queued for a client that does not read before it
    /// is closed (default 8 MiB).
    pub max_buffered: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_secs(10),
            polling: true,
            websocket: true,
            cors_origins: Vec::new(),
            max_buffered: 8 << 20,
        }
    }
}

impl EngineConfig {
    /// Sets [`EngineConfig::ping_interval`].
    pub fn ping_interval(mut self, d: Duration) -> Self {
        self.ping_interval = d;
        self
    }
    /// Sets [`EngineConfig::ping_timeout`].
    pub fn ping_timeout(mut self, d: Duration) -> Self {
        self.ping_timeout = d;
        self
    }
    /// Sets [`EngineConfig::max_payload`].
    pub fn max_payload(mut self, n: usize) -> Self {
        self.max_payload = n;
        self
    }
    /// Sets [`EngineConfig::cors_origins`].
    pub fn cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = origins;
        self
    }
}
