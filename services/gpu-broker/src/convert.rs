//! The wire edge: `plenum.broker.v1` messages to the ledger's plain types and back.
//! Enum values the broker does not know become `INVALID_ARGUMENT` naming the field.

use plenum_proto::broker::v1 as pb;

use crate::error::BrokerError;
use crate::ledger::{
    DeviceView, Holder, LeaseClaim, LeaseState, LeaseView, OverrunView, Priority, Purpose,
    QueuedView, ReclaimOutcome, SessionEvent, SessionView, StatusSnapshot,
};

impl Priority {
    /// `PRIORITY_UNSPECIFIED` is normal.
    pub fn from_proto(value: i32) -> Result<Self, BrokerError> {
        match pb::Priority::try_from(value) {
            Ok(pb::Priority::Low) => Ok(Self::Low),
            Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Ok(Self::Normal),
            Ok(pb::Priority::High) => Ok(Self::High),
            Err(_) => Err(BrokerError::invalid(
                "priority",
                format!("unknown priority {value}"),
            )),
        }
    }

    pub fn to_proto(self) -> pb::Priority {
        match self {
            Self::Low => pb::Priority::Low,
            Self::Normal => pb::Priority::Normal,
            Self::High => pb::Priority::High,
        }
    }
}

impl Purpose {
    /// `LEASE_PURPOSE_UNSPECIFIED` is weights.
    pub fn from_proto(value: i32) -> Result<Self, BrokerError> {
        match pb::LeasePurpose::try_from(value) {
            Ok(pb::LeasePurpose::Unspecified | pb::LeasePurpose::Weights) => Ok(Self::Weights),
            Ok(pb::LeasePurpose::Peak) => Ok(Self::Peak),
            Ok(pb::LeasePurpose::Work) => Ok(Self::Work),
            Err(_) => Err(BrokerError::invalid(
                "purpose",
                format!("unknown purpose {value}"),
            )),
        }
    }

    pub fn to_proto(self) -> pb::LeasePurpose {
        match self {
            Self::Weights => pb::LeasePurpose::Weights,
            Self::Peak => pb::LeasePurpose::Peak,
            Self::Work => pb::LeasePurpose::Work,
        }
    }
}

/// The holder of a `hello`, which must name one.
pub fn holder_from_hello(holder: Option<pb::Holder>) -> Result<Holder, BrokerError> {
    let holder = holder.ok_or_else(|| BrokerError::invalid("hello.holder", "required"))?;
    Ok(holder_from_proto(holder))
}

pub fn holder_from_proto(holder: pb::Holder) -> Holder {
    Holder {
        name: holder.name,
        instance_id: holder.instance_id,
        pid: holder.pid,
        host: holder.host,
    }
}

pub fn holder_to_proto(holder: &Holder) -> pb::Holder {
    pb::Holder {
        name: holder.name.clone(),
        instance_id: holder.instance_id.clone(),
        pid: holder.pid,
        host: holder.host.clone(),
    }
}

/// A claim from a reconnecting holder; terms this broker cannot read stay `None`
/// and the ledger refuses to re-create such a lease.
pub fn claim_from_proto(claim: pb::LeaseClaim) -> LeaseClaim {
    LeaseClaim {
        priority: Priority::from_proto(claim.priority).ok(),
        purpose: Purpose::from_proto(claim.purpose).ok(),
        lease_id: claim.lease_id,
        device_uuid: claim.device_uuid,
        bytes: claim.bytes,
        committed: claim.committed,
        model_key: claim.model_key,
    }
}

pub fn reclaim_to_proto(outcome: ReclaimOutcome) -> pb::ReclaimResult {
    pb::ReclaimResult {
        lease_id: outcome.lease_id,
        accepted: outcome.accepted,
        reason: outcome.reason,
    }
}

pub fn state_to_proto(state: LeaseState) -> pb::LeaseState {
    match state {
        LeaseState::Loading => pb::LeaseState::Loading,
        LeaseState::Active => pb::LeaseState::Active,
        LeaseState::Revoking => pb::LeaseState::Revoking,
        LeaseState::Releasing => pb::LeaseState::Releasing,
        LeaseState::Orphaned => pb::LeaseState::Orphaned,
        LeaseState::Unresponsive => pb::LeaseState::Unresponsive,
    }
}

pub fn lease_to_proto(lease: LeaseView) -> pb::Lease {
    pb::Lease {
        lease_id: lease.lease_id,
        session_id: lease.session_id.unwrap_or_default(),
        holder: Some(holder_to_proto(&lease.holder)),
        device_index: lease.device_index,
        device_uuid: lease.device_uuid,
        granted_bytes: lease.granted_bytes,
        measured_bytes: lease.measured_bytes,
        state: state_to_proto(lease.state) as i32,
        priority: lease.priority.to_proto() as i32,
        purpose: lease.purpose.to_proto() as i32,
        model_key: lease.model_key,
        age_ms: lease.age_ms,
        revoke_deadline_in_ms: lease.revoke_deadline_in_ms,
        revoke_overdue: lease.revoke_overdue,
        from_measured_estimate: lease.from_measured_estimate,
        idle_ms: lease.idle_ms,
        used_bytes: lease.used_bytes,
    }
}

pub fn event_to_proto(event: SessionEvent) -> pb::SessionEvent {
    let kind = match event {
        SessionEvent::Granted(lease) => pb::session_event::Kind::Granted(pb::Granted {
            lease: Some(lease_to_proto(lease)),
        }),
        SessionEvent::Revoke {
            lease_id,
            deadline,
            reason,
        } => pb::session_event::Kind::Revoke(pb::Revoke {
            lease_id,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            reason,
        }),
    };
    pb::SessionEvent { kind: Some(kind) }
}

fn device_to_proto(device: DeviceView) -> pb::Device {
    pb::Device {
        index: device.index,
        uuid: device.uuid,
        name: device.name,
        total_bytes: device.total_bytes,
        used_bytes: device.used_bytes,
        reserve_bytes: device.reserve_bytes,
        leased_bytes: device.leased_bytes,
        measured_bytes: device.measured_bytes,
        external_bytes: device.external_bytes,
        free_for_lease_bytes: device.free_for_lease_bytes,
        loading_lease_id: device.loading_lease_id.unwrap_or_default(),
    }
}

fn queued_to_proto(queued: QueuedView) -> pb::QueuedRequest {
    pb::QueuedRequest {
        position: queued.position,
        session_id: queued.session_id,
        holder: queued.holder.as_ref().map(holder_to_proto),
        bytes: queued.bytes,
        priority: queued.priority.to_proto() as i32,
        model_key: queued.model_key,
        waited_ms: queued.waited_ms,
        wait_left_ms: queued.wait_left_ms,
    }
}

fn session_to_proto(session: SessionView) -> pb::Session {
    pb::Session {
        session_id: session.session_id,
        holder: Some(holder_to_proto(&session.holder)),
        last_heartbeat_ms_ago: session.last_heartbeat_ms_ago,
        lease_count: session.lease_count,
    }
}

/// The books as `Status` answers them; the service adds who it is and what it measures.
pub fn status_to_proto(
    status: StatusSnapshot,
    broker_instance_id: &str,
    inventory: &str,
) -> pb::StatusResponse {
    pb::StatusResponse {
        devices: status.devices.into_iter().map(device_to_proto).collect(),
        leases: status.leases.into_iter().map(lease_to_proto).collect(),
        queue: status.queue.into_iter().map(queued_to_proto).collect(),
        sessions: status.sessions.into_iter().map(session_to_proto).collect(),
        recovery_window_left_ms: status.recovery_window_left_ms,
        measured_estimates: status.measured_estimates,
        broker_instance_id: broker_instance_id.to_owned(),
        inventory: inventory.to_owned(),
        unconfirmed_releases: status.unconfirmed_releases,
        overruns: status.overruns.into_iter().map(overrun_to_proto).collect(),
    }
}

fn overrun_to_proto(overrun: OverrunView) -> pb::Overrun {
    pb::Overrun {
        holder: Some(holder_to_proto(&overrun.holder)),
        device_index: overrun.device_index,
        lease_id: overrun.lease_id.unwrap_or_default(),
        granted_bytes: overrun.granted_bytes,
        used_bytes: overrun.used_bytes,
        model_keys: overrun.model_keys,
        since_ms: overrun.since_ms,
    }
}
