//! Redis behind Sentinel: the sentinels name the current primary; a watcher asks them every
//! [`WATCH_EVERY`] and, when the answer changes (a failover), every later call goes to the new
//! primary. Calls in flight on the old one fail like any Redis failure: the cache misses, the
//! request does not.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

/// How often the sentinels are asked who the primary is.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The deadline of one such question.
const ASK_WITHIN: Duration = Duration::from_secs(1);

struct Primary {
    address: String,
    client: redis::Client,
    connection: ConnectionManager,
}

pub(crate) struct SentinelLink {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    primary: Mutex<Option<Primary>>,
}

/// Where to find the sentinels and what they watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub tls: bool,
}

impl SentinelLink {
    pub(crate) fn new(
        target: &SentinelTarget,
        username: Option<&str>,
        password: Option<&str>,
        certificates: Option<redis::TlsCertificates>,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Arc<Self>> {
        let addresses = target.sentinels.iter().map(|(host, port)| {
            if target.tls {
                redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addresses, &target.master, SentinelServerType::Master)?;
        if let Some(username) = username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = password {
            builder = builder.set_client_to_redis_password(password);
        }
        if target.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        let link = Arc::new(Self {
            sentinels: tokio::sync::Mutex::new(builder.build()?),
            config,
            primary: Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            spawn_watcher(Arc::downgrade(&link));
        }
        Ok(link)
    }

    /// The connection to the current primary, asking the sentinels first if none is known.
    pub(crate) async fn connection(&self) -> RedisResult<ConnectionManager> {
        self.with_primary(|p| p.connection.clone()).await
    }

    /// A client of the current primary (subscribers connect with it).
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        self.with_primary(|p| p.client.clone()).await
    }

    async fn with_primary<T>(&self, pick: impl Fn(&Primary) -> T) -> RedisResult<T> {
        if let Some(primary) = lock(&self.primary).as_ref() {
            return Ok(pick(primary));
        }
        self.refresh().await?;
        lock(&self.primary).as_ref().map(pick).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no primary known to the sentinels"))
        })
    }

    /// `host:port` of the primary in use, if one is known.
    pub(crate) fn primary(&self) -> Option<String> {
        lock(&self.primary).as_ref().map(|p| p.address.clone())
    }

    /// Asks the sentinels; switches to the primary they name when it is a new one.
    async fn refresh(&self) -> RedisResult<()> {
        let asked = tokio::time::timeout(ASK_WITHIN, async {
            self.sentinels.lock().await.async_get_client().await
        })
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "sentinels did not answer")))?;
        let client = asked?;
        let address = client.get_connection_info().addr().to_string();
        if lock(&self.primary)
            .as_ref()
            .is_some_and(|p| p.address == address)
        {
            return Ok(());
        }
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone())?;
        let previous = lock(&self.primary).replace(Primary {
            address: address.clone(),
            client,
            connection,
        });
        if let Some(previous) = previous {
            tracing::warn!(from = %previous.address, to = %address, "Redis primary changed (Sentinel failover)");
            metrics::counter!("copilot_redis_primary_changes_total").increment(1);
        }
        Ok(())
    }
}

fn spawn_watcher(link: Weak<SentinelLink>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(link) = link.upgrade() else { return };
            if let Err(e) = link.refresh().await {
                tracing::debug!(error = %e, "sentinels did not name a primary");
            }
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
