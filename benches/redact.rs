//! Placeholder replaced by the issue-3 benchmarks.
use criterion::{criterion_group, criterion_main, Criterion};

fn render(c: &mut Criterion) {
    c.bench_function("noop", |b| b.iter(|| std::hint::black_box(1)));
}

criterion_group!(benches, render);
criterion_main!(benches);
