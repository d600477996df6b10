//! The `switchboard` command line, run as a process: help texts, `checkconfig`, `gentoken`,
//! the example configuration, the start page at `/` and the log output of `serve`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::{http_get, start, start_toml};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The annotated example configuration at the repository root.
fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../switchboard.example.toml")
}

/// `switchboard ARGS` in `dir`, with no `SWITCHBOARD_*`, `RUST_LOG` or `NO_COLOR` from the
/// environment of the test run.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (var, _) in std::env::vars() {
        if var.starts_with("SWITCHBOARD_") {
            command.env_remove(var);
        }
    }
    command
}

/// Runs `switchboard ARGS` in a fresh directory (so no `switchboard.toml` is picked up).
fn run(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    command(dir.path(), args)
        .output()
        .expect("run the switchboard binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to `name` in a new temporary directory.
fn write_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn help_starts_with_a_one_line_summary() {
    for flag in ["--help", "-h"] {
        let output = run(&[flag]);
        assert!(output.status.success(), "{output:?}");
        let text = stdout(&output);
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("Switchboard: a real-time messaging server (WebSocket"),
            "{text}"
        );
        // The serve options work without a command, and the commands are listed.
        for expected in ["--address", "--mode", "serve", "gentoken", "checkconfig"] {
            assert!(text.contains(expected), "{expected} missing:\n{text}");
        }
    }
}

#[test]
fn subcommand_help_lists_only_its_own_options() {
    let serve_only = ["--address", "--mode", "--log-level"];

    let text = stdout(&run(&["serve", "--help"]));
    for flag in serve_only.iter().chain(&["--config"]) {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }

    let text = stdout(&run(&["gentoken", "--help"]));
    for flag in ["--config", "--user", "--ttl"] {
        assert!(text.contains(flag), "gentoken --help lacks {flag}:\n{text}");
    }
    for flag in serve_only {
        assert!(
            !text.contains(flag),
            "gentoken --help lists {flag}:\n{text}"
        );
    }

    let text = stdout(&run(&["checkconfig", "--help"]));
    assert!(text.contains("<FILE>"), "{text}");
    for flag in serve_only.iter().chain(&["--config", "--user"]) {
        assert!(
            !text.contains(flag),
            "checkconfig --help lists {flag}:\n{text}"
        );
    }
}

#[test]
fn serve_flags_are_refused_with_another_command() {
    let output = run(&["--address", "127.0.0.1:1", "gentoken"]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{output:?}"
    );
}

#[test]
fn checkconfig_reports_every_syntax_error_with_line_and_column() {
    let (_dir, path) = write_file(
        "broken.toml",
        "address = \"127.0.0.1:8000\"\n[client\nping_interval = \"10s\"\n[api]\nkey = \"secret\ncolour = \"blue\"\n",
    );
    let output = run(&["checkconfig", path.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("2 syntax error(s)"), "{err}");
    assert!(err.contains("broken.toml:2:8: syntax error"), "{err}");
    assert!(err.contains("unclosed table"), "{err}");
    assert!(err.contains("2 | [client"), "{err}");
    assert!(err.contains("broken.toml:5:14: syntax error"), "{err}");
    // Then the fields of the rest are still checked.
    assert!(err.contains("api.colour: unknown field"), "{err}");
}

#[test]
fn checkconfig_explains_an_unknown_mode() {
    let (_dir, path) = write_file("prod.toml", "mode = \"prod\"\n");
    let output = run(&["checkconfig", path.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(r#"mode: unknown value "prod", expected "development" or "production""#),
        "{err}"
    );
    assert!(err.contains("1 problem(s)"), "{err}");
}

#[test]
fn checkconfig_accepts_the_example_configuration() {
    let path = example_config();
    let output = run(&["checkconfig", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains(": OK (mode production"),
        "{output:?}"
    );
}

#[test]
fn the_example_configuration_loads_as_documented() {
    let config = switchboard_http::config::load(&switchboard_http::config::Sources {
        file: Some(example_config()),
        env: vec![],
        flags: vec![],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.mode, switchboard_http::config::Mode::Production);
    assert_eq!(config.address, "127.0.0.1:8000".parse().unwrap());
    assert!(!config.client.allow_anonymous);
    assert!(!config.client.token.hmac_secret_key.is_empty());
    assert!(!config.api.key.is_empty());
    assert!(!config.demos.enabled);
    let names: Vec<&str> = config
        .channel
        .namespaces
        .iter()
        .map(|ns| ns.name.as_str())
        .collect();
    assert_eq!(names, ["chat", "notifications"]);
    let chat = &config.channel.namespaces[0];
    assert!(chat.presence && chat.history_size > 0 && chat.force_recovery);
}

#[test]
fn gentoken_prints_a_jwt_signed_with_the_configured_secret() {
    let (dir, path) = write_file(
        "switchboard.toml",
        "[client.token]\nhmac_secret_key = \"cli-test-secret\"\n",
    );
    let output = command(
        dir.path(),
        &[
            "gentoken",
            "--config",
            path.to_str().unwrap(),
            "--user",
            "42",
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = stdout(&output).trim().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert!(parts.iter().all(|p| !p.is_empty()), "{token}");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("base64url claims");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    assert_eq!(claims["sub"], "42", "{claims}");
    assert!(claims["exp"].as_u64().is_some(), "{claims}");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"cli-test-secret"),
        &validation,
    )
    .expect("signed with the configured secret");

    // The working directory's switchboard.toml is read when --config is not given.
    let output = command(dir.path(), &["gentoken", "-u", "7", "--ttl", "0"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).trim().split('.').count(), 3);
}

#[test]
fn gentoken_without_a_secret_says_what_to_set() {
    let output = run(&["gentoken", "--user", "42"]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr(&output).contains("client.token.hmac_secret_key"),
        "{output:?}"
    );
}

#[tokio::test]
async fn root_serves_the_start_page_in_development_mode() {
    let server = start(|_| {}).await;
    let response = http_get(server.addr(), "/").await.expect("GET /");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .headers
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{response:?}"
    );
    for expected in [
        "/connection/websocket",
        "/api/",
        "/health",
        "/metrics",
        "switchboard gentoken --user ID",
        "serves its demo applications",
    ] {
        assert!(response.body.contains(expected), "{expected} missing");
    }
    assert!(!response.body.contains("{{"), "unfilled placeholder");
    server.shutdown().await;
}

#[tokio::test]
async fn root_is_404_when_demos_are_off() {
    let server = start_toml("").await;
    let response = http_get(server.addr(), "/").await.expect("GET /");
    assert_eq!(response.status, 404, "{response:?}");
    server.shutdown().await;
}

/// A `switchboard serve` child whose stdout and stderr are pipes.
struct Serve {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = command(dir.path(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the switchboard binary");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            stderr,
            _dir: dir,
        }
    }

    /// The log lines up to and including the first one containing `needle`.
    fn lines_until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(e) => panic!("no {needle:?} in the log ({e}):\n{}", seen.join("\n")),
            }
        }
    }

    /// Kills the process; returns what it wrote to stderr.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap_or_default()
    }
}

/// The `addr=` field of the text listening line.
fn listening_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {line:?}"))
}

#[test]
fn serve_logs_plain_text_when_piped_and_says_what_it_runs_with() {
    let serve = Serve::start(&["--address", "127.0.0.1:0"]);
    let lines = serve.lines_until("switchboard listening", Duration::from_secs(20));
    let log = lines.join("\n");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in piped stdout:\n{log:?}"
    );
    assert!(
        log.contains("starting switchboard") && log.contains("in development mode"),
        "{log}"
    );
    assert!(
        log.contains("config file: none (built-in defaults)"),
        "{log}"
    );
    assert!(
        log.contains("the server API is open without a key to loopback clients"),
        "{log}"
    );
    assert!(log.contains("a start page is served at /"), "{log}");
    let listening = lines.last().cloned().unwrap_or_default();
    assert!(listening.contains("mode=development"), "{listening}");

    // The binary serves what the log says: the start page at `/`.
    let addr = listening_addr(&listening);
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("<title>Switchboard</title>"),
        "{response}"
    );

    let err = serve.kill();
    assert!(
        !err.contains('\x1b'),
        "ANSI escapes in piped stderr:\n{err:?}"
    );
}

#[test]
fn serve_names_the_config_file_and_an_explicit_api_key() {
    let (_dir, path) = write_file(
        "dev.toml",
        "mode = \"development\"\naddress = \"127.0.0.1:0\"\n[api]\nkey = \"k\"\n",
    );
    let serve = Serve::start(&["--config", path.to_str().unwrap()]);
    let lines = serve.lines_until("switchboard listening", Duration::from_secs(20));
    let log = lines.join("\n");
    assert!(
        log.contains(&format!("config file: {}", path.display())),
        "{log}"
    );
    assert!(log.contains("needs the configured api.key"), "{log}");
    assert!(!log.contains("without a key"), "{log}");
    serve.kill();
}

/// `GET path` from the binary at `addr`: the whole response, status line first.
fn get_raw(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .expect("read the response");
    response
}

/// Pages and assets of the demo applications (crates/demos).
const DEMO_PATHS: &[&str] = &[
    "/demos/chat",
    "/demos/assets/chat.js",
    "/demos/auction",
    "/demos/assets/auction.js",
    "/demos/notifications",
    "/demos/assets/notifications.js",
    "/demos/dashboard",
    "/demos/assets/dashboard.js",
    "/demos/game",
    "/demos/assets/game.js",
    "/demos/editor",
    "/demos/assets/editor.js",
    "/demos/assets/crdt.js",
    "/demos/assets/common.js",
    "/demos/assets/demo.css",
];

#[test]
fn the_demos_are_served_in_development_mode() {
    let serve = Serve::start(&["--address", "127.0.0.1:0"]);
    let lines = serve.lines_until("switchboard listening", Duration::from_secs(20));
    let addr = listening_addr(lines.last().unwrap());
    let landing = get_raw(addr, "/");
    assert!(landing.starts_with("HTTP/1.1 200"), "{landing}");
    assert!(landing.contains("Real-time demos"), "{landing}");
    for path in DEMO_PATHS {
        let response = get_raw(addr, path);
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    }
    // The start page moves to /start; the node's own routes are still there.
    assert!(get_raw(addr, "/start").contains("/connection/websocket"));
    assert!(get_raw(addr, "/health").starts_with("HTTP/1.1 200"));
    serve.kill();
}

#[test]
fn production_mode_serves_nothing_of_the_demos() {
    let serve = Serve::start(&["--address", "127.0.0.1:0", "--mode", "production"]);
    let lines = serve.lines_until("switchboard listening", Duration::from_secs(20));
    let addr = listening_addr(lines.last().unwrap());
    for path in ["/", "/start"].iter().chain(DEMO_PATHS) {
        let response = get_raw(addr, path);
        assert!(response.starts_with("HTTP/1.1 404"), "{path}: {response}");
    }
    assert!(get_raw(addr, "/health").starts_with("HTTP/1.1 200"));
    serve.kill();
}
