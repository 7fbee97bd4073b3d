//! Configuration: flags override environment variables, which override defaults (DESIGN.md 7).
//! Every variable is read through one lookup function so tests can supply their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use copilot_cache::events::HubSettings;
use copilot_cache::ratelimit::RateLimitSettings;
use copilot_cache::{CacheFlags, CacheSettings, RedisSettings, RedisTls};

use crate::net::Cidr;
use crate::server::ServerLimits;
use copilot_domain::conversation::DEFAULT_MAX_MESSAGE_BYTES;
use copilot_domain::egress::EgressMode;
use copilot_domain::policy::is_valid_provider;
use copilot_domain::route::RouterDefaults;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://./copilot-state.db";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct SettingsError {
    pub variable: String,
    pub message: String,
}

fn invalid(variable: &str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        variable: variable.to_owned(),
        message: message.into(),
    }
}

/// Strict booleans: `true/false/1/0/yes/no/on/off` in any case; anything else is an error that
/// names the variable (the original design silently accepted only lowercase `false`).
pub fn parse_bool(variable: &str, value: &str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            variable,
            format!("'{value}' is not a boolean (use true/false, 1/0, yes/no, on/off)"),
        )),
    }
}

/// What the JWT verifier needs.
#[derive(Clone, Debug, Default)]
pub struct JwtSettings {
    /// `COPILOT_JWT_SECRET` (HS256). When unset, `serve` generates one beside the database.
    pub secret: Option<String>,
    /// `COPILOT_JWKS_FILE`: RS256/ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// `COPILOT_JWT_AUDIENCE`, `COPILOT_JWT_ISSUER`: checked when set.
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Flags of `serve` (and `migrate`), each overriding its variable.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub bind: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub no_migrate: bool,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub migrate: bool,
    pub jwt: JwtSettings,
    pub router: RouterDefaults,
    pub max_message_bytes: usize,
    pub require_membership: bool,
    /// Deadline of every store call made by a request (`COPILOT_STORE_TIMEOUT_MS`).
    pub store_timeout: Duration,
    pub postgres: PostgresSettings,
    /// DESIGN.md 5.4: Redis, the seven flags, TTLs; the event hub and the rate limiter.
    pub cache: CacheSettings,
    /// `COPILOT_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Timeouts, the connection cap and the shutdown drain.
    pub server: ServerLimits,
    /// `COPILOT_CURSOR_SECRET`: the list-cursor key's secret (default: the HS256 secret).
    pub cursor_secret: Option<String>,
}

/// Connection settings used when `DATABASE_URL` is `postgres://`.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// `COPILOT_PG_POOL_SIZE`, default 10.
    pub pool_size: u32,
    /// `COPILOT_PG_ACQUIRE_TIMEOUT_MS`, default 500.
    pub acquire_timeout: Duration,
    /// `COPILOT_PG_TRANSACTION_POOLER`: true behind PgBouncer/Supavisor in transaction mode.
    pub transaction_pooler: bool,
    /// `COPILOT_DIRECT_DATABASE_URL`: the database itself (not a pooler), for migrations and
    /// the change feed's `LISTEN`; `None`: `DATABASE_URL`.
    pub direct_url: Option<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env(overrides: Overrides) -> Result<Self, SettingsError> {
        Self::load(|name| std::env::var(name).ok(), overrides)
    }

    pub fn load(
        env: impl Fn(&str) -> Option<String>,
        overrides: Overrides,
    ) -> Result<Self, SettingsError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let bind = match (overrides.bind, var("COPILOT_BIND")) {
            (Some(b), _) => b,
            (None, Some(v)) => v
                .parse()
                .map_err(|_| invalid("COPILOT_BIND", format!("'{v}' is not host:port")))?,
            (None, None) => DEFAULT_BIND
                .parse()
                .map_err(|_| invalid("COPILOT_BIND", "bad default"))?,
        };
        let database_url = overrides
            .database_url
            .or_else(|| var("DATABASE_URL"))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !is_sqlite(&database_url) && !is_postgres(&database_url) {
            return Err(invalid(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
        let redis_url = overrides
            .redis_url
            .or_else(|| var("REDIS_URL"))
            .or_else(|| sentinel_url(var("REDIS_SENTINELS"), var("REDIS_SENTINEL_MASTER")));
        if let Some(url) = &redis_url
            && ![
                "redis://",
                "rediss://",
                "https://",
                "redis+sentinel://",
                "rediss+sentinel://",
            ]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(invalid(
                "REDIS_URL",
                "must start with redis://, rediss://, https:// (Upstash) or redis+sentinel://",
            ));
        }
        let bool_var = |name: &str, default: bool| -> Result<bool, SettingsError> {
            var(name).map_or(Ok(default), |v| parse_bool(name, &v))
        };
        let provider_var = |name: &str, default: &str| -> Result<String, SettingsError> {
            let value = var(name).unwrap_or_else(|| default.to_owned());
            if is_valid_provider(&value) {
                Ok(value)
            } else {
                Err(invalid(name, "must match [a-z0-9_-]{1,64}"))
            }
        };
        let local_provider = provider_var("COPILOT_LOCAL_PROVIDER", "local")?;
        let router = RouterDefaults {
            provider: provider_var("COPILOT_DEFAULT_PROVIDER", &local_provider)?,
            model: var("COPILOT_DEFAULT_MODEL").unwrap_or_else(|| "default".to_owned()),
            local_provider,
            base_egress_mode: match var("COPILOT_BASE_EGRESS_MODE") {
                None => EgressMode::Enforce,
                Some(v) => EgressMode::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                    invalid("COPILOT_BASE_EGRESS_MODE", "must be off, audit or enforce")
                })?,
            },
        };
        let max_message_bytes = match var("COPILOT_MAX_MESSAGE_BYTES") {
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
        let number_var = |name: &str,
                          default: u64,
                          range: std::ops::RangeInclusive<u64>|
         -> Result<u64, SettingsError> {
            match var(name) {
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
        };
        let store_timeout =
            Duration::from_millis(number_var("COPILOT_STORE_TIMEOUT_MS", 5_000, 10..=600_000)?);
        let postgres = PostgresSettings {
            pool_size: number_var("COPILOT_PG_POOL_SIZE", 10, 1..=1_000)? as u32,
            acquire_timeout: Duration::from_millis(number_var(
                "COPILOT_PG_ACQUIRE_TIMEOUT_MS",
                500,
                10..=600_000,
            )?),
            transaction_pooler: bool_var("COPILOT_PG_TRANSACTION_POOLER", false)?,
            direct_url: match var("COPILOT_DIRECT_DATABASE_URL") {
                Some(url) if !is_postgres(&url) => {
                    return Err(invalid(
                        "COPILOT_DIRECT_DATABASE_URL",
                        "must be a postgres:// or postgresql:// URL",
                    ));
                }
                other => other,
            },
        };
        let flags = CacheFlags {
            global: bool_var("ENABLE_REDIS_CACHING", true)?,
            policy: bool_var("ENABLE_LLM_POLICY_CACHE", true)?,
            config: bool_var("ENABLE_CONVERSATION_CONFIG_CACHE", true)?,
            conversation: bool_var("ENABLE_CONVERSATION_CACHING", false)?,
            auth: bool_var("ENABLE_AUTH_VALIDATION_CACHE", true)?,
            rate_limiter: bool_var("ENABLE_RATE_LIMITER_REDIS", true)?,
            events: bool_var("ENABLE_REDIS_EVENT_HUBS", true)?,
        };
        let prefix = var("COPILOT_CACHE_PREFIX").unwrap_or_else(|| "copilot".to_owned());
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
        let seconds = |name: &str, default: u64| {
            number_var(name, default, 1..=86_400).map(Duration::from_secs)
        };
        let redis = match &redis_url {
            None => None,
            Some(url) => {
                let path = |name: &str| var(name).map(std::path::PathBuf::from);
                let settings = RedisSettings {
                    username: var("REDIS_USERNAME"),
                    password: var("REDIS_PASSWORD").or_else(|| var("REDIS_TOKEN")),
                    tls: RedisTls {
                        ca_file: path("REDIS_CA_FILE"),
                        client_cert_file: path("REDIS_CLIENT_CERT_FILE"),
                        client_key_file: path("REDIS_CLIENT_KEY_FILE"),
                    },
                    cluster: bool_var("REDIS_CLUSTER", false)?,
                    timeout: Duration::from_millis(number_var("REDIS_TIMEOUT_MS", 50, 1..=10_000)?),
                    ..RedisSettings::new(url.as_str())
                };
                // Certificates and the Upstash form are checked now, not at the first request.
                settings
                    .validate()
                    .map_err(|e| invalid("REDIS_URL", e.to_string()))?;
                Some(settings)
            }
        };
        let cache = CacheSettings {
            redis,
            flags,
            prefix,
            policy_ttl: seconds("POLICY_CACHE_TTL_SECONDS", 300)?,
            config_ttl: seconds("CONFIG_CACHE_TTL_SECONDS", 300)?,
            conversation_ttl: seconds("CONVERSATION_CACHE_TTL_SECONDS", 60)?,
            auth_ttl: seconds("AUTH_CACHE_TTL_SECONDS", 300)?,
            negative_ttl: Duration::from_secs(number_var(
                "COPILOT_CACHE_NEGATIVE_TTL_SECONDS",
                30,
                1..=30,
            )?),
            l1_ttl: Duration::from_secs(number_var("COPILOT_CACHE_L1_TTL_SECONDS", 30, 1..=30)?),
            l1_max_entries: number_var("COPILOT_CACHE_L1_MAX_ENTRIES", 10_000, 16..=10_000_000)?
                as usize,
            l1_max_bytes: number_var(
                "COPILOT_CACHE_L1_MAX_BYTES",
                64 * 1024 * 1024,
                1024..=(1 << 40),
            )?,
            events: HubSettings {
                replay_len: number_var("COPILOT_EVENT_REPLAY", 1_000, 1..=1_000_000)? as usize,
                subscriber_buffer: number_var("COPILOT_EVENT_BUFFER", 256, 1..=100_000)? as usize,
                stream_ttl: Duration::from_secs(number_var(
                    "COPILOT_EVENT_TTL_SECONDS",
                    3_600,
                    1..=30 * 86_400,
                )?),
                ..HubSettings::default()
            },
            rate_limit: rate_limit_settings(&var, &number_var)?,
            store_deadline: store_timeout + postgres.acquire_timeout,
            // Only PostgreSQL is written by other processes (each SQLite file has one server).
            shared_store: is_postgres(&database_url),
            ..CacheSettings::default()
        };
        let trusted_proxies = match var("COPILOT_TRUSTED_PROXIES") {
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
        let millis = |name: &str, default: u64| {
            number_var(name, default, 10..=3_600_000).map(Duration::from_millis)
        };
        let server = ServerLimits {
            header_timeout: millis("COPILOT_HEADER_TIMEOUT_MS", 10_000)?,
            body_timeout: millis("COPILOT_BODY_TIMEOUT_MS", 30_000)?,
            idle_timeout: millis("COPILOT_IDLE_TIMEOUT_MS", 60_000)?,
            max_connections: number_var("COPILOT_MAX_CONNECTIONS", 10_000, 1..=1_000_000)? as usize,
            drain: millis("COPILOT_SHUTDOWN_DRAIN_MS", 10_000)?,
        };
        Ok(Self {
            cursor_secret: var("COPILOT_CURSOR_SECRET"),
            cache,
            server,
            trusted_proxies,
            store_timeout,
            postgres,
            bind,
            migrate: !overrides.no_migrate,
            require_membership: bool_var("COPILOT_REQUIRE_MEMBERSHIP", is_postgres(&database_url))?,
            database_url,
            redis_url,
            jwt: JwtSettings {
                secret: var("COPILOT_JWT_SECRET"),
                jwks_file: var("COPILOT_JWKS_FILE").map(PathBuf::from),
                audience: var("COPILOT_JWT_AUDIENCE"),
                issuer: var("COPILOT_JWT_ISSUER"),
            },
            router,
            max_message_bytes,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        is_sqlite(&self.database_url)
    }

    /// The SQLite database file, when the store is a SQLite file.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        sqlite_path(&self.database_url).map(PathBuf::from)
    }

    /// Where a generated JWT secret lives: beside the SQLite file, else in the working directory.
    pub fn secret_file(&self) -> PathBuf {
        match sqlite_path(&self.database_url) {
            Some(path) => PathBuf::from(format!("{path}.jwt-secret")),
            None => PathBuf::from("copilot-state.jwt-secret"),
        }
    }
}

/// `COPILOT_RATE_LIMIT` (`<n>/<s|sec|second|m|min|minute|h|hour>`, default `600/min`, or `off`),
/// `COPILOT_RATE_LIMIT_BURST` (default a tenth of the limit, at least 1) and
/// `COPILOT_RATE_LIMIT_INSTANCES` (the in-process fallback's share, default 1).
type NumberVar<'a> =
    &'a dyn Fn(&str, u64, std::ops::RangeInclusive<u64>) -> Result<u64, SettingsError>;

fn rate_limit_settings(
    var: &dyn Fn(&str) -> Option<String>,
    number_var: NumberVar<'_>,
) -> Result<Option<RateLimitSettings>, SettingsError> {
    let text = var("COPILOT_RATE_LIMIT").unwrap_or_else(|| "600/min".to_owned());
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
    let burst = number_var(
        "COPILOT_RATE_LIMIT_BURST",
        u64::from((limit / 10).max(1)),
        1..=1_000_000_000,
    )? as u32;
    Ok(Some(RateLimitSettings {
        limit,
        period,
        burst,
        instances: number_var("COPILOT_RATE_LIMIT_INSTANCES", 1, 1..=10_000)? as u32,
        ..RateLimitSettings::default()
    }))
}

/// `REDIS_SENTINELS` (`host:port,host:port`) and `REDIS_SENTINEL_MASTER` as one
/// `redis+sentinel://` URL.
fn sentinel_url(sentinels: Option<String>, master: Option<String>) -> Option<String> {
    let sentinels = sentinels?;
    Some(format!(
        "redis+sentinel://{sentinels}/{}",
        master.unwrap_or_else(|| "mymaster".to_owned())
    ))
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The file of a `sqlite:` URL, or `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then_some(path)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)], overrides: Overrides) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(|k| map.get(k).cloned(), overrides)
    }

    #[test]
    fn defaults_are_the_embedded_service() {
        let s = load(&[], Overrides::default()).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.bind.to_string(), DEFAULT_BIND);
        assert!(s.migrate && !s.require_membership);
        assert_eq!(
            s.secret_file(),
            PathBuf::from("./copilot-state.db.jwt-secret")
        );
        assert_eq!(s.router.base_egress_mode, EgressMode::Enforce);
    }

    #[test]
    fn flags_override_environment() {
        let s = load(
            &[
                ("DATABASE_URL", "sqlite://env.db"),
                ("COPILOT_BIND", "127.0.0.1:1"),
            ],
            Overrides {
                database_url: Some("sqlite://flag.db".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.database_url, "sqlite://flag.db");
        assert_eq!(s.bind.port(), 1);
    }

    /// DESIGN.md section 9, item 3: the kill switch did nothing and flags accepted only
    /// lowercase `false`.
    #[test]
    fn regression_03_cache_flags_parse_strictly() {
        for off in ["False", "0", "off", "NO", "false"] {
            let s = load(&[("ENABLE_REDIS_CACHING", off)], Overrides::default()).unwrap();
            assert!(!s.cache.flags.global, "{off}");
        }
        let s = load(
            &[
                ("ENABLE_CONVERSATION_CACHING", "Yes"),
                ("ENABLE_LLM_POLICY_CACHE", "OFF"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert!(s.cache.flags.conversation && !s.cache.flags.policy && s.cache.flags.global);
        for name in [
            "ENABLE_REDIS_CACHING",
            "ENABLE_LLM_POLICY_CACHE",
            "ENABLE_CONVERSATION_CONFIG_CACHE",
            "ENABLE_CONVERSATION_CACHING",
            "ENABLE_AUTH_VALIDATION_CACHE",
            "ENABLE_RATE_LIMITER_REDIS",
            "ENABLE_REDIS_EVENT_HUBS",
        ] {
            let err = load(&[(name, "maybe")], Overrides::default()).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn redis_settings_from_the_environment() {
        let s = load(
            &[
                ("REDIS_URL", "redis://cache:6379"),
                ("REDIS_PASSWORD", "pw"),
                ("REDIS_TIMEOUT_MS", "20"),
                ("COPILOT_CACHE_PREFIX", "staging"),
            ],
            Overrides::default(),
        )
        .unwrap();
        let redis = s.cache.redis.unwrap();
        assert_eq!(redis.url, "redis://cache:6379");
        assert_eq!(redis.password.as_deref(), Some("pw"));
        assert_eq!(redis.timeout, Duration::from_millis(20));
        assert_eq!(s.cache.prefix, "staging");
        // A password with URL-reserved characters reaches Redis as it is.
        let encoded = load(
            &[
                ("REDIS_URL", "redis://cache:6379"),
                ("REDIS_PASSWORD", "p@ss:w/rd#1"),
            ],
            Overrides::default(),
        )
        .unwrap();
        let client = encoded.cache.redis.unwrap().client().unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("p@ss:w/rd#1"));
        // Upstash: the REST URL and its token.
        let upstash = load(
            &[
                ("REDIS_URL", "https://eu1-fine-cat-1.upstash.io"),
                ("REDIS_TOKEN", "tok"),
            ],
            Overrides::default(),
        )
        .unwrap();
        let client = upstash.cache.redis.unwrap().client().unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().username(), Some("default"));
        assert_eq!(info.redis_settings().password(), Some("tok"));
        let err = load(
            &[("REDIS_URL", "https://eu1-fine-cat-1.upstash.io")],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_TOKEN"), "{err}");
        let err = load(
            &[
                ("REDIS_URL", "rediss://cache:6380"),
                ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        // Sentinel, as a URL or as the two variables.
        let sentinel = load(
            &[
                ("REDIS_SENTINELS", "s1:26379,s2:26380"),
                ("REDIS_SENTINEL_MASTER", "primary"),
            ],
            Overrides::default(),
        )
        .unwrap();
        let target = sentinel
            .cache
            .redis
            .unwrap()
            .sentinel_target()
            .unwrap()
            .unwrap();
        assert_eq!(target.master, "primary");
        assert_eq!(target.sentinels.len(), 2);
        assert!(
            load(&[], Overrides::default())
                .unwrap()
                .cache
                .redis
                .is_none()
        );
        assert!(load(&[("COPILOT_CACHE_PREFIX", "a b")], Overrides::default()).is_err());
        assert!(load(&[("POLICY_CACHE_TTL_SECONDS", "0")], Overrides::default()).is_err());
    }

    #[test]
    fn postgres_requires_membership_by_default() {
        let s = load(&[("DATABASE_URL", "postgres://x/y")], Overrides::default()).unwrap();
        assert!(s.require_membership);
        let s = load(
            &[
                ("DATABASE_URL", "postgres://x/y"),
                ("COPILOT_REQUIRE_MEMBERSHIP", "OFF"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert!(!s.require_membership);
    }

    #[test]
    fn booleans_are_strict_and_errors_name_the_variable() {
        for yes in ["true", "TRUE", "1", "Yes", "on"] {
            assert!(parse_bool("X", yes).unwrap());
        }
        for no in ["false", "False", "0", "NO", "off"] {
            assert!(!parse_bool("X", no).unwrap());
        }
        let err = load(
            &[("COPILOT_REQUIRE_MEMBERSHIP", "maybe")],
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.variable, "COPILOT_REQUIRE_MEMBERSHIP");
        assert!(err.to_string().contains("maybe"));
        let err = load(
            &[("COPILOT_BASE_EGRESS_MODE", "loose")],
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.variable, "COPILOT_BASE_EGRESS_MODE");
        assert!(load(&[("DATABASE_URL", "mysql://x")], Overrides::default()).is_err());
    }

    /// The environment tables of the README and docs/ list exactly the variables `Settings::load`
    /// reads: a variable added in code without a row, or a row for one the code no longer
    /// reads, fails here.
    #[test]
    fn the_documented_environment_is_the_one_the_code_reads() {
        use std::cell::RefCell;
        use std::collections::BTreeSet;
        let asked = RefCell::new(BTreeSet::new());
        let record = |vars: &[(&str, &str)]| {
            let map: HashMap<&str, &str> = vars.iter().copied().collect();
            let loaded = Settings::load(
                |name| {
                    asked.borrow_mut().insert(name.to_owned());
                    map.get(name).map(|v| v.to_string())
                },
                Overrides::default(),
            );
            assert!(loaded.is_ok(), "{vars:?}: {:?}", loaded.err());
        };
        record(&[]);
        record(&[
            ("DATABASE_URL", "postgres://db/copilot"),
            ("REDIS_URL", "redis://cache:6379"),
            ("COPILOT_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("COPILOT_RATE_LIMIT", "10/s"),
        ]);
        let documented: BTreeSet<String> = [
            include_str!("../../../README.md"),
            include_str!("../../../docs/cache.md"),
            include_str!("../../../docs/deploy.md"),
            include_str!("../../../docs/fleet.md"),
        ]
        .iter()
        .flat_map(|doc| doc.lines())
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect();
        // Read outside `Settings::load`: the log filter (tracing-subscriber).
        let elsewhere: BTreeSet<String> = ["RUST_LOG".to_owned()].into();
        let asked = asked.into_inner();
        assert!(
            asked.len() > 50 && documented.len() > 50,
            "{asked:?} {documented:?}"
        );
        let undocumented: Vec<&String> = asked.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "read but not documented: {undocumented:?}"
        );
        let unread: Vec<&String> = documented
            .difference(&asked)
            .filter(|name| !elsewhere.contains(*name))
            .collect();
        assert!(unread.is_empty(), "documented but never read: {unread:?}");
    }
}
