//! Property tests of the redaction stage on generated documents and profiles.
//!
//! Documents use a small key alphabet so that generated paths actually hit. Paths are built
//! from name, bracket-name, wildcard and descendant segments ("content" paths: what they
//! select does not depend on array positions, so a removal cannot make them select something
//! new); index selectors, whose meaning shifts when an array shrinks, are checked against an
//! explicit model instead. Case counts are kept small: the whole suite runs on 2 cores.

use gcore_gateway::config::raw::RawProfile;
use gcore_gateway::redact::{Profile, MASK};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value};
use serde_json_path::{JsonPath, PathElement};

const KEYS: [&str; 5] = ["a", "b", "email", "name", "users"];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(&KEYS[..]).prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..50).prop_map(Value::from),
        prop::sample::select(vec!["x", MASK, "maria@example.test", ""]).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 40, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A document: an object at the top, like every Gcore answer.
fn doc() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

#[derive(Debug, Clone)]
enum Seg {
    Name(String),
    Bracket(String),
    Wild,
    BracketWild,
    Desc(String),
    DescWild,
    Index(i64),
}

impl Seg {
    fn render(&self) -> String {
        match self {
            Seg::Name(k) => format!(".{k}"),
            Seg::Bracket(k) => format!("['{k}']"),
            Seg::Wild => ".*".into(),
            Seg::BracketWild => "[*]".into(),
            Seg::Desc(k) => format!("..{k}"),
            Seg::DescWild => "..*".into(),
            Seg::Index(i) => format!("[{i}]"),
        }
    }
}

fn content_seg() -> BoxedStrategy<Seg> {
    prop_oneof![
        4 => key().prop_map(Seg::Name),
        1 => key().prop_map(Seg::Bracket),
        2 => Just(Seg::Wild),
        1 => Just(Seg::BracketWild),
        2 => key().prop_map(Seg::Desc),
        1 => Just(Seg::DescWild),
    ]
    .boxed()
}

fn any_seg() -> BoxedStrategy<Seg> {
    prop_oneof![4 => content_seg(), 1 => (-3i64..4).prop_map(Seg::Index)].boxed()
}

/// A path of 1 to 3 segments (never `$` alone, which selects the whole document).
fn path(seg: BoxedStrategy<Seg>) -> impl Strategy<Value = String> {
    prop::collection::vec(seg, 1..4)
        .prop_map(|segs| format!("${}", segs.iter().map(Seg::render).collect::<String>()))
}

fn paths(seg: BoxedStrategy<Seg>, n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(path(seg), n)
}

fn compile(remove: &[String], mask: &[String], allow: Option<&[String]>) -> Profile {
    let raw = RawProfile {
        remove: remove.to_vec(),
        mask: mask.to_vec(),
        allow: allow.map(<[String]>::to_vec),
        ..Default::default()
    };
    Profile::compile("prop", &raw).unwrap_or_else(|e| panic!("{}: {}", e.key, e.message))
}

fn query<'a>(p: &str, doc: &'a Value) -> Vec<&'a Value> {
    JsonPath::parse(p).unwrap().query(doc).all()
}

/// One step of a location, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Name(String),
    Index(usize),
}

/// The locations of the nodes `p` selects in `doc`.
fn locate(p: &str, doc: &Value) -> Vec<Vec<Step>> {
    JsonPath::parse(p)
        .unwrap()
        .query_located(doc)
        .locations()
        .map(|l| {
            l.iter()
                .map(|e| match e {
                    PathElement::Name(n) => Step::Name(n.to_string()),
                    PathElement::Index(i) => Step::Index(*i),
                })
                .collect()
        })
        .collect()
}

/// The node at `loc`, if any.
fn get<'a>(doc: &'a Value, loc: &[Step]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |v, step| match (v, step) {
        (Value::Object(m), Step::Name(n)) => m.get(n),
        (Value::Array(a), Step::Index(i)) => a.get(*i),
        _ => None,
    })
}

/// Every node's location in `doc`, the root included.
fn all_locations(doc: &Value) -> Vec<Vec<Step>> {
    let mut all = locate("$..*", doc);
    all.push(Vec::new());
    all
}

fn redacted(p: &Profile, doc: &Value) -> Value {
    let mut d = doc.clone();
    p.apply(&mut d);
    d
}

proptest! {
    #![proptest_config(config(160))]

    /// Deny mode: no `remove` path selects anything afterwards, every `mask` match is "***" or
    /// null, and a second pass changes nothing.
    #[test]
    fn deny_leaves_no_match_and_is_idempotent(
        doc in doc(),
        remove in paths(content_seg(), 0..3),
        mask in paths(any_seg(), 0..3),
    ) {
        let p = compile(&remove, &mask, None);
        let out = redacted(&p, &doc);
        for r in &remove {
            prop_assert!(query(r, &out).is_empty(), "{r} still matches {out}");
        }
        for m in &mask {
            for v in query(m, &out) {
                prop_assert!(v.is_null() || v.as_str() == Some(MASK), "{m} left {v} in {out}");
            }
        }
        prop_assert_eq!(redacted(&p, &out), out.clone(), "not idempotent");
        // Redaction only takes away: every node left is where it was, unchanged or masked.
        for loc in all_locations(&out) {
            let (now, was) = (get(&out, &loc).unwrap(), get(&doc, &loc));
            let same_shape = match (now, was) {
                (Value::Object(_), Some(Value::Object(_))) => true,
                (Value::Array(_), Some(Value::Array(_))) => true,
                (v, Some(w)) => v == w || v.is_null() || v.as_str() == Some(MASK),
                (_, None) => false,
            };
            prop_assert!(same_shape, "{loc:?}: {now} was {was:?}");
        }
        // The serialised form is what apply produced.
        let rendered = p.render(doc.to_string().as_bytes()).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Value>(&rendered).unwrap(), out);
    }

    /// Allow mode: every node left is an allowed match, inside one, or a container on the way
    /// to one; every allowed value is still there, in order; a second pass changes nothing.
    #[test]
    fn allow_keeps_nothing_else_and_is_idempotent(
        doc in doc(),
        allow in paths(content_seg(), 1..4),
    ) {
        let p = compile(&[], &[], Some(&allow));
        let out = redacted(&p, &doc);
        prop_assert!(out.is_object());
        let allowed: Vec<Vec<Step>> = allow.iter().flat_map(|a| locate(a, &out)).collect();
        for loc in all_locations(&out) {
            let covered = loc.is_empty()
                || allowed.iter().any(|m| loc.starts_with(m) || m.starts_with(&loc));
            prop_assert!(covered, "{loc:?} is neither allowed nor on the way to it: {out}");
        }
        for a in &allow {
            prop_assert_eq!(query(a, &out), query(a, &doc), "{} lost or changed", a);
        }
        prop_assert_eq!(redacted(&p, &out), out.clone(), "not idempotent");
    }

    /// Index selectors address the array as received: removing a set of positions (in any
    /// order, negative ones from the end) leaves exactly the others, in order.
    #[test]
    fn positional_removal_follows_the_model(
        len in 0usize..8,
        picks in prop::collection::vec(-9i64..9, 0..5),
        union in any::<bool>(),
    ) {
        let items: Vec<Value> = (0..len as i64).map(Value::from).collect();
        let doc = serde_json::json!({"users": items, "id": 1});
        let remove: Vec<String> = if union && !picks.is_empty() {
            let list: Vec<String> = picks.iter().map(i64::to_string).collect();
            vec![format!("$.users[{}]", list.join(","))]
        } else {
            picks.iter().map(|i| format!("$.users[{i}]")).collect()
        };
        let p = compile(&remove, &[], None);
        let out = redacted(&p, &doc);
        let n = len as i64;
        let gone: Vec<i64> = picks
            .iter()
            .map(|&i| if i < 0 { n + i } else { i })
            .filter(|i| (0..n).contains(i))
            .collect();
        let want: Vec<Value> = (0..n).filter(|i| !gone.contains(i)).map(Value::from).collect();
        prop_assert_eq!(&out["users"], &Value::Array(want));
        prop_assert_eq!(&out["id"], &Value::from(1));
    }

    /// Masking by position replaces exactly the addressed elements and shifts nothing.
    #[test]
    fn positional_mask_follows_the_model(
        items in prop::collection::vec(leaf(), 0..6),
        picks in prop::collection::vec(-7i64..7, 0..4),
    ) {
        let doc = serde_json::json!({"users": items.clone()});
        let mask: Vec<String> = picks.iter().map(|i| format!("$.users[{i}]")).collect();
        let out = redacted(&compile(&[], &mask, None), &doc);
        let n = items.len() as i64;
        let hit = |i: i64| picks.iter().any(|&p| (if p < 0 { n + p } else { p }) == i);
        let want: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(i, v)| match (hit(i as i64), v) {
                (false, v) => v.clone(),
                (true, Value::String(_)) => Value::from(MASK),
                (true, _) => Value::Null,
            })
            .collect();
        prop_assert_eq!(&out["users"], &Value::Array(want));
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Fails closed: whatever bytes are not one JSON document never come back from a profile.
    #[test]
    fn non_json_never_renders(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            doc().prop_map(|d| {
                let mut s = d.to_string().into_bytes();
                s.truncate(s.len().saturating_sub(1));
                s
            }),
            doc().prop_map(|d| format!("{d} {d}").into_bytes()),
        ],
        remove in paths(content_seg(), 0..2),
    ) {
        let p = compile(&remove, &[], None);
        let parsed = serde_json::from_slice::<Value>(&body);
        match p.render(&body) {
            Ok(_) => prop_assert!(parsed.is_ok()),
            Err(_) => prop_assert!(parsed.is_err()),
        }
    }
}
