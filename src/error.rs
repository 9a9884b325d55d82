//! The one error type of the request path and its one status table.
//!
//! [`GatewayError`] variants are grouped by source (caller, upstream, internal). The mapping to
//! the contract's status and `code` lives in exactly one place, [`GatewayError::status_code`],
//! pinned by a unit test. Error bodies carry a fixed message per variant, never internal detail
//! and never upstream bytes; detail is logged by the caller of this module with the request id.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Everything that can end a request early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    // --- caller ---
    /// Missing or unknown API key.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// Too many failed authentications from this address.
    #[error("too many failed authentications from this address")]
    AuthThrottled {
        /// When to try again.
        retry_after: Duration,
    },
    /// Client not allowed on this route.
    #[error("client not allowed on this route")]
    Forbidden,
    /// Not found.
    #[error("not found")]
    NotFound,
    /// Method not allowed.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Rate limit exceeded.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// Request URI too long.
    #[error("request URI too long")]
    UriTooLong,
    /// Request header fields too large.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// Bad request.
    #[error("bad request")]
    BadRequest,
    // --- upstream ---
    /// Upstream error.
    #[error("upstream error")]
    UpstreamError,
    /// Upstream unavailable.
    #[error("upstream unavailable")]
    UpstreamUnavailable {
        /// When to try again.
        retry_after: Option<Duration>,
    },
    /// Upstream timed out.
    #[error("upstream timed out")]
    UpstreamTimeout,
    // --- ours ---
    /// Gateway overloaded.
    #[error("gateway overloaded")]
    Overloaded,
    /// Internal error.
    #[error("internal error")]
    Internal,
}

/// What a caller is told when the upstream failed and no stale copy could be served.
impl From<crate::upstream::UpstreamFailure> for GatewayError {
    fn from(f: crate::upstream::UpstreamFailure) -> Self {
        use crate::upstream::UpstreamFailure as F;
        match f {
            F::Timeout => GatewayError::UpstreamTimeout,
            F::RateLimited { retry_after }
            | F::BudgetExhausted { retry_after }
            | F::Paused { retry_after } => GatewayError::UpstreamUnavailable {
                retry_after: Some(retry_after),
            },
            F::Connect
            | F::Status(_)
            | F::Unauthorized(_)
            | F::TooLarge
            | F::Body
            | F::InvalidBody => GatewayError::UpstreamError,
        }
    }
}

impl GatewayError {
    /// The contract's status and error code for this error. The only such table.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use GatewayError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AuthThrottled { .. } | RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            UriTooLong => (StatusCode::URI_TOO_LONG, "bad_request"),
            HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_request"),
            BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            UpstreamError => (StatusCode::BAD_GATEWAY, "upstream_error"),
            UpstreamUnavailable { .. } | Overloaded => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable")
            }
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The caller-facing message (fixed text, no detail).
    fn message(&self) -> &'static str {
        use GatewayError::*;
        match self {
            Unauthorized => "missing or unknown API key (send Authorization: APIKey <key>, Bearer <key> or X-Api-Key)",
            AuthThrottled { .. } => "too many failed authentications from this address; retry later",
            Forbidden => "this client is not allowed on this route",
            NotFound => "no such route",
            MethodNotAllowed => "only GET and HEAD are allowed",
            RateLimited { .. } => "rate limit exceeded; retry after the time in Retry-After",
            UriTooLong => "request URI too long",
            HeadersTooLarge => "request header fields too large",
            BadRequest => "malformed request",
            UpstreamError => "the upstream answered with an error or an invalid response",
            UpstreamUnavailable { .. } => "the upstream is unavailable or rate-limited; retry later",
            UpstreamTimeout => "the upstream did not answer in time",
            Overloaded => "the gateway is overloaded; retry later",
            Internal => "internal error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        use GatewayError::*;
        match self {
            AuthThrottled { retry_after } | RateLimited { retry_after } => Some(*retry_after),
            UpstreamUnavailable { retry_after } => *retry_after,
            Overloaded => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Builds the JSON error response. `request_id` is echoed in the body (the header is set
    /// by the request-id layer).
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let (status, code) = self.status_code();
        let body = serde_json::json!({
            "error": {
                "status": status.as_u16(),
                "code": code,
                "message": self.message(),
                "request_id": request_id,
            }
        });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            GatewayError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("APIKey"));
            }
            GatewayError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        if let Some(d) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        resp
    }
}

/// Whole seconds, rounded up, at least 1 (a `Retry-After: 0` invites a hot retry loop).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GatewayError::*;

    #[test]
    fn status_table_matches_contract() {
        let d = Duration::from_millis(1500);
        let table: &[(GatewayError, u16, &str)] = &[
            (Unauthorized, 401, "unauthorized"),
            (Forbidden, 403, "forbidden"),
            (NotFound, 404, "not_found"),
            (MethodNotAllowed, 405, "method_not_allowed"),
            (RateLimited { retry_after: d }, 429, "rate_limited"),
            (AuthThrottled { retry_after: d }, 429, "rate_limited"),
            (UpstreamError, 502, "upstream_error"),
            (
                UpstreamUnavailable {
                    retry_after: Some(d),
                },
                503,
                "upstream_unavailable",
            ),
            (UpstreamTimeout, 504, "upstream_timeout"),
            (Internal, 500, "internal"),
        ];
        for (err, status, code) in table {
            let (s, c) = err.status_code();
            assert_eq!((s.as_u16(), c), (*status, *code), "{err:?}");
            let resp = err.to_response("rid-1");
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(body["error"]["status"], *status);
            assert_eq!(body["error"]["code"], *code);
            assert_eq!(body["error"]["request_id"], "rid-1");
        }
        let r = RateLimited { retry_after: d }.to_response("x");
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            Unauthorized.to_response("x").headers()[header::WWW_AUTHENTICATE],
            "APIKey"
        );
        assert_eq!(
            MethodNotAllowed.to_response("x").headers()[header::ALLOW],
            "GET, HEAD"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
