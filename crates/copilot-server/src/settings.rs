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

mod sections;

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
        let env = sections::Env::new(&env);
        let (bind, trusted_proxies, server) = sections::server(&env, overrides.bind)?;
        let store = sections::store(&env, overrides.database_url)?;
        let (redis_url, redis) = sections::redis(&env, overrides.redis_url)?;
        let (router, max_message_bytes) = sections::requests(&env)?;
        let cache = sections::cache(&env, redis, &store)?;
        Ok(Self {
            cursor_secret: env.var("COPILOT_CURSOR_SECRET"),
            jwt: sections::auth(&env),
            require_membership: env.bool(
                "COPILOT_REQUIRE_MEMBERSHIP",
                is_postgres(&store.database_url),
            )?,
            migrate: !overrides.no_migrate,
            cache,
            server,
            trusted_proxies,
            store_timeout: store.timeout,
            postgres: store.postgres,
            bind,
            database_url: store.database_url,
            redis_url,
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
