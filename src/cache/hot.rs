//! The per-thread front of the store: each serving thread keeps its own copy of the answers it
//! served last, ready to send, so that a repeated hit reads and writes nothing another core
//! is using.
//!
//! A hit through the store itself makes the cores take turns at shared cache lines: moka's
//! read bookkeeping, the entry's reference count, the body's and ETag's reference counts.
//! Here a thread looks in its own small table (direct-mapped, [`SLOTS`] slots), and what it
//! sends is a copy of the body made for this thread, whose reference count only this thread
//! touches. A slot holds one (key, profile) answer that was a fresh hit in the store, and is
//! only served while fresh by the TTL the request's config gives the route. Validity comes
//! from the store's *epoch*, which every change of the store bumps (an insert, a purge of any
//! kind, a reload): a slot remembered under an older epoch is never served. The epoch a slot
//! is remembered under is the one read *before* the store was asked, so a hit that raced a
//! purge is never remembered as valid after it. The profile is compared by identity with an
//! `Arc` the slot keeps, so an address can never be reused for another profile while a slot
//! names it. Answers larger than [`MAX_BODY`] are not copied (the front's memory stays
//! within `SLOTS × MAX_BODY` per thread), and an answer is copied the second time in a row it
//! is a hit for its slot, so cycling through many keys copies nothing; every [`TOUCH_EVERY`]th hit of a slot also reads the
//! store, so its eviction policy still sees which entries are hot. Deciding freshness beyond
//! "fresh", stale serving and fills stay in the store (`super`).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;

use super::key::CacheKey;
use super::Rendered;
use crate::redact::Profile;

/// Slots per thread.
pub(crate) const SLOTS: usize = 64;
/// Largest body a slot copies.
pub(crate) const MAX_BODY: usize = 64 << 10;
/// A slot's hits between two reads of the store (for its eviction policy).
pub(crate) const TOUCH_EVERY: u32 = 64;

/// A hit served from the thread's front.
pub(crate) struct HotHit {
    /// The body and ETag, this thread's copy.
    pub(crate) rendered: Rendered,
    /// When the answer was fetched.
    pub(crate) fetched_at: Instant,
    /// Whether the caller should also read the store now ([`TOUCH_EVERY`]).
    pub(crate) touch: bool,
}

struct Slot {
    store: u64,
    epoch: u64,
    key: CacheKey,
    profile: Option<Arc<Profile>>,
    fetched_at: Instant,
    rendered: Rendered,
    hits: u32,
}

thread_local! {
    static TABLE: RefCell<Vec<Option<Slot>>> = RefCell::new((0..SLOTS).map(|_| None).collect());
    /// Per slot, the hash of the last answer offered to it: an answer is copied only when it
    /// is offered twice in a row, so a thread cycling through more keys than it has slots
    /// (many accounts) does not copy a body per request for slots it would lose at once.
    static OFFERED: RefCell<Vec<u64>> = RefCell::new(vec![0; SLOTS]);
}

fn same_profile(a: Option<&Arc<Profile>>, b: Option<&Arc<Profile>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// The slot of (`store`, `key`, `profile`), and a non-zero tag of the three.
fn slot_of(store: u64, key: &CacheKey, profile: Option<&Arc<Profile>>) -> (usize, u64) {
    // Only spreads keys over slots: a collision costs a store lookup, never a wrong answer
    // (the slot's key is compared in full).
    let profile = profile.map_or(0, |p| Arc::as_ptr(p) as usize as u64);
    let h =
        (key.quick_hash() ^ store.rotate_left(17) ^ profile).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 32) as usize % SLOTS, h | 1)
}

/// The thread's copy of (`key`, `profile`) of store `store`, if it was remembered under
/// `epoch` (the store's current one) and is younger than `ttl` at `now`.
pub(crate) fn get(
    store: u64,
    epoch: u64,
    key: &CacheKey,
    profile: Option<&Arc<Profile>>,
    now: Instant,
    ttl: Duration,
) -> Option<HotHit> {
    let (i, _) = slot_of(store, key, profile);
    TABLE.with(|t| {
        let mut t = t.try_borrow_mut().ok()?;
        let cell = t.get_mut(i)?;
        let slot = cell.as_mut()?;
        if slot.store == store && slot.epoch != epoch {
            // Never servable again: let the copy (and its profile and names) go now.
            *cell = None;
            return None;
        }
        if slot.store != store
            || slot.epoch != epoch
            || !same_profile(slot.profile.as_ref(), profile)
            || slot.key != *key
            || now.saturating_duration_since(slot.fetched_at) >= ttl
        {
            return None;
        }
        slot.hits = slot.hits.wrapping_add(1);
        Some(HotHit {
            rendered: slot.rendered.clone(),
            fetched_at: slot.fetched_at,
            touch: slot.hits % TOUCH_EVERY == 0,
        })
    })
}

/// Remembers `rendered` (a fresh hit of the store, read after the store's epoch was `epoch`)
/// for (`key`, `profile`) in this thread's table, as this thread's own copy, the second time
/// in a row it is offered for its slot ([`OFFERED`]).
pub(crate) fn remember(
    store: u64,
    epoch: u64,
    key: &CacheKey,
    profile: Option<&Arc<Profile>>,
    fetched_at: Instant,
    rendered: &Rendered,
) {
    if rendered.body.len() > MAX_BODY {
        return;
    }
    let (i, tag) = slot_of(store, key, profile);
    let twice = OFFERED.with(|o| {
        let Ok(mut o) = o.try_borrow_mut() else {
            return false;
        };
        match o.get_mut(i) {
            Some(last) if *last == tag => true,
            Some(last) => {
                *last = tag;
                false
            }
            None => false,
        }
    });
    if !twice {
        return;
    }
    TABLE.with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return;
        };
        if let Some(slot) = t.get_mut(i) {
            *slot = Some(Slot {
                store,
                epoch,
                key: key.clone(),
                profile: profile.cloned(),
                fetched_at,
                rendered: Rendered {
                    body: Bytes::copy_from_slice(&rendered.body),
                    // A copy of a valid header value is one.
                    etag: HeaderValue::from_bytes(rendered.etag.as_bytes())
                        .unwrap_or_else(|_| rendered.etag.clone()),
                },
                hits: 0,
            });
        }
    });
}
