//! Property tests for the parsers that see caller or operator bytes first: path
//! normalisation (against an independent RFC 3986 reference and an allow-list), query
//! canonicalisation, credential headers, and config parsing (arbitrary TOML never panics).
//! Case counts are modest so the suite stays quick on two cores.

use std::collections::HashMap;

use gcore_gateway::auth::{credential, lookup, Credential, KeyHash};
use gcore_gateway::config::Config;
use gcore_gateway::routing::{canonical_query, normalize, validate_route_path, MAX_QUERY_PAIRS};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// The allow-list the path properties check against.
const ALLOW: &[&str] = &["/iam/clients/me", "/iam/users/me", "/cdn/resources"];

/// The route a raw path selects, exactly as the handler does: normalise, then exact lookup.
fn route_for(raw: &str) -> Option<&'static str> {
    let n = normalize(raw).ok()?;
    ALLOW.iter().copied().find(|r| *r == n.as_ref())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// An independent reading of a path: decode once, refuse encoded separators, backslashes and
/// control bytes, collapse `//`, then RFC 3986 §5.2.4 `remove_dot_segments` with climbing above
/// the root refused. `normalize` may refuse more, never resolve differently.
fn reference(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return None;
    }
    let b = raw.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                bytes.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(bytes).ok()?;
    if decoded.chars().any(|c| c == '\\' || c.is_ascii_control()) {
        return None;
    }
    let mut collapsed = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    let pop = |out: &mut String| -> Option<()> {
        if out.is_empty() {
            return None; // above the root
        }
        let cut = out.rfind('/').unwrap_or(0);
        out.truncate(cut);
        Some(())
    };
    let mut input = collapsed.as_str();
    let mut out = String::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("/./") {
            input = &input[input.len() - rest.len() - 1..];
        } else if input == "/." {
            input = "/";
        } else if let Some(rest) = input.strip_prefix("/../") {
            pop(&mut out)?;
            input = &input[input.len() - rest.len() - 1..];
        } else if input == "/.." {
            pop(&mut out)?;
            input = "/";
        } else {
            let end = input[1..].find('/').map_or(input.len(), |i| i + 1);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    Some(out)
}

/// Path pieces that matter: names, dot segments and their encodings, separators and their
/// encodings, double encodings, stray and invalid escapes, non-ASCII, control bytes.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "iam", "clients", "me", "users", "cdn", "resources", "admin", "x",
        ])
        .prop_map(String::from),
        4 => prop::sample::select(vec![
            "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "%252e", "%%32e", "%2f",
            "%2F", "%5c", "\\", "%", "%zz", "%6de", "%4D", "%00", "%7f", "\t", "é", "%c3%a9",
            "%ff", ";x=1", "%3f", "%23", "me%2f..", "..%2f", "%2e%2e%2f",
        ])
        .prop_map(String::from),
        1 => "[a-z%./\\\\0-9A-F]{0,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(piece(), 0..8).prop_map(|v| format!("/{}", v.join("/"))),
        1 => "/[ -~]{0,40}",
        1 => ".{0,40}",
    ]
}

/// Spellings of `target` that a lenient server would resolve to it.
fn obfuscated(target: Vec<&'static str>) -> impl Strategy<Value = String> {
    let n = target.len();
    (
        prop::collection::vec(0u8..6, n),
        prop::collection::vec(any::<bool>(), n),
    )
        .prop_map(move |(how, upper)| {
            let mut s = String::new();
            for (i, seg) in target.iter().enumerate() {
                let enc = |c: char| {
                    if upper[i] {
                        format!("%{:02X}", c as u32)
                    } else {
                        format!("%{:02x}", c as u32)
                    }
                };
                match how[i] {
                    0 => s.push_str(&format!("/{seg}")),
                    1 => s.push_str(&format!("/./{seg}")),
                    2 => s.push_str(&format!("//{seg}")),
                    3 => s.push_str(&format!("/zz/../{seg}")),
                    4 => s.push_str(&format!("/zz/{}{}/{seg}", enc('.'), enc('.'))),
                    _ => {
                        s.push('/');
                        for (j, c) in seg.chars().enumerate() {
                            if j % 2 == 0 {
                                s.push_str(&enc(c));
                            } else {
                                s.push(c);
                            }
                        }
                    }
                }
            }
            s
        })
}

fn target() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "iam",
            "clients",
            "me",
            "users",
            "cdn",
            "resources",
            "x",
        ]),
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No input selects an allow-listed route unless an independent RFC 3986 reading of it
    /// is that very route; every accepted path is canonical and a fixed point.
    #[test]
    fn no_input_reaches_a_route_it_does_not_spell(raw in path()) {
        if let Ok(n) = normalize(&raw) {
            let r = reference(&raw);
            prop_assert_eq!(r.as_deref(), Some(n.as_ref()), "raw {:?}", raw);
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//") && !n.contains('%') && !n.contains('\\'));
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
            let again = normalize(&n);
            prop_assert!(matches!(again, Ok(std::borrow::Cow::Borrowed(a)) if a == n.as_ref()));
        }
        if let Some(route) = route_for(&raw) {
            let r = reference(&raw);
            prop_assert_eq!(r.as_deref(), Some(route));
        }
    }

    /// Traversal, encoding and slash games around a target path resolve to that path or are
    /// refused: a path outside the allow-list never turns into a route.
    #[test]
    fn obfuscations_resolve_to_their_target_or_nothing(
        (t, raw) in target().prop_flat_map(|t| (Just(t.clone()), obfuscated(t)))
    ) {
        let want = format!("/{}", t.join("/"));
        if let Ok(n) = normalize(&raw) {
            prop_assert_eq!(n.as_ref(), want.as_str(), "raw {:?}", raw);
        }
        match route_for(&raw) {
            Some(route) => prop_assert_eq!(route, want.as_str()),
            None => prop_assert!(!ALLOW.contains(&want.as_str()) || normalize(&raw).is_err()),
        }
    }

    /// Configured route paths: accepted exactly when already normalised plain ASCII.
    #[test]
    fn route_path_validation_is_consistent(raw in path()) {
        if validate_route_path(&raw).is_ok() {
            prop_assert_eq!(normalize(&raw).map(|n| n.into_owned()), Ok(raw.clone()));
            prop_assert!(raw.bytes().all(|b| b.is_ascii_graphic() && b != b'%'));
        }
    }

    /// Query canonicalisation never panics, bounds the pairs, and is idempotent.
    #[test]
    fn canonical_query_is_bounded_and_idempotent(q in prop_oneof![
        "[a-z=&%0-9]{0,80}",
        ".{0,80}",
        prop::collection::vec("[a-c]{1,2}=[0-9]{0,2}", 0..40).prop_map(|v| v.join("&")),
    ]) {
        if let Ok(Some(c)) = canonical_query(Some(&q)) {
            let pairs: Vec<&str> = c.split('&').collect();
            prop_assert!(pairs.len() <= MAX_QUERY_PAIRS);
            prop_assert!(pairs.iter().all(|p| !p.is_empty()));
            prop_assert!(pairs.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(canonical_query(Some(&c)), Ok(Some(c.clone())));
        }
    }
}

/// Header names a credential parser might meet.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop::sample::select(vec![
        "authorization",
        "x-api-key",
        "proxy-authorization",
        "cookie",
        "x-other",
    ])
    .prop_map(HeaderName::from_static)
}

/// Header values as hyper could deliver them (any byte a `HeaderValue` accepts), biased
/// towards credential shapes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        "(APIKey|apikey|Bearer|bearer|Basic|APIKEY)?[ \t]{0,3}[!-~ \t]{0,40}"
            .prop_map(String::into_bytes),
        (0usize..700).prop_map(|n| format!("APIKey {}", "k".repeat(n)).into_bytes()),
    ]
    .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any header map: no panic, and a key is only ever taken from the single credential
    /// header present, as 1..=512 visible ASCII bytes.
    #[test]
    fn credential_parsing_never_panics(
        pairs in prop::collection::vec((header_name(), header_value()), 0..6)
    ) {
        let mut h = HeaderMap::new();
        for (k, v) in &pairs {
            h.append(k.clone(), v.clone());
        }
        if let Credential::Key(k) = credential(&h) {
            prop_assert!(!k.is_empty() && k.len() <= 512);
            prop_assert!(k.iter().all(|b| b.is_ascii_graphic()));
            let sources: Vec<&HeaderValue> = h
                .get_all("authorization")
                .iter()
                .chain(h.get_all("x-api-key").iter())
                .collect();
            prop_assert_eq!(sources.len(), 1);
            let v = sources[0].as_bytes();
            prop_assert!(v.windows(k.len()).any(|w| w == k));
        }
    }

    /// Every accepted spelling of a valid key yields exactly that key; longer keys never do.
    #[test]
    fn credential_forms_round_trip(
        key in "[!-~]{1,600}",
        scheme in prop::sample::select(vec!["APIKey", "apikey", "APIKEY", "Bearer", "bEaReR"]),
        pad in "[ \t]{0,3}",
        form in 0u8..2,
    ) {
        let mut h = HeaderMap::new();
        let value = if form == 0 {
            format!("{pad}{scheme} {pad}{key}{pad}")
        } else {
            format!("{pad}{key}{pad}")
        };
        let name = if form == 0 { "authorization" } else { "x-api-key" };
        h.insert(name, HeaderValue::from_str(&value).unwrap());
        let got = credential(&h);
        if key.len() <= 512 {
            prop_assert_eq!(got, Credential::Key(key.as_bytes()));
        } else {
            prop_assert_eq!(got, Credential::Malformed);
        }
    }

    /// Lookup finds a client for its own key and for no other.
    #[test]
    fn lookup_matches_only_the_same_key(a in "[!-~]{1,64}", b in "[!-~]{1,64}") {
        let keys: gcore_gateway::auth::KeyMap<usize> =
            [(KeyHash::of(a.as_bytes()), 7usize)].into_iter().collect();
        prop_assert_eq!(lookup(&keys, a.as_bytes()), Some(7));
        prop_assert_eq!(lookup(&keys, b.as_bytes()).is_some(), a == b);
        let shown = KeyHash::of(a.as_bytes()).to_string();
        prop_assert_eq!(KeyHash::parse(&shown), Ok(KeyHash::of(a.as_bytes())));
    }

    /// Parsing a stored hash never panics and never echoes what it was given.
    #[test]
    fn key_hash_parse_never_echoes(s in "[!-~]{0,80}") {
        if let Err(e) = KeyHash::parse(&s) {
            prop_assert!(s.len() < 16 || !e.contains(&s));
        }
    }
}

/// TOML values worth putting anywhere: wrong types, edge numbers, bad durations, sizes,
/// rates, JSONPaths, hashes, URLs, addresses.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "\"\"", "\"0s\"", "\"-1s\"", "\"1ns\"", "\"99999999999999999999h\"",
            "\"584942417355y\"", "0", "-1", "1", "4294967296", "18446744073709551615",
            "9223372036854775807", "1e308", "nan", "inf", "true", "[]", "[1, \"a\"]", "{}",
            "{ a = 1 }", "\"abc\"", "\"0/s\"", "\"1/s\"", "\"100000000000/s\"", "\"1/0s\"",
            "\"off\"", "\"0KiB\"", "\"16EiB\"", "\"99999999999999999999\"", "\"1.5MiB\"",
            "\"$..*\"", "\"$[\"", "\"$.users[?@.x]\"", "\"sha256:\"", "\"sha256:zz\"",
            "\"/../x\"", "\"//\"", "\"http://[::1\"", "\"ftp://x\"", "\"http://127.0.0.1:1\"",
            "\"https://\"", "\"0.0.0.0:0\"", "\"[::]:99999\"", "\"\\u0000\"", "\"é\"",
            "\"TEST_SECRET_A\"", "\"/dev/null\"", "\"A\"", "\"B\"", "\"restricted\"",
            "[\"/iam/clients/me\"]", "[\"$.email\"]",
        ])
        .prop_map(String::from),
        1 => "\"[ -~]{0,20}\"",
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// One edit of a valid config.
#[derive(Debug, Clone)]
enum Edit {
    SetValue(usize, String),
    Delete(usize),
    Duplicate(usize),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Duplicate),
        1 => (any::<usize>(), prop::sample::select(vec![
            "[redis]", "url = \"redis://127.0.0.1:1\"", "[profiles.p]", "allow = [\"$.id\"]",
            "remove = [\"$.email\"]", "profile = \"p\"", "[[routes]]", "path = \"/x\"",
            "[[clients]]", "name = \"c\"", "keys = []", "rate = \"1/s\"", "burst = 0",
            "api_key_file = \"/nonexistent\"", "[[accounts]]", "ttl = \"1ms\"",
            "admin_token_sha256 = \"sha256:00\"", "max_connections = 0",
            "keep_alive_timeout = \"0s\"", "nonsense = 1",
        ]))
            .prop_map(|(i, l)| Edit::Insert(i, l.to_string())),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::SetValue(i, v) => {
                // Only lines of the form `key = value`: keep the key, replace the value.
                let keyed: Vec<usize> = (0..lines.len())
                    .filter(|j| lines[*j].contains(" = "))
                    .collect();
                if let Some(j) = keyed.get(i % keyed.len().max(1)) {
                    let key = lines[*j].split(" = ").next().unwrap_or("").to_string();
                    lines[*j] = format!("{key} = {v}");
                }
            }
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            _ => {}
        }
    }
    lines.join("\n")
}

fn base_config() -> String {
    crate::support::config(
        "http://127.0.0.1:1",
        "[profiles.restricted]\nremove = [\"$.users[*].email\"]\nmask = [\"$.users[*].name\"]\n",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text is refused or accepted, never a panic.
    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in prop_oneof![
        ".{0,300}",
        "(\\[[a-z.]{1,12}\\]\n|[a-z_]{1,12} = [\"a-z0-9{}\\[\\],. ]{0,12}\n){0,12}",
    ]) {
        let _ = Config::parse(&text, "x", &HashMap::new());
    }

    /// Edits of a valid config (wrong types, edge values, missing and duplicated keys) are
    /// refused or accepted, never a panic; errors never quote a secret, and any accepted
    /// config yields caller-port limits that can be built.
    #[test]
    fn config_parse_never_panics_on_edited_configs(
        edits in prop::collection::vec(edit(), 1..4)
    ) {
        let text = apply(&base_config(), &edits);
        let _ = Config::parse(&text, "x", &HashMap::new());
        match Config::parse(&text, "x", &crate::support::secrets()) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains(crate::support::SECRET_A) && !msg.contains(crate::support::SECRET_B));
            }
            Ok(c) => {
                let limits = gcore_gateway::server::Limits::from_settings(&c.server);
                let _ = tokio::sync::Semaphore::new(limits.max_connections);
                let _ = tokio::sync::Semaphore::new(limits.max_in_flight);
            }
        }
    }
}

#[test]
fn base_config_is_valid() {
    assert!(Config::parse(&base_config(), "x", &crate::support::secrets()).is_ok());
}
