//! Benchmarks of shape drift checking: what it adds to a fetch and a first render, and that a
//! hit pays nothing.
//!
//! | group | measures |
//! |---|---|
//! | `drift_render` | one render of the example Gcore answer (`tests/fixtures/clients_me.json`) through a remove-list profile: `off` (no baseline: render only), `on` (the per-fetch check against the built-in baseline + the render of an `on_new_fields = "drop"` profile), and the same two on an answer with a new field under every user (`drifted/*`: the check finds paths, the drop removes them) |
//! | `drift_check` | the per-fetch check alone (parse + walk against the baseline), clean and drifted |
//! | `drift_hit` | `Entry::body_for` on a primed entry without and with new fields: a hit does no JSON work either way |
//!
//! `cargo bench --bench drift -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use gcore_gateway::bench_api::{Entry, Origin};
use gcore_gateway::drift::{Shape, CLIENTS_ME_BASELINE};
use gcore_gateway::redact::{OnNewFields, Profile, ProfileSpec};

/// The example Gcore answer to `GET /iam/clients/me` (3 users, ≈ 3.6 KB pretty-printed).
const BODY: &[u8] = include_bytes!("../tests/fixtures/clients_me.json");

/// The shipped `no-contacts` remove list.
const REMOVE: [&str; 13] = [
    "$.email",
    "$.phone",
    "$.name",
    "$.users[*].email",
    "$.users[*].phone",
    "$.users[*].name",
    "$.users[*].two_fa",
    "$.users[*].sso_auth",
    "$.users[*].auth_types",
    "$.users[*].activated",
    "$.users[*].groups",
    "$.currentUser",
    "$.has_active_admin",
];

fn profile(on_new_fields: Option<OnNewFields>) -> Arc<Profile> {
    let spec = ProfileSpec {
        remove: REMOVE.iter().map(|s| s.to_string()).collect(),
        on_new_fields,
        ..Default::default()
    };
    Arc::new(Profile::compile("no-contacts", &spec).expect("profile"))
}

/// The example answer with `billing: {iban, holder}` under every user.
fn drifted() -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(BODY).expect("fixture");
    for u in v["users"].as_array_mut().expect("users") {
        u["billing"] = serde_json::json!({"iban": "DE89370400440532013000", "holder": "Acme"});
    }
    serde_json::to_vec(&v).expect("JSON")
}

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

fn bench_render(c: &mut Criterion) {
    let shape = Arc::new(Shape::parse(CLIENTS_ME_BASELINE.as_bytes()).expect("baseline"));
    let (pass, drop) = (profile(None), profile(Some(OnNewFields::Drop)));
    let drifted = drifted();
    assert!(shape.check(BODY).is_none());
    assert_eq!(shape.check(&drifted).expect("new fields").paths().len(), 3);

    let mut g = c.benchmark_group("drift_render");
    for (name, body) in [("clean", BODY), ("drifted", &drifted[..])] {
        g.bench_function(format!("{name}/off"), |b| {
            b.iter(|| pass.render(black_box(body)).expect("renders"))
        });
        g.bench_function(format!("{name}/on"), |b| {
            b.iter(|| {
                let new = shape.check(black_box(body));
                drop.render_checked(body, new.as_ref()).expect("renders")
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("drift_check");
    for (name, body) in [("clean", BODY), ("drifted", &drifted[..])] {
        g.bench_function(name, |b| b.iter(|| shape.check(black_box(body))));
    }
    g.finish();

    let mut g = c.benchmark_group("drift_hit");
    for (name, body) in [("off", BODY.to_vec()), ("on_drifted", drifted.clone())] {
        let new = shape.check(&body);
        let entry = Entry::new(
            Bytes::from(body),
            tokio::time::Instant::now(),
            Origin::Upstream(Duration::ZERO),
            Duration::from_secs(600),
            1,
        )
        .with_new_fields(new);
        let p = Some(&drop);
        entry.body_for(p).expect("renders");
        g.bench_function(format!("body_for/{name}"), |b| {
            b.iter(|| entry.body_for(black_box(p)).expect("renders"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench_render
}
criterion_main!(benches);
