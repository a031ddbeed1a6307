//! The broker's one clap struct: every flag is also a `PLENUM_*` variable.

use std::time::Duration;

use plenum_runtime::config::{Secret, ServerArgs, TelemetryArgs};
use plenum_runtime::service::{Service, ServiceConfig};

use crate::ledger::LedgerConfig;

/// plenum-broker: grants VRAM leases and checks them against what NVML measures.
#[derive(Debug, clap::Parser)]
#[command(name = "plenum-broker", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Simulated devices instead of NVML, e.g. "GTX 1070:8GiB" (comma-separated for
    /// several; NAME:TOTAL:external=BYTES adds load no lease covers).
    #[arg(long, env = "PLENUM_SIMULATE")]
    pub simulate: Option<String>,
    /// Headroom per device that is never leased (CUDA contexts, fragmentation).
    #[arg(long, env = "PLENUM_RESERVE", default_value = "512MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    pub reserve: u64,
    /// A session with no heartbeat for this long is ended and its leases orphaned.
    #[arg(long, env = "PLENUM_SESSION_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// How long an ended session's leases wait for their holder to reconnect.
    #[arg(long, env = "PLENUM_ORPHAN_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub orphan_grace: Duration,
    /// How long a release waits for the inventory to show the memory freed.
    #[arg(long, env = "PLENUM_RELEASE_CONFIRM_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub release_confirm_timeout: Duration,
    /// How long a holder has to give back a revoked lease before it is reported.
    #[arg(long, env = "PLENUM_REVOKE_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub revoke_deadline: Duration,
    /// After start, only reclaims are granted for this long, so a restart never double-books.
    #[arg(long, env = "PLENUM_RECOVERY_WINDOW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub recovery_window: Duration,
    /// A lease loading for longer than this without a commit stops blocking its device.
    #[arg(long, env = "PLENUM_LOADING_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub loading_timeout: Duration,
    /// A holder process measured using more of a device than its leases grant, by
    /// more than this, is reported as an overrun (warning, metric, status). Default:
    /// 512MiB on NVML, whose per-process usage includes the CUDA context no lease
    /// books; 0 on simulated devices, whose usage is what the holders report.
    #[arg(long, env = "PLENUM_OVERRUN_TOLERANCE", value_parser = plenum_runtime::bytes::parse_bytes)]
    pub overrun_tolerance: Option<u64>,
    /// How often devices are measured.
    #[arg(long, env = "PLENUM_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Shared secret: calls must carry `authorization: Bearer <token>` (health and
    /// reflection stay open).
    #[arg(long, env = "PLENUM_BROKER_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
}

impl Config {
    pub fn ledger(&self) -> LedgerConfig {
        LedgerConfig {
            reserve_bytes: self.reserve,
            session_ttl: self.session_ttl,
            orphan_grace: self.orphan_grace,
            release_confirm_timeout: self.release_confirm_timeout,
            revoke_deadline: self.revoke_deadline,
            recovery_window: self.recovery_window,
            loading_timeout: self.loading_timeout,
            overrun_tolerance: self
                .overrun_tolerance
                .unwrap_or(if self.simulate.is_some() {
                    0
                } else {
                    512 << 20
                }),
            overrun_settle: OVERRUN_SETTLE,
        }
    }
}

/// An overrun ends once its holder has stayed within its leases this long: a
/// model's passes come and go with every request, its overrun should not.
const OVERRUN_SETTLE: Duration = Duration::from_secs(10);

/// Default addresses: gRPC on 7001, metrics on 9101.
/// The service's name and default addresses.
pub const SERVICE: Service = Service {
    name: "plenum-broker",
    listen: "127.0.0.1:7001",
    metrics_listen: "127.0.0.1:9101",
};

impl ServiceConfig for Config {
    fn shared(&self) -> (&ServerArgs, &TelemetryArgs) {
        (&self.server, &self.telemetry)
    }
}
