//! `switchboard`: the real-time messaging server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_server::config::{self, Config, LogFormat, Mode, Sources};
use toml::Value;

/// Switchboard: a real-time messaging server (Centrifugo client protocol, WebSocket).
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Check a configuration file and report every invalid field.
    Checkconfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print a connection token (HS256) signed with the configured `client.token.hmac_secret_key`.
    Gentoken {
        /// User id (`sub` claim); empty for an anonymous token.
        #[arg(long, short = 'u', default_value = "")]
        user: String,
        /// Lifetime in seconds; 0 = no expiry.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        serve: ServeArgs,
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

impl ServeArgs {
    fn sources(&self) -> Sources {
        let mut flags = Vec::new();
        if let Some(a) = &self.address {
            flags.push(("address".to_string(), Value::String(a.clone())));
        }
        if let Some(m) = self.mode {
            let m = match m {
                Mode::Development => "development",
                Mode::Production => "production",
            };
            flags.push(("mode".to_string(), Value::String(m.into())));
        }
        if let Some(l) = &self.log_level {
            flags.push(("log.level".to_string(), Value::String(l.clone())));
        }
        let file = self.config.clone().or_else(|| {
            let default = PathBuf::from("switchboard.toml");
            default.exists().then_some(default)
        });
        Sources::from_env(file, flags)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Checkconfig { file }) => checkconfig(file),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Gentoken { user, ttl, serve }) => gentoken(&user, ttl, &serve),
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
                "{}: OK (mode {:?}, {} namespaces)",
                file.display(),
                c.mode,
                c.channel.namespaces.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
            for p in &e.problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    }
}

fn gentoken(user: &str, ttl: u64, args: &ServeArgs) -> ExitCode {
    let config = match config::load(&args.sources()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match switchboard_server::token::generate(&config, user, ttl) {
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
    let config = match config::load(&args.sources()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
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
        match switchboard_server::Server::start(config).await {
            Ok(server) => {
                server
                    .run_until(switchboard_server::shutdown_signal())
                    .await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
