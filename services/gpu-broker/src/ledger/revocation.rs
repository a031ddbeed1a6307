//! Who gives memory back when a queued request does not fit: the least recently
//! used idle leases first, on the device where they are the stalest.
//!
//! Busy leases are never asked (a move between batches would not fail a request,
//! but it would stall a model that is working); idle ones go in the order their
//! holders last used them, so the models still in use stay on the GPU.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Ledger, Priority};

/// An idle lease that a request of higher priority may take memory from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revocable {
    pub id: String,
    pub bytes: u64,
    pub priority: Priority,
    /// When its holder last used it (busy, or as its reported idle time says).
    pub last_used: Instant,
}

/// The leases to revoke on one device so that a request fits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub device: u32,
    pub leases: Vec<String>,
    /// The most recent use among them: how much of a working set the plan disturbs.
    pub freshest_use: Instant,
}

/// Least recently used first until `needed` bytes are in reach, counting the
/// `available` ones (free now, or already on their way back). Among leases used
/// at the same moment, the lowest priority, then the largest. None when even all
/// of them would not be enough.
pub(crate) fn plan(
    device: u32,
    available: u64,
    needed: u64,
    mut revocable: Vec<Revocable>,
) -> Option<Plan> {
    revocable.sort_by_key(|lease| {
        (
            lease.last_used,
            lease.priority,
            std::cmp::Reverse(lease.bytes),
            lease.id.clone(),
        )
    });
    let mut reached = available;
    let mut leases = Vec::new();
    let mut freshest_use = None;
    for lease in revocable {
        if reached >= needed {
            break;
        }
        reached += lease.bytes;
        freshest_use =
            Some(freshest_use.map_or(lease.last_used, |at: Instant| at.max(lease.last_used)));
        leases.push(lease.id);
    }
    (reached >= needed).then_some(Plan {
        device,
        leases,
        freshest_use: freshest_use?,
    })
}

/// Among the devices' plans, the one whose most recently used victim was used
/// longest ago; ties to the plan that disturbs fewer holders, then the lower index.
pub(crate) fn pick(plans: Vec<Plan>) -> Option<Plan> {
    plans
        .into_iter()
        .min_by_key(|plan| (plan.freshest_use, plan.leases.len(), plan.device))
}

impl Ledger {
    /// Takes in how long ago each of a session's idle leases was last used, as its
    /// holder reported with a heartbeat. Leases of other sessions are ignored.
    pub fn report_idle(
        &mut self,
        session_id: &str,
        idle_for: HashMap<String, Duration>,
        now: Instant,
    ) {
        for (lease_id, idle) in idle_for {
            let Some(lease) = self.leases.get_mut(&lease_id) else {
                continue;
            };
            if lease.session_id.as_deref() != Some(session_id) {
                continue;
            }
            // A clock that cannot go back that far means "since long before the grant".
            lease.last_used = now.checked_sub(idle).unwrap_or(lease.granted_at);
        }
    }

    /// Records that the session's `busy` leases are in use now.
    pub(crate) fn mark_used(&mut self, session_id: &str, busy: &[String], now: Instant) {
        for lease_id in busy {
            if let Some(lease) = self.leases.get_mut(lease_id)
                && lease.session_id.as_deref() == Some(session_id)
            {
                lease.last_used = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, gib: u64, priority: Priority, idle_s: u64, now: Instant) -> Revocable {
        Revocable {
            id: id.into(),
            bytes: gib,
            priority,
            last_used: now - Duration::from_secs(idle_s),
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let now = Instant::now() + Duration::from_secs(1000);
        let leases = vec![
            lease("recent", 4, Priority::Low, 1, now),
            lease("stale", 2, Priority::Normal, 300, now),
            lease("older", 2, Priority::Low, 60, now),
        ];
        let plan = plan(0, 0, 3, leases.clone()).expect("enough");
        assert_eq!(plan.leases, ["stale", "older"]);
        assert_eq!(plan.freshest_use, now - Duration::from_secs(60));
        let plan = super::plan(0, 1, 3, leases.clone()).expect("enough");
        assert_eq!(plan.leases, ["stale"], "one is enough");
        assert_eq!(super::plan(0, 0, 9, leases), None, "8 in all: not enough");
    }

    #[test]
    fn among_leases_used_together_the_lowest_priority_then_the_largest_goes() {
        let now = Instant::now() + Duration::from_secs(1000);
        let leases = vec![
            lease("normal", 4, Priority::Normal, 10, now),
            lease("low-small", 1, Priority::Low, 10, now),
            lease("low-big", 3, Priority::Low, 10, now),
        ];
        let plan = plan(0, 0, 3, leases).unwrap();
        assert_eq!(plan.leases, ["low-big"]);
    }

    #[test]
    fn the_device_whose_victims_are_stalest_wins() {
        let now = Instant::now() + Duration::from_secs(1000);
        let a = plan(0, 0, 2, vec![lease("a", 2, Priority::Low, 5, now)]).unwrap();
        let b = plan(1, 0, 2, vec![lease("b", 2, Priority::Low, 500, now)]).unwrap();
        assert_eq!(pick(vec![a.clone(), b.clone()]).unwrap().device, 1);
        // Used at the same moment: fewer victims, then the lower index.
        let c = plan(
            2,
            0,
            2,
            vec![
                lease("c1", 1, Priority::Low, 500, now),
                lease("c2", 1, Priority::Low, 500, now),
            ],
        )
        .unwrap();
        assert_eq!(pick(vec![c, b.clone()]).unwrap().device, 1);
        assert_eq!(pick(vec![b.clone(), b]).unwrap().device, 1);
        assert_eq!(pick(Vec::new()), None);
    }
}
