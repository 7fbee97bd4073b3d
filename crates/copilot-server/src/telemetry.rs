//! Logs (`tracing`, level from `RUST_LOG`) and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
                .inspect(spawn_upkeep)
        })
        .clone()
}

/// Histogram samples wait in the recorder until upkeep (or a scrape) folds them in; without
/// either they pile up without bound (the soak found RSS growing ~2 MB/s with `/metrics` never
/// scraped). The same thread publishes the sharded hit counters (`copilot_cache::counting`)
/// and returns freed memory to the OS. One thread, not a task: the
/// recorder may be installed before any runtime exists.
fn spawn_upkeep(handle: &PrometheusHandle) {
    let handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                copilot_cache::counting::publish();
                handle.run_upkeep();
                release_free_memory();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started");
    }
}

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands memory the allocator holds free back to the operating system. glibc keeps what a burst
/// freed (the soak saw RSS step up by 2-3 MiB at a Redis pause or a PostgreSQL restart, buffers
/// of calls and connections that were then dropped, and stay there); trimming every upkeep
/// returns it, at the cost of one walk over the free lists.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes the allocator's own locks and only releases free pages; it
    // may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the runtime probe asks to be woken, and how late a wake must be to be reported.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const LATE_WAKE: std::time::Duration = std::time::Duration::from_millis(250);

/// Watches the runtime from inside: a task that sleeps `PROBE_EVERY` and measures how late it
/// woke. A blocked or starved worker shows up here before it shows up as a timed-out request:
/// `copilot_runtime_late_wakes_total` counts wakes later than 250 ms, each logged with its delay.
pub fn spawn_runtime_probe() {
    tokio::spawn(async {
        loop {
            let asked = tokio::time::Instant::now();
            tokio::time::sleep(PROBE_EVERY).await;
            let late = asked.elapsed().saturating_sub(PROBE_EVERY);
            if late >= LATE_WAKE {
                metrics::counter!("copilot_runtime_late_wakes_total").increment(1);
                tracing::warn!(
                    late_ms = late.as_millis() as u64,
                    "the runtime woke a task late"
                );
            }
        }
    });
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only for a person at a terminal, never into a log file or collector.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
