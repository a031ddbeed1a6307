//! The ledger's vocabulary in plain Rust: what holders ask for, what the books say,
//! and what the ledger wants delivered. The service converts these to and from the
//! wire (`convert.rs`); nothing here knows about gRPC.

use std::collections::HashMap;
use std::time::Duration;

/// The priority of a request, highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low = 1,
    Normal = 2,
    High = 3,
}

/// What a lease is for; only weights load, so only they are single-flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Weights,
    /// Short-lived headroom for one input larger than the work lease.
    Peak,
    /// Working memory held beside the weights while the model serves.
    Work,
}

/// One running model-service process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    /// Unique per process start: tells a reconnect from a new holder.
    pub instance_id: String,
    pub pid: u32,
    pub host: String,
}

/// A lease a holder asserts it still holds from an earlier session. Terms this
/// broker cannot read are `None`; such a claim is never re-created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    pub lease_id: String,
    pub device_uuid: String,
    pub bytes: i64,
    pub committed: bool,
    pub priority: Option<Priority>,
    pub purpose: Option<Purpose>,
    pub model_key: String,
}

/// What happened to one reclaimed lease after a reconnect or a broker restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimOutcome {
    pub lease_id: String,
    pub accepted: bool,
    /// Why a reclaim was refused; empty when accepted.
    pub reason: String,
}

/// Where a lease is in its life, as status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Loading,
    Active,
    Revoking,
    Releasing,
    Orphaned,
    /// The holder went silent while its process still uses the memory (hung or
    /// stopped): booked until the memory or the process is gone, or it reclaims.
    Unresponsive,
}

/// One lease as the books show it at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub lease_id: String,
    /// None while orphaned.
    pub session_id: Option<String>,
    pub holder: Holder,
    pub device_index: u32,
    pub device_uuid: String,
    pub granted_bytes: u64,
    pub measured_bytes: u64,
    pub state: LeaseState,
    pub priority: Priority,
    pub purpose: Purpose,
    pub model_key: String,
    pub age_ms: u64,
    /// Time left before a revocation is overdue (negative once past); 0 unless revoking.
    pub revoke_deadline_in_ms: i64,
    pub revoke_overdue: bool,
    pub from_measured_estimate: bool,
    /// Time since its holder last used it (0 unless committed and owned).
    pub idle_ms: u64,
    /// The device bytes its holder last reported it reaching; None until it reports.
    pub used_bytes: Option<u64>,
}

/// One device's books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub reserve_bytes: u64,
    pub leased_bytes: u64,
    pub measured_bytes: u64,
    pub external_bytes: u64,
    pub free_for_lease_bytes: u64,
    /// The lease loading on this device now (single flight).
    pub loading_lease_id: Option<String>,
}

/// A request waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedView {
    /// 1-based.
    pub position: u32,
    pub session_id: String,
    pub holder: Option<Holder>,
    pub bytes: u64,
    pub priority: Priority,
    pub model_key: String,
    pub waited_ms: u64,
    pub wait_left_ms: u64,
}

/// One open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session_id: String,
    pub holder: Holder,
    pub last_heartbeat_ms_ago: u64,
    pub lease_count: u32,
}

/// Everything the books hold, now. Leases oldest first, sessions by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub devices: Vec<DeviceView>,
    pub leases: Vec<LeaseView>,
    pub queue: Vec<QueuedView>,
    pub sessions: Vec<SessionView>,
    pub recovery_window_left_ms: u64,
    pub measured_estimates: HashMap<String, u64>,
    pub unconfirmed_releases: u64,
    pub overruns: Vec<super::OverrunView>,
}

/// Something a holder must be told on its session stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A queued request was granted (the Acquire call is answered as well).
    Granted(LeaseView),
    /// Give this lease back before `deadline`.
    Revoke {
        lease_id: String,
        deadline: Duration,
        reason: String,
    },
}

/// What the ledger wants delivered; the service owns the channels and drains
/// these after every operation (`Ledger::take_outgoing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Answer the queued Acquire call `waiter` with this lease. If nobody is
    /// listening any more, the service gives it back (`Ledger::discard_undelivered`).
    Answer { waiter: u64, lease: LeaseView },
    /// Tell the holder of `session_id`.
    Event {
        session_id: String,
        event: SessionEvent,
    },
    /// The queued request `waiter` left the queue without a grant.
    WaiterGone { waiter: u64 },
    /// The session is over (stream closed, or heartbeats stopped): close its stream.
    SessionEnded { session_id: String },
}

/// What an Acquire asks for, validated by the service layer's conversion.
#[derive(Debug, Clone)]
pub struct AcquireSpec {
    pub session_id: String,
    pub bytes: i64,
    pub device: Option<u32>,
    pub priority: Priority,
    pub purpose: Purpose,
    pub wait: Duration,
    pub model_key: String,
    pub use_measured_estimate: bool,
}

/// The answer to an Acquire: granted now, or queued; a queued request's grant
/// comes as [`Outgoing::Answer`] for the same waiter id.
#[derive(Debug)]
pub enum AcquireOutcome {
    Granted(LeaseView),
    Queued { waiter: u64 },
}

/// Things worth a log line and a metric, drained by the service after each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Granted {
        lease: String,
        bytes: u64,
        device: u32,
    },
    Revoked {
        lease: String,
        holder: String,
    },
    RevokeOverdue {
        lease: String,
        holder: String,
    },
    ReleaseConfirmed {
        lease: String,
    },
    ReleaseUnconfirmed {
        lease: String,
        holder: String,
    },
    SessionExpired {
        session: String,
        holder: String,
    },
    /// A session missed its heartbeats but its process still uses device memory.
    SessionUnresponsive {
        session: String,
        holder: String,
    },
    /// An unresponsive lease was let go: its memory or its process is gone.
    UnresponsiveFreed {
        lease: String,
        why: &'static str,
    },
    OrphansReleased {
        lease: String,
    },
    LoadingTimedOut {
        lease: String,
    },
    /// A holder process started using more of a device than its leases grant, or
    /// (`lease` set) reported one lease's allocations past its grant.
    Overrun {
        holder: String,
        pid: u32,
        device: u32,
        lease: Option<String>,
        granted: u64,
        used: u64,
        model_keys: Vec<String>,
    },
    /// That holder is back within its leases (or gone).
    OverrunEnded {
        holder: String,
        pid: u32,
        device: u32,
        lease: Option<String>,
        lasted: Duration,
    },
}
