//! The read side of a tier: L1, then one L2 round trip for what L1 did not answer, then the
//! store under single flight (concurrent misses of a key share one load); with the store
//! unavailable, what trusted L1 last held.

use super::*;

impl<T> CacheTier<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Reads one key: L1, then L2, then (single flight) the store through `load`.
    pub async fn get<F, Fut>(&self, key: &str, load: F) -> StoreResult<Option<Arc<T>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<(u64, T)>>>,
    {
        if !self.is_on() {
            self.count("store", "bypass");
            return Ok(load().await?.map(|(_, value)| Arc::new(value)));
        }
        // An L1 hit answers before anything is allocated or awaited.
        let in_l1 = self.l1_lookup(key);
        if let Lookup::Hit(value) = in_l1 {
            self.hits.add(1);
            return Ok(value);
        }
        // Boxed: the L2 and store path is a large state machine, and inline it would make
        // every caller's future (an L1 hit's too) that large.
        Box::pin(self.get_past_l1(key, in_l1, load)).await
    }

    async fn get_past_l1<F, Fut>(
        &self,
        key: &str,
        in_l1: Lookup<T>,
        load: F,
    ) -> StoreResult<Option<Arc<T>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<(u64, T)>>>,
    {
        let mut found = self.lookup_l2(&[key], vec![in_l1]).await;
        match found.pop() {
            Some(Lookup::Hit(value)) => {
                self.hits.add(1);
                Ok(value)
            }
            _ => self.load_and_fill(key, load).await,
        }
    }

    /// Reads several keys with at most one L2 round trip (`MGET`), loading each miss.
    pub async fn get_many<F, Fut>(&self, keys: &[&str], load: F) -> StoreResult<Vec<Option<Arc<T>>>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = StoreResult<Option<(u64, T)>>>,
    {
        let mut out = Vec::with_capacity(keys.len());
        if !self.is_on() {
            self.count("store", "bypass");
            for i in 0..keys.len() {
                out.push(load(i).await?.map(|(_, value)| Arc::new(value)));
            }
            return Ok(out);
        }
        let now = Instant::now();
        let found: Vec<Lookup<T>> = keys.iter().map(|k| self.l1_lookup_at(k, now)).collect();
        if found.iter().all(|l| matches!(l, Lookup::Hit(_))) {
            for lookup in found {
                if let Lookup::Hit(value) = lookup {
                    self.hits.add(1);
                    out.push(value);
                }
            }
            return Ok(out);
        }
        Box::pin(self.get_many_past_l1(keys, found, load, out)).await
    }

    async fn get_many_past_l1<F, Fut>(
        &self,
        keys: &[&str],
        found: Vec<Lookup<T>>,
        load: F,
        mut out: Vec<Option<Arc<T>>>,
    ) -> StoreResult<Vec<Option<Arc<T>>>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = StoreResult<Option<(u64, T)>>>,
    {
        let found = self.lookup_l2(keys, found).await;
        for (i, lookup) in found.into_iter().enumerate() {
            out.push(match lookup {
                Lookup::Hit(value) => {
                    self.hits.add(1);
                    value
                }
                Lookup::Miss => self.load_and_fill(keys[i], || load(i)).await?,
            });
        }
        Ok(out)
    }

    /// Asks L2 for the keys L1 did not answer (`found[i]` is L1's answer for `keys[i]`).
    async fn lookup_l2(&self, keys: &[&str], mut found: Vec<Lookup<T>>) -> Vec<Lookup<T>> {
        let Some(l2) = &self.l2 else { return found };
        let wanted: Vec<usize> = (0..keys.len())
            .filter(|&i| matches!(found[i], Lookup::Miss) && !self.is_pending(keys[i]))
            .collect();
        if wanted.is_empty() {
            return found;
        }
        let asked: Vec<String> = wanted.iter().map(|&i| keys[i].to_owned()).collect();
        let epoch = self.trust_epoch();
        let Some(values) = l2.get_many(&asked).await else {
            self.count("l2", "unavailable");
            return found;
        };
        for (&i, value) in wanted.iter().zip(values) {
            match value.as_deref().and_then(Entry::<T>::decode) {
                Some(Entry::Value { version, .. }) if self.l1_knows_newer(keys[i], version) => {
                    // This process already saw a newer version (its own write, or the bus):
                    // the L2 row is older than what was written; read the store.
                    self.count("l2", "miss");
                }
                Some(Entry::Value { version, value }) => {
                    self.count("l2", "hit");
                    if self.l1_trusted() && self.trust_epoch() == epoch {
                        self.l1_store(
                            keys[i],
                            Entry::Value {
                                version,
                                value: value.clone(),
                            },
                        );
                    }
                    found[i] = Lookup::Hit(Some(value));
                }
                Some(Entry::Absent) => {
                    self.count("l2", "hit");
                    // Kept in L1 too (only where L1 knows nothing of the key, as for a negative
                    // fill from the store): otherwise the instance that did not fill a "none"
                    // entry would ask Redis on every read while the others hit L1.
                    if self.l1_trusted() && self.trust_epoch() == epoch {
                        self.l1_store(keys[i], Entry::Absent);
                    }
                    found[i] = Lookup::Hit(None);
                }
                _ => self.count("l2", "miss"),
            }
        }
        found
    }

    /// Whether L1 holds (trusted or not) a version of `key` newer than `version`.
    fn l1_knows_newer(&self, key: &str, version: u64) -> bool {
        self.l1.get(key).is_some_and(|e| e.version() > version)
    }

    pub(super) fn flight(&self, key: &str) -> Flight<T> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(key.to_owned()).or_default().clone()
    }

    /// Removes `flight` from the map (unless a write already replaced or removed it).
    fn retire(&self, key: &str, flight: &Flight<T>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }

    async fn load_and_fill<F, Fut>(&self, key: &str, load: F) -> StoreResult<Option<Arc<T>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<(u64, T)>>>,
    {
        let flight = self.flight(key);
        let result = {
            let mut turn = flight.lock().await;
            // The leader of this flight may have answered while this reader waited.
            match turn
                .clone()
                .map(Lookup::Hit)
                .unwrap_or_else(|| self.l1_lookup(key))
            {
                Lookup::Hit(value) => Ok(value),
                Lookup::Miss => {
                    self.count("store", "read");
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let epoch = self.trust_epoch();
                    match load().await {
                        Ok(loaded) => {
                            let hook = self
                                .fill_hook
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .clone();
                            if let Some(hook) = hook {
                                hook(key).await;
                            }
                            let entry = match loaded {
                                Some((version, value)) => Entry::Value {
                                    version,
                                    value: Arc::new(value),
                                },
                                None => Entry::Absent,
                            };
                            let value = match &entry {
                                Entry::Value { value, .. } => Some(value.clone()),
                                _ => None,
                            };
                            self.fill_from(key, entry, epoch).await;
                            *turn = Some(value.clone());
                            // Those already waiting share this result; a reader that comes
                            // later starts its own load (a finished load is never handed out
                            // again: with L1 distrusted that would be staleness without bound).
                            self.retire(key, &flight);
                            Ok(value)
                        }
                        Err(e @ StoreError::Unavailable(_)) => match self.stale_answer(key) {
                            Some(value) => {
                                self.count("l1", "stale");
                                Ok(value)
                            }
                            None => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
            }
        };
        self.retire(key, &flight);
        result
    }

    /// With the store unavailable: the row (or "no row") L1 last held for `key`, past its L1
    /// lifetime but stored less than the row TTL ago, while L1 is trusted. L1 is flushed
    /// whenever no invalidation path is healthy, so an entry still there has had every
    /// invalidation since it was stored delivered; serving it beats failing the read while the
    /// store restarts (a tombstoned key is never served: it holds no answer).
    fn stale_answer(&self, key: &str) -> Option<Option<Arc<T>>> {
        if !(self.is_on() && self.l1_trusted()) {
            return None;
        }
        self.l1
            .get_younger_than(key, Instant::now(), self.settings.ttl)
            .and_then(Entry::answer)
    }
}
