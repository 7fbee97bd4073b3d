//! How to reach Redis: the URL and what a URL cannot carry (a private CA, a client certificate,
//! ACL credentials kept out of it), turned into one [`redis::Client`] that every connection of
//! the process (L2, bus, event hub) is made from.
//!
//! Accepted URLs: `redis://`, `rediss://` (TLS; system roots unless a CA file is given), and an
//! Upstash REST URL `https://<name>.upstash.io[:port]`, which is reached the way Upstash serves
//! Redis: over TLS on the same host (port 6379 unless given), user `default`, the token as
//! password.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::{ErrorKind, IntoConnectionInfo, RedisError};

pub use crate::redis_sentinel::SentinelTarget;

/// Files for TLS beyond the system roots (`REDIS_CA_FILE`, `REDIS_CLIENT_CERT_FILE`,
/// `REDIS_CLIENT_KEY_FILE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM roots to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that authenticate clients.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    /// `REDIS_USERNAME` (an ACL user); the URL's own user wins.
    pub username: Option<String>,
    /// `REDIS_PASSWORD` or `REDIS_TOKEN`; the URL's own password wins.
    pub password: Option<String>,
    pub tls: RedisTls,
    /// `REDIS_CLUSTER=true`, or several comma-separated nodes in the URL: Redis Cluster.
    pub cluster: bool,
    /// `REDIS_TIMEOUT_MS`: the deadline of every Redis call.
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL without its password, for logs and reports.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            tls: RedisTls::default(),
            cluster: false,
            timeout: Duration::from_millis(50),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(1),
        }
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(&self) -> bool {
        ["rediss://", "https://", "rediss+sentinel://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme))
    }

    /// Checks what can be checked without connecting (URL, token, certificate files).
    pub fn validate(&self) -> Result<(), RedisError> {
        if self.sentinel_target()?.is_some() {
            self.certificates().map(|_| ())
        } else {
            self.node_clients().map(|_| ())
        }
    }

    /// Sentinel: `redis+sentinel://[user:password@]host:port[,host:port...]/<master>` (or
    /// `rediss+sentinel://` for TLS to the sentinels and the primary).
    pub fn sentinel_target(&self) -> Result<Option<SentinelTarget>, RedisError> {
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = self.url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Ok(None);
        };
        let rest = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
        let (hosts, master) = rest.split_once('/').ok_or_else(|| {
            invalid("a redis+sentinel:// URL ends with /<master name> (REDIS_SENTINEL_MASTER)")
        })?;
        let master = master.trim_matches('/');
        if master.is_empty() {
            return Err(invalid(
                "a redis+sentinel:// URL ends with /<master name> (REDIS_SENTINEL_MASTER)",
            ));
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| invalid("a sentinel is host:port"))?,
                ),
                None => (host, 26379),
            };
            sentinels.push((name.to_owned(), port));
        }
        if sentinels.is_empty() {
            return Err(invalid(
                "a redis+sentinel:// URL names at least one sentinel",
            ));
        }
        Ok(Some(SentinelTarget {
            sentinels,
            master: master.to_owned(),
            tls,
        }))
    }

    /// Username and password for the data nodes: the URL's own, else the settings'.
    pub(crate) fn credentials(&self) -> (Option<String>, Option<String>) {
        let from_url = self
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .map(|(credentials, _)| credentials);
        let (user, password) = match from_url.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((user, password)) => (
                (!user.is_empty()).then(|| user.to_owned()),
                (!password.is_empty()).then(|| password.to_owned()),
            ),
            None => (None, None),
        };
        (
            user.or_else(|| self.username.clone()),
            password.or_else(|| self.password.clone()),
        )
    }

    /// A client of the first (or only) node. Fails (without connecting) on a URL it does not
    /// understand, an Upstash URL without a token, or an unreadable or malformed certificate
    /// file.
    pub fn client(&self) -> Result<redis::Client, RedisError> {
        let nodes = self.node_urls()?;
        self.node_client(&nodes[0])
    }

    /// Whether this is a Redis Cluster (`REDIS_CLUSTER=true` or several nodes).
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.url.contains(',')
    }

    /// Clients of every node given (one for a single server): subscribers connect to any.
    pub fn node_clients(&self) -> Result<Vec<redis::Client>, RedisError> {
        self.node_urls()?
            .iter()
            .map(|url| self.node_client(url))
            .collect()
    }

    /// The cluster client over every node given, with the same credentials and TLS; it learns
    /// the rest of the cluster from them and follows `MOVED`/`ASK` and failovers.
    pub fn cluster_client(&self) -> Result<redis::cluster::ClusterClient, RedisError> {
        let infos = self
            .node_clients()?
            .into_iter()
            .map(|client| client.get_connection_info().clone())
            .collect::<Vec<_>>();
        let first = infos[0].redis_settings().clone();
        let mut builder = redis::cluster::ClusterClient::builder(infos);
        if let Some(username) = first.username() {
            builder = builder.username(username);
        }
        if let Some(password) = first.password() {
            builder = builder.password(password);
        }
        if self.uses_tls() {
            builder = builder.certs(self.certificates()?);
        }
        builder.build()
    }

    /// The URL of each node: `redis://a:1,b:2` or `redis://a:1,redis://b:2` (later nodes
    /// without a scheme take the first one's scheme and credentials).
    fn node_urls(&self) -> Result<Vec<String>, RedisError> {
        let mut parts = self.url.split(',').map(str::trim).filter(|p| !p.is_empty());
        let first = parts.next().unwrap_or_default();
        let first = self.redis_url_of(first)?;
        let (scheme, rest) = first.split_once("://").unwrap_or(("redis", ""));
        let (scheme, credentials) = (
            scheme.to_owned(),
            rest.rsplit_once('@').map(|(c, _)| c.to_owned()),
        );
        let mut urls = vec![first];
        for part in parts {
            if part.contains("://") {
                urls.push(self.redis_url_of(part)?);
            } else {
                urls.push(match &credentials {
                    Some(c) => format!("{scheme}://{c}@{part}"),
                    None => format!("{scheme}://{part}"),
                });
            }
        }
        if urls.len() > 1 && self.url.starts_with("https://") {
            return Err(invalid(
                "an https:// (Upstash) REDIS_URL names one endpoint",
            ));
        }
        Ok(urls)
    }

    pub(crate) fn certificates(&self) -> Result<redis::TlsCertificates, RedisError> {
        let root_cert = self.tls.ca_file.as_ref().map(read_pem).transpose()?;
        let client_tls = match (&self.tls.client_cert_file, &self.tls.client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert)?,
                client_key: read_pem(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together",
                ));
            }
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }

    fn node_client(&self, url: &str) -> Result<redis::Client, RedisError> {
        let mut info = url.into_connection_info()?;
        let mut redis = info.redis_settings().clone();
        if redis.username().is_none()
            && let Some(username) = self
                .username
                .as_deref()
                .or(self.url.starts_with("https://").then_some(UPSTASH_USER))
        {
            redis = redis.set_username(username);
        }
        if redis.password().is_none()
            && let Some(password) = &self.password
        {
            redis = redis.set_password(password);
        }
        info = info.set_redis_settings(redis);
        if !self.uses_tls() {
            if self.tls != RedisTls::default() {
                return Err(invalid(
                    "REDIS_CA_FILE and client certificates need a rediss:// REDIS_URL",
                ));
            }
            return redis::Client::open(info);
        }
        redis::Client::build_with_tls(info, self.certificates()?)
    }

    /// One node's URL in Redis's own scheme: an Upstash `https://` URL becomes `rediss://` to
    /// the same host.
    fn redis_url_of(&self, url: &str) -> Result<String, RedisError> {
        if let Some(rest) = url.strip_prefix("https://") {
            if self.password.is_none() && !rest.contains('@') {
                return Err(invalid(
                    "an https:// (Upstash) REDIS_URL needs REDIS_TOKEN (or REDIS_PASSWORD)",
                ));
            }
            let authority = rest.split('/').next().unwrap_or(rest);
            let host_has_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
            return Ok(if host_has_port {
                format!("rediss://{authority}")
            } else {
                format!("rediss://{authority}:{UPSTASH_PORT}")
            });
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(url.to_owned())
        } else {
            Err(invalid(
                "must start with redis://, rediss://, https:// (Upstash) or redis+sentinel://",
            ))
        }
    }
}

/// How Redis is deployed, for `/v1/admin/cache` and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RedisTopology {
    /// `single` (one server, or a managed endpoint that hides its nodes), `cluster` or
    /// `sentinel`.
    pub kind: &'static str,
    pub tls: bool,
    /// `host:port` of the node given (`single`), the primaries serving slots (`cluster`, once
    /// known; the nodes given before), or the sentinels (`sentinel`).
    pub nodes: Vec<String>,
    /// `sentinel`: the primary in use now.
    pub primary: Option<String>,
}

impl RedisSettings {
    /// From the settings alone (no connection, no certificate files read).
    pub fn topology(&self) -> RedisTopology {
        if let Ok(Some(target)) = self.sentinel_target() {
            return RedisTopology {
                kind: "sentinel",
                tls: self.uses_tls(),
                nodes: target
                    .sentinels
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect(),
                primary: None,
            };
        }
        let nodes = self
            .node_urls()
            .unwrap_or_default()
            .iter()
            .filter_map(|url| url.as_str().into_connection_info().ok())
            .map(|info| info.addr().to_string())
            .collect();
        RedisTopology {
            kind: if self.is_cluster() {
                "cluster"
            } else {
                "single"
            },
            tls: self.uses_tls(),
            nodes,
            primary: None,
        }
    }
}

/// Upstash serves the Redis protocol on the REST host, port 6379, as user `default`.
const UPSTASH_PORT: u16 = 6379;
const UPSTASH_USER: &str = "default";

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, RedisError> {
    let bytes = std::fs::read(path).map_err(|e| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "cannot read a TLS file",
            format!("{}: {e}", path.display()),
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "not a PEM file",
            path.display().to_string(),
        )));
    }
    Ok(bytes)
}

fn invalid(message: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, message))
}

/// Whether a connection error says the server's certificate (or ours) was refused, as opposed to
/// Redis being unreachable: the first is a configuration mistake worth failing start-up for, the
/// second an outage the service rides out.
pub fn is_certificate_error(error: &RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    // redis keeps an I/O error as `Arc<dyn Error>`; tokio-rustls reports rustls's verdict as an
    // `io::Error` wrapping a `rustls::Error`.
    let Some(source) = std::error::Error::source(error) else {
        return false;
    };
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>(),
        None => source.downcast_ref::<std::io::Error>(),
    };
    let tls = io
        .and_then(std::io::Error::get_ref)
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(
        tls,
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        )
    )
}

/// Whether Redis refused the username or password (`WRONGPASS`, `NOAUTH`).
pub fn is_credentials_error(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// [`check`] for any deployment: through the sentinels for Sentinel.
pub async fn check_settings(settings: &RedisSettings, within: Duration) -> Result<(), RedisError> {
    let attempt = async {
        if settings.sentinel_target()?.is_some() {
            let l2 = crate::RedisL2::new(settings)?;
            l2.ping_now().await
        } else {
            check(&settings.client()?, within).await
        }
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from((
            ErrorKind::Io,
            "no answer within the deadline",
        ))),
    }
}

/// Connects once within `within` and answers `PING`: `Ok` when Redis answered, `Err` with the
/// error otherwise. For start-up checks and `doctor`; requests never call this.
pub async fn check(client: &redis::Client, within: Duration) -> Result<(), RedisError> {
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(RedisError::from((
            ErrorKind::Io,
            "no answer within the deadline",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, password: Option<&str>) -> RedisSettings {
        RedisSettings {
            password: password.map(str::to_owned),
            ..RedisSettings::new(url)
        }
    }

    #[test]
    fn upstash_url_becomes_tls_redis_on_the_same_host() {
        let s = settings("https://eu1-fine-cat-12345.upstash.io", Some("tok"));
        assert_eq!(
            s.redis_url_of(&s.url).unwrap(),
            "rediss://eu1-fine-cat-12345.upstash.io:6379"
        );
        let client = s.client().unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().username(), Some("default"));
        assert_eq!(info.redis_settings().password(), Some("tok"));
        assert!(matches!(
            info.addr(),
            redis::ConnectionAddr::TcpTls { host, port: 6379, .. } if host == "eu1-fine-cat-12345.upstash.io"
        ));
        // A port in the URL is kept (tests point it at a local TLS Redis).
        let s = settings("https://localhost:7000/", Some("tok"));
        assert_eq!(s.redis_url_of(&s.url).unwrap(), "rediss://localhost:7000");
        // Without a token there is nothing to log in with.
        assert!(settings("https://x.upstash.io", None).client().is_err());
        let topology = settings("https://localhost:7000/", Some("tok")).topology();
        assert_eq!(topology.nodes, ["localhost:7000"]);
        assert!(topology.tls);
    }

    #[test]
    fn credentials_fill_in_what_the_url_leaves_out() {
        let mut s = settings("redis://cache:6379", Some("p@ss:w/rd#1"));
        s.username = Some("app".into());
        let client = s.client().unwrap();
        let info = client.get_connection_info().redis_settings();
        assert_eq!(info.username(), Some("app"));
        assert_eq!(info.password(), Some("p@ss:w/rd#1"));
        // The URL's own credentials win.
        let s = settings("redis://u:fromurl@cache:6379", Some("env"));
        let client = s.client().unwrap();
        assert_eq!(
            client.get_connection_info().redis_settings().password(),
            Some("fromurl")
        );
        assert!(!format!("{s:?}").contains("fromurl"));
        assert!(!format!("{s:?}").contains("env"));
    }

    #[test]
    fn bad_tls_files_fail_before_connecting() {
        let mut s = RedisSettings::new("rediss://localhost:1");
        s.tls.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(s.client().is_err());
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        s.tls.ca_file = Some(junk);
        assert!(s.client().is_err());
        // A CA for a plain-text connection is a mistake, not silently ignored.
        let mut plain = RedisSettings::new("redis://localhost:1");
        plain.tls.ca_file = Some("/etc/hosts".into());
        assert!(plain.client().is_err());
        let mut half = RedisSettings::new("rediss://localhost:1");
        half.tls.client_cert_file = Some("/etc/hosts".into());
        assert!(half.client().is_err());
        assert!(RedisSettings::new("http://x").client().is_err());
    }

    #[test]
    fn several_nodes_make_a_cluster_with_shared_scheme_and_credentials() {
        let s = settings("rediss://:pw@a:7000, b:7001,rediss://c:7002", None);
        assert!(s.is_cluster());
        assert_eq!(
            s.node_urls().unwrap(),
            [
                "rediss://:pw@a:7000",
                "rediss://:pw@b:7001",
                "rediss://c:7002"
            ]
        );
        let topology = s.topology();
        assert_eq!(topology.kind, "cluster");
        assert_eq!(topology.nodes, ["a:7000", "b:7001", "c:7002"]);
        assert!(s.cluster_client().is_ok());
        let one = RedisSettings {
            cluster: true,
            ..RedisSettings::new("redis://a:7000")
        };
        assert!(one.is_cluster());
        assert!(!RedisSettings::new("redis://a:7000").is_cluster());
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_master() {
        let s = settings("redis+sentinel://:pw@s1:26379,s2/mymaster", None);
        let target = s.sentinel_target().unwrap().unwrap();
        assert_eq!(
            target.sentinels,
            [("s1".to_owned(), 26379), ("s2".to_owned(), 26379)]
        );
        assert_eq!(target.master, "mymaster");
        assert!(!target.tls);
        assert_eq!(s.credentials(), (None, Some("pw".to_owned())));
        assert_eq!(s.topology().kind, "sentinel");
        assert!(s.validate().is_ok());
        assert!(
            settings("redis+sentinel://s1:26379", None)
                .validate()
                .is_err()
        );
        assert!(
            settings("redis+sentinel://s1:x/m", None)
                .validate()
                .is_err()
        );
        assert!(
            settings("rediss+sentinel://s1/m", None)
                .sentinel_target()
                .unwrap()
                .unwrap()
                .tls
        );
    }

    #[test]
    fn redacted_url_hides_the_password() {
        assert_eq!(
            redacted_url("rediss://default:secret@host:6379"),
            "rediss://default:***@host:6379"
        );
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
    }
}
