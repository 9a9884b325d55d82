//! Stage 6, redaction: remove, mask or allow-list JSON fields per caller profile.
//!
//! A [`Profile`] is compiled once when the config loads (RFC 9535 JSONPath through
//! `serde_json_path`). It runs once per (cache entry, profile) when the cache renders a body,
//! never on a hit. It fails closed: a body that is not JSON yields an error, never the
//! unredacted bytes. Which profile a caller gets, and the per-entry render store, live in
//! `cache`; this module only transforms documents.
//!
//! A remove/mask profile also says what happens to fields outside the route's known shape
//! ([`OnNewFields`]; the shape and the detection are `drift`'s): pass them, drop them, or
//! refuse the answer. [`review`] explains a profile on a sample for `check --sample`.

pub mod review;

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::drift::NewFields;

/// What an operator writes for one profile (`[profiles.NAME]`): the JSONPaths of each list.
/// The config reads it as is; [`Profile::compile`] turns it into a runnable profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// JSONPaths whose matches are deleted.
    #[serde(default)]
    pub remove: Vec<String>,
    /// JSONPaths whose matches are masked (strings → `"***"`, others → null).
    #[serde(default)]
    pub mask: Vec<String>,
    /// When set, only these JSONPaths are kept (exclusive with remove/mask).
    pub allow: Option<Vec<String>>,
    /// What a remove/mask profile does with fields outside the route's known shape; unset is
    /// `pass`. Not accepted on an allow-list profile (which never shows new fields).
    pub on_new_fields: Option<OnNewFields>,
}

/// What a remove/mask profile does with an answer that has fields outside the route's known
/// shape (`profiles.NAME.on_new_fields`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNewFields {
    /// Serve them (the remove/mask lists alone decide).
    #[default]
    Pass,
    /// Remove every new path from the render, at every array index.
    Drop,
    /// Refuse the answer (502 `upstream_error`) while it has new paths.
    Block,
}

impl OnNewFields {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            OnNewFields::Pass => "pass",
            OnNewFields::Drop => "drop",
            OnNewFields::Block => "block",
        }
    }
}

/// A compiled redaction profile.
#[derive(Debug)]
pub struct Profile {
    /// The name (config, metric labels, logs).
    pub name: String,
    /// What it does.
    pub mode: Mode,
    /// What it was compiled from: two profiles with equal name and spec render alike, so a
    /// reload keeps the renders cached for the old one.
    pub spec: ProfileSpec,
}

/// What a profile does.
#[derive(Debug)]
pub enum Mode {
    /// Delete `remove` matches and replace `mask` matches (strings → `"***"`, others → null).
    Deny {
        /// Deleted matches (path text, compiled).
        remove: Vec<(String, JsonPath)>,
        /// Masked matches (path text, compiled).
        mask: Vec<(String, JsonPath)>,
        /// What happens to fields outside the route's known shape.
        on_new_fields: OnNewFields,
    },
    /// Keep only `allow` matches (and the containers leading to them).
    Allow(Vec<(String, JsonPath)>),
}

/// A profile that does not compile; `key` is the config key (`profiles.NAME.remove[2]`).
#[derive(Debug)]
pub struct ProfileError {
    /// The Gcore key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A body that could not be redacted. The redacted body is never produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    /// The body is not JSON.
    #[error("upstream body is not valid JSON; refusing to pass it unredacted")]
    NotJson,
    /// The answer has fields outside the route's known shape and the profile blocks it.
    #[error("upstream answer has fields outside the route's known shape; the profile blocks it")]
    NewFields,
}

/// Checks that `body` is JSON this module can redact: the same parser as [`Profile::render`]
/// (UTF-8, no lone surrogate escapes; numbers are kept as written, so none is rounded). The
/// upstream stage calls it once per fetch, so an answer that passes is one every profile can
/// render.
pub fn check_json(body: &[u8]) -> Result<(), RedactError> {
    serde_json::from_slice::<Value>(body)
        .map(drop)
        .map_err(|_| RedactError::NotJson)
}

/// The replacement for masked strings.
pub const MASK: &str = "***";

impl Profile {
    /// Compiles a raw profile; errors name the profile, the list, the index and the parser's
    /// message.
    pub fn compile(name: &str, raw: &ProfileSpec) -> Result<Profile, ProfileError> {
        let compile_list = |list: &str, paths: &[String]| {
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    JsonPath::parse(p)
                        .map(|jp| (p.clone(), jp))
                        .map_err(|e| ProfileError {
                            key: format!("profiles.{name}.{list}[{i}]"),
                            message: format!("invalid JSONPath {p:?}: {e}"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mode = match &raw.allow {
            Some(allow) => {
                if !raw.remove.is_empty() || !raw.mask.is_empty() {
                    return Err(ProfileError {
                        key: format!("profiles.{name}.allow"),
                        message: "allow is exclusive with remove/mask".into(),
                    });
                }
                if raw.on_new_fields.is_some() {
                    return Err(ProfileError {
                        key: format!("profiles.{name}.on_new_fields"),
                        message: "applies to remove/mask profiles only (an allow-list never shows new fields)".into(),
                    });
                }
                Mode::Allow(compile_list("allow", allow)?)
            }
            None => Mode::Deny {
                remove: compile_list("remove", &raw.remove)?,
                mask: compile_list("mask", &raw.mask)?,
                on_new_fields: raw.on_new_fields.unwrap_or_default(),
            },
        };
        Ok(Profile {
            name: name.to_string(),
            mode,
            spec: raw.clone(),
        })
    }

    /// Whether `other` renders exactly as this profile does.
    pub fn same_as(&self, other: &Profile) -> bool {
        self.name == other.name && self.spec == other.spec
    }

    /// What this profile does with new fields: `None` for an allow-list (it never shows them).
    pub fn on_new_fields(&self) -> Option<OnNewFields> {
        match &self.mode {
            Mode::Deny { on_new_fields, .. } => Some(*on_new_fields),
            Mode::Allow(_) => None,
        }
    }

    /// Redacts a JSON body and serialises the result. Fails closed on non-JSON input.
    pub fn render(&self, body: &[u8]) -> Result<Bytes, RedactError> {
        self.render_checked(body, None)
    }

    /// [`Profile::render`] of an answer whose fields outside the route's known shape are `new`
    /// (`None`: none, or the route has no baseline). A `drop` profile removes them before its
    /// own lists run; a `block` profile refuses the answer.
    pub fn render_checked(
        &self,
        body: &[u8],
        new: Option<&NewFields>,
    ) -> Result<Bytes, RedactError> {
        let action = self.on_new_fields().unwrap_or_default();
        if new.is_some() && action == OnNewFields::Block {
            return Err(RedactError::NewFields);
        }
        let mut doc: Value = serde_json::from_slice(body).map_err(|_| RedactError::NotJson)?;
        if let (Some(new), OnNewFields::Drop) = (new, action) {
            new.drop_from(&mut doc);
        }
        self.apply(&mut doc);
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .map_err(|_| RedactError::NotJson)
    }

    /// Redacts a parsed document in place.
    ///
    /// Every path is evaluated once, against the document as received: `mask` matches are
    /// replaced, then `remove` matches are deleted deepest and highest index first, so no
    /// removal shifts another. Paths are not re-evaluated after a removal: re-evaluating
    /// `$.users[0]` would select the next user each time.
    pub fn apply(&self, doc: &mut Value) {
        match &self.mode {
            Mode::Deny { remove, mask, .. } => {
                let mut removals: Vec<Vec<Elem>> =
                    remove.iter().flat_map(|(_, p)| locations(p, doc)).collect();
                let masks: Vec<Vec<Elem>> =
                    mask.iter().flat_map(|(_, p)| locations(p, doc)).collect();
                for loc in &masks {
                    // A location below an earlier masked container is gone (now null): skipped.
                    if let Some(v) = pointer_mut(doc, loc) {
                        *v = match v {
                            Value::String(_) => Value::String(MASK.into()),
                            _ => Value::Null,
                        };
                    }
                }
                // Lexicographic order puts a parent before its children and index i before
                // i+1; walking it backwards removes children first and higher indexes first.
                removals.sort_unstable();
                removals.dedup();
                for loc in removals.iter().rev() {
                    remove_at(doc, loc);
                }
            }
            Mode::Allow(allow) => {
                let mut keep = Trie::default();
                for (_, path) in allow {
                    for loc in locations(path, doc) {
                        keep.insert(&loc);
                    }
                }
                let empty = match doc {
                    Value::Array(_) => Value::Array(Vec::new()),
                    _ => Value::Object(serde_json::Map::new()),
                };
                *doc = keep.prune(doc).unwrap_or(empty);
            }
        }
    }

    /// The paths of this profile that match nothing in `doc` (a likely typo), as
    /// `(list, path)` pairs.
    pub fn unmatched(&self, doc: &Value) -> Vec<(&'static str, &str)> {
        let lists: Vec<(&'static str, &Vec<(String, JsonPath)>)> = match &self.mode {
            Mode::Deny { remove, mask, .. } => vec![("remove", remove), ("mask", mask)],
            Mode::Allow(allow) => vec![("allow", allow)],
        };
        lists
            .into_iter()
            .flat_map(|(list, paths)| {
                paths
                    .iter()
                    .filter(|(_, p)| p.query(doc).is_empty())
                    .map(move |(s, _)| (list, s.as_str()))
            })
            .collect()
    }
}

/// One step of a normalised path, owned so the document can be mutated afterwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Elem {
    Index(usize),
    Name(String),
}

fn locations(path: &JsonPath, doc: &Value) -> Vec<Vec<Elem>> {
    use serde_json_path::PathElement;
    path.query_located(doc)
        .locations()
        .map(|loc| {
            loc.iter()
                .map(|e| match e {
                    PathElement::Name(n) => Elem::Name((*n).to_string()),
                    PathElement::Index(i) => Elem::Index(*i),
                })
                .collect()
        })
        .collect()
}

fn pointer_mut<'a>(doc: &'a mut Value, loc: &[Elem]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |v, e| match (v, e) {
        (Value::Object(m), Elem::Name(n)) => m.get_mut(n),
        (Value::Array(a), Elem::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

fn remove_at(doc: &mut Value, loc: &[Elem]) {
    let Some((last, parent)) = loc.split_last() else {
        // `$` itself: nothing of the document may remain.
        *doc = Value::Null;
        return;
    };
    match (pointer_mut(doc, parent), last) {
        (Some(Value::Object(m)), Elem::Name(n)) => {
            m.remove(n);
        }
        (Some(Value::Array(a)), Elem::Index(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// The set of kept locations, as a tree walked together with the document.
#[derive(Default)]
struct Trie {
    keep: bool,
    children: HashMap<Elem, Trie>,
}

impl Trie {
    fn insert(&mut self, loc: &[Elem]) {
        let node = loc
            .iter()
            .fold(self, |n, e| n.children.entry(e.clone()).or_default());
        node.keep = true;
    }

    /// The kept parts of `v`, or `None` if nothing below `v` is kept.
    fn prune(&self, v: &Value) -> Option<Value> {
        if self.keep {
            return Some(v.clone());
        }
        match v {
            Value::Object(m) => {
                let kept: serde_json::Map<String, Value> = m
                    .iter()
                    .filter_map(|(k, child)| {
                        let t = self.children.get(&Elem::Name(k.clone()))?;
                        Some((k.clone(), t.prune(child)?))
                    })
                    .collect();
                (!kept.is_empty()).then_some(Value::Object(kept))
            }
            Value::Array(a) => {
                let kept: Vec<Value> = a
                    .iter()
                    .enumerate()
                    .filter_map(|(i, child)| self.children.get(&Elem::Index(i))?.prune(child))
                    .collect();
                (!kept.is_empty()).then_some(Value::Array(kept))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(remove: &[&str], mask: &[&str], allow: Option<&[&str]>) -> Profile {
        let s = |l: &[&str]| l.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Profile::compile(
            "t",
            &ProfileSpec {
                remove: s(remove),
                mask: s(mask),
                allow: allow.map(s),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn remove_every_array_index() {
        let p = profile(&["$.users[*].email", "$.users[1]"], &[], None);
        let mut d = json!({"users": [{"email": "a", "id": 1}, {"email": "b", "id": 2}, {"email": "c", "id": 3}]});
        p.apply(&mut d);
        assert_eq!(d, json!({"users": [{"id": 1}, {"id": 3}]}));
    }

    #[test]
    fn positional_paths_select_in_the_document_as_received() {
        let users = || json!({"users": [{"id": 1}, {"id": 2}, {"id": 3}]});
        let ids = |d: &Value| {
            d["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        for (path, want) in [
            ("$.users[0]", vec![2, 3]),
            ("$.users[1]", vec![1, 3]),
            ("$.users[2]", vec![1, 2]),
            ("$.users[-1]", vec![1, 2]),
            ("$.users[0,2]", vec![2]),
            ("$.users[0:2]", vec![3]),
        ] {
            let mut d = users();
            profile(&[path], &[], None).apply(&mut d);
            assert_eq!(ids(&d), want, "{path}");
        }
        // Mask and remove both address the document as received.
        let mut d = users();
        profile(&["$.users[0]"], &["$.users[1].id"], None).apply(&mut d);
        assert_eq!(d, json!({"users": [{"id": null}, {"id": 3}]}));
    }

    #[test]
    fn mask_strings_and_others() {
        let p = profile(&[], &["$.users[*].name"], None);
        let mut d = json!({"users": [{"name": "Maria"}, {"name": null}, {"name": 3}]});
        p.apply(&mut d);
        assert_eq!(
            d,
            json!({"users": [{"name": "***"}, {"name": null}, {"name": null}]})
        );
    }

    #[test]
    fn descendant_and_allow() {
        let p = profile(&["$..email"], &[], None);
        let mut d = json!({"email": "x", "a": {"b": [{"email": "y", "k": 1}]}});
        p.apply(&mut d);
        assert_eq!(d, json!({"a": {"b": [{"k": 1}]}}));

        let p = profile(&[], &[], Some(&["$.id", "$.f.*[*].name"]));
        let mut d = json!({"id": 1, "secret": 2, "f": {"CDN": [{"name": "n", "x": 1}], "DNS": []}});
        p.apply(&mut d);
        assert_eq!(d, json!({"id": 1, "f": {"CDN": [{"name": "n"}]}}));
    }

    #[test]
    fn errors_name_the_path() {
        let err = Profile::compile(
            "p",
            &ProfileSpec {
                remove: vec!["$.ok".into(), "$[".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "profiles.p.remove[1]");
        assert!(err.message.contains("$["));
        assert!(Profile::compile(
            "p",
            &ProfileSpec {
                remove: vec!["$.a".into()],
                allow: Some(vec!["$.b".into()]),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn new_fields_pass_drop_or_block() {
        let shape = std::sync::Arc::new(crate::drift::Shape::of(
            &json!({"id": 1, "users": [{"id": 1, "email": "e"}]}),
        ));
        let body = br#"{"id":1,"users":[{"id":1,"email":"a","iban":"DE"},{"id":2,"email":"b","iban":"FR"}]}"#;
        let new = shape.check(body).unwrap();
        assert_eq!(new.paths(), ["$.users[*].iban"]);
        let with = |mode| {
            Profile::compile(
                "t",
                &ProfileSpec {
                    remove: vec!["$.users[*].email".into()],
                    on_new_fields: mode,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let pass = br#"{"id":1,"users":[{"iban":"DE","id":1},{"iban":"FR","id":2}]}"#;
        let dropped = br#"{"id":1,"users":[{"id":1},{"id":2}]}"#;
        for mode in [None, Some(OnNewFields::Pass)] {
            assert_eq!(
                &with(mode).render_checked(body, Some(&new)).unwrap()[..],
                pass
            );
        }
        let drop = with(Some(OnNewFields::Drop));
        assert_eq!(&drop.render_checked(body, Some(&new)).unwrap()[..], dropped);
        // Nothing new: drop changes nothing.
        assert_eq!(&drop.render_checked(body, None).unwrap()[..], pass);
        let block = with(Some(OnNewFields::Block));
        assert_eq!(
            block.render_checked(body, Some(&new)),
            Err(RedactError::NewFields)
        );
        assert_eq!(&block.render_checked(body, None).unwrap()[..], pass);
        // An allow-list ignores new fields, and may not set the option.
        let err = Profile::compile(
            "a",
            &ProfileSpec {
                allow: Some(vec!["$.id".into()]),
                on_new_fields: Some(OnNewFields::Drop),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "profiles.a.on_new_fields");
    }

    #[test]
    fn render_fails_closed() {
        let p = profile(&["$.email"], &[], None);
        assert!(p.render(b"<html>email</html>").is_err());
        assert_eq!(
            &p.render(br#"{"email":"x","id":1}"#).unwrap()[..],
            br#"{"id":1}"#
        );
    }
}
