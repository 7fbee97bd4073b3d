//! `copilot-state`: serve, migrate, token, doctor (DESIGN.md section 7).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use copilot_cache::CacheControl;
use copilot_domain::TenantId;
use copilot_domain::cursor::CursorKey;
use copilot_server::auth::{Authenticator, TokenRole, issue_token};
use copilot_server::settings::{Overrides, Settings};
use copilot_server::state::{AppParts, AppState, ServiceSettings};
use copilot_server::{open_and_migrate, open_stores, secret, serve_with, telemetry};

/// Prints to stdout, ignoring a closed pipe: whoever started `serve` may stop reading its banner,
/// and that must never take the service down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "copilot-state",
    version,
    about = "Shared state layer of a multi-tenant LLM copilot"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        /// Address to listen on [env: COPILOT_BIND] [default: 127.0.0.1:8080].
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// sqlite:// or postgres:// URL [env: DATABASE_URL] [default: sqlite://./copilot-state.db].
        #[arg(long)]
        database_url: Option<String>,
        /// Redis URL [env: REDIS_URL].
        #[arg(long)]
        redis_url: Option<String>,
        /// Do not apply pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print a signed bearer token (HS256, with the secret `serve` would use).
    Token {
        #[arg(long)]
        tenant: String,
        /// The token's `sub` [default: "admin" for admin, "service" for service, else "user"].
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value = "member")]
        role: TokenRole,
        /// Lifetime, e.g. 30s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Check configuration, database and Redis; print what is active and why.
    Doctor {
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long)]
        redis_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve {
            bind,
            database_url,
            redis_url,
            no_migrate,
        } => {
            run_serve(Settings::from_env(Overrides {
                bind,
                database_url,
                redis_url,
                no_migrate,
            })?)
            .await
        }
        Command::Migrate { database_url } => {
            let settings = Settings::from_env(Overrides {
                database_url,
                ..Default::default()
            })?;
            let (_, applied) = open_and_migrate(&settings)
                .await
                .context("migration failed")?;
            let target = redact(&settings.database_url);
            if applied.is_empty() {
                println!("{target}: up to date (no migration to apply)");
            } else {
                for migration in &applied {
                    println!("applied {migration}");
                }
                println!("{target}: {} migration(s) applied", applied.len());
            }
            Ok(())
        }
        Command::Token {
            tenant,
            user,
            role,
            ttl,
            database_url,
        } => {
            let settings = Settings::from_env(Overrides {
                database_url,
                no_migrate: true,
                ..Default::default()
            })?;
            let tenant = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!("--tenant {e}"))?;
            let user = user.unwrap_or_else(|| match role {
                TokenRole::Admin => "admin".into(),
                TokenRole::Service => "service".into(),
                TokenRole::Member => "user".into(),
            });
            let (secret, _) = jwt_secret(&settings, false)?;
            let tenant_claim = (role != TokenRole::Service).then_some(&tenant);
            println!(
                "{}",
                issue_token(&secret, tenant_claim, &user, role, parse_ttl(&ttl)?)?
            );
            Ok(())
        }
        Command::Doctor {
            database_url,
            redis_url,
        } => {
            doctor(Settings::from_env(Overrides {
                database_url,
                redis_url,
                no_migrate: true,
                ..Default::default()
            })?)
            .await
        }
    }
}

/// The HS256 secret in force: `COPILOT_JWT_SECRET`, else (SQLite only) the generated file beside
/// the database, created when `create` and missing. On PostgreSQL every instance must be given
/// the key: instances that each generated their own would refuse each other's tokens.
fn jwt_secret(settings: &Settings, create: bool) -> Result<(String, bool)> {
    if let Some(secret) = &settings.jwt.secret {
        return Ok((secret.clone(), false));
    }
    if !settings.is_sqlite() {
        bail!(
            "no JWT key: on PostgreSQL set COPILOT_JWT_SECRET (at least {} bytes; the same on every instance) or COPILOT_JWKS_FILE",
            copilot_server::auth::MIN_SECRET_BYTES
        );
    }
    let path = settings.secret_file();
    if !create && !path.exists() {
        bail!(
            "no JWT secret at {} (this is where `serve` keeps the one it generates for {}): run this where `serve` runs, pass the same --database-url, or set COPILOT_JWT_SECRET",
            path.display(),
            settings.database_url
        );
    }
    secret::load_or_create(&path)
        .with_context(|| format!("cannot read or create the JWT secret {}", path.display()))
}

/// The list-cursor key: `COPILOT_CURSOR_SECRET`, else derived from the HS256 secret (shared by
/// the fleet already), else (JWKS only, no cursor secret) random: cursors then work on this
/// instance only, which is said at start.
fn cursor_key(settings: &Settings, jwt_secret: Option<&str>) -> CursorKey {
    match (&settings.cursor_secret, jwt_secret) {
        (Some(secret), _) => CursorKey::derive(secret.as_bytes()),
        (None, Some(secret)) => CursorKey::derive(secret.as_bytes()),
        (None, None) => {
            tracing::warn!(
                "no COPILOT_CURSOR_SECRET and no HS256 secret: list cursors are valid on this instance only; set COPILOT_CURSOR_SECRET for a fleet"
            );
            let mut random = [0u8; 32];
            let _ = getrandom::fill(&mut random);
            CursorKey::derive(&random)
        }
    }
}

async fn run_serve(settings: Settings) -> Result<()> {
    // The recorder first: the caches register their counters when they are built.
    let metrics = telemetry::prometheus();
    let stores = open_stores(&settings)
        .await
        .context("cannot open the store")?;
    check_redis_at_start(&settings).await?;
    let (stores, cache) =
        CacheControl::build(stores, settings.cache.clone()).context("REDIS_URL")?;
    cache.follow_switch(std::time::Duration::from_millis(500));
    telemetry::spawn_runtime_probe();
    let secret = if settings.jwt.secret.is_none() && settings.jwt.jwks_file.is_some() {
        None
    } else {
        Some(jwt_secret(&settings, true)?)
    };
    let auth = Authenticator::new(&settings.jwt, secret.as_ref().map(|(s, _)| s.as_str()))?;
    let state = AppState::new(AppParts {
        stores,
        auth: Arc::new(auth),
        service: Arc::new(ServiceSettings {
            router: settings.router.clone(),
            max_message_bytes: settings.max_message_bytes,
            require_membership: settings.require_membership,
            store_timeout: settings.store_timeout,
            trusted_proxies: settings.trusted_proxies.clone(),
            cursor_key: cursor_key(&settings, secret.as_ref().map(|(s, _)| s.as_str())),
        }),
        metrics,
        rendered: Default::default(),
        cache: cache.clone(),
    });
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    let address = listener.local_addr()?;
    for line in cache.describe() {
        say!("  cache: {line}");
    }
    print_banner(&settings, address, secret.as_ref());
    serve_with(listener, state, settings.server.clone(), shutdown_signal()).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

fn print_banner(settings: &Settings, address: SocketAddr, secret: Option<&(String, bool)>) {
    say!("copilot-state listening on http://{address}");
    say!("  store: {}", redact(&settings.database_url));
    say!("  memberships required: {}", settings.require_membership);
    if let (Some((secret, created)), None) = (secret, &settings.jwt.secret) {
        if *created {
            say!(
                "  generated a JWT secret in {} (mode 0600)",
                settings.secret_file().display()
            );
        } else {
            say!("  JWT secret: {}", settings.secret_file().display());
        }
        let demo = TenantId::parse("demo").ok();
        if let Ok(token) = issue_token(secret, None, "admin", TokenRole::Service, 24 * 3600) {
            say!("\nAdmin (service) token, valid 24 h:\n\n  export TOKEN={token}\n");
            say!(
                "Try it:\n\n  curl -s -H \"Authorization: Bearer $TOKEN\" http://{address}/v1/tenants/demo/config/effective\n"
            );
        }
        if let Some(token) = demo
            .and_then(|t| issue_token(secret, Some(&t), "alice", TokenRole::Admin, 24 * 3600).ok())
        {
            say!("A tenant-admin token for user alice in tenant demo:\n\n  export ALICE={token}\n");
        }
    }
}

async fn doctor(settings: Settings) -> Result<()> {
    println!("configuration: ok");
    for line in database_report(&settings) {
        println!("{line}");
    }
    println!("  bind: {}", settings.bind);
    println!(
        "  memberships required: {} (default: true on Postgres, false on SQLite)",
        settings.require_membership
    );
    println!(
        "  router defaults: provider {}, model {}, local provider {}, base egress {}",
        settings.router.provider,
        settings.router.model,
        settings.router.local_provider,
        settings.router.base_egress_mode
    );
    match (&settings.jwt.secret, &settings.jwt.jwks_file) {
        (Some(_), _) => println!("  JWT: HS256 from COPILOT_JWT_SECRET"),
        (None, Some(path)) => println!("  JWT: RS256/ES256 from {}", path.display()),
        (None, None) => println!(
            "  JWT: HS256 from the generated secret {}",
            settings.secret_file().display()
        ),
    }
    if let Some(path) = &settings.jwt.jwks_file {
        Authenticator::new(&settings.jwt, settings.jwt.secret.as_deref()).context("JWKS file")?;
        println!("  JWKS file {}: ok", path.display());
    }
    if let Some(path) = settings.sqlite_file()
        && !path.exists()
    {
        // doctor looks, it never creates: `serve` or `migrate` make the database.
        println!(
            "database: {} does not exist yet (serve or migrate creates it)",
            path.display()
        );
        return doctor_redis(&settings).await;
    }
    let started = std::time::Instant::now();
    let stores = open_stores(&settings)
        .await
        .context("database: cannot open")?;
    stores
        .health
        .ping()
        .await
        .context("database: does not answer")?;
    println!("database: ok ({} ms)", started.elapsed().as_millis());
    doctor_redis(&settings).await
}

/// A Redis that refuses our certificate checks or credentials is a configuration mistake: stop
/// with a clear error. A Redis that is merely away is an outage: start degraded, without it,
/// and let the breaker's background probe bring it back.
async fn check_redis_at_start(settings: &Settings) -> Result<()> {
    let Some(redis) = &settings.cache.redis else {
        return Ok(());
    };
    match copilot_cache::redis_connect::check_settings(redis, REDIS_START_CHECK).await {
        Ok(()) => Ok(()),
        Err(e) if copilot_cache::redis_connect::is_certificate_error(&e) => bail!(
            "REDIS_URL {}: the TLS handshake failed: {e} (check REDIS_CA_FILE, the host name in the URL, and REDIS_CLIENT_CERT_FILE/REDIS_CLIENT_KEY_FILE)",
            redact(&redis.url)
        ),
        Err(e) if copilot_cache::redis_connect::is_credentials_error(&e) => bail!(
            "REDIS_URL {}: Redis refused the credentials: {e} (check REDIS_USERNAME, REDIS_PASSWORD or REDIS_TOKEN)",
            redact(&redis.url)
        ),
        Err(e) => {
            tracing::warn!(
                redis = %redact(&redis.url),
                error = %e,
                "Redis does not answer: serving without it (degraded) until it does"
            );
            Ok(())
        }
    }
}

/// How long start-up waits for Redis before it starts degraded.
const REDIS_START_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Which PostgreSQL URL does what, its TLS mode, and the pooler warning, for `doctor`.
fn database_report(settings: &Settings) -> Vec<String> {
    let url = &settings.database_url;
    if settings.is_sqlite() {
        return vec![format!("  DATABASE_URL: {} (SQLite)", redact(url))];
    }
    let pg = &settings.postgres;
    let pooler = pg.transaction_pooler;
    let mut lines = vec![format!(
        "  DATABASE_URL (queries{}): {} [TLS: {}]",
        if pooler {
            ", through a transaction-mode pooler"
        } else {
            ""
        },
        redact(url),
        sslmode(url)
    )];
    match &pg.direct_url {
        Some(direct) => lines.push(format!(
            "  COPILOT_DIRECT_DATABASE_URL (migrations, LISTEN/NOTIFY): {} [TLS: {}]",
            redact(direct),
            sslmode(direct)
        )),
        None => lines.push(
            "  COPILOT_DIRECT_DATABASE_URL: unset (migrations and LISTEN/NOTIFY use DATABASE_URL)"
                .to_owned(),
        ),
    }
    if pg.direct_url.is_none() && (pooler || looks_like_a_pooler(url)) {
        lines.push(format!(
            "  warning: {} but COPILOT_DIRECT_DATABASE_URL is unset: migrations must run elsewhere and other instances' L1 gets no PostgreSQL notifications (set it to the database's direct URL, e.g. Supabase's port 5432)",
            if pooler {
                "COPILOT_PG_TRANSACTION_POOLER is on"
            } else {
                "DATABASE_URL looks like a transaction-mode pooler (port 6543 or a pooler host)"
            }
        ));
    }
    if !pooler && looks_like_a_pooler(url) {
        lines.push("  warning: DATABASE_URL looks like a transaction-mode pooler: set COPILOT_PG_TRANSACTION_POOLER=true (no prepared statements, no session state)".to_owned());
    }
    lines
}

/// Supabase's Supavisor serves transaction mode on port 6543 (`*.pooler.supabase.com`).
fn looks_like_a_pooler(url: &str) -> bool {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port.ends_with(":6543") || host_port.contains(".pooler.supabase.com")
}

/// The `sslmode` a PostgreSQL URL asks for (`prefer` when it says nothing, as libpq and sqlx).
fn sslmode(url: &str) -> String {
    url.split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="))
        })
        .unwrap_or("prefer (default)")
        .to_owned()
}

/// Redis and the caches, for `doctor`.
async fn doctor_redis(settings: &Settings) -> Result<()> {
    match (&settings.redis_url, &settings.cache.redis) {
        (Some(url), Some(redis)) => {
            let topology = redis.topology();
            println!(
                "  REDIS_URL: {} [{}, TLS: {}, node(s): {}]",
                redact(url),
                topology.kind,
                if topology.tls { "on" } else { "off" },
                topology.nodes.join(", ")
            );
            if let Err(e) =
                copilot_cache::redis_connect::check_settings(redis, REDIS_START_CHECK * 2).await
            {
                bail!("redis: {}: {e}", redact(url));
            }
            let l2 = copilot_cache::RedisL2::new(redis).context("REDIS_URL")?;
            // The first call also connects: give it a few tries within its deadline.
            let mut answered = false;
            for _ in 0..3 {
                answered = answered || l2.ping().await;
            }
            if !answered {
                bail!(
                    "redis: {} does not answer within REDIS_TIMEOUT_MS",
                    redact(url)
                );
            }
            let live = l2.topology();
            match (live.kind, live.primary) {
                (_, Some(primary)) => {
                    println!("redis: ok ({}, sentinel, primary {primary})", redact(url))
                }
                ("cluster", None) => {
                    // The slot map arrives with the first CLUSTER SLOTS answer.
                    let deadline = std::time::Instant::now() + REDIS_START_CHECK;
                    while l2.node_breakers().is_empty() && std::time::Instant::now() < deadline {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    let primaries = l2.topology().nodes;
                    println!(
                        "redis: ok ({}, cluster with {} primaries: {})",
                        redact(url),
                        primaries.len(),
                        primaries.join(", ")
                    );
                }
                _ => println!("redis: ok ({})", redact(url)),
            }
        }
        _ => println!("redis: disabled (REDIS_URL is not set)"),
    }
    for line in settings.cache.describe() {
        println!("cache: {line}");
    }
    Ok(())
}

/// Hides a password in a URL before it is printed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A minted token lives at most a year (and a day).
const MAX_TOKEN_TTL_SECONDS: u64 = 366 * 86_400;

fn parse_ttl(text: &str) -> Result<u64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("--ttl '{text}': expected e.g. 30s, 15m, 1h, 7d"))?;
    let unit_seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl '{text}': unit must be s, m, h or d"),
    };
    match n.checked_mul(unit_seconds) {
        Some(0) => bail!("--ttl must be positive"),
        Some(seconds) if seconds <= MAX_TOKEN_TTL_SECONDS => Ok(seconds),
        _ => bail!("--ttl '{text}' is too long: at most 366d"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received, draining in-flight requests");
}
