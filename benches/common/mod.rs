//! Helpers shared by the criterion benches (included with `mod common;`).
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Times `iters` runs of an async routine inside one `block_on` (so the runtime entry is not
/// part of the measurement); inputs are built untimed, in chunks.
pub fn async_batched<I, S, F, Fut>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut setup: S,
    mut routine: F,
) -> Duration
where
    S: FnMut() -> I,
    F: FnMut(I) -> Fut,
    Fut: Future,
{
    const CHUNK: u64 = 4096;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let inputs: Vec<I> = (0..n).map(|_| setup()).collect();
        total += rt.block_on(async {
            let start = Instant::now();
            for input in inputs {
                black_box(routine(input).await);
            }
            start.elapsed()
        });
        left -= n;
    }
    total
}

/// A gateway on a dead upstream (`127.0.0.1:9`) with one account `bench`, the route
/// `/iam/clients/me`, the given `[profiles]`/`[[clients]]` TOML, and `body` cached for the
/// account under its real cache key, so `proxy::handle` benches measure hits only.
pub fn primed_gateway(
    rt: &tokio::runtime::Runtime,
    tables: &str,
    body: &'static [u8],
) -> std::sync::Arc<gcore_gateway::Gateway> {
    use gcore_gateway::bench_api::{Entry, Origin};
    use gcore_gateway::config::Config;
    use gcore_gateway::{ConfigSource, Gateway};
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [upstream]\nbase_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\n\n\
         [[accounts]]\nname = \"bench\"\napi_key_env = \"BENCH_UPSTREAM_KEY\"\n\n\
         [cache]\nttl = \"10m\"\n\n[[routes]]\npath = \"/iam/clients/me\"\n\n{tables}\n"
    );
    let env = std::collections::HashMap::from([(
        "BENCH_UPSTREAM_KEY".to_string(),
        "1_bench-upstream-key".to_string(),
    )]);
    let config = Config::parse(&text, "bench config", &env).expect("valid bench config");
    rt.block_on(async {
        let gw = Gateway::new(
            config,
            ConfigSource::Embedded {
                text: text.clone(),
                origin: "bench config".into(),
                env,
            },
        )
        .expect("gateway");
        let generation = gw.current();
        let entry = Entry::new(
            bytes::Bytes::from_static(body),
            tokio::time::Instant::now(),
            Origin::Upstream(Duration::ZERO),
            Duration::from_secs(600),
            generation.config.profiles.len(),
        );
        // The key the handler looks up (the only constructor, fed from the account).
        let route = generation.config.routes[0].path.clone();
        assert!(gw.prime("bench", &route, std::sync::Arc::new(entry)).await);
        gw
    })
}
