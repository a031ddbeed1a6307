//! Holders that use more than they were granted. The books are only as good as the
//! holders' discipline: a process that allocates past its leases takes memory the
//! ledger believes free, and the next grant on that device may not fit. The ledger
//! cannot stop it (on a GPU only the holder's own allocator cap can), but it can see
//! it. After every measurement it looks for two kinds of overrun:
//! - a holder process whose measured usage of a device exceeds the sum of its leases
//!   there by more than `overrun_tolerance` (the inventory's view: NVML on a GPU);
//! - a lease whose holder reports its allocations reaching more than its grant (the
//!   holder's own view, exact and per model: a model past its lease is seen even when
//!   its process's other leases are idle and the process total looks fine).
//!
//! Each is a notice when it starts (a warning and a metric) and when it has stayed
//! within its leases for `overrun_settle` (so passes that come and go make one
//! overrun, not one per pass), and an entry in status while it lasts.
//!
//! The measured side is NVML's per-process usage on a GPU and, in simulation, what
//! the holders report their allocations reach (`report_use`), so a simulated device
//! can be overrun by a holder that allocates outside its leases.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::{Holder, Ledger, Notice};

/// What is over: a holder process on a device, or one of its leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct OverrunKey {
    device: u32,
    pid: u32,
    lease: Option<String>,
}

/// One overrun, as last measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverrunEntry {
    holder: Holder,
    granted: u64,
    used: u64,
    model_keys: Vec<String>,
    since: Instant,
    /// Since when it has measured within its leases; it ends after `overrun_settle`,
    /// so a holder whose passes come and go is one overrun, not one per pass.
    within_since: Option<Instant>,
}

/// An overrun as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrunView {
    pub holder: Holder,
    pub device_index: u32,
    /// The lease whose own reported use exceeds its grant; None for a process
    /// measured above all its leases on the device.
    pub lease_id: Option<String>,
    pub granted_bytes: u64,
    pub used_bytes: u64,
    pub model_keys: Vec<String>,
    pub since_ms: u64,
}

/// What one holder process (or one lease) is granted on one device, for which
/// models, and what it uses.
#[derive(Default)]
struct Booked {
    holder: Holder,
    granted: u64,
    used: u64,
    model_keys: Vec<String>,
}

impl Ledger {
    /// Takes in the device bytes each of a session's leases reached since the
    /// holder's previous heartbeat. Leases of other sessions are ignored.
    pub fn report_use(&mut self, session_id: &str, used: HashMap<String, u64>) {
        for (lease_id, bytes) in used {
            if let Some(lease) = self.leases.get_mut(&lease_id)
                && lease.session_id.as_deref() == Some(session_id)
            {
                lease.reported_use = Some(bytes);
            }
        }
    }

    /// Compares usage with the leases after a measurement: starts, updates and ends
    /// overruns.
    pub(crate) fn check_overruns(&mut self, now: Instant) {
        let found = self.find_overruns();
        let still_over: HashSet<OverrunKey> = found.iter().map(|(key, _)| key.clone()).collect();
        for (key, booked) in found {
            if let Some(entry) = self.overruns.get_mut(&key) {
                entry.granted = booked.granted;
                entry.used = booked.used;
                entry.model_keys = booked.model_keys;
                entry.within_since = None;
                continue;
            }
            self.notices.push(Notice::Overrun {
                holder: booked.holder.name.clone(),
                pid: key.pid,
                device: key.device,
                lease: key.lease.clone(),
                granted: booked.granted,
                used: booked.used,
                model_keys: booked.model_keys.clone(),
            });
            self.overruns.insert(
                key,
                OverrunEntry {
                    holder: booked.holder,
                    granted: booked.granted,
                    used: booked.used,
                    model_keys: booked.model_keys,
                    since: now,
                    within_since: None,
                },
            );
            self.changed();
        }
        let settle = self.config.overrun_settle;
        let mut ended = Vec::new();
        for (key, entry) in self.overruns.iter_mut() {
            if still_over.contains(key) {
                continue;
            }
            let within_since = *entry.within_since.get_or_insert(now);
            if now.saturating_duration_since(within_since) >= settle {
                ended.push(key.clone());
            }
        }
        for key in ended {
            if let Some(entry) = self.overruns.remove(&key) {
                self.notices.push(Notice::OverrunEnded {
                    holder: entry.holder.name,
                    pid: key.pid,
                    device: key.device,
                    lease: key.lease,
                    lasted: now.saturating_duration_since(entry.since),
                });
                self.changed();
            }
        }
    }

    /// The overruns now, by device, pid, then lease.
    pub(crate) fn overrun_views(&self, now: Instant) -> Vec<OverrunView> {
        let mut views: Vec<OverrunView> = self
            .overruns
            .iter()
            .map(|(key, entry)| OverrunView {
                holder: entry.holder.clone(),
                device_index: key.device,
                lease_id: key.lease.clone(),
                granted_bytes: entry.granted,
                used_bytes: entry.used,
                model_keys: entry.model_keys.clone(),
                since_ms: u64::try_from(now.saturating_duration_since(entry.since).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        views.sort_by(|a, b| {
            (a.device_index, a.holder.pid, &a.lease_id).cmp(&(
                b.device_index,
                b.holder.pid,
                &b.lease_id,
            ))
        });
        views
    }

    /// Processes measured above their leases, then leases reported above their grant.
    fn find_overruns(&self) -> Vec<(OverrunKey, Booked)> {
        let mut found = Vec::new();
        for (device, booked_by_pid) in self.booked_per_process() {
            for (pid, mut booked) in booked_by_pid {
                booked.used = self.process_usage(device, pid);
                if booked.used > booked.granted.saturating_add(self.config.overrun_tolerance) {
                    let key = OverrunKey {
                        device,
                        pid,
                        lease: None,
                    };
                    found.push((key, booked));
                }
            }
        }
        for lease in self
            .leases
            .values()
            .filter(|lease| lease.releasing.is_none())
        {
            let Some(used) = lease.reported_use.filter(|&used| used > lease.granted) else {
                continue;
            };
            let key = OverrunKey {
                device: lease.device,
                pid: lease.holder.pid,
                lease: Some(lease.id.clone()),
            };
            let booked = Booked {
                holder: lease.holder.clone(),
                granted: lease.granted,
                used,
                model_keys: vec![lease.model_key.clone()],
            };
            found.push((key, booked));
        }
        found
    }

    /// Σ granted bytes per device and holder pid, releasing leases included: their
    /// memory may not be freed yet, and that is not an overrun.
    fn booked_per_process(&self) -> Vec<(u32, HashMap<u32, Booked>)> {
        let mut per_device: Vec<HashMap<u32, Booked>> =
            (0..self.devices.len()).map(|_| HashMap::new()).collect();
        for lease in self.leases.values() {
            let Some(device) = per_device.get_mut(lease.device as usize) else {
                continue;
            };
            let booked = device.entry(lease.holder.pid).or_default();
            booked.holder = lease.holder.clone();
            booked.granted += lease.granted;
            if !booked.model_keys.contains(&lease.model_key) {
                booked.model_keys.push(lease.model_key.clone());
            }
        }
        per_device
            .into_iter()
            .enumerate()
            .map(|(device, booked)| (device as u32, booked))
            .collect()
    }
}
