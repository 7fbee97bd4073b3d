//! A circuit breaker: after `failure_threshold` consecutive failures it opens and every call is
//! refused at once (callers treat that as a cache miss / no-op); after `open_for` one probe is
//! let through (half-open); its success closes the breaker, its failure opens it again. With a
//! background prober ([`CircuitBreaker::probe_in_background`]) the probe is never a request's
//! call: requests are refused until the prober has closed the breaker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Mutex<Inner>,
    /// Mirrors "the state is `Open`" for readers that must not take the lock on every request.
    open: AtomicBool,
    failure_threshold: u32,
    open_for: Duration,
    /// A background task probes: an open breaker never lets a request's call through.
    background: AtomicBool,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            open: AtomicBool::new(false),
            failure_threshold: failure_threshold.max(1),
            open_for,
            background: AtomicBool::new(false),
        }
    }

    /// From now on the half-open probe is taken only through [`CircuitBreaker::probe`].
    pub fn probe_in_background(&self) {
        self.background.store(true, Ordering::Relaxed);
    }

    /// How long it stays open before a probe.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// For the background prober: the permit of the half-open probe, once the open time is up.
    pub fn probe(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        match *inner {
            Inner::Open { until } if Instant::now() >= until => {
                self.half_open(&mut inner);
                Some(Permit {
                    breaker: self,
                    settled: false,
                })
            }
            _ => None,
        }
    }

    fn half_open(&self, inner: &mut Inner) {
        *inner = Inner::HalfOpen;
        self.open.store(false, Ordering::Relaxed);
        metrics::counter!("copilot_cache_breaker_transitions_total", "to" => "half-open")
            .increment(1);
        Self::publish_state(BreakerState::HalfOpen);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go out now. Moving from open to half-open lets exactly one through.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::HalfOpen => false,
            Inner::Open { until }
                if Instant::now() >= until && !self.background.load(Ordering::Relaxed) =>
            {
                self.half_open(&mut inner);
                true
            }
            Inner::Open { .. } => false,
        }
    }

    /// A call permit: `None` when the breaker refuses the call. A permit dropped without an
    /// outcome (its caller's future was cancelled mid-call, say while it was the half-open
    /// probe) counts as a failure, so the breaker can never stay half-open waiting for it.
    pub fn permit(&self) -> Option<Permit<'_>> {
        self.allow().then_some(Permit {
            breaker: self,
            settled: false,
        })
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        if !matches!(*inner, Inner::Closed { failures: 0 }) {
            if !matches!(*inner, Inner::Closed { .. }) {
                metrics::counter!("copilot_cache_breaker_transitions_total", "to" => "closed")
                    .increment(1);
                Self::publish_state(BreakerState::Closed);
                tracing::info!("redis circuit breaker closed");
            }
            *inner = Inner::Closed { failures: 0 };
            self.open.store(false, Ordering::Relaxed);
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let open = match *inner {
            Inner::Closed { failures } if failures + 1 < self.failure_threshold => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                };
                false
            }
            Inner::Open { .. } => false,
            _ => true,
        };
        if open {
            *inner = Inner::Open {
                until: Instant::now() + self.open_for,
            };
            self.open.store(true, Ordering::Relaxed);
            metrics::counter!("copilot_cache_breaker_transitions_total", "to" => "open")
                .increment(1);
            Self::publish_state(BreakerState::Open);
            tracing::warn!("redis circuit breaker opened");
        }
    }

    /// `copilot_cache_breaker_state`: 0 closed, 1 half-open, 2 open.
    fn publish_state(state: BreakerState) {
        let value = match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        };
        metrics::gauge!("copilot_cache_breaker_state").set(value);
    }

    /// Whether the breaker is open (calls refused), without taking its lock. An open breaker
    /// whose time is up still reads as open until a call moves it to half-open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

/// One call let through by the breaker; see [`CircuitBreaker::permit`].
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    settled: bool,
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record_failure();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.record_failure();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue "Tests that cannot pass by accident": a request cancelled while it held the
    /// half-open probe left the breaker half-open forever (every later call refused).
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_cannot_leave_the_breaker_half_open() {
        let b = CircuitBreaker::new(1, Duration::from_secs(1));
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.permit().expect("the half-open probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        drop(probe); // its request was cancelled mid-call
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "back to open, not stuck half-open"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        b.permit().expect("a new probe").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_and_closes() {
        let b = CircuitBreaker::new(3, Duration::from_secs(1));
        b.record_failure();
        b.record_failure();
        b.record_success(); // a success resets the count
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(), "open: refused at once");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(b.allow(), "one probe after open_for");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe opens again");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }
}
