//! The caching decorator of [`ConfigStore`]: each level's stored patch is cached under its own
//! key and merged in process, so a global or tenant write invalidates exactly one key and every
//! user sees it at once (DESIGN.md section 9, item 5). The effective config is one `MGET`.

use std::hash::BuildHasher;
use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::config::{
    ConfigLevel, ConfigPatch, EffectiveConfig, LevelVersions, StoredPatch, StoredPatchView,
    effective_config,
};
use copilot_domain::{TenantId, UserId};
use copilot_store::{ConfigStore, StoreResult};
use quick_cache::sync::Cache;
use tokio::time::Instant;

use crate::counting::HitCounter;
use crate::tier::CacheTier;

pub struct CachedConfigStore {
    inner: Arc<dyn ConfigStore>,
    tier: Arc<CacheTier<StoredPatchView>>,
    global_key: String,
    merged: MergedConfigs,
}

/// Effective configurations already merged, by (tenant, user), handed out again while their
/// three levels still have the versions they were merged from. The merge is a function of the
/// stored levels alone, so this needs no invalidation of its own: whatever source the levels
/// were read from this time decides.
///
/// Memoized: an entry merged from three L1 entries also records L1's generation and when the
/// first of those entries expires; until either changes it is the answer without looking at
/// the levels at all (the generation moves with every change of what L1 holds).
struct MergedConfigs {
    entries: Cache<u64, Merged>,
    hasher: std::collections::hash_map::RandomState,
    /// `copilot_cache_requests_total{cache="config", tier="merged", outcome}`.
    hit: metrics::Counter,
    miss: metrics::Counter,
    /// Every memoized answer counts here: sharded (see `counting`).
    memo_hit: Arc<HitCounter>,
}

#[derive(Clone)]
struct Merged {
    config: Arc<EffectiveConfig>,
    /// L1's generation and the first expiry of the L1 entries it was merged from.
    memo: Option<(u64, Instant)>,
}

impl MergedConfigs {
    fn new(capacity: usize) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("copilot_cache_requests_total", "cache" => "config", "tier" => "merged", "outcome" => outcome);
        Self {
            entries: Cache::new(capacity.max(1)),
            hasher: std::collections::hash_map::RandomState::new(),
            hit: counter("hit"),
            miss: counter("miss"),
            memo_hit: HitCounter::new(counter("memo")),
        }
    }

    fn slot(&self, tenant: &TenantId, user: Option<&UserId>) -> u64 {
        self.hasher
            .hash_one((tenant.as_str(), user.map(UserId::as_str)))
    }

    /// The memoized answer, while L1 is still at `generation` and its entries live.
    fn memoized(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        generation: u64,
        now: Instant,
    ) -> Option<Arc<EffectiveConfig>> {
        let merged = self.entries.get(&self.slot(tenant, user))?;
        let (at, until) = merged.memo?;
        (at == generation
            && now < until
            && merged.config.tenant_id == *tenant
            && merged.config.user_id.as_ref() == user)
            .then(|| {
                self.memo_hit.increment(1);
                merged.config
            })
    }

    fn merge(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        levels: [Option<&StoredPatchView>; 3],
        memo: Option<(u64, Instant)>,
    ) -> Arc<EffectiveConfig> {
        let slot = self.slot(tenant, user);
        let versions = LevelVersions {
            global: levels[0].map(|l| l.version),
            tenant: levels[1].map(|l| l.version),
            user: levels[2].map(|l| l.version),
        };
        if let Some(merged) = self.entries.get(&slot)
            && merged.config.versions == versions
            && merged.config.tenant_id == *tenant
            && merged.config.user_id.as_ref() == user
        {
            self.hit.increment(1);
            if merged.memo != memo {
                self.entries.insert(
                    slot,
                    Merged {
                        config: merged.config.clone(),
                        memo,
                    },
                );
            }
            return merged.config;
        }
        self.miss.increment(1);
        let config = Arc::new(effective_config(
            tenant, user, levels[0], levels[1], levels[2],
        ));
        self.entries.insert(
            slot,
            Merged {
                config: config.clone(),
                memo,
            },
        );
        config
    }
}

impl CachedConfigStore {
    pub fn new(inner: Arc<dyn ConfigStore>, tier: CacheTier<StoredPatchView>) -> Self {
        let global_key = crate::keys::config(&tier.settings().prefix, &ConfigLevel::Global);
        let merged = MergedConfigs::new(tier.settings().l1_capacity);
        Self {
            inner,
            tier: Arc::new(tier),
            global_key,
            merged,
        }
    }

    pub fn tier(&self) -> &CacheTier<StoredPatchView> {
        &self.tier
    }

    fn key(&self, level: &ConfigLevel) -> String {
        crate::keys::config(&self.tier.settings().prefix, level)
    }

    async fn load(&self, level: &ConfigLevel) -> StoreResult<Option<(u64, StoredPatchView)>> {
        Ok(self
            .inner
            .get_patch(level)
            .await?
            .map(|p| (p.version, p.view())))
    }

    async fn written(&self, stored: StoredPatch) -> StoredPatch {
        self.tier
            .write_through(&self.key(&stored.level), stored.version, stored.view())
            .await;
        stored
    }
}

#[async_trait]
impl ConfigStore for CachedConfigStore {
    async fn get_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        let found = self.tier.get(&self.key(level), || self.load(level)).await?;
        Ok(found.map(|view| view.as_ref().clone().into_stored(level.clone())))
    }

    async fn put_patch(
        &self,
        level: &ConfigLevel,
        patch: &ConfigPatch,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch> {
        let stored = self
            .inner
            .put_patch(level, patch, expected_version, actor)
            .await?;
        Ok(self.written(stored).await)
    }

    async fn merge_patch(
        &self,
        level: &ConfigLevel,
        merge_patch: &serde_json::Value,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch> {
        let stored = self
            .inner
            .merge_patch(level, merge_patch, expected_version, actor)
            .await?;
        Ok(self.written(stored).await)
    }

    async fn delete_patch(
        &self,
        level: &ConfigLevel,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let version = self.inner.delete_patch(level, expected_version).await?;
        self.tier.invalidate(&self.key(level), version).await;
        Ok(version)
    }

    /// The three levels in one L2 round trip (or three L1 lookups), merged in process.
    async fn get_effective(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
    ) -> StoreResult<Arc<EffectiveConfig>> {
        // Memoized: L1 has not changed since this was merged from it.
        let now = Instant::now();
        let generation = self.tier.l1_generation();
        if let Some(generation) = generation
            && let Some(merged) = self.merged.memoized(tenant, user, generation, now)
        {
            self.tier.count_l1_hits(if user.is_some() { 3 } else { 2 });
            return Ok(merged);
        }
        // Keys straight from the ids; the levels are built only on a miss.
        let prefix = &self.tier.settings().prefix;
        let tenant_key = crate::keys::tenant_config(prefix, tenant);
        let user_key = user.map(|u| crate::keys::user_config(prefix, tenant, u));
        let mut keys = [self.global_key.as_str(), tenant_key.as_str(), ""];
        let count = match &user_key {
            Some(k) => {
                keys[2] = k.as_str();
                3
            }
            None => 2,
        };
        let found = self
            .tier
            .get_many(&keys[..count], |i| {
                let level = match (i, user) {
                    (0, _) => ConfigLevel::Global,
                    (2, Some(u)) => ConfigLevel::User(tenant.clone(), u.clone()),
                    _ => ConfigLevel::Tenant(tenant.clone()),
                };
                async move { self.load(&level).await }
            })
            .await?;
        let level = |i: usize| found.get(i).and_then(Option::as_deref);
        // Memoizable when L1 answers every level with exactly what was merged (the generation
        // was taken before reading them, so a change in between leaves the memo unusable, never
        // wrong; a level read past a tombstone is not memoized).
        let memo = generation.and_then(|generation| {
            let mut until: Option<Instant> = None;
            for (i, key) in keys[..count].iter().enumerate() {
                let (version, expires) = self.tier.l1_answer(key, now)?;
                if version != level(i).map(|l| l.version) {
                    return None;
                }
                until = Some(until.map_or(expires, |u| u.min(expires)));
            }
            Some((generation, until?))
        });
        Ok(self
            .merged
            .merge(tenant, user, [level(0), level(1), level(2)], memo))
    }
}
