//! What Redis sharing adds per request: an L2 lookup (on an L1 miss) and a distributed GCRA
//! decision (every request of a client with a rate). Needs a Redis: `REDIS_URL` or
//! redis://127.0.0.1:6379 (the bench skips itself, loudly, when none answers).
//!
//! `cargo bench --bench shared`

#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gcore_gateway::bench_api::{shared_rate_limit, CacheKey, Metrics, Redis};
use gcore_gateway::config::units::rate;
use gcore_gateway::config::Config;

const BODY: &str = include_str!("../tests/fixtures/clients_me.json");

fn shared(c: &mut Criterion) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let text = format!(
        "[upstream]\nbase_url = \"https://api.gcore.com\"\n[redis]\nurl = \"{url}\"\nkey_prefix = \"bench:\"\ntimeout = \"200ms\"\npool_size = 1\n"
    );
    let config = Config::parse(&text, "bench", &HashMap::new()).unwrap();
    let settings = config.redis.as_ref().unwrap();
    let shared: Arc<Redis> = rt.block_on(async {
        let s = Redis::start(settings, Arc::new(Metrics::new())).unwrap();
        for _ in 0..100 {
            if s.is_up() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    });
    if !shared.is_up() {
        eprintln!("shared bench skipped: no Redis answers at {url}");
        return;
    }
    let key = CacheKey::new("main".into(), 0, "/iam/clients/me".into(), None);
    let name = shared.key("c", &key, "benchtag");
    rt.block_on(shared.put(
        name.clone(),
        BODY.as_bytes().to_vec(),
        Duration::from_secs(600),
    ));
    c.bench_function("redis_l2_get_3.5KB", |b| {
        b.iter(|| rt.block_on(shared.get(name.clone())).expect("value"))
    });
    let r = rate("1000000/s").unwrap();
    c.bench_function("redis_gcra_decision", |b| {
        b.iter(|| {
            rt.block_on(shared_rate_limit(&shared, "bench-client", r, 1_000_000))
                .expect("answer")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = shared
}
criterion_main!(benches);
