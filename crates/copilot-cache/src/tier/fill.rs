//! Fills: a row read from the store (or just written) into L1 and L2 by the versioned
//! compare-and-set of DESIGN.md 5.2, never lowering a key's version, and kept out of L1 when
//! the read began in an older trust epoch.

use super::*;

impl<T> CacheTier<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Puts a row read from the store (or just written) into L1 and L2, never lowering a
    /// key's version.
    pub async fn fill(&self, key: &str, entry: Entry<T>) {
        self.fill_from(key, entry, self.trust_epoch()).await;
    }

    /// A fill of a read that started in bus epoch `epoch`: if the bus lost its footing since,
    /// L1 was flushed and may have missed this key's invalidation, so the row stays out of L1
    /// (L2's compare-and-set still judges it by version).
    pub(super) async fn fill_from(&self, key: &str, entry: Entry<T>, epoch: u64) {
        if !self.is_on() {
            return;
        }
        if self.l1_trusted() && self.trust_epoch() == epoch {
            self.l1_store(key, entry.clone());
        }
        let Some(l2) = &self.l2 else { return };
        let encoded = entry.encode();
        let stored = match &entry {
            Entry::Value { version, .. } => {
                l2.fill(key, *version, &encoded, self.settings.ttl).await
            }
            Entry::Absent => {
                l2.fill_absent(key, &encoded, self.settings.negative_ttl)
                    .await
            }
            Entry::Tombstone { .. } => return,
        };
        match stored {
            Some(true) => {
                metrics::counter!("copilot_cache_fills_total", "cache" => self.settings.name)
                    .increment(1);
                // A newer row in L2 settles a pending tombstone of this key.
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending
                    .get(key)
                    .is_some_and(|&v| entry.version() >= v && entry.version() > 0)
                {
                    pending.remove(key);
                }
            }
            Some(false) => {
                metrics::counter!("copilot_cache_fills_rejected_total", "cache" => self.settings.name, "tier" => "l2")
                    .increment(1);
            }
            None => {}
        }
    }
}
