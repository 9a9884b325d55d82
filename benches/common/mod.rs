//! Helpers shared by the criterion benches (included with `mod common;`).

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
