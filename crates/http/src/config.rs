//! Server configuration: `switchboard.toml` < `SWITCHBOARD_*` environment variables < flags.
//!
//! Loading works on a TOML table: the file (if any) is read, environment variables and flags are
//! written over it, then the mode's defaults fill what is still unset, and the result is
//! deserialised. [`load`] reports every invalid field with its path, not only the first.
//! docs/CONFIG.md documents every option.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchboard_hub::{ChannelConfig, ClientConfig, HubConfig};
use toml::{Table, Value};

/// Prefix of environment variables that override the file. Nested keys are separated by `__`:
/// `SWITCHBOARD_CLIENT__PING_INTERVAL=5s` sets `client.ping_interval`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Top-level keys; environment variables whose first segment is not one of these are ignored
/// (so that variables like `SWITCHBOARD_FULL` used by scripts do not break the server).
const TOP_LEVEL_KEYS: &[&str] = &[
    "mode",
    "address",
    "node_name",
    "log",
    "client",
    "channel",
    "shutdown",
    "broker",
    "api",
    "demos",
    "tls",
    "proxy",
    "http",
    "websocket",
    "transports",
    "socketio",
];

/// Development or production defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open defaults for local development: anonymous clients may subscribe and publish on any
    /// channel, the server API needs no key from loopback (unless `api.key` is set), a start
    /// page is served at `/`.
    Development,
    /// Everything closed unless the configuration opens it.
    Production,
}

impl Mode {
    /// `"development"` or `"production"`, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Development => "development",
            Mode::Production => "production",
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Development or production (see [`Mode`]).
    pub mode: Mode,
    /// Address to listen on. Default `127.0.0.1:8000`.
    #[serde(default = "default_address")]
    pub address: SocketAddr,
    /// Node name shown in `info` and logs. Default: the host name.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Client connection limits and timings.
    #[serde(default)]
    pub client: ClientConfig,
    /// Channels and namespaces.
    #[serde(default)]
    pub channel: ChannelConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Broker selection.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Server HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Demo applications.
    #[serde(default)]
    pub demos: DemosConfig,
    /// TLS termination.
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
    /// Backend proxies.
    #[serde(default)]
    pub proxy: switchboard_hub::ProxyConfig,
    /// HTTP connection timeouts.
    #[serde(default)]
    pub http: HttpConfig,
    /// WebSocket frame-level limits.
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// Which client transports are served.
    #[serde(default)]
    pub transports: TransportsConfig,
    /// The Socket.IO front door.
    #[serde(default)]
    pub socketio: SocketIoConfig,
}

fn default_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "switchboard".into())
}

impl Config {
    /// The hub's part of the configuration.
    pub fn hub(&self) -> HubConfig {
        let mut hub = HubConfig::default();
        hub.client = self.client.clone();
        hub.channel = self.channel.clone();
        hub.proxy = self.proxy.clone();
        hub
    }

    /// The configuration a bare `switchboard` runs with (development mode, no file).
    pub fn development() -> Self {
        load(&Sources::default()).expect("the development defaults are valid")
    }

    /// The configuration of `switchboard --mode production` without a file: everything the
    /// configuration does not open is closed.
    pub fn production() -> Self {
        let sources = Sources {
            flags: vec![(
                "mode".into(),
                Value::String(Mode::Production.as_str().into()),
            )],
            ..Sources::default()
        };
        load(&sources).expect("the production defaults are valid")
    }
}

/// Logging options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogConfig {
    /// `tracing` filter: a level (`info`) or directives (`info,switchboard_hub=debug`).
    /// Default `info`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Graceful shutdown options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// How long to wait for connections to close after telling them to reconnect elsewhere.
    /// Default 5s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// HTTP connection timeouts (`[http]`): how long a client may take to send what the server waits
/// for, so that connections that send nothing, or trickle a request, do not stay open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Time to receive a request's head (request line and headers): from the moment the
    /// connection is accepted (after the TLS handshake, when TLS is on), and on a keep-alive
    /// connection from the end of the previous response, so it is also the idle timeout of
    /// keep-alive connections. Past it the connection is closed without an answer. Default 10s.
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// Time to receive a server API request's body, once its head is in. Past it the request
    /// gets 408 and the connection is closed. Default 30s.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// WebSocket frame-level limits (`[websocket]`), for every WebSocket connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Pings and pongs a client may send per second; one more closes the connection with 1008
    /// (policy violation). 0 = unlimited. Default 100. Whatever the limit, at most a few pongs
    /// are queued for a client that does not read (further pings are answered only by the most
    /// recent pong).
    pub max_control_frames_per_second: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_control_frames_per_second: 100,
        }
    }
}

/// Which client transports are served (`[transports]`). A transport that is off answers 404.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TransportsConfig {
    /// `GET /connection/websocket`. Default true.
    pub websocket: bool,
    /// `POST /connection/http_stream` (with `POST /emulation`). Default false (true in
    /// development mode).
    pub http_stream: bool,
    /// `GET`/`POST /connection/sse` (with `POST /emulation`). Default false (true in
    /// development mode).
    pub sse: bool,
    /// `GET`/`POST /connection/uni_sse` (unidirectional). Default false (true in development
    /// mode).
    pub uni_sse: bool,
    /// `POST /connection/uni_http_stream` (unidirectional). Default false (true in
    /// development mode).
    pub uni_http_stream: bool,
    /// `GET /connection/uni_websocket` (unidirectional). Default false (true in development
    /// mode).
    pub uni_websocket: bool,
}

impl Default for TransportsConfig {
    fn default() -> Self {
        Self {
            websocket: true,
            http_stream: false,
            sse: false,
            uni_sse: false,
            uni_http_stream: false,
            uni_websocket: false,
        }
    }
}

impl TransportsConfig {
    /// Whether `POST /emulation` is served (an emulated transport is on).
    pub fn emulation(&self) -> bool {
        self.http_stream || self.sse
    }
}

/// The Socket.IO front door (`[socketio]`, docs/SOCKETIO.md): Engine.IO v4 long-polling and
/// WebSocket at `path`, every socket a client of the hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SocketIoConfig {
    /// Whether it is served. Default false (true in development mode).
    pub enabled: bool,
    /// Where. Default `/socket.io/`.
    pub path: String,
    /// How often the server pings. Default 25s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a pong may take. Default 20s.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Largest message or polling request body, in bytes (`maxHttpBufferSize`). Default
    /// 1000000.
    pub max_buffer_size: usize,
    /// How long a connection may take to connect to a namespace. Default 45s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Origins allowed to poll cross-origin (`*` for any). Default none (`["*"]` in development
    /// mode).
    pub cors_origins: Vec<String>,
    /// Connection state recovery: a client that comes back gets its rooms and the publications
    /// it missed (from the channels' history), and `socket.recovered`. Events from rooms then
    /// carry the offset as an extra last argument. Default false.
    pub recovery: bool,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_buffer_size: 1_000_000,
            connect_timeout: Duration::from_secs(45),
            cors_origins: Vec::new(),
            recovery: false,
        }
    }
}

/// Broker selection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// Which broker carries publications between nodes.
    #[serde(rename = "type")]
    pub kind: BrokerKind,
    /// Redis options (`[broker.redis]`), used with `type = "redis"`.
    pub redis: switchboard_broker_redis::RedisConfig,
    /// NATS options (`[broker.nats]`), used with `type = "nats"`.
    pub nats: switchboard_broker_nats::NatsConfig,
}

/// Available brokers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In-process; one node only.
    #[default]
    Memory,
    /// Redis: pub/sub between nodes, history, positions and presence in Redis.
    Redis,
    /// NATS: pub/sub between nodes; history, positions and presence in JetStream.
    Nats,
}

impl BrokerKind {
    /// `"memory"`, `"redis"` or `"nats"`, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        }
    }
}

/// Server API options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ApiConfig {
    /// API key expected in `X-API-Key` or `Authorization: apikey KEY`. Empty: the API is disabled
    /// unless `insecure` is on.
    pub key: String,
    /// Serve the API without a key (development mode turns this on; it then only answers
    /// requests from loopback addresses).
    pub insecure: bool,
}

/// Demo applications options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct DemosConfig {
    /// Serve the start page at `/` (what this server is, its endpoints, how to get a token);
    /// the `switchboard` binary serves its demo applications there instead (and the start page
    /// at `/start`). Default false (true in development mode).
    pub enabled: bool,
    /// Updates per second of the live dashboard demo's simulated feed (1 to 100). Default 10.
    pub dashboard_rate: u32,
}

impl Default for DemosConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dashboard_rate: 10,
        }
    }
}

/// Where configuration comes from, in increasing precedence after the file.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `switchboard.toml` path, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); normally `std::env::vars()`.
    pub env: Vec<(String, String)>,
    /// Values from command-line flags, as (dotted key, TOML value).
    pub flags: Vec<(String, Value)>,
}

impl Sources {
    /// Sources from the process environment and the given file and flags.
    pub fn from_env(file: Option<PathBuf>, flags: Vec<(String, Value)>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            flags,
        }
    }

    /// Names of the environment variables that [`load`] applies (the others are ignored), for
    /// the startup log. Values are left out: they may be secrets.
    pub fn applied_env(&self) -> Vec<&str> {
        self.env
            .iter()
            .filter(|(name, _)| env_path(name).is_some())
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The dotted path an environment variable sets, if it is one [`load`] applies.
fn env_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let first = path.first()?;
    TOP_LEVEL_KEYS.contains(&first.as_str()).then_some(path)
}

/// Every problem found in a configuration, one line each with the field's path.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    /// One message per problem: first the file's syntax errors (the first
    /// [`syntax_errors`](Self::syntax_errors) entries, each with line and column), then one
    /// message per invalid field (checked on the file without the lines that have syntax
    /// errors).
    pub problems: Vec<String>,
    /// How many of `problems` are syntax errors in the file.
    pub syntax_errors: usize,
}

/// Loads and validates the configuration from `sources`.
///
/// A file with syntax errors is still checked field by field without the offending lines, so
/// that one run reports as much as it can; the result is an error either way.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut table = match &sources.file {
        Some(path) => {
            let file = read_file(path).map_err(|p| ConfigError {
                problems: vec![p],
                syntax_errors: 0,
            })?;
            problems = file.syntax_errors;
            match file.table {
                Some(table) => table,
                None => {
                    let syntax_errors = problems.len();
                    return Err(ConfigError {
                        problems,
                        syntax_errors,
                    });
                }
            }
        }
        None => Table::new(),
    };
    let syntax_errors = problems.len();
    for (name, raw) in &sources.env {
        let Some(path) = env_path(name) else {
            continue;
        };
        if let Err(p) = set_path(&mut table, &path, parse_env_value(raw)) {
            problems.push(format!("{name}: {p}"));
        }
    }
    for (key, value) in &sources.flags {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        if let Err(p) = set_path(&mut table, &path, value.clone()) {
            problems.push(format!("--{key}: {p}"));
        }
    }
    let mode = match table.get("mode") {
        Some(Value::String(s)) if s == "development" => Mode::Development,
        Some(Value::String(s)) if s == "production" => Mode::Production,
        Some(other) => {
            problems.push(format!(
                "mode: unknown value {other}, expected \"development\" or \"production\""
            ));
            // Check the rest with the stricter defaults.
            table.remove("mode");
            Mode::Production
        }
        None if sources.file.is_some() => Mode::Production,
        None => Mode::Development,
    };
    table
        .entry("mode")
        .or_insert_with(|| Value::String(mode.as_str().into()));
    if mode == Mode::Development {
        apply_development_defaults(&mut table);
    }
    let config = deserialize_collecting(table, &mut problems);
    if let Some(config) = &config {
        problems.extend(validate(config));
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            problems,
            syntax_errors,
        }),
    }
}

/// A configuration file read as far as its syntax allows.
struct FileContents {
    /// The file without the lines that have syntax errors; `None` when that does not parse
    /// either.
    table: Option<Table>,
    /// One message per syntax error, with line and column.
    syntax_errors: Vec<String>,
}

/// Stop looking for syntax errors after this many: by then the rest is mostly their echo.
const MAX_SYNTAX_ERRORS: usize = 20;

/// Prefix of the placeholder tables that stand in for broken table headers.
const BROKEN_HEADER: &str = "switchboard-checkconfig-broken-header-line-";

/// Reads `path`. The TOML parser stops at the first error, so every error's line is blanked
/// (a broken `[table]` header is replaced by a placeholder table, so that the keys under it do
/// not land in the previous table) and the text parsed again, until it parses or nothing more
/// can be learnt. Line numbers stay those of the file.
fn read_file(path: &Path) -> Result<FileContents, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut current = text;
    let mut syntax_errors = Vec::new();
    let mut changed = vec![false; lines.len()];
    loop {
        let err = match current.parse::<Table>() {
            Ok(mut table) => {
                table.retain(|key, _| !key.starts_with(BROKEN_HEADER));
                return Ok(FileContents {
                    table: Some(table),
                    syntax_errors,
                });
            }
            Err(err) => err,
        };
        let at = err.span().map(|span| line_column(&current, span.start));
        let message = err.message().trim_end();
        let Some((line, column)) = at else {
            syntax_errors.push(format!("{}: {message}", path.display()));
            break;
        };
        let source = lines.get(line).map(String::as_str).unwrap_or_default();
        syntax_errors.push(syntax_error(path, line, column, message, source));
        // A line already neutralised, or the last one reached: the rest cannot be trusted.
        if changed.get(line).copied().unwrap_or(true) || syntax_errors.len() >= MAX_SYNTAX_ERRORS {
            break;
        }
        changed[line] = true;
        lines[line] = if lines[line].trim_start().starts_with('[') {
            format!("[\"{BROKEN_HEADER}{}\"]", line + 1)
        } else {
            String::new()
        };
        current = lines.join("\n");
    }
    syntax_errors.push(format!(
        "{}: further syntax errors may be hidden by the ones above",
        path.display()
    ));
    Ok(FileContents {
        table: None,
        syntax_errors,
    })
}

/// Zero-based line and one-based column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// `FILE:LINE:COLUMN: syntax error: MESSAGE` and the line with a caret under the column.
fn syntax_error(path: &Path, line: usize, column: usize, message: &str, source: &str) -> String {
    let number = (line + 1).to_string();
    let gutter = " ".repeat(number.len());
    let caret = " ".repeat(column.saturating_sub(1));
    format!(
        "{}:{}:{column}: syntax error: {message}\n    {number} | {source}\n    {gutter} | {caret}^",
        path.display(),
        line + 1,
    )
}

fn parse_env_value(raw: &str) -> Value {
    // Numbers, booleans, arrays and inline tables parse as TOML; everything else is a string.
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", parents[..=i].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Development mode: open everything that is not set explicitly.
fn apply_development_defaults(table: &mut Table) {
    fn fill(table: &mut Table, key: &str, value: Value) {
        table.entry(key).or_insert(value);
    }
    fn section<'a>(table: &'a mut Table, key: &str) -> Option<&'a mut Table> {
        table
            .entry(key)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
    }
    const OPEN_NAMESPACE: &[&str] = &[
        "allow_subscribe_for_client",
        "allow_subscribe_for_anonymous",
        "allow_publish_for_client",
        "allow_publish_for_anonymous",
        "allow_presence_for_client",
        "allow_presence_for_anonymous",
        "allow_history_for_client",
        "allow_history_for_anonymous",
    ];
    if let Some(client) = section(table, "client") {
        fill(client, "allow_anonymous", Value::Boolean(true));
        fill(
            client,
            "allowed_origins",
            Value::Array(vec![Value::String("*".into())]),
        );
    }
    if let Some(api) = section(table, "api") {
        fill(api, "insecure", Value::Boolean(true));
    }
    if let Some(demos) = section(table, "demos") {
        fill(demos, "enabled", Value::Boolean(true));
    }
    if let Some(socketio) = section(table, "socketio") {
        fill(socketio, "enabled", Value::Boolean(true));
        fill(
            socketio,
            "cors_origins",
            Value::Array(vec![Value::String("*".into())]),
        );
    }
    if let Some(transports) = section(table, "transports") {
        fill(transports, "http_stream", Value::Boolean(true));
        fill(transports, "sse", Value::Boolean(true));
        fill(transports, "uni_sse", Value::Boolean(true));
        fill(transports, "uni_http_stream", Value::Boolean(true));
        fill(transports, "uni_websocket", Value::Boolean(true));
    }
    if let Some(channel) = section(table, "channel") {
        fill(channel, "allow_unknown_namespaces", Value::Boolean(true));
        if let Some(default) = section(channel, "default") {
            for key in OPEN_NAMESPACE {
                fill(default, key, Value::Boolean(true));
            }
        }
        if let Some(Value::Array(namespaces)) = channel.get_mut("namespaces") {
            for ns in namespaces.iter_mut().filter_map(Value::as_table_mut) {
                for key in OPEN_NAMESPACE {
                    fill(ns, key, Value::Boolean(true));
                }
            }
        }
    }
}

/// Deserialises `table`; on each error records it with its path, removes the offending value
/// and tries again, so that every invalid field is reported in one run.
fn deserialize_collecting(table: Table, problems: &mut Vec<String>) -> Option<Config> {
    use serde_path_to_error::Segment;
    let mut root = Value::Table(table);
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
            Ok(config) => return Some(config),
            Err(err) => err,
        };
        let message = err.inner().to_string();
        let message = message.lines().next().unwrap_or_default();
        // "unknown field `x`, expected one of ..." lists every field; the name is enough.
        let message = message
            .split(", expected one of")
            .next()
            .unwrap_or_default()
            .to_string();
        let mut segments: Vec<Segment> = err.path().iter().cloned().collect();
        let mut shown = err.path().to_string();
        let already_named =
            |field: &str| matches!(segments.last(), Some(Segment::Map { key }) if key == field);
        if let Some(field) = backticked(&message, "unknown field `").filter(|f| !already_named(f)) {
            // Reported at the parent; the culprit is the named field.
            segments.push(Segment::Map {
                key: field.to_string(),
            });
            shown = if shown == "." {
                field.to_string()
            } else {
                format!("{shown}.{field}")
            };
        }
        problems.push(if shown == "." {
            message.clone()
        } else {
            format!("{shown}: {message}")
        });
        // A missing field is reported at its parent: drop the parent so the rest is checked.
        if !remove_at(&mut root, &segments) {
            return None;
        }
    }
    None
}

fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

/// Removes the value at `segments`; false when there is nothing to remove there.
fn remove_at(value: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    match segments {
        [] => false,
        [last] => match (value, last) {
            (Value::Table(t), Segment::Map { key }) => t.remove(key.as_str()).is_some(),
            (Value::Array(a), Segment::Seq { index }) if *index < a.len() => {
                a.remove(*index);
                true
            }
            _ => false,
        },
        [first, rest @ ..] => {
            let child = match (value, first) {
                (Value::Table(t), Segment::Map { key }) => t.get_mut(key.as_str()),
                (Value::Array(a), Segment::Seq { index }) => a.get_mut(*index),
                _ => None,
            };
            child.is_some_and(|c| remove_at(c, rest))
        }
    }
}

fn validate(config: &Config) -> Vec<String> {
    let mut problems = config.channel.validate();
    let c = &config.client;
    if c.max_message_size < 64 {
        problems.push("client.max_message_size: must be at least 64 bytes".into());
    }
    if c.max_queue_bytes < c.max_message_size.min(64 * 1024) {
        problems.push("client.max_queue_bytes: must be at least 64 KiB or max_message_size".into());
    }
    if c.max_channels == 0 {
        problems.push("client.max_channels: must be greater than 0".into());
    }
    if c.handshake_timeout.is_zero() {
        problems.push("client.handshake_timeout: must be greater than 0".into());
    }
    if !(1..=100).contains(&config.demos.dashboard_rate) {
        problems.push("demos.dashboard_rate: must be 1 to 100 updates per second".into());
    }
    if config.http.head_timeout.is_zero() {
        problems.push("http.head_timeout: must be greater than 0".into());
    }
    if config.http.body_timeout.is_zero() {
        problems.push("http.body_timeout: must be greater than 0".into());
    }
    if !c.ping_interval.is_zero() && c.pong_timeout >= c.ping_interval {
        problems.push("client.pong_timeout: must be shorter than client.ping_interval".into());
    }
    if !c.ping_interval.is_zero() && c.ping_interval < Duration::from_secs(1) {
        problems.push("client.ping_interval: must be at least 1s (or 0 to disable)".into());
    }
    for (path, token) in [
        ("client.token", &c.token),
        ("client.subscription_token", &c.subscription_token),
    ] {
        if let Err(e) = switchboard_hub::auth::TokenVerifier::new(token) {
            problems.push(format!("{path}.{e}"));
        }
    }
    match config.broker.kind {
        BrokerKind::Memory => {}
        BrokerKind::Redis => {
            if let Err(e) = config.broker.redis.validate() {
                // "redis: ..." -> "broker.redis: ...".
                problems.push(format!("broker.{e}"));
            }
        }
        BrokerKind::Nats => {
            if let Err(e) = config.broker.nats.validate() {
                // Already says "invalid [broker.nats] config: ...".
                problems.push(e.to_string());
            }
        }
    }
    if config.tls.is_enabled() {
        if let Err(e) = config.tls.acceptor() {
            problems.push(format!("{e:#}"));
        }
    }
    if config
        .log
        .level
        .parse::<tracing_subscriber::EnvFilter>()
        .is_err()
    {
        problems.push(format!(
            "log.level: {:?} is not a valid filter",
            config.log.level
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, text).unwrap();
        load(&Sources {
            file: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: vec![],
        })
    }

    #[test]
    fn bare_run_is_development_and_open() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.mode, Mode::Development);
        assert!(c.client.allow_anonymous);
        assert!(c.channel.default.allow_publish_for_client);
        assert!(c.channel.allow_unknown_namespaces);
        assert!(c.api.insecure);
        assert!(c.demos.enabled);
        assert_eq!(c.address, default_address());
    }

    #[test]
    fn a_config_file_means_production() {
        let c = from_toml("", &[]).unwrap();
        assert_eq!(c.mode, Mode::Production);
        assert!(!c.client.allow_anonymous);
        assert!(!c.channel.default.allow_subscribe_for_client);
        assert!(!c.api.insecure);
        assert!(!c.demos.enabled);
    }

    #[test]
    fn explicit_settings_win_over_development_defaults() {
        let c = from_toml(
            r#"
            mode = "development"
            [channel.default]
            allow_publish_for_client = false
            [[channel.namespaces]]
            name = "chat"
            allow_subscribe_for_anonymous = false
            "#,
            &[],
        )
        .unwrap();
        assert!(!c.channel.default.allow_publish_for_client);
        assert!(c.channel.default.allow_subscribe_for_client);
        assert!(c.channel.namespaces[0].allow_subscribe_for_client);
        assert!(!c.channel.namespaces[0].allow_subscribe_for_anonymous);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "address = \"127.0.0.1:1\"\n[client]\nping_interval = \"10s\"\n",
        )
        .unwrap();
        let c = load(&Sources {
            file: Some(path),
            env: vec![
                ("SWITCHBOARD_ADDRESS".into(), "127.0.0.1:2".into()),
                ("SWITCHBOARD_CLIENT__PING_INTERVAL".into(), "20s".into()),
                ("SWITCHBOARD_CLIENT__MAX_CHANNELS".into(), "7".into()),
                ("SWITCHBOARD_FULL".into(), "1".into()),
            ],
            flags: vec![("address".into(), Value::String("127.0.0.1:3".into()))],
        })
        .unwrap();
        assert_eq!(c.address.port(), 3);
        assert_eq!(c.client.ping_interval, Duration::from_secs(20));
        assert_eq!(c.client.max_channels, 7);
    }

    #[test]
    fn reports_every_invalid_field_with_its_path() {
        let err = from_toml(
            r#"
            address = "not an address"
            colour = "blue"
            [client]
            ping_interval = "soon"
            max_channels = -1
            [[channel.namespaces]]
            name = "bad name"
            allow_publish_for_clients = true
            "#,
            &[],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("address"), "{all}");
        assert!(all.contains("colour"), "{all}");
        assert!(all.contains("client.ping_interval"), "{all}");
        assert!(all.contains("client.max_channels"), "{all}");
        assert!(all.contains("allow_publish_for_clients"), "{all}");
        assert!(all.contains("channel.namespaces[0].name"), "{all}");
        assert!(err.problems.len() >= 6, "{all}");
    }

    #[test]
    fn semantic_checks() {
        let err = from_toml(
            "[client]\nping_interval = \"5s\"\npong_timeout = \"6s\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.problems[0].contains("client.pong_timeout"));
    }

    #[test]
    fn http_and_websocket_limits() {
        let c = from_toml("", &[]).unwrap();
        assert_eq!(c.http.head_timeout, Duration::from_secs(10));
        assert_eq!(c.http.body_timeout, Duration::from_secs(30));
        assert_eq!(c.websocket.max_control_frames_per_second, 100);
        let c = from_toml(
            "[http]\nhead_timeout = \"2s\"\n[websocket]\nmax_control_frames_per_second = 0\n",
            &[("SWITCHBOARD_HTTP__BODY_TIMEOUT", "5s")],
        )
        .unwrap();
        assert_eq!(c.http.head_timeout, Duration::from_secs(2));
        assert_eq!(c.http.body_timeout, Duration::from_secs(5));
        assert_eq!(c.websocket.max_control_frames_per_second, 0);
        let err = from_toml(
            "[http]\nhead_timeout = \"0s\"\nbody_timeout = \"0s\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{:?}", err.problems);
        assert!(err.problems[0].starts_with("http.head_timeout"));
        assert!(err.problems[1].starts_with("http.body_timeout"));
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = from_toml("[client\n", &[]).unwrap_err();
        assert!(err.problems[0].contains("switchboard.toml"));
    }

    #[test]
    fn every_syntax_error_is_reported_with_line_and_column_then_the_fields() {
        let err = from_toml(
            "address = \"127.0.0.1:1\"\n\
             [client\n\
             ping_interval = \"soon\"\n\
             [channel]\n\
             max_length = = 3\n\
             colour = \"blue\"\n",
            &[],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert_eq!(err.syntax_errors, 2, "{all}");
        assert!(
            err.problems[0].contains("switchboard.toml:2:8: syntax error"),
            "{all}"
        );
        assert!(err.problems[0].contains("2 | [client"), "{all}");
        assert!(err.problems[1].contains("switchboard.toml:5:"), "{all}");
        // The rest is still checked; the keys under the broken header are not taken for
        // top-level ones.
        assert!(all.contains("colour: unknown field"), "{all}");
        assert!(!all.contains("ping_interval"), "{all}");
    }

    #[test]
    fn syntax_error_columns_count_characters() {
        assert_eq!(line_column("a\nbé = x", 6), (1, 4));
        assert_eq!(line_column("abc", 99), (0, 4));
    }

    #[test]
    fn unknown_mode_is_one_clear_problem() {
        let err = from_toml("mode = \"prod\"\n", &[]).unwrap_err();
        assert_eq!(
            err.problems,
            vec!["mode: unknown value \"prod\", expected \"development\" or \"production\""]
        );
        let err = from_toml("mode = 1\n", &[]).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{:?}", err.problems);
        assert!(err.problems[0].starts_with("mode: unknown value 1"));
    }

    #[test]
    fn broker_options_are_checked() {
        let err = from_toml(
            "[broker]\ntype = \"redis\"\n[broker.redis]\naddresses = []\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("broker.redis:"),
            "{:?}",
            err.problems
        );
        let err = from_toml(
            "[broker]\ntype = \"nats\"\n[broker.nats]\nprefix = \"a.b\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems[0].contains("broker.nats"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn applied_env_names_only_known_keys() {
        let sources = Sources {
            file: None,
            env: vec![
                ("SWITCHBOARD_ADDRESS".into(), "127.0.0.1:1".into()),
                ("SWITCHBOARD_FULL".into(), "1".into()),
                ("SWITCHBOARD_CONFIG".into(), "x.toml".into()),
                ("HOME".into(), "/root".into()),
            ],
            flags: vec![],
        };
        assert_eq!(sources.applied_env(), vec!["SWITCHBOARD_ADDRESS"]);
    }
}
