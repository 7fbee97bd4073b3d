//! Redis Cluster, node by node: which primary serves each slot (from `CLUSTER SLOTS`, asked every
//! [`MAP_EVERY`]) and one circuit breaker per primary, so a node that stops answering turns only
//! the keys of its slots into misses while the other primaries keep serving.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::Value;

use crate::breaker::{BreakerState, CircuitBreaker};

/// How often the slot map is asked for (and open node breakers are probed).
pub(crate) const MAP_EVERY: Duration = Duration::from_millis(500);
const SLOTS: usize = 16_384;
const UNKNOWN: u16 = u16::MAX;

pub(crate) struct Node {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host:port`, for reports.
    pub(crate) address: String,
    pub(crate) breaker: CircuitBreaker,
    /// `copilot_redis_node_calls_total{node, outcome}`, registered once: a call costs an atomic
    /// increment, not a label build and a registry lookup.
    calls: [metrics::Counter; 4],
}

/// The outcomes `copilot_redis_node_calls_total` counts, in `Node::calls` order.
const OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "skipped"];

impl Node {
    fn new(host: String, port: u16, failures: u32, open_for: Duration) -> Self {
        let address = format!("{host}:{port}");
        let breaker = CircuitBreaker::new(failures, open_for);
        breaker.probe_in_background();
        let calls = OUTCOMES.map(|outcome| {
            metrics::counter!("copilot_redis_node_calls_total", "node" => address.clone(), "outcome" => outcome)
        });
        Self {
            host,
            port,
            address,
            breaker,
            calls,
        }
    }

    /// Counts one call with `outcome` (one of `ok`, `error`, `timeout`, `skipped`).
    pub(crate) fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.calls[i].increment(1);
        }
    }
}

pub(crate) struct ClusterNodes {
    failures: u32,
    open_for: Duration,
    /// The index into `nodes` of each slot's primary.
    slots: RwLock<Vec<u16>>,
    nodes: RwLock<Vec<Arc<Node>>>,
}

/// The hash slot of `key` (CRC16 of its hash tag, or of the key without one).
pub(crate) fn slot(key: &str) -> usize {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    usize::from(crc16::State::<crc16::XMODEM>::calculate(tagged)) % SLOTS
}

impl ClusterNodes {
    pub(crate) fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            failures,
            open_for,
            slots: RwLock::new(vec![UNKNOWN; SLOTS]),
            nodes: RwLock::new(Vec::new()),
        }
    }

    /// The primary serving `key`, once the slot map is known.
    pub(crate) fn node_for(&self, key: &str) -> Option<Arc<Node>> {
        let index = *read(&self.slots).get(slot(key))?;
        read(&self.nodes).get(usize::from(index)).cloned()
    }

    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        read(&self.nodes).clone()
    }

    /// Every node's breaker state, by `host:port`.
    pub(crate) fn states(&self) -> Vec<(String, BreakerState)> {
        self.nodes()
            .iter()
            .map(|n| (n.address.clone(), n.breaker.state()))
            .collect()
    }

    /// `Some(true)` while some primary's breaker is not open, `None` before the slot map is
    /// known. Without allocating: the rate limiter asks on every request.
    pub(crate) fn any_available(&self) -> Option<bool> {
        let nodes = read(&self.nodes);
        (!nodes.is_empty()).then(|| nodes.iter().any(|n| !n.breaker.is_open()))
    }

    /// Takes a `CLUSTER SLOTS` reply; a node keeps its breaker across updates.
    pub(crate) fn apply(&self, reply: &Value) {
        let Value::Array(ranges) = reply else { return };
        let mut slots = vec![UNKNOWN; SLOTS];
        // Only primaries that serve slots now; one that still does keeps its breaker.
        let known = self.nodes();
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(start), Some(end), Some(Value::Array(primary))) =
                (int(fields.first()), int(fields.get(1)), fields.get(2))
            else {
                continue;
            };
            let (Some(host), Some(port)) = (text(primary.first()), int(primary.get(1))) else {
                continue;
            };
            let same = |n: &&Arc<Node>| n.host == host && i64::from(n.port) == port;
            let index = match nodes.iter().position(|n| same(&n)) {
                Some(index) => index,
                None => {
                    let node = known.iter().find(same).cloned().unwrap_or_else(|| {
                        Arc::new(Node::new(
                            host.clone(),
                            u16::try_from(port).unwrap_or(0),
                            self.failures,
                            self.open_for,
                        ))
                    });
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let (start, end) = (
                start.clamp(0, SLOTS as i64 - 1),
                end.clamp(0, SLOTS as i64 - 1),
            );
            for slot in start..=end {
                slots[slot as usize] = index as u16;
            }
        }
        *write(&self.nodes) = nodes;
        *write(&self.slots) = slots;
    }
}

/// Redis Cluster: keeps the slot map current and probes each primary whose breaker is open with
/// a `PING` sent to that node alone; ends with the L2.
pub(crate) fn spawn_slot_watcher(
    nodes: Weak<ClusterNodes>,
    cluster: redis::cluster_async::ClusterConnection,
    timeout: Duration,
) {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    tokio::spawn(async move {
        let within = timeout.max(Duration::from_millis(200));
        loop {
            let Some(nodes) = nodes.upgrade() else { return };
            let mut conn = cluster.clone();
            let slots = tokio::time::timeout(
                within,
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn),
            )
            .await;
            if let Ok(Ok(reply)) = slots {
                nodes.apply(&reply);
            }
            for node in nodes.nodes() {
                let Some(permit) = node.breaker.probe() else {
                    continue;
                };
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                let mut conn = cluster.clone();
                let answered =
                    tokio::time::timeout(within, conn.route_command(redis::cmd("PING"), routing))
                        .await;
                match answered {
                    Ok(Ok(_)) => permit.success(),
                    _ => permit.failure(),
                }
            }
            drop(nodes);
            tokio::time::sleep(MAP_EVERY).await;
        }
    });
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_hash_tags() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("copilot:v1:{acme}:policy"), slot("acme"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            slot("a{}b"),
            usize::from(crc16::State::<crc16::XMODEM>::calculate(b"a{}b")) % SLOTS
        );
    }

    #[test]
    fn a_slot_map_assigns_keys_to_nodes_and_keeps_breakers() {
        let nodes = ClusterNodes::new(3, Duration::from_secs(1));
        assert!(nodes.node_for("k").is_none());
        let primary = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                primary("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                primary("10.0.0.2", 7001),
            ]),
        ]);
        nodes.apply(&reply);
        assert_eq!(nodes.node_for("foo").unwrap().address, "10.0.0.2:7001");
        let before = nodes.node_for("foo").unwrap();
        nodes.apply(&reply);
        assert!(Arc::ptr_eq(&before, &nodes.node_for("foo").unwrap()));
        assert_eq!(nodes.states().len(), 2);
        // A failover: 10.0.0.3 took over the second range; 10.0.0.2 is gone from the map.
        nodes.apply(&Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                primary("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                primary("10.0.0.3", 7002),
            ]),
        ]));
        assert_eq!(nodes.node_for("foo").unwrap().address, "10.0.0.3:7002");
        let addresses: Vec<String> = nodes.states().into_iter().map(|(a, _)| a).collect();
        assert_eq!(addresses, ["10.0.0.1:7000", "10.0.0.3:7002"]);
    }
}
