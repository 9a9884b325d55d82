//! Configuration: read the TOML once, validate everything, build the runtime form.
//!
//! [`raw`] holds what serde reads; `validate` turns it into [`Config`], the form the gateway
//! runs on (`model`): durations and sizes parsed, caller-key hashes decoded into a map, routes
//! in a table, JSONPaths compiled, account secrets resolved into `UpstreamKey`s. Every error
//! names the config key at fault and never quotes a secret. `warnings` lists what a valid
//! config should still tell its operator (keys expiring soon). Runtime state (limiters,
//! cache, key usage) lives elsewhere; this module only describes what the operator asked for.

mod model;
pub mod raw;
mod validate;
mod warnings;

pub use crate::units;
pub use model::*;
pub use warnings::EXPIRY_WARNING;

use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;
use validate::Validator;

/// A config that failed to load or validate. The message names the key (and file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The route path, as configured.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or schema (unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message, values cut out.
        message: String,
    },
    /// A value that parsed but is not acceptable.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where the body came from.
        origin: String,
        /// The Gcore key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &ProcessEnv)
    }

    /// The `[server]` settings of the file at `path` (its listen addresses, timeouts, limits),
    /// validated without resolving any secret: for `health`, which must find the admin port of
    /// a running gateway even where its secrets are not readable.
    pub fn server_of(path: &Path) -> Result<ServerSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: one_line_toml_error(&text, &e),
        })?;
        Validator { origin: &origin }.server(&raw.server)
    }

    /// Parses and validates TOML `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, env: &dyn SecretSource) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: one_line_toml_error(text, &e),
        })?;
        Self::from_raw(raw, origin, env)
    }

    /// Validates a [`RawConfig`] into the runtime form.
    pub fn from_raw(
        raw: RawConfig,
        origin: &str,
        env: &dyn SecretSource,
    ) -> Result<Config, ConfigError> {
        let v = Validator { origin };
        let server = v.server(&raw.server)?;
        let upstream = v.upstream(&raw.upstream)?;
        let cache = v.cache(&raw.cache)?;
        let redis = raw.redis.as_ref().map(|r| v.redis(r, env)).transpose()?;
        let tracing = raw
            .tracing
            .as_ref()
            .map(|t| v.tracing(t))
            .transpose()?
            .flatten();
        let accounts = v.accounts(&raw.accounts, env)?;
        let (routes, route_by_path) = v.routes(&raw.routes, cache.ttl)?;
        let (profiles, profile_by_name) = v.profiles(&raw.profiles)?;
        let (clients, key_to_client) = v.clients(
            &raw.clients,
            &accounts,
            &route_by_path,
            &profile_by_name,
            routes.len(),
        )?;
        Ok(Config {
            origin: origin.to_string(),
            server,
            upstream,
            accounts,
            cache,
            redis,
            tracing,
            routes,
            route_by_path,
            profiles,
            clients,
            key_to_client,
        })
    }

    /// A short human summary for `check` and the startup log. Never contains a secret.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let names = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "listen {} (callers), {} (admin)\n",
            self.server.listen, self.server.admin_listen
        ));
        out.push_str(&format!("upstream {}\n", self.upstream.base_url));
        out.push_str(&format!(
            "accounts ({}): {}\n",
            self.accounts.len(),
            names(&mut self.accounts.iter().map(|a| a.name.to_string()))
        ));
        out.push_str(&format!(
            "routes ({}): {}\n",
            self.routes.len(),
            names(&mut self.routes.iter().map(|r| {
                let baseline = match &r.baseline {
                    Some(b) => format!("baseline {} ({} paths)", b.source, b.shape.len()),
                    None => "no baseline: no drift checking".to_string(),
                };
                format!(
                    "{} (ttl {}, {baseline})",
                    r.path,
                    humantime::format_duration(r.ttl)
                )
            }))
        ));
        out.push_str(&format!(
            "profiles ({}): {}\n",
            self.profiles.len(),
            names(&mut self.profiles.iter().map(|p| match p.on_new_fields() {
                Some(mode) => format!("{} (on_new_fields {})", p.name, mode.as_str()),
                None => format!("{} (allow-list)", p.name),
            }))
        ));
        out.push_str(&format!(
            "clients ({}): {}\n",
            self.clients.len(),
            names(&mut self.clients.iter().map(|c| {
                let mut s = format!(
                    "{} -> {} ({} key{}",
                    c.name,
                    self.accounts[c.account].name,
                    self.key_count(c.index),
                    if self.key_count(c.index) == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
                if let Some(p) = c.profile {
                    s.push_str(&format!(", profile {}", self.profiles[p].name));
                }
                if let Some(r) = c.rate {
                    s.push_str(&format!(", rate {r} burst {}", c.burst));
                }
                s.push(')');
                s
            }))
        ));
        if self.redis.is_some() {
            out.push_str("redis: enabled (shared L2 cache and rate limits)\n");
        }
        if let Some(tls) = &self.server.tls {
            out.push_str(&tls.summary());
            out.push('\n');
        }
        if !self.server.trusted_proxies.is_empty() {
            out.push_str(&format!(
                "trusted proxies: {}\n",
                names(
                    &mut self
                        .server
                        .trusted_proxies
                        .nets()
                        .iter()
                        .map(|n| n.to_string())
                )
            ));
        }
        if let Some(t) = &self.tracing {
            out.push_str(&format!(
                "tracing: OTLP {} to {} (service {}, sample ratio {})\n",
                t.protocol.as_str(),
                t.traces_url,
                t.service_name,
                t.sample_ratio
            ));
        }
        out
    }

    fn key_count(&self, client: usize) -> usize {
        self.clients[client].keys.len()
    }

    /// How long past its TTL an entry can still be served (the larger stale window).
    pub fn stale_windows(&self) -> Duration {
        self.cache
            .stale_while_revalidate
            .max(self.cache.stale_if_error)
    }

    /// The longest time any entry can still be useful: the longest route TTL plus the stale
    /// windows (how long the shared L2 keeps answers).
    pub fn max_retention(&self) -> Duration {
        let ttl = self
            .routes
            .iter()
            .map(|r| r.ttl)
            .max()
            .unwrap_or(self.cache.ttl);
        ttl + self.stale_windows()
    }
}

/// Checks a key id (`clients.keys[].id`, `gen-key --id`): 1-64 characters from `A-Z a-z 0-9
/// - _ .` (it ends up in metric labels and logs).
pub fn check_key_id(id: &str) -> Result<(), String> {
    validate::check_name(id)
}

/// Squeezes toml's multi-line error into one line: "line L, column C: message".
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = without_quoted_values(e.message().trim());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

/// serde quotes the offending value (`invalid type: string "…"`); the value may be a key pasted
/// in the wrong place, so quoted strings are cut out of parser messages. Field names are
/// quoted with backticks and stay.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for c in message.lines().next().unwrap_or("").chars() {
        match (c, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…\"");
            }
            ('"', true) => in_quote = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}
