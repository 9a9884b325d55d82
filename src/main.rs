//! The `gcore-gateway` binary: parses the CLI, loads config, starts tracing, calls the library.
//! All behaviour lives in the library; errors become one line on stderr and an exit code.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use gcore_gateway::auth::{generate_key, KeyHash};
use gcore_gateway::config::raw::key_table_line;
use gcore_gateway::config::Config;
use gcore_gateway::{demo, server};
use gcore_gateway::{ConfigSource, Gateway};

/// Exit codes, shown under `--help` (and listed in the README).
const EXIT_CODES: &str = "\
Exit codes:
  0   success (serve: drained and stopped on SIGTERM/SIGINT; health: healthy)
  1   runtime failure (port in use, upstream or I/O error; health: unhealthy)
  2   invalid config (syntax, unknown key, bad value, missing secret)
  64  command-line usage error (unknown subcommand or flag, bad argument)";

/// Exit code for an invalid config (`check`, `serve`, `health`), as the contract says.
const EXIT_INVALID_CONFIG: u8 = 2;
/// Exit code for a command-line usage error (sysexits.h `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "gcore-gateway",
    version,
    about = "Caching, key-hiding, rate-limiting gateway for the Gcore API",
    after_help = EXIT_CODES,
    // Without a subcommand the gateway serves, so serve's flags are accepted here too; with a
    // subcommand they are not (`gcore-gateway --config X check` is a usage error).
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(
        flatten,
        next_help_heading = "Options of serve (the default when no COMMAND is given)"
    )]
    serve: ServeArgs,
}

#[derive(Args)]
struct ConfigArg {
    /// Config file (TOML).
    #[arg(
        long,
        env = "GCORE_GATEWAY_CONFIG",
        default_value = "config/gateway.toml"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    log: LogArg,
}

#[derive(Args)]
struct LogArg {
    /// Log format; default: pretty on a terminal, json otherwise. Filter with RUST_LOG.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate the config and print a summary (exit 2 if invalid).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also render this JSON answer through every profile and print, per profile, which
        /// field paths it keeps, masks, removes or drops, and which are new against the
        /// route's baseline.
        #[arg(long, value_name = "FILE")]
        sample: Option<PathBuf>,
        /// The route the sample is an answer of (its baseline); default: the first route.
        #[arg(long, value_name = "PATH", requires = "sample")]
        route: Option<String>,
    },
    /// Print sha256:<hex> of KEY (or of one line read from stdin) for clients.keys.
    HashKey { key: Option<String> },
    /// Print a new random caller key and its sha256: hash (with --id: the clients.keys line).
    GenKey {
        /// Key id (1-64 of A-Z a-z 0-9 - _ .): also prints the ready-to-paste clients.keys
        /// table line `{ id, hash, expires }`.
        #[arg(long, value_parser = key_id)]
        id: Option<String>,
        /// When the key stops working: RFC 3339 in UTC (2027-03-31T00:00:00Z) or a date
        /// (2027-03-31, meaning 00:00 UTC). Needs --id.
        #[arg(long, requires = "id", value_parser = gcore_gateway::units::timestamp)]
        expires: Option<std::time::SystemTime>,
    },
    /// Run a fake Gcore upstream and the gateway in front of it, on loopback.
    Demo {
        /// Caller port; the admin port is PORT+1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[command(flatten)]
        log: LogArg,
    },
    /// Probe the gateway's admin /healthz (exit 0 on 200): the image's HEALTHCHECK.
    ///
    /// Reads server.admin_listen from the config (only the [server] table; no secret is
    /// needed) and connects to it, on loopback when it is 0.0.0.0 or [::].
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// Probe this http:// URL instead of the config's admin_listen.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

/// A bad command-line argument that clap cannot see (an empty key, a port out of range): exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help / --version print to stdout and succeed; anything else is a usage error.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve(args.config.config, args.log.log_format),
        Command::Check {
            config,
            sample,
            route,
        } => return check(&config.config, sample.as_deref(), route.as_deref()),
        Command::HashKey { key } => hash_key(key),
        Command::GenKey { id, expires } => {
            let key = generate_key();
            let hash = KeyHash::of(key.as_bytes()).to_string();
            let mut text = format!("key:  {key}\nhash: {hash}\n");
            if let Some(id) = id {
                text.push_str(&format!(
                    "# for clients.keys:\n{},\n",
                    key_table_line(&id, &hash, expires)
                ));
            }
            out(&text);
            Ok(())
        }
        Command::Demo { port, log } => demo_cmd(port, log.log_format),
        Command::Health { config, url } => health(&config.config, url.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e
                .downcast_ref::<gcore_gateway::config::ConfigError>()
                .is_some()
            {
                EXIT_INVALID_CONFIG
            } else if e.downcast_ref::<Usage>().is_some() {
                EXIT_USAGE
            } else {
                1
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn check(
    path: &std::path::Path,
    sample: Option<&std::path::Path>,
    route: Option<&str>,
) -> ExitCode {
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
            let admin = config.server.admin_listen;
            if !admin.ip().is_loopback() && config.server.admin_token.is_none() {
                text.push_str(&format!(
                    "warning: server.admin_listen {admin} is not loopback and server.admin_token_sha256 is unset: \
                     /metrics and /admin/* answer whoever reaches that port (set a token, or restrict the port by network)\n"
                ));
            }
            for warning in config.warnings(std::time::SystemTime::now()) {
                text.push_str(&format!("warning: {warning}\n"));
            }
            if let Some(sample) = sample {
                match review_sample(&config, sample, route) {
                    Ok(review) => text.push_str(&review),
                    Err(e) => {
                        out(&text);
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}

/// `--id` of gen-key: the rules of `clients.keys[].id`.
fn key_id(s: &str) -> Result<String, String> {
    gcore_gateway::config::check_key_id(s).map(|()| s.to_string())
}

/// `check --sample`: the sample through every profile, against the route's baseline.
fn review_sample(
    config: &Config,
    sample: &std::path::Path,
    route: Option<&str>,
) -> anyhow::Result<String> {
    let text = std::fs::read(sample)
        .with_context(|| format!("cannot read the sample {}", sample.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("the sample {} is not JSON", sample.display()))?;
    let route = match route {
        Some(path) => config
            .routes
            .iter()
            .find(|r| &*r.path == path)
            .with_context(|| format!("--route {path:?} is not a configured route"))?,
        None => config.routes.first().context("the config has no route")?,
    };
    let baseline = route
        .baseline
        .as_ref()
        .map(|b| (b.source.as_str(), &*b.shape));
    Ok(format!(
        "\nsample {}\n{}",
        sample.display(),
        gcore_gateway::redact::review::report(&doc, &route.path, baseline, &config.profiles)
    ))
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
    if key.is_empty() {
        return Err(Usage("the key is empty".into()).into());
    }
    if key.len() < 16 {
        eprintln!(
            "warning: this key is shorter than 16 bytes and easy to guess; `gcore-gateway gen-key` makes a strong one"
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", KeyHash::of(key.as_bytes()))?;
    Ok(())
}

/// `health`: GET /healthz on the admin port named by the config (or `--url`), exit 0 on 200.
fn health(config: &std::path::Path, url: Option<&str>) -> anyhow::Result<()> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
    let (addr, authority, path) = match url {
        Some(url) => {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| Usage("--url must start with http://".into()))?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let addr = authority
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {authority}"))?
                .next()
                .with_context(|| format!("cannot resolve {authority}"))?;
            let path = if path.is_empty() { "/" } else { path };
            (addr, authority.to_string(), path.to_string())
        }
        None => {
            let listen = Config::server_of(config)?.admin_listen;
            anyhow::ensure!(
                listen.port() != 0,
                "{}: server.admin_listen has port 0; pass --url",
                config.display()
            );
            // A wildcard listener is reached on loopback from inside the host or container.
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let addr = SocketAddr::new(ip, listen.port());
            (addr, addr.to_string(), "/healthz".to_string())
        }
    };
    probe(addr, &authority, &path)
}

/// One HTTP/1.1 GET with a 2 s budget per step; Ok on a 200 status line.
fn probe(addr: std::net::SocketAddr, authority: &str, path: &str) -> anyhow::Result<()> {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Duration;
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .with_context(|| format!("no HTTP answer from {addr}"))?;
    anyhow::ensure!(
        &head[9..12] == b"200",
        "http://{authority}{path} answered {}",
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
        let admin_port = port
            .checked_add(1)
            .ok_or_else(|| Usage("--port must be below 65535".into()))?;
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
