//! `Settings::load` one area at a time: each function reads and checks the variables of one area
//! (store, Redis, caches, auth, requests, server) through [`Env`], and every error names its
//! variable.

use super::*;

/// The environment as the settings read it: empty values count as unset.
pub(super) struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    pub(super) fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn bool(&self, name: &str, default: bool) -> Result<bool, SettingsError> {
        self.var(name).map_or(Ok(default), |v| parse_bool(name, &v))
    }

    pub(super) fn number(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, SettingsError> {
        match self.var(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    invalid(
                        name,
                        format!(
                            "'{v}' must be an integer from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    /// A lifetime in seconds, 1 s to a day.
    fn seconds(&self, name: &str, default: u64) -> Result<Duration, SettingsError> {
        self.number(name, default, 1..=86_400)
            .map(Duration::from_secs)
    }

    /// A timeout in milliseconds, 10 ms to an hour.
    fn millis(&self, name: &str, default: u64) -> Result<Duration, SettingsError> {
        self.number(name, default, 10..=3_600_000)
            .map(Duration::from_millis)
    }

    fn provider(&self, name: &str, default: &str) -> Result<String, SettingsError> {
        let value = self.var(name).unwrap_or_else(|| default.to_owned());
        if is_valid_provider(&value) {
            Ok(value)
        } else {
            Err(invalid(name, "must match [a-z0-9_-]{1,64}"))
        }
    }
}

/// The store: `DATABASE_URL`, `COPILOT_STORE_TIMEOUT_MS` and the PostgreSQL pool.
pub(super) struct Store {
    pub(super) database_url: String,
    pub(super) timeout: Duration,
    pub(super) postgres: PostgresSettings,
}

pub(super) fn store(env: &Env, database_url: Option<String>) -> Result<Store, SettingsError> {
    let database_url = database_url
        .or_else(|| env.var("DATABASE_URL"))
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    if !is_sqlite(&database_url) && !is_postgres(&database_url) {
        return Err(invalid(
            "DATABASE_URL",
            "must start with sqlite: or postgres://",
        ));
    }
    let timeout =
        Duration::from_millis(env.number("COPILOT_STORE_TIMEOUT_MS", 5_000, 10..=600_000)?);
    let postgres = PostgresSettings {
        pool_size: env.number("COPILOT_PG_POOL_SIZE", 10, 1..=1_000)? as u32,
        acquire_timeout: Duration::from_millis(env.number(
            "COPILOT_PG_ACQUIRE_TIMEOUT_MS",
            500,
            10..=600_000,
        )?),
        transaction_pooler: env.bool("COPILOT_PG_TRANSACTION_POOLER", false)?,
        direct_url: match env.var("COPILOT_DIRECT_DATABASE_URL") {
            Some(url) if !is_postgres(&url) => {
                return Err(invalid(
                    "COPILOT_DIRECT_DATABASE_URL",
                    "must be a postgres:// or postgresql:// URL",
                ));
            }
            other => other,
        },
    };
    Ok(Store {
        database_url,
        timeout,
        postgres,
    })
}

/// `REDIS_URL` (or `REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`) and how to connect.
pub(super) fn redis(
    env: &Env,
    redis_url: Option<String>,
) -> Result<(Option<String>, Option<RedisSettings>), SettingsError> {
    let redis_url = redis_url
        .or_else(|| env.var("REDIS_URL"))
        .or_else(|| sentinel_url(env.var("REDIS_SENTINELS"), env.var("REDIS_SENTINEL_MASTER")));
    let Some(url) = &redis_url else {
        return Ok((None, None));
    };
    let path = |name: &str| env.var(name).map(PathBuf::from);
    let settings = RedisSettings {
        username: env.var("REDIS_USERNAME"),
        password: env.var("REDIS_PASSWORD").or_else(|| env.var("REDIS_TOKEN")),
        tls: RedisTls {
            ca_file: path("REDIS_CA_FILE"),
            client_cert_file: path("REDIS_CLIENT_CERT_FILE"),
            client_key_file: path("REDIS_CLIENT_KEY_FILE"),
        },
        cluster: env.bool("REDIS_CLUSTER", false)?,
        timeout: Duration::from_millis(env.number("REDIS_TIMEOUT_MS", 50, 1..=10_000)?),
        ..RedisSettings::new(url.as_str())
    };
    // The URL's form, certificates and the Upstash token are checked now, not at the first
    // request (one check, the connection settings' own).
    settings
        .validate()
        .map_err(|e| invalid("REDIS_URL", e.to_string()))?;
    Ok((redis_url, Some(settings)))
}

/// The caches (DESIGN.md 5.4): the seven flags, the key prefix, lifetimes and bounds, the event
/// hub and the rate limiter.
pub(super) fn cache(
    env: &Env,
    redis: Option<RedisSettings>,
    store: &Store,
) -> Result<CacheSettings, SettingsError> {
    let flags = CacheFlags {
        global: env.bool("ENABLE_REDIS_CACHING", true)?,
        policy: env.bool("ENABLE_LLM_POLICY_CACHE", true)?,
        config: env.bool("ENABLE_CONVERSATION_CONFIG_CACHE", true)?,
        conversation: env.bool("ENABLE_CONVERSATION_CACHING", false)?,
        auth: env.bool("ENABLE_AUTH_VALIDATION_CACHE", true)?,
        rate_limiter: env.bool("ENABLE_RATE_LIMITER_REDIS", true)?,
        events: env.bool("ENABLE_REDIS_EVENT_HUBS", true)?,
    };
    let prefix = env
        .var("COPILOT_CACHE_PREFIX")
        .unwrap_or_else(|| "copilot".to_owned());
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        || prefix.len() > 64
    {
        return Err(invalid(
            "COPILOT_CACHE_PREFIX",
            "must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    Ok(CacheSettings {
        redis,
        flags,
        prefix,
        policy_ttl: env.seconds("POLICY_CACHE_TTL_SECONDS", 300)?,
        config_ttl: env.seconds("CONFIG_CACHE_TTL_SECONDS", 300)?,
        conversation_ttl: env.seconds("CONVERSATION_CACHE_TTL_SECONDS", 60)?,
        auth_ttl: env.seconds("AUTH_CACHE_TTL_SECONDS", 300)?,
        negative_ttl: Duration::from_secs(env.number(
            "COPILOT_CACHE_NEGATIVE_TTL_SECONDS",
            30,
            1..=30,
        )?),
        l1_ttl: Duration::from_secs(env.number("COPILOT_CACHE_L1_TTL_SECONDS", 30, 1..=30)?),
        l1_max_entries: env.number("COPILOT_CACHE_L1_MAX_ENTRIES", 10_000, 16..=10_000_000)?
            as usize,
        l1_max_bytes: env.number(
            "COPILOT_CACHE_L1_MAX_BYTES",
            64 * 1024 * 1024,
            1024..=(1 << 40),
        )?,
        events: HubSettings {
            replay_len: env.number("COPILOT_EVENT_REPLAY", 1_000, 1..=1_000_000)? as usize,
            subscriber_buffer: env.number("COPILOT_EVENT_BUFFER", 256, 1..=100_000)? as usize,
            stream_ttl: Duration::from_secs(env.number(
                "COPILOT_EVENT_TTL_SECONDS",
                3_600,
                1..=30 * 86_400,
            )?),
            ..HubSettings::default()
        },
        rate_limit: rate_limit(env)?,
        store_deadline: store.timeout + store.postgres.acquire_timeout,
        // Only PostgreSQL is written by other processes (each SQLite file has one server).
        shared_store: is_postgres(&store.database_url),
        ..CacheSettings::default()
    })
}

/// `COPILOT_RATE_LIMIT` (`<n>/<s|sec|second|m|min|minute|h|hour>`, default `600/min`, or `off`),
/// `COPILOT_RATE_LIMIT_BURST` (default a tenth of the limit, at least 1) and
/// `COPILOT_RATE_LIMIT_INSTANCES` (the in-process fallback's share, default 1).
fn rate_limit(env: &Env) -> Result<Option<RateLimitSettings>, SettingsError> {
    let text = env
        .var("COPILOT_RATE_LIMIT")
        .unwrap_or_else(|| "600/min".to_owned());
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || {
        invalid(
            "COPILOT_RATE_LIMIT",
            format!("'{text}' must be like 600/min (per s, min or hour) or off"),
        )
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let limit: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(bad)?;
    let period = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3_600),
        _ => return Err(bad()),
    };
    let burst = env.number(
        "COPILOT_RATE_LIMIT_BURST",
        u64::from((limit / 10).max(1)),
        1..=1_000_000_000,
    )? as u32;
    Ok(Some(RateLimitSettings {
        limit,
        period,
        burst,
        instances: env.number("COPILOT_RATE_LIMIT_INSTANCES", 1, 1..=10_000)? as u32,
        ..RateLimitSettings::default()
    }))
}

/// Tokens: the HS256 secret or a JWKS file, audience and issuer.
pub(super) fn auth(env: &Env) -> JwtSettings {
    JwtSettings {
        secret: env.var("COPILOT_JWT_SECRET"),
        jwks_file: env.var("COPILOT_JWKS_FILE").map(PathBuf::from),
        audience: env.var("COPILOT_JWT_AUDIENCE"),
        issuer: env.var("COPILOT_JWT_ISSUER"),
    }
}

/// What requests get by default: the route without a policy and the message size limit.
pub(super) fn requests(env: &Env) -> Result<(RouterDefaults, usize), SettingsError> {
    let local_provider = env.provider("COPILOT_LOCAL_PROVIDER", "local")?;
    let router = RouterDefaults {
        provider: env.provider("COPILOT_DEFAULT_PROVIDER", &local_provider)?,
        model: env
            .var("COPILOT_DEFAULT_MODEL")
            .unwrap_or_else(|| "default".to_owned()),
        local_provider,
        base_egress_mode: match env.var("COPILOT_BASE_EGRESS_MODE") {
            None => EgressMode::Enforce,
            Some(v) => EgressMode::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                invalid("COPILOT_BASE_EGRESS_MODE", "must be off, audit or enforce")
            })?,
        },
    };
    let max_message_bytes = match env.var("COPILOT_MAX_MESSAGE_BYTES") {
        None => DEFAULT_MAX_MESSAGE_BYTES,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1_048_576).contains(n))
            .ok_or_else(|| {
                invalid(
                    "COPILOT_MAX_MESSAGE_BYTES",
                    "must be an integer from 1 to 1048576",
                )
            })?,
    };
    Ok((router, max_message_bytes))
}

/// The listener: address, trusted proxies, timeouts, the connection cap and the drain.
pub(super) fn server(
    env: &Env,
    bind: Option<SocketAddr>,
) -> Result<(SocketAddr, Vec<Cidr>, ServerLimits), SettingsError> {
    let bind = match (bind, env.var("COPILOT_BIND")) {
        (Some(b), _) => b,
        (None, Some(v)) => v
            .parse()
            .map_err(|_| invalid("COPILOT_BIND", format!("'{v}' is not host:port")))?,
        (None, None) => DEFAULT_BIND
            .parse()
            .map_err(|_| invalid("COPILOT_BIND", "bad default"))?,
    };
    let trusted_proxies = match env.var("COPILOT_TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<Cidr>().map_err(|_| {
                    invalid(
                        "COPILOT_TRUSTED_PROXIES",
                        format!("'{s}' is not an address or CIDR (e.g. 10.0.0.0/8)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let limits = ServerLimits {
        header_timeout: env.millis("COPILOT_HEADER_TIMEOUT_MS", 10_000)?,
        body_timeout: env.millis("COPILOT_BODY_TIMEOUT_MS", 30_000)?,
        idle_timeout: env.millis("COPILOT_IDLE_TIMEOUT_MS", 60_000)?,
        max_connections: env.number("COPILOT_MAX_CONNECTIONS", 10_000, 1..=1_000_000)? as usize,
        drain: env.millis("COPILOT_SHUTDOWN_DRAIN_MS", 10_000)?,
    };
    Ok((bind, trusted_proxies, limits))
}
