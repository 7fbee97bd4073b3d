//! L1: the in-process cache of one tier. Bounded (entries and bytes), versioned (a store never
//! lowers a key's version), with a lifetime per entry and a generation that moves with every
//! change of what it holds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::Cache;
use serde::Serialize;
use tokio::time::Instant;

use crate::entry::Entry;
use crate::trust::L1Sink;

pub(super) struct L1Slot<T> {
    entry: Entry<T>,
    stored_at: Instant,
    /// What the entry weighs against the byte bound.
    weight: u64,
}

impl<T> Clone for L1Slot<T> {
    fn clone(&self) -> Self {
        Self {
            entry: self.entry.clone(),
            stored_at: self.stored_at,
            weight: self.weight,
        }
    }
}

/// Weighs an L1 slot by its encoded size, but at least `floor` (= byte bound / entry bound), so
/// both bounds hold with one weight.
#[derive(Clone)]
pub(super) struct SlotWeight {
    pub(super) floor: u64,
}

impl<T> quick_cache::Weighter<String, L1Slot<T>> for SlotWeight {
    fn weight(&self, key: &String, slot: &L1Slot<T>) -> u64 {
        (key.len() as u64 + slot.weight).max(self.floor)
    }
}

/// The in-process cache of one tier: bounded, versioned, with a lifetime per entry.
pub(super) struct L1<T> {
    pub(super) name: &'static str,
    pub(super) cache: Cache<String, L1Slot<T>, SlotWeight>,
    /// Serializes compare-and-insert (reads stay lock-free).
    pub(super) write: Mutex<()>,
    pub(super) ttl: Duration,
    /// Bumped by every change of what L1 holds (a store, a flush); results derived from L1
    /// entries stay valid while it has not moved (see [`CacheTier::l1_generation`]).
    pub(super) generation: AtomicU64,
}

impl<T: Serialize> L1<T> {
    pub(super) fn get(&self, key: &str) -> Option<Entry<T>> {
        self.get_at(key, Instant::now())
    }

    /// What the key's live L1 entry answers (`Some(version)` a row, `None` no row) and until
    /// when; `None` for no live entry or a tombstone (which answers nothing).
    pub(super) fn answer_at(&self, key: &str, now: Instant) -> Option<(Option<u64>, Instant)> {
        let slot = self.cache.get(key)?;
        let until = slot.stored_at + self.ttl;
        if now >= until {
            return None;
        }
        match slot.entry {
            Entry::Value { version, .. } => Some((Some(version), until)),
            Entry::Absent => Some((None, until)),
            Entry::Tombstone { .. } => None,
        }
    }

    /// As of `now` (one clock reading serves several lookups of one read).
    pub(super) fn get_at(&self, key: &str, now: Instant) -> Option<Entry<T>> {
        self.get_younger_than(key, now, self.ttl)
    }

    /// The entry if stored less than `age` before `now`, whatever L1's own lifetime (a read
    /// while the store is unavailable looks further back).
    pub(super) fn get_younger_than(
        &self,
        key: &str,
        now: Instant,
        age: Duration,
    ) -> Option<Entry<T>> {
        self.cache
            .get(key)
            .filter(|slot| now.saturating_duration_since(slot.stored_at) < age)
            .map(|slot| slot.entry)
    }

    /// Stores unless that would lower the key's version.
    pub(super) fn store(&self, key: &str, entry: Entry<T>) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.get(key);
        if entry.may_replace(existing.as_ref()) {
            let weight = match &entry {
                Entry::Value { value, .. } => {
                    serde_json::to_vec(value.as_ref()).map_or(0, |v| v.len() as u64)
                }
                _ => 16,
            };
            self.cache.insert(
                key.to_owned(),
                L1Slot {
                    entry,
                    stored_at: Instant::now(),
                    weight,
                },
            );
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            metrics::counter!("copilot_cache_fills_rejected_total", "cache" => self.name, "tier" => "l1").increment(1);
        }
    }
}

impl<T: Serialize + Send + Sync + 'static> L1Sink for L1<T> {
    fn cache_name(&self) -> &'static str {
        self.name
    }

    fn invalidate_l1(&self, key: &str, version: u64) {
        metrics::counter!("copilot_cache_invalidations_received_total", "cache" => self.name)
            .increment(1);
        self.store(key, Entry::Tombstone { version });
    }

    fn flush_l1(&self) {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.cache.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
