//! `plenum_broker_*` metrics: the books per device and per holder, the queue, and
//! counters for the events an operator must see (revocations ignored, releases
//! the inventory never confirmed).

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use plenum_proto::broker::v1 as pb;

use crate::ledger::Notice;

#[derive(Clone)]
pub struct BrokerMetrics {
    registry: Registry,
    device_total: IntGaugeVec,
    device_used: IntGaugeVec,
    device_granted: IntGaugeVec,
    device_measured: IntGaugeVec,
    device_free: IntGaugeVec,
    device_external: IntGaugeVec,
    holder_granted: IntGaugeVec,
    holder_measured: IntGaugeVec,
    leases: IntGaugeVec,
    queue_length: IntGauge,
    sessions: IntGauge,
    unresponsive_holders: IntGauge,
    recovery_window_left_ms: IntGauge,
    grants: IntCounter,
    pub(crate) refusals: IntCounter,
    revocations: IntCounter,
    revocations_overdue: IntCounter,
    releases_confirmed: IntCounter,
    releases_unconfirmed: IntCounter,
    sessions_expired: IntCounter,
    sessions_unresponsive: IntCounter,
    overruns: IntCounter,
    holder_overrun: IntGaugeVec,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("unique metric");
    gauge
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("unique metric");
    gauge
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("unique metric");
    counter
}

impl BrokerMetrics {
    pub fn new() -> Self {
        Self::in_registry(Registry::new())
    }

    /// The broker's series, registered in `r` (the one `/metrics` serves).
    pub fn in_registry(r: Registry) -> Self {
        let device = &["device", "name"];
        Self {
            device_total: gauge_vec(
                &r,
                "plenum_broker_device_total_bytes",
                "Device memory",
                device,
            ),
            device_used: gauge_vec(
                &r,
                "plenum_broker_device_used_bytes",
                "Device memory in use, measured",
                device,
            ),
            device_granted: gauge_vec(
                &r,
                "plenum_broker_device_granted_bytes",
                "Bytes granted to leases",
                device,
            ),
            device_measured: gauge_vec(
                &r,
                "plenum_broker_device_measured_bytes",
                "Bytes holders committed as measured",
                device,
            ),
            device_free: gauge_vec(
                &r,
                "plenum_broker_device_free_bytes",
                "Bytes still available for leases",
                device,
            ),
            device_external: gauge_vec(
                &r,
                "plenum_broker_device_external_bytes",
                "Measured usage no lease covers",
                device,
            ),
            holder_granted: gauge_vec(
                &r,
                "plenum_broker_holder_granted_bytes",
                "Bytes granted per holder",
                &["holder", "device"],
            ),
            holder_measured: gauge_vec(
                &r,
                "plenum_broker_holder_measured_bytes",
                "Bytes committed per holder",
                &["holder", "device"],
            ),
            leases: gauge_vec(&r, "plenum_broker_leases", "Leases by state", &["state"]),
            queue_length: gauge(&r, "plenum_broker_queue_length", "Acquire requests waiting"),
            sessions: gauge(&r, "plenum_broker_sessions", "Open holder sessions"),
            unresponsive_holders: gauge(
                &r,
                "plenum_broker_unresponsive_holders",
                "Holders silent past the session TTL whose processes still hold their leased memory",
            ),
            recovery_window_left_ms: gauge(
                &r,
                "plenum_broker_recovery_window_left_ms",
                "Time left before new grants after a restart",
            ),
            grants: counter(&r, "plenum_broker_grants_total", "Leases granted"),
            refusals: counter(
                &r,
                "plenum_broker_refusals_total",
                "Acquire calls refused for lack of VRAM",
            ),
            revocations: counter(
                &r,
                "plenum_broker_revocations_total",
                "Revocations sent to holders",
            ),
            revocations_overdue: counter(
                &r,
                "plenum_broker_revocations_overdue_total",
                "Revocations a holder let pass its deadline",
            ),
            releases_confirmed: counter(
                &r,
                "plenum_broker_releases_confirmed_total",
                "Releases the inventory confirmed",
            ),
            releases_unconfirmed: counter(
                &r,
                "plenum_broker_releases_unconfirmed_total",
                "Releases never confirmed within the bounded wait",
            ),
            sessions_expired: counter(
                &r,
                "plenum_broker_sessions_expired_total",
                "Sessions ended for missed heartbeats",
            ),
            sessions_unresponsive: counter(
                &r,
                "plenum_broker_sessions_unresponsive_total",
                "Sessions that missed their heartbeats while their process still held device memory",
            ),
            overruns: counter(
                &r,
                "plenum_broker_overruns_total",
                "Times a holder process started using more of a device than its leases grant",
            ),
            holder_overrun: gauge_vec(
                &r,
                "plenum_broker_holder_overrun_bytes",
                "Measured usage above the holder's leases, while it overruns them",
                &["holder", "device"],
            ),
            registry: r,
        }
    }

    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    pub(crate) fn record(&self, notice: &Notice) {
        match notice {
            Notice::Granted { .. } => self.grants.inc(),
            Notice::Revoked { .. } => self.revocations.inc(),
            Notice::RevokeOverdue { .. } => self.revocations_overdue.inc(),
            Notice::ReleaseConfirmed { .. } => self.releases_confirmed.inc(),
            Notice::ReleaseUnconfirmed { .. } => self.releases_unconfirmed.inc(),
            Notice::SessionExpired { .. } => self.sessions_expired.inc(),
            Notice::SessionUnresponsive { .. } => {
                self.sessions_expired.inc();
                self.sessions_unresponsive.inc();
            }
            Notice::Overrun { .. } => self.overruns.inc(),
            Notice::OrphansReleased { .. }
            | Notice::LoadingTimedOut { .. }
            | Notice::UnresponsiveFreed { .. }
            | Notice::OverrunEnded { .. } => {}
        }
    }

    /// Sets every gauge from a status snapshot.
    pub(crate) fn update(&self, status: &pb::StatusResponse) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for device in &status.devices {
            let labels = [&device.index.to_string() as &str, &device.name];
            self.device_total
                .with_label_values(&labels)
                .set(gauge(device.total_bytes));
            self.device_used
                .with_label_values(&labels)
                .set(gauge(device.used_bytes));
            self.device_granted
                .with_label_values(&labels)
                .set(gauge(device.leased_bytes));
            self.device_measured
                .with_label_values(&labels)
                .set(gauge(device.measured_bytes));
            self.device_free
                .with_label_values(&labels)
                .set(gauge(device.free_for_lease_bytes));
            self.device_external
                .with_label_values(&labels)
                .set(gauge(device.external_bytes));
        }
        self.holder_granted.reset();
        self.holder_measured.reset();
        self.leases.reset();
        for lease in &status.leases {
            let holder = lease
                .holder
                .as_ref()
                .map_or("", |holder| holder.name.as_str());
            let labels = [holder, &lease.device_index.to_string() as &str];
            self.holder_granted
                .with_label_values(&labels)
                .add(gauge(lease.granted_bytes));
            self.holder_measured
                .with_label_values(&labels)
                .add(gauge(lease.measured_bytes));
            let state = pb::LeaseState::try_from(lease.state).unwrap_or_default();
            self.leases.with_label_values(&[state_label(state)]).inc();
        }
        self.holder_overrun.reset();
        for overrun in &status.overruns {
            let holder = overrun
                .holder
                .as_ref()
                .map_or("", |holder| holder.name.as_str());
            self.holder_overrun
                .with_label_values(&[holder, &overrun.device_index.to_string() as &str])
                .set(gauge(
                    overrun.used_bytes.saturating_sub(overrun.granted_bytes),
                ));
        }
        self.queue_length.set(status.queue.len() as i64);
        self.sessions.set(status.sessions.len() as i64);
        let unresponsive: std::collections::HashSet<&str> = status
            .leases
            .iter()
            .filter(|lease| lease.state == pb::LeaseState::Unresponsive as i32)
            .filter_map(|lease| lease.holder.as_ref())
            .map(|holder| holder.instance_id.as_str())
            .collect();
        self.unresponsive_holders.set(unresponsive.len() as i64);
        self.recovery_window_left_ms
            .set(gauge(status.recovery_window_left_ms));
    }
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn state_label(state: pb::LeaseState) -> &'static str {
    match state {
        pb::LeaseState::Unspecified => "unspecified",
        pb::LeaseState::Loading => "loading",
        pb::LeaseState::Active => "active",
        pb::LeaseState::Revoking => "revoking",
        pb::LeaseState::Releasing => "releasing",
        pb::LeaseState::Orphaned => "orphaned",
        pb::LeaseState::Unresponsive => "unresponsive",
    }
}
