//! Field paths and known shapes: pure functions over `serde_json::Value`.
//!
//! A path names a field, never a value: object keys by name, array elements as `[*]`, written
//! as an RFC 9535 JSONPath (`$.users[*].email`; a key that is not a plain identifier is
//! bracketed, `$['key-with-dash']`), so an operator can paste it into a profile. Every node of
//! a document has a path (containers included); the root itself is not listed. The paths of an
//! array are the union over its elements, so arrays of mixed types have the paths of each kind
//! (`$.a[*]`, `$.a[*].k`, `$.a[*][*]`), and an empty array contributes only its own path.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

/// Characters of a key shown in a path; a longer key is cut with `…` (a key that long is data,
/// and logs and `/admin/schema` need bounded lines).
pub const MAX_KEY_CHARS: usize = 64;

/// One step of a path: an object key, or any element of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The member named so.
    Name(&'a str),
    /// Any element (`[*]`).
    Item,
}

/// The known shape of a route: the field paths of its baseline sample, as a tree.
#[derive(Clone, PartialEq, Eq)]
pub struct Shape {
    root: Node,
    len: usize,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shape({} paths)", self.len)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Node {
    fields: BTreeMap<String, Node>,
    /// The union of the array's elements (`[*]`), when the node was a non-empty array.
    items: Option<Box<Node>>,
}

impl Node {
    fn add(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    self.fields.entry(k.clone()).or_default().add(child);
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.items.get_or_insert_with(Box::default).add(child);
                }
            }
            _ => {}
        }
    }

    fn len(&self) -> usize {
        let fields: usize = self.fields.values().map(|n| 1 + n.len()).sum();
        fields + self.items.as_ref().map_or(0, |n| 1 + n.len())
    }

    fn collect(&self, path: &mut String, out: &mut Vec<String>) {
        for (k, child) in &self.fields {
            let at = path.len();
            push_step(path, Step::Name(k));
            out.push(path.clone());
            child.collect(path, out);
            path.truncate(at);
        }
        if let Some(child) = &self.items {
            let at = path.len();
            push_step(path, Step::Item);
            out.push(path.clone());
            child.collect(path, out);
            path.truncate(at);
        }
    }

    fn retain_known(&self, v: &mut Value) {
        match v {
            Value::Object(m) => m.retain(|k, child| match self.fields.get(k) {
                Some(n) => {
                    n.retain_known(child);
                    true
                }
                None => false,
            }),
            Value::Array(a) => match &self.items {
                Some(n) => a.iter_mut().for_each(|child| n.retain_known(child)),
                None => a.clear(),
            },
            _ => {}
        }
    }
}

/// Walks `v` along `known` (`None`: below a new path, so everything is new) and adds the path
/// of every node the shape does not have to `out`. Allocates only for new paths.
fn new_paths(
    v: &Value,
    known: Option<&Node>,
    path: &mut String,
    seen: &mut HashSet<String>,
    out: &mut Vec<String>,
) {
    let mut visit = |step: Step<'_>, child: &Value, known: Option<&Node>, path: &mut String| {
        let at = path.len();
        push_step(path, step);
        if known.is_none() && !seen.contains(path.as_str()) {
            seen.insert(path.clone());
            out.push(path.clone());
        }
        new_paths(child, known, path, seen, out);
        path.truncate(at);
    };
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let k_known = known.and_then(|n| n.fields.get(k));
                visit(Step::Name(k), child, k_known, path);
            }
        }
        Value::Array(a) => {
            let items = known.and_then(|n| n.items.as_deref());
            for child in a {
                visit(Step::Item, child, items, path);
            }
        }
        _ => {}
    }
}

impl Shape {
    /// The shape of `sample`: every path it has.
    pub fn of(sample: &Value) -> Shape {
        let mut root = Node::default();
        root.add(sample);
        let len = root.len();
        Shape { root, len }
    }

    /// The shape of a JSON text (a baseline file).
    pub fn parse(sample: &[u8]) -> Result<Shape, serde_json::Error> {
        serde_json::from_slice::<Value>(sample).map(|v| Shape::of(&v))
    }

    /// How many paths it has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no path (a scalar or empty sample).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its paths, parents before children, keys in byte order.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len);
        self.root.collect(&mut String::from("$"), &mut out);
        out
    }

    /// Whether the path made of `steps` is part of the shape (the empty path always is).
    pub fn knows<'a>(&self, steps: impl IntoIterator<Item = Step<'a>>) -> bool {
        let mut node = &self.root;
        for step in steps {
            let next = match step {
                Step::Name(k) => node.fields.get(k),
                Step::Item => node.items.as_deref(),
            };
            match next {
                Some(n) => node = n,
                None => return false,
            }
        }
        true
    }

    /// The paths of `doc` that this shape does not have, sorted (each once, however many
    /// array elements carry it).
    pub fn new_paths(&self, doc: &Value) -> Vec<String> {
        let mut out = Vec::new();
        new_paths(
            doc,
            Some(&self.root),
            &mut String::from("$"),
            &mut HashSet::new(),
            &mut out,
        );
        out.sort_unstable();
        out
    }

    /// Checks an upstream body against this shape: `None` when it has no new path (or is not
    /// JSON, which the upstream stage has already refused).
    pub fn check(self: &Arc<Self>, body: &[u8]) -> Option<NewFields> {
        let doc: Value = serde_json::from_slice(body).ok()?;
        self.check_doc(&doc)
    }

    /// [`Shape::check`] on a parsed document.
    pub fn check_doc(self: &Arc<Self>, doc: &Value) -> Option<NewFields> {
        let paths = self.new_paths(doc);
        (!paths.is_empty()).then(|| NewFields {
            paths,
            known: self.clone(),
        })
    }

    /// Removes from `doc` every node whose path the shape does not have: unknown keys at every
    /// depth and every array index, and the elements of arrays whose elements are unknown.
    pub fn retain_known(&self, doc: &mut Value) {
        self.root.retain_known(doc);
    }
}

/// The new paths of one upstream answer, and the shape they were found against (which
/// [`NewFields::drop_from`] keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFields {
    paths: Vec<String>,
    known: Arc<Shape>,
}

impl NewFields {
    /// The new paths, sorted; never empty.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// Removes every new path from `doc` (a parsed copy of the answer they were found in).
    pub fn drop_from(&self, doc: &mut Value) {
        self.known.retain_known(doc);
    }
}

/// Every path of `doc` (parents before children; see the module doc for the notation).
pub fn paths(doc: &Value) -> Vec<String> {
    Shape::of(doc).paths()
}

/// Writes the path made of `steps` (`$` first).
pub fn format_path<'a>(steps: impl IntoIterator<Item = Step<'a>>) -> String {
    let mut s = String::from("$");
    for step in steps {
        push_step(&mut s, step);
    }
    s
}

fn push_step(path: &mut String, step: Step<'_>) {
    match step {
        Step::Item => path.push_str("[*]"),
        Step::Name(k) if is_shorthand(k) => {
            path.push('.');
            path.push_str(k);
        }
        Step::Name(k) => {
            path.push_str("['");
            for (i, c) in k.chars().enumerate() {
                if i == MAX_KEY_CHARS {
                    path.push('…');
                    break;
                }
                match c {
                    '\'' => path.push_str("\\'"),
                    '\\' => path.push_str("\\\\"),
                    '\u{8}' => path.push_str("\\b"),
                    '\u{c}' => path.push_str("\\f"),
                    '\n' => path.push_str("\\n"),
                    '\r' => path.push_str("\\r"),
                    '\t' => path.push_str("\\t"),
                    c if c.is_control() => path.push_str(&format!("\\u{:04x}", c as u32)),
                    c => path.push(c),
                }
            }
            path.push_str("']");
        }
    }
}

/// RFC 9535 member-name shorthand, ASCII only: `[A-Za-z_][A-Za-z0-9_]*`, within the length
/// limit.
fn is_shorthand(k: &str) -> bool {
    let mut bytes = k.bytes();
    k.len() <= MAX_KEY_CHARS
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_objects() {
        let d = json!({"a": {"b": {"c": 1}, "d": null}, "e": "x"});
        assert_eq!(paths(&d), ["$.a", "$.a.b", "$.a.b.c", "$.a.d", "$.e"]);
    }

    #[test]
    fn arrays_are_one_path_for_every_element() {
        let d = json!({"users": [{"id": 1, "email": "a"}, {"id": 2, "phone": "p"}]});
        assert_eq!(
            paths(&d),
            [
                "$.users",
                "$.users[*]",
                "$.users[*].email",
                "$.users[*].id",
                "$.users[*].phone"
            ]
        );
    }

    #[test]
    fn empty_arrays_and_objects_have_only_their_own_path() {
        let d = json!({"a": [], "o": {}, "n": [[]]});
        assert_eq!(paths(&d), ["$.a", "$.n", "$.n[*]", "$.o"]);
        assert!(paths(&json!(3)).is_empty());
        assert!(paths(&json!([])).is_empty());
        assert_eq!(paths(&json!([1])), ["$[*]"]);
    }

    #[test]
    fn arrays_of_mixed_types_union_their_elements() {
        let d = json!({"m": [1, "s", {"k": true}, [{"x": 1}], null]});
        assert_eq!(
            paths(&d),
            ["$.m", "$.m[*]", "$.m[*].k", "$.m[*][*]", "$.m[*][*].x"]
        );
    }

    #[test]
    fn keys_that_are_not_identifiers_are_bracketed_and_escaped() {
        let d = json!({"a-b": 1, "it's": 2, "x\ny": 3, "_ok9": 4, "9lives": 5});
        assert_eq!(
            paths(&d),
            [
                "$['9lives']",
                "$._ok9",
                "$['a-b']",
                "$['it\\'s']",
                "$['x\\ny']"
            ]
        );
        let long = "k".repeat(200);
        let p = paths(&json!({ long: 1 }));
        assert_eq!(p, [format!("$['{}…']", "k".repeat(MAX_KEY_CHARS))]);
        // What is printed is a JSONPath a profile accepts.
        for p in paths(&d) {
            serde_json_path::JsonPath::parse(&p).unwrap();
        }
    }

    #[test]
    fn new_paths_are_those_outside_the_shape_each_once() {
        let known = Shape::of(&json!({"id": 1, "users": [{"id": 1, "email": "e"}], "f": []}));
        assert_eq!(known.len(), 6);
        let answer = json!({
            "id": 2,
            "users": [
                {"id": 1, "email": "a", "billing": {"iban": "DE00", "bic": "X"}},
                {"id": 2, "billing": {"iban": "DE01"}},
            ],
            "f": [{"k": 1}],
        });
        assert_eq!(
            known.new_paths(&answer),
            [
                "$.f[*]",
                "$.f[*].k",
                "$.users[*].billing",
                "$.users[*].billing.bic",
                "$.users[*].billing.iban"
            ]
        );
        // A field missing from the answer, or a changed type, is not new.
        assert!(known
            .new_paths(&json!({"users": "none", "id": {}}))
            .is_empty());
        assert!(known.knows([Step::Name("users"), Step::Item, Step::Name("email")]));
        assert!(!known.knows([Step::Name("users"), Step::Name("email")]));
        assert!(known.knows([]));
    }

    #[test]
    fn retain_known_drops_new_paths_at_every_index_and_keeps_the_rest() {
        let known = Arc::new(Shape::of(
            &json!({"id": 1, "users": [{"id": 1, "tags": ["t"]}], "e": []}),
        ));
        let mut answer = json!({
            "id": 2,
            "new": {"deep": 1},
            "users": [
                {"id": 1, "tags": ["a"], "billing": {"iban": "DE00"}},
                {"id": 2, "tags": [], "billing": null},
                {"id": 3},
            ],
            "e": [1, 2],
        });
        let new = known.check_doc(&answer).unwrap();
        assert_eq!(
            new.paths(),
            [
                "$.e[*]",
                "$.new",
                "$.new.deep",
                "$.users[*].billing",
                "$.users[*].billing.iban"
            ]
        );
        new.drop_from(&mut answer);
        assert_eq!(
            answer,
            json!({"id": 2, "users": [{"id": 1, "tags": ["a"]}, {"id": 2, "tags": []}, {"id": 3}], "e": []})
        );
        assert!(known.check_doc(&answer).is_none());
    }

    #[test]
    fn the_built_in_baseline_covers_the_documented_answer() {
        let baseline =
            Arc::new(Shape::parse(crate::drift::CLIENTS_ME_BASELINE.as_bytes()).unwrap());
        let fixture = include_bytes!("../../tests/fixtures/clients_me.json");
        assert!(baseline.check(fixture).is_none());
        assert!(baseline.knows([Step::Name("paidFeatures"), Step::Name("DDOS"), Step::Item]));
        assert!(baseline.knows([Step::Name("users"), Step::Item, Step::Name("two_fa")]));
    }
}
