//! Benchmarks of the redaction stage.
//!
//! | group | measures |
//! |---|---|
//! | `redact_hit` | `Entry::body_for` on a primed entry plus the two clones a response makes (body `Bytes`, `ETag`): no profile, `minimal`, `no-contacts` |
//! | `redact_hit_handle` | `proxy::handle` for a cached answer, no rate on any client, so the only difference is the profile |
//! | `redact_cold` | one render of the example Gcore profile (`tests/fixtures/clients_me.json`): parse + serialise alone, each shipped profile, and a first hit (render + ETag) |
//!
//! The profiles are read from `config/gateway.toml`, so the figures are those of what ships.
//! `cargo bench --bench redact` (add `-- redact_cold` to run one group). Measurement time is
//! kept short: the development machine has 2 slow cores.

#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
mod common;
use common::async_batched;
use criterion::{criterion_group, criterion_main, Criterion};
use gcore_gateway::auth::KeyHash;
use gcore_gateway::bench_api::{Entry, Origin};
use gcore_gateway::redact::Profile;
use gcore_gateway::Gateway;
use http::Request;

/// The example Gcore answer to `GET /iam/clients/me` (3 users, ≈ 3.9 KB pretty-printed).
const BODY: &[u8] = include_bytes!("../tests/fixtures/clients_me.json");
const SHIPPED: &str = include_str!("../config/gateway.toml");
const ROUTE: &str = "/iam/clients/me";
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Clients of the bench config: (name, profile).
const CLIENTS: [(&str, Option<&str>); 3] = [
    ("raw", None),
    ("minimal", Some("minimal")),
    ("no-contacts", Some("no-contacts")),
];

fn key(client: &str) -> String {
    format!("bench-{client}-key-0123456789abcdef")
}

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The `[profiles.*]` tables of `config/gateway.toml`, as TOML text.
fn shipped_profiles() -> String {
    let mut doc: toml::Table = SHIPPED.parse().expect("config/gateway.toml is TOML");
    let mut out = toml::Table::new();
    out.insert(
        "profiles".into(),
        doc.remove("profiles").expect("shipped profiles"),
    );
    toml::to_string(&out).expect("TOML")
}

/// A gateway with the shipped profiles, three clients without rates, and the answer cached.
fn gateway(rt: &tokio::runtime::Runtime) -> Arc<Gateway> {
    let mut tables = shipped_profiles();
    for (name, profile) in CLIENTS {
        tables.push_str(&format!(
            "\n[[clients]]\nname = \"{name}\"\nkeys = [\"{}\"]\naccount = \"bench\"\n",
            KeyHash::of(key(name).as_bytes())
        ));
        if let Some(p) = profile {
            tables.push_str(&format!("profile = \"{p}\"\n"));
        }
    }
    common::primed_gateway(rt, &tables, BODY)
}

/// The shipped profile `name`, with its index in the config's profile table.
fn profile(gw: &Gateway, name: &str) -> (usize, Arc<Profile>) {
    let rt = gw.current();
    let i = rt
        .config
        .profiles
        .iter()
        .position(|p| p.name == name)
        .expect("shipped profile");
    (i, rt.config.profiles[i].clone())
}

fn request(client: &str) -> Request<()> {
    Request::get(ROUTE)
        .header(http::header::HOST, "127.0.0.1:8080")
        .header(
            http::header::AUTHORIZATION,
            format!("APIKey {}", key(client)),
        )
        .body(())
        .unwrap()
}

fn bench_hit(c: &mut Criterion) {
    let entry = Entry::new(
        Bytes::from_static(BODY),
        tokio::time::Instant::now(),
        Origin::Upstream(Duration::ZERO),
        Duration::from_secs(600),
        3,
    );
    let rt = runtime();
    let gw = gateway(&rt);
    let profiles: Vec<Option<(usize, Arc<Profile>)>> = CLIENTS
        .iter()
        .map(|(_, p)| p.map(|name| profile(&gw, name)))
        .collect();
    let mut g = c.benchmark_group("redact_hit");
    for ((name, _), p) in CLIENTS.iter().zip(&profiles) {
        let p = p.as_ref().map(|(_, p)| p);
        // Prime: the render is made once, here, and kept with the entry.
        entry.body_for(p).expect("renders");
        g.bench_function(format!("body_for/{name}"), |b| {
            // The clones a response makes are inside: `body_for` hands out owned copies.
            b.iter(|| entry.body_for(black_box(p)).unwrap())
        });
    }
    g.finish();

    for (name, _) in CLIENTS {
        let resp = rt.block_on(gcore_gateway::proxy::handle(
            gw.clone(),
            PEER,
            request(name),
        ));
        assert_eq!(resp.status(), 200, "bench setup: {name} not served");
        assert_eq!(resp.headers()["x-cache"], "HIT");
    }
    let mut g = c.benchmark_group("redact_hit_handle");
    for (name, _) in CLIENTS {
        g.bench_function(format!("proxy_handle/{name}"), |b| {
            b.iter_custom(|iters| {
                async_batched(
                    &rt,
                    iters,
                    || request(name),
                    |req| gcore_gateway::proxy::handle(gw.clone(), PEER, req),
                )
            })
        });
    }
    g.finish();
}

fn bench_cold(c: &mut Criterion) {
    let rt = runtime();
    let gw = gateway(&rt);
    let mut g = c.benchmark_group("redact_cold");
    g.bench_function("parse_and_serialise_only", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(BODY)).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    for name in ["minimal", "no-contacts", "masked-users"] {
        let (i, p) = profile(&gw, name);
        let p = &p;
        g.bench_function(format!("render/{name}"), |b| {
            b.iter(|| p.render(black_box(BODY)).unwrap())
        });
        g.bench_function(format!("first_hit/{name}"), |b| {
            b.iter_batched(
                || {
                    Entry::new(
                        Bytes::from_static(BODY),
                        tokio::time::Instant::now(),
                        Origin::Upstream(Duration::ZERO),
                        Duration::from_secs(600),
                        i + 1,
                    )
                },
                |entry| entry.body_for(Some(p)).unwrap().body.len(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench_hit, bench_cold
}
criterion_main!(benches);
