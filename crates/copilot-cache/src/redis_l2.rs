//! Redis as the shared L2: every call has a deadline, the circuit breaker answers "miss / no-op"
//! at once while Redis is failing, and fills and tombstones are version-guarded Lua scripts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::entry::Entry;

/// Stores `ARGV[2]` unless the key holds a newer version, or the same version that is not a
/// tombstone (a row replaces the tombstone of the write that produced it).
const FILL: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v, k = string.match(cur, '^(%d+)|(%a)|')
  v = tonumber(v)
  local nv = tonumber(ARGV[1])
  if v and (v > nv or (v == nv and k ~= 't')) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Stores a tombstone unless the key already holds this version or a newer one, so two writers
/// whose tombstones arrive out of order never lower a key's version.
const TOMBSTONE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

pub use crate::redis_connect::{RedisSettings, RedisTls, RedisTopology};
use crate::redis_link::{Link, PubSubNodes};
use crate::redis_nodes::{ClusterNodes, spawn_slot_watcher};
use crate::redis_sentinel::SentinelLink;

pub struct RedisL2 {
    /// Redis Cluster: the slot map and one breaker per primary.
    nodes: Option<Arc<ClusterNodes>>,
    subscribers: PubSubNodes,
    topology: RedisTopology,
    connection: Link,
    breaker: Arc<CircuitBreaker>,
    timeout: Duration,
    fill: Script,
    tombstone: Script,
}

impl RedisL2 {
    /// Does not connect: the first call does, under the breaker.
    pub fn new(settings: &RedisSettings) -> Result<Self, redis::RedisError> {
        let connect_within = settings.timeout.max(Duration::from_millis(200));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_within))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let sentinel = match settings.sentinel_target()? {
            Some(target) => {
                let (username, password) = settings.credentials();
                let certificates = if target.tls {
                    Some(settings.certificates()?)
                } else {
                    None
                };
                Some(SentinelLink::new(
                    &target,
                    username.as_deref(),
                    password.as_deref(),
                    certificates,
                    manager_config.clone(),
                )?)
            }
            None => None,
        };
        let clients = if sentinel.is_some() {
            Vec::new()
        } else {
            settings.node_clients()?
        };
        let connection = if let Some(sentinel) = &sentinel {
            Link::Sentinel(sentinel.clone())
        } else if settings.is_cluster() {
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect_within)
                .set_response_timeout(settings.timeout);
            Link::Cluster(
                settings
                    .cluster_client()?
                    .get_pending_async_connection_with_config(config),
            )
        } else {
            Link::Single(ConnectionManager::new_lazy_with_config(
                clients[0].clone(),
                manager_config,
            )?)
        };
        let subscribers = PubSubNodes::new(clients, sentinel);
        let topology = settings.topology();
        let breaker = Arc::new(CircuitBreaker::new(
            settings.breaker_failures,
            settings.breaker_open_for,
        ));
        // Inside a runtime (always, in the service) the breaker is probed by a task of its own.
        if tokio::runtime::Handle::try_current().is_ok() {
            breaker.probe_in_background();
            spawn_prober(
                Arc::downgrade(&breaker),
                connection.clone(),
                settings.timeout,
            );
        }
        let nodes = matches!(connection, Link::Cluster(_)).then(|| {
            Arc::new(ClusterNodes::new(
                settings.breaker_failures,
                settings.breaker_open_for,
            ))
        });
        if let (Some(nodes), Link::Cluster(cluster)) = (&nodes, &connection)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            spawn_slot_watcher(Arc::downgrade(nodes), cluster.clone(), settings.timeout);
        }
        Ok(Self {
            nodes,
            subscribers,
            topology,
            connection,
            breaker,
            timeout: settings.timeout,
            fill: Script::new(FILL),
            tombstone: Script::new(TOMBSTONE),
        })
    }

    /// How Redis is deployed, with the primary in use behind Sentinel.
    pub fn topology(&self) -> RedisTopology {
        let mut topology = self.topology.clone();
        if let Link::Sentinel(sentinel) = &self.connection {
            topology.primary = sentinel.primary();
        }
        // A cluster: the primaries that serve slots now, once the slot map is known.
        let primaries = self.node_breakers();
        if !primaries.is_empty() {
            topology.nodes = primaries.into_iter().map(|(address, _)| address).collect();
        }
        topology
    }

    /// `PING` now, without the breaker (start-up checks and `doctor`).
    pub async fn ping_now(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    }

    /// Where the bus and the event hub open their subscriber connections.
    pub(crate) fn subscribers(&self) -> PubSubNodes {
        self.subscribers.clone()
    }

    /// The breaker's state; in a cluster, the worst of the cluster-wide one (keyless calls) and
    /// the primaries' ones.
    pub fn breaker_state(&self) -> BreakerState {
        let rank = |s: BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        let nodes = self.nodes.as_ref().map(|n| n.states()).unwrap_or_default();
        nodes
            .into_iter()
            .map(|(_, state)| state)
            .chain([self.breaker.state()])
            .max_by_key(|s| rank(*s))
            .unwrap_or(BreakerState::Closed)
    }

    /// Each primary's breaker, by `host:port` (Redis Cluster only).
    pub fn node_breakers(&self) -> Vec<(String, BreakerState)> {
        self.nodes.as_ref().map(|n| n.states()).unwrap_or_default()
    }

    /// One Redis call under the breaker and the deadline. `None`: skipped, failed or too slow.
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        self.call_on(op, &self.breaker, None, call).await
    }

    /// A call about `key`: in a cluster, under the breaker of the primary that serves its slot.
    async fn call_keyed<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match self.nodes.as_ref().and_then(|n| n.node_for(key)) {
            Some(node) => self.call_on(op, &node.breaker, Some(&node), call).await,
            None => self.call(op, call).await,
        }
    }

    async fn call_on<T>(
        &self,
        op: &'static str,
        breaker: &CircuitBreaker,
        node: Option<&crate::redis_nodes::Node>,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let node_outcome = |outcome: &'static str| {
            if let Some(node) = node {
                node.count(outcome);
            }
        };
        // The permit settles as a failure if this future is dropped mid-call.
        let Some(permit) = breaker.permit() else {
            metrics::counter!("copilot_redis_calls_total", "op" => op, "outcome" => "skipped")
                .increment(1);
            node_outcome("skipped");
            return None;
        };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call).await;
        metrics::histogram!("copilot_redis_call_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => {
                permit.success();
                metrics::counter!("copilot_redis_calls_total", "op" => op, "outcome" => "ok")
                    .increment(1);
                node_outcome("ok");
                Some(value)
            }
            Ok(Err(e)) => {
                permit.failure();
                metrics::counter!("copilot_redis_calls_total", "op" => op, "outcome" => "error")
                    .increment(1);
                node_outcome("error");
                tracing::debug!(op, error = %e, "redis call failed");
                None
            }
            Err(_) => {
                permit.failure();
                metrics::counter!("copilot_redis_calls_total", "op" => op, "outcome" => "timeout")
                    .increment(1);
                node_outcome("timeout");
                None
            }
        }
    }

    /// Values of `keys` in one round trip (`MGET`). In a cluster, one `MGET` per primary, sent
    /// together, each under its node's breaker: the keys of a node that fails read as absent.
    pub async fn get_many(&self, keys: &[String]) -> Option<Vec<Option<String>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        if let Some(nodes) = &self.nodes {
            let owners: Vec<_> = keys.iter().map(|k| nodes.node_for(k)).collect();
            if owners.iter().all(Option::is_some) {
                return self.get_many_per_node(keys, owners).await;
            }
        }
        let mut conn = self.connection.clone();
        self.call("mget", async move {
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await
        })
        .await
    }

    async fn get_many_per_node(
        &self,
        keys: &[String],
        owners: Vec<Option<Arc<crate::redis_nodes::Node>>>,
    ) -> Option<Vec<Option<String>>> {
        let mut groups: Vec<(Arc<crate::redis_nodes::Node>, Vec<usize>)> = Vec::new();
        for (index, owner) in owners.into_iter().enumerate() {
            let Some(owner) = owner else { continue };
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &owner)) {
                Some((_, indexes)) => indexes.push(index),
                None => groups.push((owner, vec![index])),
            }
        }
        let reads = groups.iter().map(|(node, indexes)| {
            let mut conn = self.connection.clone();
            let group: Vec<&String> = indexes.iter().map(|i| &keys[*i]).collect();
            async move {
                self.call_on("mget", &node.breaker, Some(node), async move {
                    redis::cmd("MGET")
                        .arg(group)
                        .query_async::<Vec<Option<String>>>(&mut conn)
                        .await
                })
                .await
            }
        });
        let answers = futures::future::join_all(reads).await;
        let mut values = vec![None; keys.len()];
        let mut any = false;
        for ((_, indexes), answer) in groups.iter().zip(answers) {
            let Some(answer) = answer else { continue };
            any = true;
            for (index, value) in indexes.iter().zip(answer) {
                values[*index] = value;
            }
        }
        any.then_some(values)
    }

    /// Version-guarded fill; `Some(false)` when a newer entry or tombstone is there.
    pub async fn fill(
        &self,
        key: &str,
        version: u64,
        encoded: &str,
        ttl: Duration,
    ) -> Option<bool> {
        self.guarded("fill", &self.fill, key, version, encoded, ttl)
            .await
    }

    /// Runs one of the version-guarded scripts; `Some(true)` when it stored.
    async fn guarded(
        &self,
        op: &'static str,
        script: &Script,
        key: &str,
        version: u64,
        encoded: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let mut conn = self.connection.clone();
        let ttl_ms = ttl.as_millis() as u64;
        self.call_keyed(op, key, async move {
            script
                .key(key)
                .arg(version)
                .arg(encoded)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|stored| stored == 1)
    }

    /// A negative entry, only where the key is absent (no entry, no tombstone).
    pub async fn fill_absent(&self, key: &str, encoded: &str, ttl: Duration) -> Option<bool> {
        let mut conn = self.connection.clone();
        let ttl_ms = ttl.as_millis() as u64;
        self.call_keyed("fill_absent", key, async move {
            redis::cmd("SET")
                .arg(key)
                .arg(encoded)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Value>(&mut conn)
                .await
        })
        .await
        .map(|reply| matches!(reply, Value::Okay))
    }

    /// Writes a tombstone carrying the write's version (never lowering the key's version).
    pub async fn tombstone(&self, key: &str, version: u64, ttl: Duration) -> Option<bool> {
        let encoded = Entry::<()>::Tombstone { version }.encode();
        self.guarded("tombstone", &self.tombstone, key, version, &encoded, ttl)
            .await
    }

    /// A plain `GET` (`Some(None)`: no such key).
    pub async fn get(&self, key: &str) -> Option<Option<String>> {
        let mut conn = self.connection.clone();
        self.call_keyed("get", key, async move {
            redis::cmd("GET").arg(key).query_async(&mut conn).await
        })
        .await
    }

    /// A plain `SET` without expiry; `false` when it could not be done.
    pub async fn set(&self, key: &str, value: &str) -> bool {
        let mut conn = self.connection.clone();
        self.call_keyed("set", key, async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<Value>(&mut conn)
                .await
        })
        .await
        .is_some()
    }

    /// `PUBLISH` (bus messages, heartbeats); `false` when it could not be sent.
    pub async fn publish(&self, channel: &str, message: &str) -> bool {
        let mut conn = self.connection.clone();
        self.call("publish", async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .is_some()
    }

    /// `PING`, for readiness reports and breaker probes.
    pub async fn ping(&self) -> bool {
        let mut conn = self.connection.clone();
        self.call("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .is_some()
    }
}

/// Probes an open breaker with `PING` once its open time is up, so that no request ever waits
/// on a Redis that may not answer; ends with the breaker.
fn spawn_prober(breaker: Weak<CircuitBreaker>, connection: Link, timeout: Duration) {
    tokio::spawn(async move {
        loop {
            let every = match breaker.upgrade() {
                Some(b) => (b.open_for() / 4).clamp(Duration::from_millis(20), PROBE_EVERY),
                None => return,
            };
            tokio::time::sleep(every).await;
            let Some(breaker) = breaker.upgrade() else {
                return;
            };
            let Some(permit) = breaker.probe() else {
                continue;
            };
            let mut conn = connection.clone();
            let answered =
                tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                    .await;
            metrics::counter!("copilot_redis_calls_total", "op" => "probe", "outcome" => if matches!(answered, Ok(Ok(_))) { "ok" } else { "error" })
                .increment(1);
            match answered {
                Ok(Ok(_)) => permit.success(),
                _ => permit.failure(),
            }
        }
    });
}

/// The longest between two looks at an open breaker.
const PROBE_EVERY: Duration = Duration::from_millis(250);

impl RedisL2 {
    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether calls go out now (the breaker is not open; in a cluster, some primary's is not).
    pub fn available(&self) -> bool {
        match self.nodes.as_ref().and_then(|n| n.any_available()) {
            Some(available) => available,
            None => !self.breaker.is_open(),
        }
    }

    /// Any command, under the breaker and the deadline (streams, rate-limit reads).
    pub async fn query<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        let mut conn = self.connection.clone();
        // The first argument is the key of the commands sent this way (GET, SET, DEL, XADD,
        // XRANGE, ...); it picks the node's breaker in a cluster.
        let key = self.nodes.as_ref().and_then(|_| {
            cmd.args_iter().nth(1).and_then(|arg| match arg {
                redis::Arg::Simple(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                _ => None,
            })
        });
        self.call_keyed(op, key.as_deref().unwrap_or_default(), async move {
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// A Lua script with its keys and arguments, under the breaker and the deadline.
    pub async fn script<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Option<T> {
        let mut conn = self.connection.clone();
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg.as_str());
        }
        self.call_keyed(op, keys.first().copied().unwrap_or_default(), async move {
            invocation.invoke_async::<T>(&mut conn).await
        })
        .await
    }
}
