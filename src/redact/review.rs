//! `check --sample`: what each profile does to a sample answer, path by path.
//!
//! Every node of the sample is judged as the render would treat it: kept, masked, removed by
//! the profile's lists, or dropped as a new field (`on_new_fields = "drop"`). A node under a
//! masked or removed one is not listed (its ancestor says it all). Nodes are then grouped by
//! field path (array indexes as `[*]`); a verdict that holds for only some elements of an
//! array is marked so. Paths are evaluated on the sample as received, like the render does.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use super::{locations, Elem, Mode, OnNewFields, Profile};
use crate::drift::shape::{format_path, Step};
use crate::drift::Shape;

/// What a profile does to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Served as is.
    Keeps,
    /// Replaced (`"***"` or null).
    Masks,
    /// Deleted by the profile's `remove` (or by an allow-list not naming it).
    Removes,
    /// Deleted because it is new against the baseline and the profile drops new fields.
    Drops,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Keeps => "keeps",
            Verdict::Masks => "masks",
            Verdict::Removes => "removes",
            Verdict::Drops => "drops",
        }
    }
}

/// One line of a review: a field path and what the profile does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The field path (`$.users[*].email`).
    pub path: String,
    /// What happens to it.
    pub verdict: Verdict,
    /// Only at some of the path's array elements.
    pub partly: bool,
    /// Not in the route's baseline.
    pub new: bool,
}

/// What `profile` does to `doc`, by field path; `shape` is the route's baseline, if any.
pub fn review(profile: &Profile, doc: &Value, shape: Option<&Shape>) -> Vec<Line> {
    let mut all = Vec::new();
    walk(doc, &mut Vec::new(), &mut all);
    let judge: Judge<'_> = match &profile.mode {
        Mode::Deny {
            remove,
            mask,
            on_new_fields,
        } => {
            let set = |paths: &[(String, serde_json_path::JsonPath)]| -> HashSet<Vec<Elem>> {
                paths.iter().flat_map(|(_, p)| locations(p, doc)).collect()
            };
            let (removed, masked) = (set(remove), set(mask));
            let drops = *on_new_fields == OnNewFields::Drop;
            Box::new(move |loc: &[Elem]| {
                // The topmost node any list touches decides for everything below it.
                for i in 0..=loc.len() {
                    let at = &loc[..i];
                    let verdict = if removed.contains(at) {
                        Verdict::Removes
                    } else if drops && shape.is_some_and(|s| !s.knows(steps(at))) {
                        Verdict::Drops
                    } else if masked.contains(at) {
                        Verdict::Masks
                    } else {
                        continue;
                    };
                    return if i == loc.len() {
                        Judged::Is(verdict)
                    } else {
                        Judged::Covered
                    };
                }
                Judged::Is(Verdict::Keeps)
            })
        }
        Mode::Allow(allow) => {
            let kept: HashSet<Vec<Elem>> =
                allow.iter().flat_map(|(_, p)| locations(p, doc)).collect();
            let on_the_way: HashSet<Vec<Elem>> = kept
                .iter()
                .flat_map(|k| (0..k.len()).map(move |i| k[..i].to_vec()))
                .collect();
            Box::new(move |loc: &[Elem]| {
                let inside_kept = (0..=loc.len()).any(|i| kept.contains(&loc[..i]));
                if inside_kept || on_the_way.contains(loc) {
                    return Judged::Is(Verdict::Keeps);
                }
                // The parent is removed too unless it is on the way to a kept node.
                match loc.split_last() {
                    Some((_, parent)) if !parent.is_empty() && !on_the_way.contains(parent) => {
                        Judged::Covered
                    }
                    _ => Judged::Is(Verdict::Removes),
                }
            })
        }
    };
    // Per field path: how many nodes it has, and how many of them get each verdict.
    let mut by_path: BTreeMap<String, (usize, BTreeMap<Verdict, usize>, bool)> = BTreeMap::new();
    for loc in &all {
        let path = format_path(steps(loc));
        let new = shape.is_some_and(|s| !s.knows(steps(loc)));
        let e = by_path.entry(path).or_insert((0, BTreeMap::new(), new));
        e.0 += 1;
        if let Judged::Is(v) = judge(loc) {
            *e.1.entry(v).or_default() += 1;
        }
    }
    by_path
        .into_iter()
        .flat_map(|(path, (total, verdicts, new))| {
            verdicts.into_iter().map(move |(verdict, n)| Line {
                path: path.clone(),
                verdict,
                partly: n < total,
                new,
            })
        })
        .collect()
}

/// Judges one node by its location.
type Judge<'a> = Box<dyn Fn(&[Elem]) -> Judged + 'a>;

enum Judged {
    Is(Verdict),
    /// Under a masked or removed node: not listed.
    Covered,
}

/// Every node's location below the root, parents first.
fn walk(v: &Value, at: &mut Vec<Elem>, out: &mut Vec<Vec<Elem>>) {
    let mut visit = |e: Elem, child: &Value, at: &mut Vec<Elem>| {
        at.push(e);
        out.push(at.clone());
        walk(child, at, out);
        at.pop();
    };
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                visit(Elem::Name(k.clone()), child, at);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                visit(Elem::Index(i), child, at);
            }
        }
        _ => {}
    }
}

fn steps(loc: &[Elem]) -> impl Iterator<Item = Step<'_>> {
    loc.iter().map(|e| match e {
        Elem::Name(n) => Step::Name(n),
        Elem::Index(_) => Step::Item,
    })
}

/// The `check --sample` text: the sample's new paths against the route's baseline (`None`:
/// the route has none), then every profile's review.
pub fn report(
    doc: &Value,
    route: &str,
    baseline: Option<(&str, &Shape)>,
    profiles: &[Arc<Profile>],
) -> String {
    let mut out = String::new();
    let shape = baseline.map(|(_, s)| s);
    match baseline {
        Some((source, shape)) => {
            let new = shape.new_paths(doc);
            let _ = writeln!(
                out,
                "route {route}: baseline {source} ({} paths); the sample has {} new path{}",
                shape.len(),
                new.len(),
                if new.len() == 1 { "" } else { "s" }
            );
            for p in &new {
                let _ = writeln!(out, "  new  {p}");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "route {route}: no baseline, so no drift checking (set routes.baseline); new paths cannot be told"
            );
        }
    }
    if profiles.is_empty() {
        out.push_str("no profiles: every client gets the answer unchanged\n");
    }
    for p in profiles {
        let lines = review(p, doc, shape);
        let _ = match p.on_new_fields() {
            None => writeln!(
                out,
                "\nprofile {} (allow-list: shows only what it names; on_new_fields does not apply)",
                p.name
            ),
            Some(mode) => writeln!(
                out,
                "\nprofile {} (remove/mask, on_new_fields = \"{}\")",
                p.name,
                mode.as_str()
            ),
        };
        if p.on_new_fields() == Some(OnNewFields::Block) && lines.iter().any(|l| l.new) {
            let _ = writeln!(
                out,
                "  BLOCKS this sample: its clients get 502 while answers have new paths"
            );
        }
        let width = lines.iter().map(|l| l.path.len()).max().unwrap_or(0);
        for l in &lines {
            let mut notes = Vec::new();
            if l.partly {
                notes.push("some elements");
            }
            if l.new {
                notes.push("new");
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<width$}{notes}",
                l.verdict.word(),
                l.path,
                width = if notes.is_empty() { 0 } else { width }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::ProfileSpec;
    use serde_json::json;

    fn profile(spec: ProfileSpec) -> Profile {
        Profile::compile("t", &spec).unwrap()
    }

    fn lines(
        p: &Profile,
        doc: &Value,
        shape: Option<&Shape>,
    ) -> Vec<(String, &'static str, bool, bool)> {
        review(p, doc, shape)
            .into_iter()
            .map(|l| (l.path, l.verdict.word(), l.partly, l.new))
            .collect()
    }

    fn l(
        path: &str,
        v: &'static str,
        partly: bool,
        new: bool,
    ) -> (String, &'static str, bool, bool) {
        (path.to_string(), v, partly, new)
    }

    #[test]
    fn remove_mask_and_drop() {
        let shape = Shape::of(&json!({"id": 1, "users": [{"id": 1, "name": "n", "email": "e"}]}));
        let doc = json!({"id": 1, "users": [
            {"id": 1, "name": "a", "email": "x", "billing": {"iban": "DE"}},
            {"id": 2, "name": "b", "email": "y"},
        ]});
        let p = profile(ProfileSpec {
            remove: vec!["$.users[*].email".into(), "$.users[1]".into()],
            mask: vec!["$.users[*].name".into()],
            on_new_fields: Some(OnNewFields::Drop),
            ..Default::default()
        });
        assert_eq!(
            lines(&p, &doc, Some(&shape)),
            [
                l("$.id", "keeps", false, false),
                l("$.users", "keeps", false, false),
                l("$.users[*]", "keeps", true, false),
                l("$.users[*]", "removes", true, false),
                l("$.users[*].billing", "drops", false, true),
                l("$.users[*].email", "removes", true, false),
                l("$.users[*].id", "keeps", true, false),
                l("$.users[*].name", "masks", true, false),
            ]
        );
        // Without drop the new field is kept (and marked new).
        let p = profile(ProfileSpec {
            remove: vec!["$.users[*].email".into()],
            ..Default::default()
        });
        let got = lines(&p, &doc, Some(&shape));
        assert!(got.contains(&l("$.users[*].billing", "keeps", false, true)));
        assert!(got.contains(&l("$.users[*].billing.iban", "keeps", false, true)));
    }

    #[test]
    fn allow_lists_keep_the_way_to_kept_nodes() {
        let doc = json!({"id": 1, "a": {"b": 1, "c": {"d": 1}}, "x": {"y": 1}});
        let p = profile(ProfileSpec {
            allow: Some(vec!["$.id".into(), "$.a.b".into()]),
            ..Default::default()
        });
        assert_eq!(
            lines(&p, &doc, None),
            [
                l("$.a", "keeps", false, false),
                l("$.a.b", "keeps", false, false),
                l("$.a.c", "removes", false, false),
                l("$.id", "keeps", false, false),
                l("$.x", "removes", false, false),
            ]
        );
    }
}
