//! The connections of an L2: one command connection of the deployment's kind (single server,
//! cluster, Sentinel's current primary) behind one `ConnectionLike`, and where subscribers
//! connect.

use std::sync::Arc;

use redis::Value;

use crate::redis_sentinel::SentinelLink;

/// One server (reconnecting manager) or a cluster (slot-routing connection that follows
/// `MOVED`/`ASK` and failovers); both multiplex every call over shared connections.
#[derive(Clone)]
pub(crate) enum Link {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    /// The primary the sentinels name now.
    Sentinel(Arc<SentinelLink>),
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move { s.connection().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    s.connection()
                        .await?
                        .req_packed_commands(cmd, offset, count)
                        .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
            Link::Sentinel(_) => 0,
        }
    }
}

/// Where subscribers connect: any node (in a cluster, `PUBLISH` reaches every node), the one
/// that answered last first; behind Sentinel, the current primary.
#[derive(Clone)]
pub(crate) struct PubSubNodes {
    clients: Arc<[redis::Client]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    sentinel: Option<Arc<SentinelLink>>,
}

impl PubSubNodes {
    /// Subscribers use `clients` (any node, the one that answered last first), or behind
    /// Sentinel the current primary.
    pub(crate) fn new(clients: Vec<redis::Client>, sentinel: Option<Arc<SentinelLink>>) -> Self {
        Self {
            clients: clients.into(),
            next: Default::default(),
            sentinel,
        }
    }

    pub(crate) async fn connect(&self) -> redis::RedisResult<redis::aio::PubSub> {
        use std::sync::atomic::Ordering;
        if let Some(sentinel) = &self.sentinel {
            return sentinel.client().await?.get_async_pubsub().await;
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.clients.len() {
            let index = (start + i) % self.clients.len();
            match self.clients[index].get_async_pubsub().await {
                Ok(pubsub) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(pubsub);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis node"))
        }))
    }
}
