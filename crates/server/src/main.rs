//! `switchboard`: the real-time messaging server. A command line over the `switchboard`
//! library: it loads the configuration and serves a [`switchboard::Node`] built from it.

use std::fmt;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::{self, Config, LogFormat, Mode, Sources};
use toml::Value;

/// The first line of `--help`.
const ABOUT: &str = "Switchboard: a real-time messaging server (WebSocket, Centrifugo client \
                     protocol v2) with an HTTP API for your backend";

/// The end of `switchboard --help`.
const AFTER_HELP: &str = "\
Without a command, `switchboard [OPTIONS]` runs `serve` with those options.
Every option, the modes and the SWITCHBOARD_* environment variables: docs/CONFIG.md";

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = ABOUT,
    long_about = None,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Print a connection token (JWT, HS256) for a user, signed with the configured
    /// `client.token.hmac_secret_key`.
    Gentoken(GentokenArgs),
    /// Check a configuration file: report every syntax error (with line and column) and every
    /// invalid field; exit with status 1 if there is any.
    Checkconfig {
        /// The file to check (TOML). Environment variables and flags are not applied.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Default: ./switchboard.toml if it exists. A file means
    /// production mode unless it sets `mode`.
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `address`).
    #[arg(long)]
    address: Option<String>,
    /// Development or production defaults (overrides `mode`).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Log filter, e.g. `info` or `debug,hyper=info` (overrides `log.level`).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
struct GentokenArgs {
    /// Configuration file (TOML) with `client.token.hmac_secret_key` (and optionally `audience`,
    /// `issuer`). Default: ./switchboard.toml if it exists. SWITCHBOARD_* variables apply, e.g.
    /// SWITCHBOARD_CLIENT__TOKEN__HMAC_SECRET_KEY.
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// User id (`sub` claim); empty for an anonymous token.
    #[arg(long, short = 'u', default_value = "")]
    user: String,
    /// Lifetime in seconds; 0 = no expiry.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

/// Where the configuration file came from.
#[derive(Debug, Clone)]
enum ConfigFile {
    /// `--config` or `SWITCHBOARD_CONFIG`.
    Given(PathBuf),
    /// `./switchboard.toml`, found in the working directory.
    Found(PathBuf),
    /// No file: built-in defaults.
    None,
}

impl ConfigFile {
    /// `given`, else `./switchboard.toml` if it exists.
    fn resolve(given: Option<PathBuf>) -> Self {
        match given {
            Some(path) => Self::Given(path),
            None => {
                let default = PathBuf::from("switchboard.toml");
                if default.exists() {
                    Self::Found(default)
                } else {
                    Self::None
                }
            }
        }
    }

    fn path(&self) -> Option<PathBuf> {
        match self {
            Self::Given(path) | Self::Found(path) => Some(path.clone()),
            Self::None => None,
        }
    }
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(path) => write!(f, "{}", path.display()),
            Self::Found(path) => write!(f, "{} (found in the working directory)", path.display()),
            Self::None => f.write_str("none (built-in defaults)"),
        }
    }
}

impl ServeArgs {
    fn sources(&self, file: &ConfigFile) -> Sources {
        let mut flags = Vec::new();
        if let Some(a) = &self.address {
            flags.push(("address".to_string(), Value::String(a.clone())));
        }
        if let Some(m) = self.mode {
            flags.push(("mode".to_string(), Value::String(m.as_str().into())));
        }
        if let Some(l) = &self.log_level {
            flags.push(("log.level".to_string(), Value::String(l.clone())));
        }
        Sources::from_env(file.path(), flags)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Checkconfig { file }) => checkconfig(file),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Gentoken(args)) => gentoken(args),
        None => serve(cli.serve),
    }
}

fn checkconfig(file: PathBuf) -> ExitCode {
    let sources = Sources {
        file: Some(file.clone()),
        env: Vec::new(),
        flags: Vec::new(),
    };
    match config::load(&sources) {
        Ok(c) => {
            println!(
                "{}: OK (mode {}, broker {}, {} namespaces)",
                file.display(),
                c.mode.as_str(),
                c.broker.kind.as_str(),
                c.channel.namespaces.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (syntax, fields) = e.problems.split_at(e.syntax_errors.min(e.problems.len()));
            if !syntax.is_empty() {
                eprintln!("{}: {} syntax error(s)", file.display(), syntax.len());
                for p in syntax {
                    eprintln!("  {p}");
                }
            }
            if !fields.is_empty() {
                let note = if syntax.is_empty() {
                    ""
                } else {
                    " (checked without the lines above)"
                };
                eprintln!("{}: {} problem(s){note}", file.display(), fields.len());
                for p in fields {
                    eprintln!("  {p}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn gentoken(args: GentokenArgs) -> ExitCode {
    let file = ConfigFile::resolve(args.config);
    let config = match config::load(&Sources::from_env(file.path(), Vec::new())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\n(config file: {file})");
            return ExitCode::FAILURE;
        }
    };
    match switchboard::token::generate(&config, &args.user, args.ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let file = ConfigFile::resolve(args.config.clone());
    let sources = args.sources(&file);
    let config = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\n(config file: {file})");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let mut origin = format!("config file: {file}");
    let env = sources.applied_env();
    if !env.is_empty() {
        origin.push_str("; environment: ");
        origin.push_str(&env.join(", "));
    }
    tracing::info!(
        "starting switchboard {} in {} mode; {origin}",
        env!("CARGO_PKG_VERSION"),
        config.mode.as_str(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let address = config.address;
        let served = async {
            let node = build_node(config).await?;
            node.serve(address).await
        };
        match served.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The node of `config`; with the demo applications (their namespaces, handlers and pages at
/// `/`) when `demos.enabled`, which production mode never turns on by itself.
async fn build_node(mut config: Config) -> anyhow::Result<switchboard::Node> {
    if !config.demos.enabled {
        return switchboard::Node::builder().config(config).build().await;
    }
    let demos = switchboard_demos::Demos::new();
    demos.configure(&mut config);
    let node = demos
        .install(switchboard::Node::builder().config(config))
        .build()
        .await?;
    demos.start(&node);
    Ok(node)
}

/// Logs go to stdout, with colours only when it is a terminal (and `NO_COLOR` is not set).
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stdout().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
