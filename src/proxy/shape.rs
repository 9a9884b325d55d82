//! Refusals that need no key and no route: oversized URIs and heads, proxy-form targets, proxy
//! and echo methods, absurd method tokens, any `Transfer-Encoding`, and bodies on GET/HEAD.
//!
//! The server marks requests that came with a body ([`HasBody`]); the body itself is never
//! read, so it can never be forwarded. Nothing here looks at credentials.

use http::{header, Method, Request};

use crate::config::ConnLimits;
use crate::error::GatewayError;

/// Marks a request that came with a body (any bytes after the head). Inserted into the
/// request's extensions by the server; GET and HEAD requests carrying it are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HasBody;

/// The longest method token accepted. The longest standard one (`OPTIONS`, `CONNECT`) has 7
/// bytes and WebDAV's longest 16; anything far longer is garbage (or an attempt to fill logs).
pub(crate) const MAX_METHOD_BYTES: usize = 32;

/// Checks the request's shape against the caller-port limits.
pub(crate) fn check<B>(limits: &ConnLimits, req: &Request<B>) -> Result<(), GatewayError> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    if req.method().as_str().len() > MAX_METHOD_BYTES {
        return Err(GatewayError::BadRequest);
    }
    // Absolute-form and authority-form targets are proxy requests: not ours to serve. (An
    // HTTP/2 request always carries :scheme and :authority; its target is :path.)
    let proxy_form = req.uri().scheme().is_some() || req.uri().authority().is_some();
    if proxy_form && req.version() < http::Version::HTTP_2 {
        return Err(GatewayError::BadRequest);
    }
    check_method_and_framing(req)
}

/// Proxy and echo methods (405), any `Transfer-Encoding` (hyper drops a `Content-Length` sent
/// beside it, so this also covers CL+TE smuggling attempts; nothing here takes a body anyway),
/// and a body on GET or HEAD (400).
fn check_method_and_framing<B>(req: &Request<B>) -> Result<(), GatewayError> {
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed);
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH).iter().count() > 1
    {
        return Err(GatewayError::BadRequest);
    }
    let has_body = req.extensions().get::<HasBody>().is_some()
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body && (req.method() == Method::GET || req.method() == Method::HEAD) {
        return Err(GatewayError::BadRequest);
    }
    Ok(())
}

/// The method as the access log names it: one of the standard methods, else `OTHER` (a
/// caller's token never reaches the log).
pub(crate) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_from_a_closed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        let custom = Method::from_bytes(b"X".repeat(50).as_slice()).unwrap();
        assert_eq!(method_label(&custom), "OTHER");
    }
}
