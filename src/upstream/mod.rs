//! Stage 5, upstream: one shared HTTP client that calls Gcore with the injected key.
//!
//! The request is built from scratch: the configured base URL, the route's configured path, the
//! canonical query, `Authorization: APIKey <secret>` (marked sensitive), `Accept` and our
//! `User-Agent`. No caller header is ever copied, so caller credentials, cookies, `Host`,
//! `Forwarded`/`X-Forwarded-*` and hop-by-hop headers cannot leak upstream. Redirects are not
//! followed. Bodies are streamed and capped at `upstream.max_body`. Error bodies are dropped
//! unread: Gcore's 401 echoes part of the key. Retries with backoff live here, and so does the
//! per-account [`breaker`] (circuit breaker and pauses); the order of breaker, budget, shared
//! cache and call for one miss is `proxy::miss`'s, serving stale is `proxy`'s.
//!
//! This is the only room that ever sees the Gcore key in clear: [`UpstreamKey`] keeps it in a
//! [`SecretString`] and hands out only derived values (a fingerprint, a MAC key for shared
//! values) outside this module. The proxy environment variables are ignored
//! (`.no_proxy()`): the key goes to `upstream.base_url`'s host and nowhere else.

pub(crate) mod breaker;
mod key;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use tokio::time::Instant;

pub(crate) use breaker::Breaker;
pub use key::{Account, UpstreamKey};
pub use settings::UpstreamSettings;

mod settings;

/// Why an upstream fetch failed. Carries no upstream bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    /// Connect error.
    #[error("connect error")]
    Connect,
    /// Timed out.
    #[error("timed out")]
    Timeout,
    /// Upstream answered status ….
    #[error("upstream answered status {0}")]
    Status(u16),
    /// Upstream rejected our API key (status …).
    #[error("upstream rejected our API key (status {0})")]
    Unauthorized(u16),
    /// Upstream rate-limited us.
    #[error("upstream rate-limited us")]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// Upstream body larger than upstream.max_body.
    #[error("upstream body larger than upstream.max_body")]
    TooLarge,
    /// Upstream body could not be read.
    #[error("upstream body could not be read")]
    Body,
    /// Upstream body is not valid JSON.
    #[error("upstream body is not valid JSON")]
    InvalidBody,
    /// Upstream call budget exhausted.
    #[error("upstream call budget exhausted")]
    BudgetExhausted {
        /// When to try again.
        retry_after: Duration,
    },
    /// Upstream calls paused (circuit open or upstream asked us to wait).
    #[error("upstream calls paused (circuit open or upstream asked us to wait)")]
    Paused {
        /// When to try again.
        retry_after: Duration,
    },
}

impl UpstreamFailure {
    /// A short fixed label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::Status(_) => "bad_status",
            Self::Unauthorized(_) => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Body => "body_error",
            Self::InvalidBody => "invalid_body",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::Paused { .. } => "paused",
        }
    }

    /// The HTTP status the upstream answered, when it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status(s) | Self::Unauthorized(s) if *s != 0 => Some(*s),
            Self::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// Whether the call never left the gateway (budget, pause): not an upstream failure.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::BudgetExhausted { .. } | Self::Paused { .. })
    }

    fn retryable(&self) -> bool {
        matches!(self, Self::Connect | Self::Status(502..=504))
    }
}

/// Retry-After when Gcore sends a 429 without one (its MCP docs say "wait 60 seconds").
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A Retry-After further out than this is clamped: a typo upstream must not stop us for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// First retry backoff cap; doubles per attempt (full jitter picks uniformly below the cap).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The most the backoff before retry `retry` (1-based) sleeps; full jitter picks below it.
fn backoff_cap(retry: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The shared upstream client (connection pool, TLS sessions).
pub(crate) struct Upstream {
    http: reqwest::Client,
    settings: UpstreamSettings,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client. Fails only if the TLS backend cannot initialise.
    pub(crate) fn new(settings: &UpstreamSettings) -> Result<Upstream, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // HTTP_PROXY / HTTPS_PROXY / ALL_PROXY would receive the key: never consulted.
            .no_proxy()
            .https_only(!settings.allow_insecure_http)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("gcore-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream {
            http,
            settings: settings.clone(),
        })
    }

    /// The settings this client was built from (a reload compares them).
    pub(crate) fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Fetches `path?query` for `account`, retrying connect errors and 502/503/504 with
    /// exponential backoff and full jitter, never past `deadline`. `admit` is asked before
    /// every attempt (the global upstream budget) and may refuse it; `on_attempt` hears how
    /// each attempt ended and how long it took.
    pub(crate) async fn fetch<'b>(
        &self,
        account: &Account,
        path: &str,
        query: Option<&str>,
        deadline: Instant,
        admit: &(dyn Fn() -> Admission<'b> + Sync),
        on_attempt: &(dyn Fn(Result<(), &UpstreamFailure>, Duration) + Sync),
    ) -> Result<Bytes, UpstreamFailure> {
        let mut url = String::with_capacity(self.settings.base_url.len() + path.len() + 32);
        url.push_str(&self.settings.base_url);
        url.push_str(path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let auth = account
            .key
            .authorization()
            .map_err(|()| UpstreamFailure::Unauthorized(0))?;

        let mut attempt = 0u32;
        loop {
            attempt += 1;
            admit()
                .await
                .map_err(|retry_after| UpstreamFailure::BudgetExhausted { retry_after })?;
            let started = Instant::now();
            let per_attempt = (started + self.settings.timeout).min(deadline);
            let result = tokio::time::timeout_at(per_attempt, self.attempt(&url, &auth))
                .await
                .unwrap_or(Err(UpstreamFailure::Timeout));
            on_attempt(result.as_ref().map(|_| ()), started.elapsed());
            match result {
                Ok(body) => return Ok(body),
                Err(e) if e.retryable() && attempt <= self.settings.retries => {
                    let sleep = backoff_cap(attempt).mul_f64(rand::random::<f64>());
                    if Instant::now() + sleep >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(sleep).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt(&self, url: &str, auth: &HeaderValue) -> Result<Bytes, UpstreamFailure> {
        let resp = self
            .http
            .get(url)
            .header(header::AUTHORIZATION, auth.clone())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    UpstreamFailure::Timeout
                } else if e.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Body
                }
            })?;
        let status = resp.status();
        if status != StatusCode::OK {
            // The body is dropped unread: error bodies may echo the key.
            return Err(match status.as_u16() {
                401 | 403 => UpstreamFailure::Unauthorized(status.as_u16()),
                429 => UpstreamFailure::RateLimited {
                    retry_after: parse_retry_after(resp.headers().get(header::RETRY_AFTER)),
                },
                s => UpstreamFailure::Status(s),
            });
        }
        let max = self.settings.max_body;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(UpstreamFailure::TooLarge);
        }
        let mut resp = resp;
        let mut buf =
            BytesMut::with_capacity(resp.content_length().unwrap_or(4096).min(max as u64) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            if e.is_timeout() {
                UpstreamFailure::Timeout
            } else {
                UpstreamFailure::Body
            }
        })? {
            if buf.len() + chunk.len() > max {
                return Err(UpstreamFailure::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        // Only well-formed JSON counts as an answer, checked by the parser the renderer uses
        // (UTF-8, no lone surrogate escapes, numbers it can hold): an answer one caller could
        // not be served is an answer nobody is served, and it never replaces a good copy.
        crate::redact::check_json(&buf).map_err(|_| UpstreamFailure::InvalidBody)?;
        Ok(buf.freeze())
    }
}

/// The answer of the upstream budget for one attempt (it may ask Redis): `Err(retry_after)`
/// refuses the attempt.
pub(crate) type Admission<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Duration>> + Send + 'a>>;

/// `Retry-After` as delta-seconds or HTTP-date; default 60 s when absent or unparseable,
/// clamped to one hour.
pub(crate) fn parse_retry_after(v: Option<&HeaderValue>) -> Duration {
    let Some(s) = v.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return DEFAULT_RETRY_AFTER;
    };
    let d = if let Ok(secs) = s.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(when) = httpdate::parse_http_date(s) {
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    } else {
        DEFAULT_RETRY_AFTER
    };
    d.min(MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(None), DEFAULT_RETRY_AFTER);
        let v = HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(Some(&v)), Duration::from_secs(7));
        let v = HeaderValue::from_static("soon");
        assert_eq!(parse_retry_after(Some(&v)), DEFAULT_RETRY_AFTER);
        let v = HeaderValue::from_static("999999");
        assert_eq!(parse_retry_after(Some(&v)), MAX_RETRY_AFTER);
        let past = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_retry_after(Some(&past)), Duration::ZERO);
    }
}
