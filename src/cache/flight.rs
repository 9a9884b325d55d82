//! Single-flight: one fetch per key at a time, shared by every waiter.
//!
//! Generic over what is fetched and how it fails; it knows nothing of upstreams. A fetch runs
//! in its own task, so a waiter that gives up (timeout, disconnect) never cancels the fetch
//! others wait for. The key leaves the table however the fetch ends, a panic included: a
//! finished flight left behind would answer every later request with its old result. The
//! starter may leave a note (`T`, opaque here) that every joiner receives: the tracer uses it
//! to link waiters to the fetch they waited on.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use parking_lot::Mutex;

/// A fetch in progress, as every waiter holds it.
pub(crate) type Flight<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

/// The error a waiter sees when the fetch task panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPanicked;

/// A fetch in progress and its starter's note.
type Started<V, E, T> = (Flight<V, E>, T);

/// The table of fetches in progress, each with its starter's note `T`.
pub(crate) struct Flights<K, V, E, T = ()> {
    inflight: Mutex<HashMap<K, Started<V, E, T>>>,
}

impl<K, V, E, T> Flights<K, V, E, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<FetchPanicked> + 'static,
    T: Clone + Send + 'static,
{
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Flights {
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the fetch for `key`, or starts one when none runs: `start` gives the starter's
    /// note and the fetch, run as a task. Returns the shared future and, when an existing
    /// fetch was joined, its starter's note.
    pub(crate) fn join_or_start<F>(
        self: &Arc<Self>,
        key: &K,
        start: impl FnOnce() -> (T, F),
    ) -> (Flight<V, E>, Option<T>)
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock();
        if let Some((f, note)) = inflight.get(key) {
            return (f.clone(), Some(note.clone()));
        }
        let done = Done {
            flights: self.clone(),
            key: key.clone(),
        };
        let (note, fut) = start();
        let task = tokio::spawn(async move {
            let _done = done;
            fut.await
        });
        let flight: Flight<V, E> = async move { task.await.unwrap_or(Err(FetchPanicked.into())) }
            .boxed()
            .shared();
        inflight.insert(key.clone(), (flight.clone(), note));
        (flight, None)
    }

    /// How many fetches are running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().len()
    }
}

/// Removes the key from the table when the fetch task ends, however it ends.
struct Done<K: Hash + Eq, V, E, T> {
    flights: Arc<Flights<K, V, E, T>>,
    key: K,
}

impl<K: Hash + Eq, V, E, T> Drop for Done<K, V, E, T> {
    fn drop(&mut self) {
        self.flights.inflight.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Clone, PartialEq)]
    struct Failed;
    impl From<FetchPanicked> for Failed {
        fn from(_: FetchPanicked) -> Self {
            Failed
        }
    }

    #[tokio::test]
    async fn concurrent_joins_share_one_fetch() {
        let flights = Flights::<u32, u32, Failed, &'static str>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let c = calls.clone();
        let (first, joined) = flights.join_or_start(&1, move || {
            let fetch = async move {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = gate_rx.await;
                Ok(7)
            };
            ("leader", fetch)
        });
        assert_eq!(joined, None);
        let (second, joined) = flights.join_or_start(&1, || ("second", async { Ok(8) }));
        assert_eq!(joined, Some("leader"), "a joiner gets the starter's note");
        let _ = gate_tx.send(());
        assert_eq!(first.await, Ok(7));
        assert_eq!(second.await, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::task::yield_now().await;
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_panicking_fetch_releases_the_key() {
        let flights = Flights::<u32, u32, Failed>::new();
        let (f, _) = flights.join_or_start(&1, || ((), async { panic!("fetch bug") }));
        assert_eq!(f.await, Err(Failed));
        tokio::task::yield_now().await;
        let (g, joined) = flights.join_or_start(&1, || ((), async { Ok(2) }));
        assert!(joined.is_none(), "a new fetch starts");
        assert_eq!(g.await, Ok(2));
    }
}
