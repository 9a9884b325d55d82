//! Placeholder replaced by the issue-7 benchmarks.
use criterion::{criterion_group, criterion_main, Criterion};

fn hash(c: &mut Criterion) {
    c.bench_function("key_hash", |b| {
        b.iter(|| gcore_gateway::auth::KeyHash::of(std::hint::black_box(b"team-key-0123456789")))
    });
}

criterion_group!(benches, hash);
criterion_main!(benches);
