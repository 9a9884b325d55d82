//! The new paths this process has met, per route: when each was first and last seen and in how
//! many answers, and how many answers of the route had any. Behind `GET /admin/schema`; it
//! also tells the caller which paths are new to the process (those get the one WARN).
//!
//! Bounded: at most [`MAX_PATHS_PER_ROUTE`] paths per route are listed. An upstream that keys
//! objects by ids would otherwise grow the table (and the log) without end; paths past the
//! bound are counted, not listed, and get no WARN of their own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// Paths listed per route. A real API change adds a handful; a thousand means the answer is
/// keyed by data, and listing more would only fill memory.
pub(crate) const MAX_PATHS_PER_ROUTE: usize = 1000;

/// One listed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathSeen {
    pub(crate) first_seen: SystemTime,
    pub(crate) last_seen: SystemTime,
    /// Answers (upstream fetches) that carried it.
    pub(crate) answers: u64,
}

/// One route's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RouteSeen {
    /// Answers with at least one new path.
    pub(crate) answers: u64,
    pub(crate) paths: BTreeMap<String, PathSeen>,
    /// Paths met after the table was full (counted per answer and path).
    pub(crate) unlisted: u64,
}

/// What [`SeenLog::record`] learnt from one answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Paths this process had not met before on this route (to WARN about, once).
    pub(crate) first: Vec<String>,
    /// Whether this answer filled the table (to WARN about, once).
    pub(crate) became_full: bool,
}

/// The per-process record.
#[derive(Debug, Default)]
pub(crate) struct SeenLog {
    routes: Mutex<BTreeMap<Arc<str>, RouteSeen>>,
}

impl SeenLog {
    /// Records one answer of `route` that carried `paths` (never empty), at `now`.
    pub(crate) fn record(&self, route: &Arc<str>, paths: &[String], now: SystemTime) -> Recorded {
        let mut routes = self.routes.lock();
        let r = routes.entry(route.clone()).or_default();
        r.answers += 1;
        let mut out = Recorded::default();
        for p in paths {
            if let Some(seen) = r.paths.get_mut(p) {
                seen.answers += 1;
                seen.last_seen = now;
            } else if r.paths.len() < MAX_PATHS_PER_ROUTE {
                r.paths.insert(
                    p.clone(),
                    PathSeen {
                        first_seen: now,
                        last_seen: now,
                        answers: 1,
                    },
                );
                out.first.push(p.clone());
                out.became_full |= r.paths.len() == MAX_PATHS_PER_ROUTE;
            } else {
                r.unlisted += 1;
            }
        }
        out
    }

    /// A copy of the record, routes in path order.
    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, RouteSeen)> {
        self.routes
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_sightings_are_reported_once_and_answers_counted() {
        let log = SeenLog::default();
        let route: Arc<str> = "/r".into();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let t1 = t0 + Duration::from_secs(5);
        let r = log.record(&route, &["$.a".into(), "$.b".into()], t0);
        assert_eq!(r.first, ["$.a", "$.b"]);
        let r = log.record(&route, &["$.b".into(), "$.c".into()], t1);
        assert_eq!(r.first, ["$.c"]);
        let snap = log.snapshot();
        let (name, seen) = &snap[0];
        assert_eq!(&**name, "/r");
        assert_eq!(seen.answers, 2);
        let b = &seen.paths["$.b"];
        assert_eq!((b.first_seen, b.last_seen, b.answers), (t0, t1, 2));
        assert_eq!(seen.paths["$.a"].answers, 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let log = SeenLog::default();
        let route: Arc<str> = "/r".into();
        let many: Vec<String> = (0..MAX_PATHS_PER_ROUTE + 5)
            .map(|i| format!("$.k{i}"))
            .collect();
        let r = log.record(&route, &many, SystemTime::now());
        assert_eq!(r.first.len(), MAX_PATHS_PER_ROUTE);
        assert!(r.became_full);
        let r = log.record(&route, &["$.other".into()], SystemTime::now());
        assert_eq!(r, Recorded::default());
        let snap = log.snapshot();
        assert_eq!(snap[0].1.paths.len(), MAX_PATHS_PER_ROUTE);
        assert_eq!(snap[0].1.unlisted, 6);
    }
}
