//! The lease ledger: the broker's books. A plain state machine with no I/O and no
//! clock of its own (every operation takes `now`), so it is fast, deterministic and
//! driven by property tests and paused time alike. The service keeps it behind a
//! mutex that is never held across an await.
//!
//! Capacity per device: `free = total − reserve − Σ granted − external`, where
//! `external` is measured usage not covered by any lease.

mod overrun;
mod placement;
mod revocation;
mod types;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use plenum_runtime::bytes::format_bytes;

use crate::error::{BrokerError, Refusal};
use crate::inventory::{DeviceInfo, DeviceUsage, HeldBytes};
use overrun::{OverrunEntry, OverrunKey};
use placement::{Candidate, best_fit};

pub use overrun::OverrunView;
pub use types::{
    AcquireOutcome, AcquireSpec, DeviceView, Holder, LeaseClaim, LeaseState, LeaseView, Notice,
    Outgoing, Priority, Purpose, QueuedView, ReclaimOutcome, SessionEvent, SessionView,
    StatusSnapshot,
};

/// Timings and headroom that shape the books.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Per device, never leased.
    pub reserve_bytes: u64,
    /// A session without a heartbeat for this long is ended.
    pub session_ttl: Duration,
    /// Leases of an ended session wait this long for a reconnecting holder to reclaim them.
    pub orphan_grace: Duration,
    /// How long a release waits for the inventory to show the memory freed.
    pub release_confirm_timeout: Duration,
    /// How long a holder has to give back a revoked lease before it is reported.
    pub revoke_deadline: Duration,
    /// After start, only reclaims are accepted for this long.
    pub recovery_window: Duration,
    /// A lease still loading after this long stops blocking its device.
    pub loading_timeout: Duration,
    /// A holder process measured using more than its leases grant by more than
    /// this is reported as an overrun.
    pub overrun_tolerance: u64,
    /// An overrun ends once its holder has stayed within its leases this long.
    pub overrun_settle: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            reserve_bytes: 0,
            session_ttl: Duration::from_secs(10),
            orphan_grace: Duration::from_secs(2),
            release_confirm_timeout: Duration::from_secs(5),
            revoke_deadline: Duration::from_secs(10),
            recovery_window: Duration::ZERO,
            loading_timeout: Duration::from_secs(120),
            overrun_tolerance: 0,
            overrun_settle: Duration::from_secs(10),
        }
    }
}

/// How a session's leases are left when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The holder is gone: its leases wait out the grace, then are released.
    Orphan,
    /// The holder is silent but holds its memory: its leases stay booked.
    Unresponsive,
}

/// Where a live lease is in its life (release and orphaning are tracked beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Active,
    Revoking { deadline: Instant, overdue: bool },
}

#[derive(Debug)]
struct ReleaseTracking {
    deadline: Instant,
    /// The holder process's measured usage on the device when it released.
    usage_at_release: u64,
}

#[derive(Debug)]
struct LeaseEntry {
    id: String,
    /// None while orphaned (its session ended and nobody reclaimed it yet).
    session_id: Option<String>,
    holder: Holder,
    device: u32,
    granted: u64,
    measured: u64,
    phase: Phase,
    priority: Priority,
    purpose: Purpose,
    model_key: String,
    granted_at: Instant,
    /// When its holder last used it: busy in a heartbeat, or as its reported idle
    /// time says. Revocations take the least recently used first.
    last_used: Instant,
    from_estimate: bool,
    /// Re-created from a holder's claim after a broker restart rather than granted
    /// by this ledger. A reclaimed load is a load that is already happening: the
    /// broker books it even when another load is in flight on the same device.
    reclaimed: bool,
    orphaned_until: Option<Instant>,
    /// Its session stopped heartbeating while the holder process still used device
    /// memory: a hung process, not a dead one. Booked until the memory or the
    /// process is gone, or the holder reclaims it.
    unresponsive_since: Option<Instant>,
    releasing: Option<ReleaseTracking>,
    /// The device bytes its holder last reported it reaching (`report_use`); a
    /// simulated inventory measures these instead of the grant.
    reported_use: Option<u64>,
}

impl LeaseEntry {
    fn is_loading(&self) -> bool {
        self.phase == Phase::Loading && self.releasing.is_none()
    }

    fn state(&self) -> LeaseState {
        if self.releasing.is_some() {
            LeaseState::Releasing
        } else if self.orphaned_until.is_some() {
            LeaseState::Orphaned
        } else if self.unresponsive_since.is_some() {
            LeaseState::Unresponsive
        } else {
            match self.phase {
                Phase::Loading => LeaseState::Loading,
                Phase::Active => LeaseState::Active,
                Phase::Revoking { .. } => LeaseState::Revoking,
            }
        }
    }

    fn view(&self, device_uuid: &str, now: Instant) -> LeaseView {
        let (revoke_deadline_in_ms, revoke_overdue) = match self.phase {
            Phase::Revoking { deadline, overdue } => (signed_ms_until(deadline, now), overdue),
            _ => (0, false),
        };
        LeaseView {
            lease_id: self.id.clone(),
            session_id: self.session_id.clone(),
            holder: self.holder.clone(),
            device_index: self.device,
            device_uuid: device_uuid.to_owned(),
            granted_bytes: self.granted,
            measured_bytes: self.measured,
            state: self.state(),
            priority: self.priority,
            purpose: self.purpose,
            model_key: self.model_key.clone(),
            age_ms: millis(now.saturating_duration_since(self.granted_at)),
            revoke_deadline_in_ms,
            revoke_overdue,
            from_measured_estimate: self.from_estimate,
            idle_ms: if self.session_id.is_some() && self.phase == Phase::Active {
                millis(now.saturating_duration_since(self.last_used))
            } else {
                0
            },
            used_bytes: self.reported_use,
        }
    }
}

#[derive(Debug)]
struct SessionEntry {
    holder: Holder,
    last_heartbeat: Instant,
    busy: HashSet<String>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    session_id: String,
    bytes: u64,
    device: Option<u32>,
    priority: Priority,
    purpose: Purpose,
    model_key: String,
    from_estimate: bool,
    enqueued_at: Instant,
    wait_until: Instant,
}

#[derive(Debug)]
struct DeviceBook {
    info: DeviceInfo,
    usage: DeviceUsage,
    external: u64,
}

#[derive(Debug)]
pub struct Ledger {
    config: LedgerConfig,
    devices: Vec<DeviceBook>,
    sessions: HashMap<String, SessionEntry>,
    leases: HashMap<String, LeaseEntry>,
    /// Sorted by (priority desc, arrival asc): the order grants are considered in.
    queue: Vec<Waiter>,
    estimates: HashMap<String, u64>,
    recovery_ends_at: Instant,
    next_waiter: u64,
    unconfirmed_releases: u64,
    notices: Vec<Notice>,
    outgoing: Vec<Outgoing>,
    /// Holder processes above their leases, and leases reported above their grant.
    overruns: HashMap<OverrunKey, OverrunEntry>,
    /// Bumped on every change, so watchers know to look again.
    version: u64,
}

impl Ledger {
    pub fn new(config: LedgerConfig, devices: &[DeviceInfo], now: Instant) -> Self {
        let recovery_ends_at = now + config.recovery_window;
        Self {
            devices: devices
                .iter()
                .map(|info| DeviceBook {
                    info: info.clone(),
                    usage: DeviceUsage::default(),
                    external: 0,
                })
                .collect(),
            config,
            sessions: HashMap::new(),
            leases: HashMap::new(),
            queue: Vec::new(),
            estimates: HashMap::new(),
            recovery_ends_at,
            next_waiter: 0,
            unconfirmed_releases: 0,
            overruns: HashMap::new(),
            notices: Vec::new(),
            outgoing: Vec::new(),
            version: 0,
        }
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Notices since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// What must be delivered since the last call, in order.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outgoing)
    }

    fn in_recovery(&self, now: Instant) -> bool {
        now < self.recovery_ends_at
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    // ---- sessions ----

    /// Opens a session for `holder`, re-attaching or re-creating the leases it claims.
    pub fn open_session(
        &mut self,
        holder: Holder,
        claims: Vec<LeaseClaim>,
        now: Instant,
    ) -> Result<(String, Vec<ReclaimOutcome>), BrokerError> {
        if holder.name.trim().is_empty() {
            return Err(BrokerError::invalid(
                "hello.holder.name",
                "must not be empty",
            ));
        }
        if holder.instance_id.trim().is_empty() {
            return Err(BrokerError::invalid(
                "hello.holder.instance_id",
                "must not be empty",
            ));
        }
        let session_id = uuid::Uuid::new_v4().to_string();
        let reclaims = claims
            .into_iter()
            .map(|claim| self.reclaim(&session_id, &holder, claim, now))
            .collect();
        self.sessions.insert(
            session_id.clone(),
            SessionEntry {
                holder,
                last_heartbeat: now,
                busy: HashSet::new(),
            },
        );
        self.changed();
        Ok((session_id, reclaims))
    }

    fn reclaim(
        &mut self,
        session_id: &str,
        holder: &Holder,
        claim: LeaseClaim,
        now: Instant,
    ) -> ReclaimOutcome {
        let refuse = |reason: String| ReclaimOutcome {
            lease_id: claim.lease_id.clone(),
            accepted: false,
            reason,
        };
        if let Some(lease) = self.leases.get_mut(&claim.lease_id) {
            if lease.holder.instance_id != holder.instance_id {
                return refuse("the lease belongs to another holder".into());
            }
            if lease.releasing.is_some() {
                return refuse("the lease was already released".into());
            }
            lease.session_id = Some(session_id.to_owned());
            lease.orphaned_until = None;
            lease.unresponsive_since = None;
            lease.holder = holder.clone();
            return ReclaimOutcome {
                lease_id: claim.lease_id,
                accepted: true,
                reason: String::new(),
            };
        }
        if !self.in_recovery(now) {
            return refuse("unknown lease: it was released when its session ended".into());
        }
        let Some(device) = self
            .devices
            .iter()
            .position(|d| d.info.uuid == claim.device_uuid)
        else {
            return refuse(format!("no device with uuid {}", claim.device_uuid));
        };
        let (Ok(bytes), Some(priority), Some(purpose)) =
            (u64::try_from(claim.bytes), claim.priority, claim.purpose)
        else {
            return refuse("malformed claim".into());
        };
        if bytes == 0 || bytes > self.free_bytes(device) {
            return refuse(format!(
                "{bytes} bytes do not fit: {} free on device {device}",
                self.free_bytes(device)
            ));
        }
        self.leases.insert(
            claim.lease_id.clone(),
            LeaseEntry {
                id: claim.lease_id.clone(),
                session_id: Some(session_id.to_owned()),
                holder: holder.clone(),
                device: device as u32,
                granted: bytes,
                measured: if claim.committed { bytes } else { 0 },
                phase: if claim.committed {
                    Phase::Active
                } else {
                    Phase::Loading
                },
                priority,
                purpose,
                model_key: claim.model_key,
                granted_at: now,
                last_used: now,
                from_estimate: false,
                reclaimed: true,
                orphaned_until: None,
                unresponsive_since: None,
                releasing: None,
                reported_use: None,
            },
        );
        ReclaimOutcome {
            lease_id: claim.lease_id,
            accepted: true,
            reason: String::new(),
        }
    }

    /// Records a heartbeat and which leases are busy serving requests.
    pub fn heartbeat(
        &mut self,
        session_id: &str,
        busy: Vec<String>,
        now: Instant,
    ) -> Result<(), BrokerError> {
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or_else(|| BrokerError::NotFound(format!("session {session_id} has ended")))?;
        session.last_heartbeat = now;
        self.mark_used(session_id, &busy, now);
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.busy = busy.into_iter().collect();
        }
        Ok(())
    }

    /// Ends a session (stream closed, or TTL passed): its leases wait out the grace
    /// as orphans, its queued requests are dropped.
    pub fn end_session(&mut self, session_id: &str, now: Instant) {
        self.close_session(session_id, Ending::Orphan, now);
    }

    /// Ends a session whose holder went silent but still uses device memory: its
    /// leases stay booked as unresponsive instead of waiting out the grace.
    fn hang_session(&mut self, session_id: &str, now: Instant) {
        self.close_session(session_id, Ending::Unresponsive, now);
    }

    fn close_session(&mut self, session_id: &str, ending: Ending, now: Instant) {
        if self.sessions.remove(session_id).is_none() {
            return;
        }
        let grace_ends = now + self.config.orphan_grace;
        for lease in self.leases.values_mut() {
            if lease.session_id.as_deref() == Some(session_id) {
                lease.session_id = None;
                if lease.releasing.is_none() {
                    match ending {
                        Ending::Orphan => lease.orphaned_until = Some(grace_ends),
                        Ending::Unresponsive => lease.unresponsive_since = Some(now),
                    }
                }
            }
        }
        let (gone, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|waiter| waiter.session_id == session_id);
        self.queue = kept;
        // Their Acquire calls learn that the session ended; then the stream closes.
        self.outgoing.extend(
            gone.into_iter()
                .map(|waiter| Outgoing::WaiterGone { waiter: waiter.id }),
        );
        self.outgoing.push(Outgoing::SessionEnded {
            session_id: session_id.to_owned(),
        });
        self.changed();
        self.drain_queue(now);
    }

    // ---- leases ----

    pub fn acquire(
        &mut self,
        spec: AcquireSpec,
        now: Instant,
    ) -> Result<AcquireOutcome, BrokerError> {
        let requested = u64::try_from(spec.bytes)
            .ok()
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| {
                BrokerError::invalid("bytes", format!("must be > 0, got {}", spec.bytes))
            })?;
        if !self.sessions.contains_key(&spec.session_id) {
            return Err(unknown_session(&spec.session_id));
        }
        let (bytes, from_estimate) = match self.estimates.get(&spec.model_key) {
            Some(&estimate) if spec.use_measured_estimate && !spec.model_key.is_empty() => {
                (estimate, true)
            }
            _ => (requested, false),
        };
        if self.devices.is_empty() {
            return Err(BrokerError::Exhausted(Refusal {
                reason: "no GPU devices on this host: use the CPU".into(),
                requested_bytes: bytes,
                free_bytes: 0,
                free_per_device: Vec::new(),
                queue_position: 0,
                retry_after: Duration::from_secs(60),
            }));
        }
        let largest = match spec.device {
            Some(index) => {
                self.devices
                    .get(index as usize)
                    .ok_or_else(|| {
                        BrokerError::invalid(
                            "device_index",
                            format!("no device {index}; this host has {}", self.devices.len()),
                        )
                    })?
                    .info
                    .total_bytes
            }
            None => self
                .devices
                .iter()
                .map(|d| d.info.total_bytes)
                .max()
                .unwrap_or(0),
        };
        let leasable = largest.saturating_sub(self.config.reserve_bytes);
        if bytes > leasable {
            return Err(BrokerError::invalid(
                "bytes",
                format!(
                    "{bytes} can never fit: the largest candidate device leases at most {leasable}"
                ),
            ));
        }

        let id = self.next_waiter;
        self.next_waiter += 1;
        let waiter = Waiter {
            id,
            session_id: spec.session_id,
            bytes,
            device: spec.device,
            priority: spec.priority,
            purpose: spec.purpose,
            model_key: spec.model_key,
            from_estimate,
            enqueued_at: now,
            wait_until: now + spec.wait,
        };
        let position = self
            .queue
            .iter()
            .position(|queued| queued.priority < waiter.priority)
            .unwrap_or(self.queue.len());
        self.queue.insert(position, waiter);
        self.changed();
        self.drain_queue(now);

        // Granted at once: the answer goes back on this call, not through delivery.
        if let Some(at) = self
            .outgoing
            .iter()
            .position(|out| matches!(out, Outgoing::Answer { waiter, .. } if *waiter == id))
            && let Outgoing::Answer { lease, .. } = self.outgoing.remove(at)
        {
            return Ok(AcquireOutcome::Granted(lease));
        }
        if spec.wait.is_zero() {
            return Err(BrokerError::Exhausted(
                self.cancel_waiter(id, now).unwrap_or_else(|| {
                    self.refusal("the request left the queue", bytes, None, 0, now)
                }),
            ));
        }
        Ok(AcquireOutcome::Queued { waiter: id })
    }

    /// Takes a waiter out of the queue (its wait ran out, or its caller left) and
    /// says why it was not granted. None when it is no longer queued.
    pub fn cancel_waiter(&mut self, waiter: u64, now: Instant) -> Option<Refusal> {
        let position = self.queue.iter().position(|queued| queued.id == waiter)?;
        let waiter = self.queue.remove(position);
        self.outgoing
            .push(Outgoing::WaiterGone { waiter: waiter.id });
        self.changed();
        // Its departure may unblock the requests behind it.
        self.drain_queue(now);
        let reason = if self.in_recovery(now) {
            "the broker is in its recovery window after a restart; no new grants yet".to_owned()
        } else {
            let free: Vec<String> = self
                .candidate_frees(waiter.device)
                .into_iter()
                .map(|(device, free)| format!("device {device}: {}", format_bytes(free)))
                .collect();
            format!(
                "not enough VRAM: {} requested, free for leases on {}; waited {} ms",
                format_bytes(waiter.bytes),
                free.join(", "),
                millis(now.saturating_duration_since(waiter.enqueued_at))
            )
        };
        Some(self.refusal(
            &reason,
            waiter.bytes,
            waiter.device,
            position as u32 + 1,
            now,
        ))
    }

    /// Gives back a lease whose grant reached nobody (the caller had left): it was
    /// never booked for anyone, nor counted as granted.
    pub fn discard_undelivered(&mut self, lease_id: &str, now: Instant) {
        self.notices
            .retain(|notice| !matches!(notice, Notice::Granted { lease, .. } if lease == lease_id));
        if self.leases.remove(lease_id).is_some() {
            self.changed();
            self.drain_queue(now);
        }
    }

    fn refusal(
        &self,
        reason: &str,
        bytes: u64,
        device: Option<u32>,
        position: u32,
        now: Instant,
    ) -> Refusal {
        let retry_after = if self.in_recovery(now) {
            self.recovery_ends_at - now
        } else {
            // The soonest moment books can change on their own: a revocation or a
            // release coming due. Otherwise a second is a fair poll.
            self.leases
                .values()
                .filter_map(|lease| match (&lease.releasing, lease.phase) {
                    (Some(release), _) => Some(release.deadline),
                    (None, Phase::Revoking { deadline, .. }) => Some(deadline),
                    _ => None,
                })
                .filter(|&at| at > now)
                .min()
                .map_or(Duration::from_secs(1), |at| {
                    (at - now).min(Duration::from_secs(1))
                })
        };
        Refusal {
            reason: reason.to_owned(),
            requested_bytes: bytes,
            free_bytes: self.candidate_free(device),
            free_per_device: self.candidate_frees(device),
            queue_position: position,
            retry_after: retry_after.max(Duration::from_millis(10)),
        }
    }

    pub fn commit(
        &mut self,
        session_id: &str,
        lease_id: &str,
        measured_bytes: i64,
        now: Instant,
    ) -> Result<LeaseView, BrokerError> {
        let measured = u64::try_from(measured_bytes)
            .ok()
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| {
                BrokerError::invalid(
                    "measured_bytes",
                    format!("must be > 0, got {measured_bytes}"),
                )
            })?;
        let (device, granted) = {
            let lease = self.owned_lease(session_id, lease_id)?;
            if lease.releasing.is_some() {
                return Err(BrokerError::invalid(
                    "lease_id",
                    format!("lease {lease_id} is being released"),
                ));
            }
            (lease.device as usize, lease.granted)
        };
        if measured > granted {
            let growth = measured - granted;
            let free = self.free_bytes(device);
            if growth > free {
                return Err(BrokerError::Exhausted(Refusal {
                    reason: format!(
                        "cannot grow lease {lease_id} by {growth} bytes: {free} free on device {device}; \
                         move the model off the GPU and release"
                    ),
                    requested_bytes: growth,
                    free_bytes: free,
                    free_per_device: vec![(device as u32, free)],
                    queue_position: 0,
                    retry_after: Duration::from_secs(1),
                }));
            }
        }
        let lease = self.leases.get_mut(lease_id).expect("checked above");
        lease.granted = measured;
        lease.measured = measured;
        if lease.phase == Phase::Loading {
            lease.phase = Phase::Active;
        }
        if !lease.model_key.is_empty() {
            self.estimates.insert(lease.model_key.clone(), measured);
        }
        self.changed();
        self.drain_queue(now);
        Ok(self.view(&self.leases[lease_id], now))
    }

    pub fn release(
        &mut self,
        session_id: &str,
        lease_id: &str,
        now: Instant,
    ) -> Result<LeaseView, BrokerError> {
        self.owned_lease(session_id, lease_id)?;
        self.begin_release(lease_id, now);
        Ok(self.view(&self.leases[lease_id], now))
    }

    fn begin_release(&mut self, lease_id: &str, now: Instant) {
        let deadline = now + self.config.release_confirm_timeout;
        let Some(lease) = self.leases.get(lease_id) else {
            return;
        };
        if lease.releasing.is_some() {
            return;
        }
        let usage_at_release = self.devices[lease.device as usize]
            .usage
            .processes
            .get(&lease.holder.pid)
            .copied()
            .unwrap_or(0);
        let lease = self.leases.get_mut(lease_id).expect("checked above");
        lease.releasing = Some(ReleaseTracking {
            deadline,
            usage_at_release,
        });
        lease.orphaned_until = None;
        self.changed();
    }

    fn owned_lease(&self, session_id: &str, lease_id: &str) -> Result<&LeaseEntry, BrokerError> {
        if !self.sessions.contains_key(session_id) {
            return Err(unknown_session(session_id));
        }
        let lease = self
            .leases
            .get(lease_id)
            .ok_or_else(|| BrokerError::NotFound(format!("no lease {lease_id}")))?;
        if lease.session_id.as_deref() != Some(session_id) {
            return Err(BrokerError::PermissionDenied(format!(
                "lease {lease_id} belongs to another session"
            )));
        }
        Ok(lease)
    }

    // ---- capacity and the queue ----

    /// Bytes device `index` can still lease.
    pub fn free_bytes(&self, index: usize) -> u64 {
        let device = &self.devices[index];
        let leased: u64 = self.leased_on(index as u32);
        device
            .info
            .total_bytes
            .saturating_sub(self.config.reserve_bytes)
            .saturating_sub(leased)
            .saturating_sub(device.external)
    }

    fn leased_on(&self, device: u32) -> u64 {
        self.leases
            .values()
            .filter(|lease| lease.device == device)
            .map(|lease| lease.granted)
            .sum()
    }

    /// The most any device a request may use can lease now.
    fn candidate_free(&self, device: Option<u32>) -> u64 {
        self.candidate_frees(device)
            .into_iter()
            .map(|(_, free)| free)
            .max()
            .unwrap_or(0)
    }

    /// What each device a request may use can lease now, by index.
    fn candidate_frees(&self, device: Option<u32>) -> Vec<(u32, u64)> {
        match device {
            Some(index) if (index as usize) < self.devices.len() => {
                vec![(index, self.free_bytes(index as usize))]
            }
            Some(_) => Vec::new(),
            None => (0..self.devices.len())
                .map(|index| (index as u32, self.free_bytes(index)))
                .collect(),
        }
    }

    /// Leases booked on `device` and not on their way out: its load, for placement.
    fn lease_count(&self, device: u32) -> usize {
        self.leases
            .values()
            .filter(|lease| lease.device == device && lease.releasing.is_none())
            .count()
    }

    /// The index of the device with this uuid.
    pub fn device_index_of(&self, uuid: &str) -> Option<u32> {
        self.devices
            .iter()
            .position(|device| device.info.uuid == uuid)
            .map(|index| index as u32)
    }

    fn loading_on(&self, device: u32) -> Option<&LeaseEntry> {
        self.leases
            .values()
            .find(|lease| lease.device == device && lease.is_loading())
    }

    /// Grants queued requests in priority-then-FIFO order. A request that cannot be
    /// placed blocks its devices for everyone behind it, so a large request is never
    /// starved by a stream of small ones; it may trigger revocations instead.
    fn drain_queue(&mut self, now: Instant) {
        if self.in_recovery(now) || self.queue.is_empty() {
            return;
        }
        let mut blocked = vec![false; self.devices.len()];
        let mut index = 0;
        while index < self.queue.len() {
            let candidates: Vec<u32> = match self.queue[index].device {
                Some(device) => vec![device],
                None => (0..self.devices.len() as u32).collect(),
            };
            if candidates.iter().all(|&device| blocked[device as usize]) {
                index += 1;
                continue;
            }
            let waiter = &self.queue[index];
            let open = candidates
                .iter()
                .copied()
                .filter(|&device| !blocked[device as usize])
                .filter(|&device| {
                    waiter.purpose != Purpose::Weights || self.loading_on(device).is_none()
                })
                .map(|device| Candidate {
                    index: device,
                    free: self.free_bytes(device as usize),
                    leases: self.lease_count(device),
                });
            match best_fit(open, waiter.bytes) {
                Some(device) => {
                    let waiter = self.queue.remove(index);
                    self.grant(waiter, device, now);
                }
                None => {
                    let waiter_index = index;
                    self.request_revocations(waiter_index, now);
                    for device in candidates {
                        blocked[device as usize] = true;
                    }
                    index += 1;
                }
            }
        }
    }

    fn grant(&mut self, waiter: Waiter, device: u32, now: Instant) {
        let lease = LeaseEntry {
            id: uuid::Uuid::new_v4().to_string(),
            session_id: Some(waiter.session_id.clone()),
            holder: self.sessions[&waiter.session_id].holder.clone(),
            device,
            granted: waiter.bytes,
            measured: 0,
            phase: match waiter.purpose {
                Purpose::Weights => Phase::Loading,
                Purpose::Peak | Purpose::Work => Phase::Active,
            },
            priority: waiter.priority,
            purpose: waiter.purpose,
            model_key: waiter.model_key.clone(),
            granted_at: now,
            last_used: now,
            from_estimate: waiter.from_estimate,
            reclaimed: false,
            orphaned_until: None,
            unresponsive_since: None,
            releasing: None,
            reported_use: None,
        };
        let view = self.view(&lease, now);
        let lease_id = lease.id.clone();
        self.leases.insert(lease_id.clone(), lease);
        self.changed();
        // A caller that left before the grant gets nothing booked: the service
        // hands an answer nobody takes back to `discard_undelivered`.
        self.outgoing.push(Outgoing::Answer {
            waiter: waiter.id,
            lease: view.clone(),
        });
        self.outgoing.push(Outgoing::Event {
            session_id: waiter.session_id.clone(),
            event: SessionEvent::Granted(view),
        });
        self.notices.push(Notice::Granted {
            lease: lease_id,
            bytes: waiter.bytes,
            device,
        });
    }

    /// Asks lower-priority idle holders to give memory back so that the waiter at
    /// `index` can fit, unless revocations already under way will free enough. The
    /// least recently used idle leases go first, on the device where the stalest
    /// ones would be enough (`revocation`); busy leases are never asked.
    fn request_revocations(&mut self, index: usize, now: Instant) {
        let waiter = &self.queue[index];
        let (priority, bytes) = (waiter.priority, waiter.bytes);
        let candidates: Vec<u32> = match waiter.device {
            Some(device) => vec![device],
            None => (0..self.devices.len() as u32).collect(),
        };
        let mut plans = Vec::new();
        for device in candidates {
            let free = self.free_bytes(device as usize);
            let pending: u64 = self
                .leases
                .values()
                .filter(|lease| lease.device == device)
                .filter(|lease| {
                    matches!(lease.phase, Phase::Revoking { .. }) || lease.releasing.is_some()
                })
                .map(|lease| lease.granted)
                .sum();
            if free + pending >= bytes {
                return; // enough is already on its way back
            }
            let revocable: Vec<revocation::Revocable> = self
                .leases
                .values()
                .filter(|lease| lease.device == device && lease.priority < priority)
                .filter(|lease| lease.phase == Phase::Active)
                .filter(|lease| {
                    lease.releasing.is_none()
                        && lease.orphaned_until.is_none()
                        && lease.unresponsive_since.is_none()
                })
                .filter(|lease| {
                    let session = lease
                        .session_id
                        .as_ref()
                        .and_then(|id| self.sessions.get(id));
                    session.is_some_and(|session| !session.busy.contains(&lease.id))
                })
                .map(|lease| revocation::Revocable {
                    id: lease.id.clone(),
                    bytes: lease.granted,
                    priority: lease.priority,
                    last_used: lease.last_used,
                })
                .collect();
            plans.extend(revocation::plan(device, free + pending, bytes, revocable));
        }
        let Some(plan) = revocation::pick(plans) else {
            return; // revoking would not be enough anywhere
        };
        let deadline = now + self.config.revoke_deadline;
        for lease_id in plan.leases {
            let lease = self.leases.get_mut(&lease_id).expect("chosen from the map");
            lease.phase = Phase::Revoking {
                deadline,
                overdue: false,
            };
            let holder = lease.holder.name.clone();
            if let Some(session_id) = lease
                .session_id
                .as_ref()
                .filter(|id| self.sessions.contains_key(*id))
            {
                self.outgoing.push(Outgoing::Event {
                    session_id: session_id.clone(),
                    event: SessionEvent::Revoke {
                        lease_id: lease_id.clone(),
                        deadline: self.config.revoke_deadline,
                        reason: format!(
                            "a {priority:?}-priority request needs {bytes} bytes; this lease is the least recently used"
                        ),
                    },
                });
            }
            self.notices.push(Notice::Revoked {
                lease: lease_id,
                holder,
            });
        }
        self.changed();
    }

    // ---- time and measurement ----

    /// What each holder process holds, for a simulated inventory to report: what
    /// the holder last said each lease reached, or its grant if it never said.
    pub fn held_bytes(&self) -> Vec<HeldBytes> {
        self.leases
            .values()
            .filter(|lease| lease.releasing.is_none())
            .map(|lease| HeldBytes {
                device_index: lease.device,
                pid: lease.holder.pid,
                bytes: lease.reported_use.unwrap_or(lease.granted),
            })
            .collect()
    }

    /// Takes in a fresh measurement: external usage, and which releases are confirmed.
    pub fn observe(&mut self, usage: Vec<DeviceUsage>, now: Instant) {
        for (book, usage) in self.devices.iter_mut().zip(usage) {
            book.usage = usage;
        }
        self.check_overruns(now);
        let memory_gone: Vec<String> = self
            .leases
            .values()
            .filter(|lease| lease.unresponsive_since.is_some() && lease.releasing.is_none())
            .filter(|lease| self.process_usage(lease.device, lease.holder.pid) == 0)
            .map(|lease| lease.id.clone())
            .collect();
        for lease in memory_gone {
            self.free_unresponsive(&lease, "its memory is gone", now);
        }
        for index in 0..self.devices.len() {
            let external = self.external_usage(index as u32);
            if self.devices[index].external != external {
                self.devices[index].external = external;
                self.changed();
            }
        }
        let confirmed: Vec<String> = self
            .leases
            .values()
            .filter(|lease| lease.releasing.is_some())
            .filter(|lease| self.release_visible(lease))
            .map(|lease| lease.id.clone())
            .collect();
        for lease in confirmed {
            self.leases.remove(&lease);
            self.notices.push(Notice::ReleaseConfirmed { lease });
            self.changed();
        }
        self.drain_queue(now);
    }

    /// Pids of holders whose leases are unresponsive: the service checks that
    /// their processes still exist (`processes_gone`).
    pub fn unresponsive_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .leases
            .values()
            .filter(|lease| lease.unresponsive_since.is_some() && lease.releasing.is_none())
            .map(|lease| lease.holder.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// These holder processes no longer exist: their unresponsive leases are freed.
    pub fn processes_gone(&mut self, pids: &[u32], now: Instant) {
        let freed: Vec<String> = self
            .leases
            .values()
            .filter(|lease| lease.unresponsive_since.is_some() && lease.releasing.is_none())
            .filter(|lease| pids.contains(&lease.holder.pid))
            .map(|lease| lease.id.clone())
            .collect();
        for lease in freed {
            self.free_unresponsive(&lease, "its process is gone", now);
        }
        self.drain_queue(now);
    }

    fn free_unresponsive(&mut self, lease_id: &str, why: &'static str, now: Instant) {
        self.begin_release(lease_id, now);
        self.notices.push(Notice::UnresponsiveFreed {
            lease: lease_id.to_owned(),
            why,
        });
    }

    /// What the inventory last measured `pid` using on `device`.
    fn process_usage(&self, device: u32, pid: u32) -> u64 {
        self.devices[device as usize]
            .usage
            .processes
            .get(&pid)
            .copied()
            .unwrap_or(0)
    }

    /// Whether the holder of `session_id` still uses device memory under its
    /// leases, as last measured: silent but alive (hung, stopped, swapping).
    fn still_holds_memory(&self, session_id: &str) -> bool {
        self.leases
            .values()
            .filter(|lease| lease.session_id.as_deref() == Some(session_id))
            .filter(|lease| lease.releasing.is_none())
            .any(|lease| self.process_usage(lease.device, lease.holder.pid) > 0)
    }

    /// Measured usage the leases do not cover: processes holding no lease, driver
    /// overhead, and any holder using more than it was granted.
    fn external_usage(&self, device: u32) -> u64 {
        let usage = &self.devices[device as usize].usage;
        let mut booked_by_pid: HashMap<u32, u64> = HashMap::new();
        for lease in self.leases.values().filter(|lease| lease.device == device) {
            *booked_by_pid.entry(lease.holder.pid).or_default() += lease.granted;
        }
        let covered: u64 = booked_by_pid
            .iter()
            .map(|(pid, &booked)| usage.processes.get(pid).copied().unwrap_or(0).min(booked))
            .sum();
        usage.used_bytes.saturating_sub(covered)
    }

    /// A release shows once the holder process uses no more than its other leases
    /// cover, or its usage fell by at least 90% of the lease since it released.
    fn release_visible(&self, lease: &LeaseEntry) -> bool {
        let Some(release) = &lease.releasing else {
            return false;
        };
        let usage = &self.devices[lease.device as usize].usage;
        let now_used = usage.processes.get(&lease.holder.pid).copied().unwrap_or(0);
        let still_held: u64 = self
            .leases
            .values()
            .filter(|other| other.device == lease.device && other.holder.pid == lease.holder.pid)
            .filter(|other| other.releasing.is_none())
            .map(|other| other.granted)
            .sum();
        let dropped = release.usage_at_release.saturating_sub(now_used);
        now_used <= still_held || dropped >= lease.granted / 10 * 9
    }

    /// Advances time: expired sessions, orphans past grace, overdue revocations,
    /// releases never confirmed, stuck loads, and the end of the recovery window.
    pub fn tick(&mut self, now: Instant) {
        let ttl = self.config.session_ttl;
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, session)| now.saturating_duration_since(session.last_heartbeat) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in expired {
            let holder = self.sessions[&session_id].holder.name.clone();
            if self.still_holds_memory(&session_id) {
                self.notices.push(Notice::SessionUnresponsive {
                    session: session_id.clone(),
                    holder,
                });
                self.hang_session(&session_id, now);
            } else {
                self.notices.push(Notice::SessionExpired {
                    session: session_id.clone(),
                    holder,
                });
                self.end_session(&session_id, now);
            }
        }

        let mut to_release = Vec::new();
        let mut unconfirmed = Vec::new();
        for lease in self.leases.values_mut() {
            if lease.orphaned_until.is_some_and(|until| now >= until) {
                to_release.push(lease.id.clone());
            }
            if lease
                .releasing
                .as_ref()
                .is_some_and(|release| now >= release.deadline)
            {
                unconfirmed.push((lease.id.clone(), lease.holder.name.clone()));
            }
            if let Phase::Revoking { deadline, overdue } = &mut lease.phase
                && now >= *deadline
                && !*overdue
                && lease.releasing.is_none()
            {
                *overdue = true;
                self.notices.push(Notice::RevokeOverdue {
                    lease: lease.id.clone(),
                    holder: lease.holder.name.clone(),
                });
            }
            if lease.is_loading()
                && now.saturating_duration_since(lease.granted_at) >= self.config.loading_timeout
            {
                lease.phase = Phase::Active;
                self.notices.push(Notice::LoadingTimedOut {
                    lease: lease.id.clone(),
                });
            }
        }
        for lease in to_release {
            self.begin_release(&lease, now);
            self.notices.push(Notice::OrphansReleased { lease });
        }
        for (lease, holder) in unconfirmed {
            self.leases.remove(&lease);
            self.unconfirmed_releases += 1;
            self.notices
                .push(Notice::ReleaseUnconfirmed { lease, holder });
            self.changed();
        }
        self.drain_queue(now);
    }

    // ---- status ----

    pub fn status(&self, now: Instant) -> StatusSnapshot {
        let devices = self
            .devices
            .iter()
            .enumerate()
            .map(|(index, book)| {
                let device = index as u32;
                DeviceView {
                    index: book.info.index,
                    uuid: book.info.uuid.clone(),
                    name: book.info.name.clone(),
                    total_bytes: book.info.total_bytes,
                    used_bytes: book.usage.used_bytes,
                    reserve_bytes: self.config.reserve_bytes,
                    leased_bytes: self.leased_on(device),
                    measured_bytes: self
                        .leases
                        .values()
                        .filter(|lease| lease.device == device)
                        .map(|lease| lease.measured)
                        .sum(),
                    external_bytes: book.external,
                    free_for_lease_bytes: self.free_bytes(index),
                    loading_lease_id: self.loading_on(device).map(|lease| lease.id.clone()),
                }
            })
            .collect();
        let mut leases: Vec<LeaseView> = self
            .leases
            .values()
            .map(|lease| self.view(lease, now))
            .collect();
        leases.sort_by(|a, b| {
            b.age_ms
                .cmp(&a.age_ms)
                .then_with(|| a.lease_id.cmp(&b.lease_id))
        });
        let queue = self
            .queue
            .iter()
            .enumerate()
            .map(|(position, waiter)| QueuedView {
                position: position as u32 + 1,
                session_id: waiter.session_id.clone(),
                holder: self
                    .sessions
                    .get(&waiter.session_id)
                    .map(|s| s.holder.clone()),
                bytes: waiter.bytes,
                priority: waiter.priority,
                model_key: waiter.model_key.clone(),
                waited_ms: millis(now.saturating_duration_since(waiter.enqueued_at)),
                wait_left_ms: millis(waiter.wait_until.saturating_duration_since(now)),
            })
            .collect();
        let mut sessions: Vec<SessionView> = self
            .sessions
            .iter()
            .map(|(id, session)| SessionView {
                session_id: id.clone(),
                holder: session.holder.clone(),
                last_heartbeat_ms_ago: millis(
                    now.saturating_duration_since(session.last_heartbeat),
                ),
                lease_count: self
                    .leases
                    .values()
                    .filter(|lease| lease.session_id.as_deref() == Some(id))
                    .count() as u32,
            })
            .collect();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        StatusSnapshot {
            devices,
            leases,
            queue,
            sessions,
            recovery_window_left_ms: millis(self.recovery_ends_at.saturating_duration_since(now)),
            measured_estimates: self.estimates.clone(),
            unconfirmed_releases: self.unconfirmed_releases,
            overruns: self.overrun_views(now),
        }
    }

    /// A lease as status and replies show it, with its device's uuid.
    fn view(&self, lease: &LeaseEntry, now: Instant) -> LeaseView {
        let uuid = self
            .devices
            .get(lease.device as usize)
            .map_or("", |device| device.info.uuid.as_str());
        lease.view(uuid, now)
    }

    /// Checks the books: granted bytes never exceed what a device can lease, and
    /// every lease belongs to a live session, waits out its grace, or is releasing.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (index, device) in self.devices.iter().enumerate() {
            let leased = self.leased_on(index as u32);
            let capacity = device
                .info
                .total_bytes
                .saturating_sub(self.config.reserve_bytes);
            if leased > capacity {
                return Err(format!(
                    "device {index}: {leased} leased > {capacity} leasable"
                ));
            }
            // Single flight binds what this ledger grants; loads reclaimed after a
            // restart were already running and are booked as they are.
            let granted_loading = self
                .leases
                .values()
                .filter(|lease| {
                    lease.device == index as u32 && lease.is_loading() && !lease.reclaimed
                })
                .count();
            if granted_loading > 1 {
                return Err(format!(
                    "device {index}: {granted_loading} granted leases loading at once"
                ));
            }
        }
        for lease in self.leases.values() {
            let owned = lease
                .session_id
                .as_ref()
                .is_some_and(|id| self.sessions.contains_key(id));
            let waiting = lease.orphaned_until.is_some() || lease.unresponsive_since.is_some();
            if !(owned || waiting || lease.releasing.is_some()) {
                return Err(format!("lease {} is owned by nobody", lease.id));
            }
        }
        Ok(())
    }

    /// Ids of the leases that are booked and not on their way out.
    pub fn live_lease_ids(&self) -> Vec<String> {
        self.leases
            .values()
            .filter(|lease| lease.releasing.is_none())
            .map(|lease| lease.id.clone())
            .collect()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }
}

fn unknown_session(session_id: &str) -> BrokerError {
    if session_id.is_empty() {
        BrokerError::invalid(
            "session_id",
            "required: open a session with OpenSession first",
        )
    } else {
        BrokerError::NotFound(format!(
            "no session {session_id}: open one with OpenSession"
        ))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn signed_ms_until(at: Instant, now: Instant) -> i64 {
    if at >= now {
        i64::try_from((at - now).as_millis()).unwrap_or(i64::MAX)
    } else {
        -i64::try_from((now - at).as_millis()).unwrap_or(i64::MAX)
    }
}
