//! Idle offload and promotion: a model nobody asked for in `--idle-offload` moves
//! to the CPU and gives its lease back; the next request for it promotes it again.
//!
//! Policy while a promotion runs: the request is served from the CPU at once (it
//! never waits for the move), and the model moves up between batches when the
//! broker grants a lease. A promotion that the broker refuses leaves the model on
//! the CPU asking again with backoff, as after a revocation.
//!
//! Demand follows load: a model whose queue is at least `--demand-boost-depth`
//! deep asks the broker one priority step higher, so idle lower-priority models
//! give their memory to it (the least recently used first).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plenum_lease::Priority;
use tokio::sync::watch;

use crate::worker::now_millis;

/// Requests seen, counted so that an offloaded model's placement can wait for
/// the next one. Cheap to clone; every clone counts into the same tally.
#[derive(Clone)]
pub(crate) struct Demand {
    requests: Arc<watch::Sender<u64>>,
}

impl Demand {
    pub(crate) fn new() -> Self {
        Self {
            requests: Arc::new(watch::channel(0).0),
        }
    }

    /// A request arrived.
    pub(crate) fn request(&self) {
        self.requests
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A watcher that has seen every request so far: its `changed()` fires on the
    /// next one only.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.requests.subscribe()
    }
}

/// How long the model has been idle, from the model thread's last batch (unix
/// millis, 0 when it never ran one), counting from `since` at the latest: the
/// moment the model arrived where it is.
pub(crate) fn idle_for(last_busy: &AtomicU64, since: Instant) -> Duration {
    let since_arrival = since.elapsed();
    match last_busy.load(Ordering::Relaxed) {
        0 => since_arrival,
        last => Duration::from_millis(now_millis().saturating_sub(last)).min(since_arrival),
    }
}

/// The priority to ask with: one step up while `queue_depth` requests wait and
/// that is at least `boost_depth` (0: never boost).
pub(crate) fn demand_priority(base: Priority, queue_depth: i64, boost_depth: usize) -> Priority {
    let deep = boost_depth > 0 && queue_depth >= boost_depth as i64;
    match (deep, base) {
        (false, base) => base,
        (true, Priority::Unspecified | Priority::Normal | Priority::High) => Priority::High,
        (true, Priority::Low) => Priority::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_queue_asks_one_step_higher() {
        assert_eq!(demand_priority(Priority::Low, 3, 4), Priority::Low);
        assert_eq!(demand_priority(Priority::Low, 4, 4), Priority::Normal);
        assert_eq!(demand_priority(Priority::Normal, 9, 4), Priority::High);
        assert_eq!(demand_priority(Priority::High, 9, 4), Priority::High);
        assert_eq!(
            demand_priority(Priority::Low, 60, 0),
            Priority::Low,
            "0 turns the boost off"
        );
    }

    #[test]
    fn idle_time_counts_from_the_last_batch_or_the_arrival_whichever_is_later() {
        let arrived = Instant::now() - Duration::from_secs(10);
        let never = AtomicU64::new(0);
        assert!(idle_for(&never, arrived) >= Duration::from_secs(10));
        let just_now = AtomicU64::new(now_millis());
        assert!(idle_for(&just_now, arrived) < Duration::from_secs(5));
        let long_ago = AtomicU64::new(now_millis() - 3_600_000);
        let idle = idle_for(&long_ago, arrived);
        assert!(idle >= Duration::from_secs(10) && idle < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_watcher_wakes_on_requests_after_it_started_watching_only() {
        let demand = Demand::new();
        demand.request();
        let mut watcher = demand.watch();
        assert!(!watcher.has_changed().unwrap(), "earlier requests are seen");
        demand.request();
        watcher.changed().await.unwrap();
    }
}
