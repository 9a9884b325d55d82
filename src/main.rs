//! The `gcore-gateway` binary: parses the CLI, loads config, starts tracing, calls the library.
//! All behaviour lives in the library; errors become one line on stderr and an exit code.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use gcore_gateway::auth::{generate_key, KeyHash};
use gcore_gateway::config::Config;
use gcore_gateway::{demo, server};
use gcore_gateway::{ConfigSource, Gateway};

#[derive(Parser)]
#[command(
    name = "gcore-gateway",
    version,
    about = "Caching, key-hiding, rate-limiting gateway for the Gcore API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "GCORE_GATEWAY_CONFIG",
        default_value = "config/gateway.toml"
    )]
    config: PathBuf,
    /// Log format; default: pretty on a terminal, json otherwise. Filter with RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the config and print a summary (exit 2 if invalid).
    Check,
    /// Print sha256:<hex> of KEY (or of one line read from stdin) for clients.keys.
    HashKey { key: Option<String> },
    /// Print a new random caller key and its sha256: hash.
    GenKey,
    /// Run a fake Gcore upstream and the gateway in front of it, on loopback.
    Demo {
        /// Caller port; the admin port is PORT+1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Probe an admin URL (exit 0 on 200): a HEALTHCHECK for images without curl.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

/// Exit code for an invalid config (`check` and `serve`).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config, cli.log_format),
        Command::Check => return check(&cli.config),
        Command::HashKey { key } => hash_key(key),
        Command::GenKey => {
            let key = generate_key();
            out(&format!(
                "key:  {key}\nhash: {}\n",
                KeyHash::of(key.as_bytes())
            ));
            Ok(())
        }
        Command::Demo { port } => demo_cmd(port, cli.log_format),
        Command::Health { url } => health(&url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e
                .downcast_ref::<gcore_gateway::config::ConfigError>()
                .is_some()
            {
                EXIT_INVALID
            } else {
                1
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let mut text = format!("{}: OK\n{}", path.display(), config.summary());
            if let Some(tls) = &config.server.tls {
                if let Some(w) = tls.validity_warning(std::time::SystemTime::now()) {
                    text.push_str(&format!("warning: {w}\n"));
                }
            }
            let example: serde_json::Value =
                serde_json::from_str(demo::CLIENTS_ME).unwrap_or(serde_json::Value::Null);
            for p in &config.profiles {
                for (list, path) in p.unmatched(&example) {
                    text.push_str(&format!(
                        "warning: profiles.{}.{list}: {path:?} matches nothing in the example Gcore profile (typo?)\n",
                        p.name
                    ));
                }
            }
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`check | head -1` must not panic).
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn hash_key(key: Option<String>) -> anyhow::Result<()> {
    let key = match key {
        Some(k) => k,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the key from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(!key.is_empty(), "the key is empty");
    if key.len() < 16 {
        eprintln!(
            "warning: this key is shorter than 16 bytes and easy to guess; `gcore-gateway gen-key` makes a strong one"
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", KeyHash::of(key.as_bytes()))?;
    Ok(())
}

fn health(url: &str) -> anyhow::Result<()> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))?;
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).context("no HTTP answer")?;
    anyhow::ensure!(
        &head[9..12] == b"200",
        "{url} answered {}",
        String::from_utf8_lossy(&head[9..12])
    );
    Ok(())
}

/// Starts logging to stderr through a background writer thread, so no request waits on a
/// `write(2)`; the returned guard flushes what is queued when dropped (at exit). The queue is
/// lossless: when full, logging applies backpressure instead of dropping lines.
fn init_tracing(format: Option<LogFormat>) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_writer(writer);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(path: PathBuf, log: Option<LogFormat>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let _log = init_tracing(log);
    server::install_panic_hook();
    let rt = runtime()?;
    rt.block_on(async move {
        let (listen, admin_listen) = (config.server.listen, config.server.admin_listen);
        let listener = server::bind(listen)
            .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
        let admin = server::bind(admin_listen)
            .with_context(|| format!("cannot listen on {admin_listen} (server.admin_listen)"))?;
        tracing::info!(config = %path.display(), "config loaded");
        let gw = Gateway::new(config, ConfigSource::File(path))?;
        server::spawn_reload_on_sighup(gw.clone());
        server::run(gw, listener, admin, server::shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn demo_cmd(port: u16, log: Option<LogFormat>) -> anyhow::Result<()> {
    let _log = init_tracing(log.or(Some(LogFormat::Pretty)));
    server::install_panic_hook();
    let rt = runtime()?;
    rt.block_on(async move {
        let upstream = demo::start_fake_upstream()
            .await
            .context("cannot start the fake upstream")?;
        let admin_port = port.checked_add(1).context("--port must be below 65535")?;
        let listener = server::bind(([127, 0, 0, 1], port).into())
            .with_context(|| format!("cannot listen on 127.0.0.1:{port} (use --port)"))?;
        let admin = server::bind(([127, 0, 0, 1], admin_port).into())
            .with_context(|| format!("cannot listen on 127.0.0.1:{admin_port} (use --port)"))?;
        let gw = demo::gateway(demo::config_text(port, upstream))?;
        out(&format!("{}\n", demo::banner(port, upstream)));
        server::spawn_reload_on_sighup(gw.clone());
        server::run(gw, listener, admin, server::shutdown_signal()).await?;
        Ok(())
    })
}
