//! The write side of a tier: after a committed write, the tombstone (L1 at once, L2 and the bus
//! in a task of their own), the row itself for write-through, and the retry of tombstones Redis
//! could not take yet.

use super::*;

impl<T> CacheTier<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// After a committed write that produced `value` at `version`: its tombstone (see
    /// [`CacheTier::invalidate`]), then the row itself, so the next read is a hit. The row may
    /// replace the tombstone of its own version, never a newer one.
    pub async fn write_through(self: &Arc<Self>, key: &str, version: u64, value: T) {
        let value = Arc::new(value);
        self.invalidate_then(key, version, Some(value)).await;
    }

    /// After a committed write: a tombstone carrying the write's version in L1 and L2, and the
    /// bus message. L1 learns it at once (read-your-writes); the Redis part runs in its own
    /// task, bounded by the Redis deadline, so neither a slow Redis nor a client that hangs up
    /// can turn the committed write into an error or cancel its invalidation. Until Redis has
    /// the tombstone, this process does not read the key from L2; if Redis cannot take it, it
    /// is retried until it can.
    pub async fn invalidate(self: &Arc<Self>, key: &str, version: u64) {
        self.invalidate_then(key, version, None).await;
    }

    async fn invalidate_then(self: &Arc<Self>, key: &str, version: u64, row: Option<Arc<T>>) {
        metrics::counter!("copilot_cache_invalidations_total", "cache" => self.settings.name)
            .increment(1);
        // A read that starts after this write must not join a flight that read before it.
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        // This instance's L1 always learns of its own writes (read-your-writes).
        self.l1_store(key, Entry::Tombstone { version });
        if self.l2.is_none() {
            if let Some(value) = row {
                self.fill(key, Entry::Value { version, value }).await;
            }
            return;
        }
        self.mark_pending(key, version);
        // The row is in this process's L1 at once (when L1 is in use); L2 and the bus follow in
        // their own task.
        if let Some(value) = &row
            && self.is_on()
            && self.l1_trusted()
        {
            self.l1_store(
                key,
                Entry::Value {
                    version,
                    value: value.clone(),
                },
            );
        }
        let (tier, key) = (self.clone(), key.to_owned());
        let work = tokio::spawn(async move {
            tier.send_tombstone(&key, version).await;
            if let Some(value) = row {
                tier.fill(&key, Entry::Value { version, value }).await;
            }
        });
        // With Redis healthy the caller returns with L2 settled (other instances read the new
        // row at once); with Redis slow, the wait ends after AFTER_COMMIT_WAIT and the work
        // goes on in the background, as it does when the caller's future is dropped.
        let _ = tokio::time::timeout(AFTER_COMMIT_WAIT, work).await;
    }

    fn mark_pending(&self, key: &str, version: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let v = pending.entry(key.to_owned()).or_insert(version);
        *v = (*v).max(version);
    }

    /// The tombstone and the bus message of one write; on failure, the retry task takes over.
    async fn send_tombstone(&self, key: &str, version: u64) {
        let Some(l2) = &self.l2 else { return };
        let tombstoned = l2
            .tombstone(key, version, self.settings.tombstone_ttl)
            .await
            .is_some();
        let published = match &self.bus {
            Some(bus) => bus.publish(self.settings.name, key, version).await,
            None => true,
        };
        if tombstoned && published {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.get(key) == Some(&version) {
                pending.remove(key);
            }
        } else if !self.retrying.swap(true, Ordering::AcqRel) {
            self.spawn_retry(l2.clone(), self.bus.clone());
        }
    }

    /// Retries pending tombstones until Redis takes them all.
    fn spawn_retry(&self, l2: Arc<RedisL2>, bus: Option<Arc<Bus>>) {
        let pending = self.pending.clone();
        let retrying = self.retrying.clone();
        let (name, ttl) = (self.settings.name, self.settings.tombstone_ttl);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let batch: Vec<(String, u64)> = {
                    let pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.iter().map(|(k, v)| (k.clone(), *v)).collect()
                };
                if batch.is_empty() {
                    retrying.store(false, Ordering::Release);
                    // A key marked between the check and the store is picked up by the next
                    // write's failure (or was sent by its own task).
                    return;
                }
                for (key, version) in batch {
                    let tombstoned = l2.tombstone(&key, version, ttl).await.is_some();
                    let published = match &bus {
                        Some(bus) => tombstoned && bus.publish(name, &key, version).await,
                        None => tombstoned,
                    };
                    if published {
                        metrics::counter!("copilot_cache_invalidations_retried_total", "cache" => name).increment(1);
                        let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                        if pending.get(&key) == Some(&version) {
                            pending.remove(&key);
                        }
                    }
                }
            }
        });
    }

    /// The number of tombstones still waiting for Redis.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
