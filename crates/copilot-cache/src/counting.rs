//! Counters for the hit path. Every thread of a process reading the same hot key would
//! otherwise increment the same atomic, and that cache line moving between cores cost more
//! than the rest of an L1 hit (the throughput benchmark: 2.6x slower on two workers than on
//! one). A [`ShardedCounter`] gives each thread its own cache line; a [`HitCounter`] adds a
//! Prometheus counter that is brought up to date by [`publish`], which `/metrics` calls
//! before rendering (and the server's upkeep thread every few seconds), so a scrape sees every
//! hit counted before it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Shards per counter: enough that the threads of a runtime rarely share one.
const SHARDS: usize = 16;

/// One shard on a cache line of its own (128 bytes: two lines, as adjacent-line prefetch
/// pairs them).
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicU64);

/// A count that threads add to without sharing a cache line (each thread its own shard).
pub struct ShardedCounter {
    shards: [Shard; SHARDS],
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }
}

impl ShardedCounter {
    pub fn add(&self, n: u64) {
        self.shards[shard_of_this_thread()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's shard: threads take the next one in turn when they first count.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A [`ShardedCounter`] behind a Prometheus counter: [`publish`] adds what was counted since
/// the last publication to it.
pub struct HitCounter {
    counted: ShardedCounter,
    published: Mutex<u64>,
    target: metrics::Counter,
}

impl HitCounter {
    /// Registered for [`publish`] for as long as it lives.
    pub fn new(target: metrics::Counter) -> Arc<Self> {
        let counter = Arc::new(Self {
            counted: ShardedCounter::default(),
            published: Mutex::new(0),
            target,
        });
        registry().push(Arc::downgrade(&counter));
        counter
    }

    pub fn increment(&self, n: u64) {
        self.counted.add(n);
    }

    fn publish(&self) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.counted.sum();
        self.target.increment(now.wrapping_sub(*published));
        *published = now;
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Weak<HitCounter>>> {
    static REGISTRY: Mutex<Vec<Weak<HitCounter>>> = Mutex::new(Vec::new());
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Brings every live [`HitCounter`]'s Prometheus counter up to date (and forgets dropped ones).
pub fn publish() {
    let live: Vec<Arc<HitCounter>> = {
        let mut counters = registry();
        counters.retain(|c| c.strong_count() > 0);
        counters.iter().filter_map(Weak::upgrade).collect()
    };
    for counter in live {
        counter.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.sum(), 80_000);
    }

    #[test]
    fn publishing_adds_only_what_was_counted_since_the_last_time() {
        let total = Arc::new(AtomicU64::new(0));
        let hits = HitCounter::new(metrics::Counter::from_arc(total.clone()));
        hits.increment(3);
        assert_eq!(
            total.load(Ordering::Relaxed),
            0,
            "nothing before publishing"
        );
        publish();
        hits.increment(2);
        publish();
        publish();
        assert_eq!(total.load(Ordering::Relaxed), 5);
    }
}
