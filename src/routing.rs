//! Stage 3, routing: normalise the request path and match it against the allow-list.
//!
//! The normalised path is only used to *choose* a configured route; the upstream request is
//! always built from the route's configured path, never from caller bytes, so no spelling of
//! `..`, `%2e`, `%2f` or `//` can reach an upstream path that is not allow-listed. Matching is
//! exact and case-sensitive. Query strings are canonicalised (pairs sorted) so that the cache
//! key does not depend on parameter order. Method checks (405) and per-client restrictions
//! (403) are decided by the handler from what this module returns.

use std::borrow::Cow;

/// Why a path could not be normalised (always answered 404).
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath;

/// Normalises a raw request path: percent-decodes once, collapses empty segments (`//`),
/// resolves `.` and `..` (RFC 3986 §5.2.4: a trailing `/`, `/.` or `/..` leaves a trailing
/// slash, which no route has). Fails on an encoded `/` or `\`, a `%` left after decoding
/// (double encoding such as `%252e` or `%%32e`, or a stray `%`), control bytes, invalid UTF-8,
/// a `..` that climbs above the root, or a path not starting with `/`. The result is a fixed
/// point: normalising it again returns it unchanged (borrowed).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath);
    }
    // Fast path: already canonical (the common case on the hot path) -> no allocation.
    if canonical(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    // A '%' that survives one decoding is double encoding (`%252e`, `%%32e`) or a stray '%':
    // no route contains one, and a second decoder down the line must find nothing to decode.
    if decoded.contains(&b'%') {
        return Err(BadPath);
    }
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath)?;
    if decoded.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return Err(BadPath);
    }
    // An encoded slash would otherwise smuggle a segment boundary past the checks above.
    let raw_lower = raw.to_ascii_lowercase();
    if raw_lower.contains("%2f") || raw_lower.contains("%5c") {
        return Err(BadPath);
    }
    let mut segments: Vec<&str> = Vec::new();
    // Whether the path ends in a directory position (`/`, `/.`, `/..`), as RFC 3986 keeps it.
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(BadPath)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `path` (starting with `/`) is already what [`normalize`] makes of it, in one pass:
/// no `%`, `\\` or control byte, no empty segment but a trailing one (`//`), no `.` or `..`
/// segment.
fn canonical(path: &[u8]) -> bool {
    let (mut len, mut dots) = (0usize, true);
    let dot_segment = |len: usize, dots: bool| dots && (1..=2).contains(&len);
    for &b in path.iter().skip(1) {
        match b {
            b'/' => {
                if len == 0 || dot_segment(len, dots) {
                    return false;
                }
                (len, dots) = (0, true);
            }
            b'%' | b'\\' => return false,
            b if b.is_ascii_control() => return false,
            b => {
                len += 1;
                dots &= b == b'.';
            }
        }
    }
    !dot_segment(len, dots)
}

/// Checks a configured route path: absolute, already canonical, plain ASCII, no query.
pub fn validate_route_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid route path {path:?}: {why}"));
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    if path
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || matches!(b, b'?' | b'#' | b'%' | b'\\'))
    {
        return bad("use plain visible ASCII without ? # % or \\");
    }
    match normalize(path) {
        Ok(n) if n == path => Ok(()),
        _ => bad("must be normalised (no //, /./ or /../)"),
    }
}

/// The most query parameters kept in a cache key; more is refused (bounds key size and the
/// cache-busting an authenticated caller can do).
pub const MAX_QUERY_PAIRS: usize = 32;

/// Canonical form of a query string: empty pairs dropped, pairs sorted bytewise. `None` when
/// there is nothing left. Fails (404) on too many pairs or bytes outside visible ASCII.
pub fn canonical_query(raw: Option<&str>) -> Result<Option<Box<str>>, BadPath> {
    let Some(q) = raw.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if q.bytes().any(|b| !(0x21..=0x7e).contains(&b) || b == b'#') {
        return Err(BadPath);
    }
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    if pairs.len() > MAX_QUERY_PAIRS {
        return Err(BadPath);
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs.sort_unstable();
    Ok(Some(pairs.join("&").into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's question, asked the obvious way (what it replaced).
    fn canonical_reference(raw: &str) -> bool {
        !raw.contains("//")
            && !raw
                .bytes()
                .any(|b| matches!(b, b'%' | b'\\') || b.is_ascii_control())
            && !raw.split('/').any(|s| s == "." || s == "..")
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_obvious_one(
            path in "/[a-z./%\\\\\x00\x7f]{0,12}"
        ) {
            proptest::prop_assert_eq!(canonical(path.as_bytes()), canonical_reference(&path), "{:?}", path);
        }
    }

    #[test]
    fn the_one_pass_check_on_edges() {
        for p in [
            "/", "//", "/a", "/a/", "/a//b", "/.", "/..", "/...", "/a/./b", "/a/../b", "/.a",
            "/a.", "/a/..b", "/%2e", "/a\\b", "/a\u{7f}",
        ] {
            assert_eq!(canonical(p.as_bytes()), canonical_reference(p), "{p:?}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        assert!(matches!(normalize("/iam/clients/me"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn traversal_variants() {
        let n = |s| normalize(s).map(|c| c.into_owned());
        assert_eq!(n("/iam//clients/me").unwrap(), "/iam/clients/me");
        assert_eq!(n("/iam/./clients/me").unwrap(), "/iam/clients/me");
        assert_eq!(n("/iam/x/../clients/me").unwrap(), "/iam/clients/me");
        assert_eq!(
            n("/iam/clients/me/../../users/me").unwrap(),
            "/iam/users/me"
        );
        assert_eq!(
            n("/iam/clients/me/%2e%2e/%2E%2E/users").unwrap(),
            "/iam/users"
        );
        assert_eq!(n("/iam/clients/%6de").unwrap(), "/iam/clients/me");
        assert_eq!(n("/.."), Err(BadPath));
        assert_eq!(n("/iam%2fclients/me"), Err(BadPath));
        assert_eq!(n("/iam%5cclients/me"), Err(BadPath));
        assert_eq!(n("/iam/clients/me%00"), Err(BadPath));
        assert_eq!(n("/iam/%252e%252e/x"), Err(BadPath));
        assert_eq!(n("/iam/clients/%ff"), Err(BadPath));
        assert_eq!(n("iam/clients/me"), Err(BadPath));
        // Double encoding in any spelling, and stray percents.
        assert_eq!(n("/iam/%%32e%%32e/x"), Err(BadPath));
        assert_eq!(n("/iam/clients/%%36de"), Err(BadPath));
        assert_eq!(n("/iam/clients/me%"), Err(BadPath));
        // A trailing slash survives, however it is spelt; the root stays the root.
        assert_eq!(n("/iam/clients/me/").unwrap(), "/iam/clients/me/");
        assert_eq!(n("/iam/clients/me/.").unwrap(), "/iam/clients/me/");
        assert_eq!(n("/iam/clients/me//").unwrap(), "/iam/clients/me/");
        assert_eq!(n("/iam/clients/me/x/..").unwrap(), "/iam/clients/me/");
        assert_eq!(n("/iam/..").unwrap(), "/");
        assert_eq!(n("//").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
    }

    #[test]
    fn route_paths() {
        assert!(validate_route_path("/iam/clients/me").is_ok());
        assert!(validate_route_path("/iam//clients").is_err());
        assert!(validate_route_path("/iam/../x").is_err());
        assert!(validate_route_path("iam").is_err());
        assert!(validate_route_path("/iam?x=1").is_err());
    }

    #[test]
    fn queries() {
        assert_eq!(canonical_query(None), Ok(None));
        assert_eq!(canonical_query(Some("")), Ok(None));
        assert_eq!(canonical_query(Some("&&")), Ok(None));
        assert_eq!(
            canonical_query(Some("b=2&a=1&")).unwrap().as_deref(),
            Some("a=1&b=2")
        );
        let many = vec!["a=1"; MAX_QUERY_PAIRS + 1].join("&");
        assert_eq!(canonical_query(Some(&many)), Err(BadPath));
    }
}
