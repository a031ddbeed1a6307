//! The gateway's one clap struct; every flag is also a `PLENUM_*` variable.

use std::time::Duration;

use plenum_runtime::config::{ImageLimitsArgs, ServerArgs, TelemetryArgs};
use plenum_runtime::service::{Service, ServiceConfig};

/// plenum-gateway: detect symbols, read the tag beside each, with every backend
/// behind its own load shed and concurrency limit.
#[derive(Debug, clap::Parser)]
#[command(name = "plenum-gateway", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Detector replicas, comma-separated (balanced with power-of-two-choices):
    /// `http://host:port` is one replica, `dns://host:port` one per address the
    /// name resolves to, re-resolved every --resolve-interval.
    #[arg(
        long,
        env = "PLENUM_DETECTOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7002"
    )]
    pub detector: Vec<String>,
    /// OCR replicas, comma-separated, in the same forms as --detector.
    #[arg(
        long,
        env = "PLENUM_OCR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7003"
    )]
    pub ocr: Vec<String>,
    /// How often `dns://` backends are resolved again; replicas join and leave
    /// the balancer as the answer changes. A failed resolution keeps the last set.
    #[arg(long, env = "PLENUM_RESOLVE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub resolve_interval: Duration,
    /// Calls in flight to the detector (all replicas together); one more is shed.
    #[arg(long, env = "PLENUM_DETECTOR_CONCURRENCY", default_value_t = 5)]
    pub detector_concurrency: usize,
    /// Calls in flight to OCR (all replicas together); one more is shed.
    #[arg(long, env = "PLENUM_OCR_CONCURRENCY", default_value_t = 5)]
    pub ocr_concurrency: usize,
    /// Longest a detector call may take, whatever the client's deadline.
    #[arg(long, env = "PLENUM_DETECTOR_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub detector_timeout: Duration,
    /// Longest an OCR call may take; past it the symbols come back without tags.
    #[arg(long, env = "PLENUM_OCR_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ocr_timeout: Duration,
    /// How long a backend replica gets no new calls once ejected: after a call to
    /// it failed at the transport level, or after --eject-after-timeouts calls.
    #[arg(long, env = "PLENUM_EJECT_FOR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub eject_for: Duration,
    /// Calls in a row to one backend replica that reach their deadline unanswered
    /// (a hung process) before it is ejected like a failed one; 0 ejects on
    /// transport errors only.
    #[arg(long, env = "PLENUM_EJECT_AFTER_TIMEOUTS", default_value_t = 3)]
    pub eject_after_timeouts: u32,
    /// Analyze calls worked on at once (streamed images included); one more is
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLENUM_MAX_CONCURRENT_ANALYZE", default_value_t = 64)]
    pub max_concurrent_analyze: usize,
    /// Images of one AnalyzeStream worked on at once; beyond, the gateway stops reading.
    #[arg(long, env = "PLENUM_STREAM_IN_FLIGHT", default_value_t = 4)]
    pub stream_in_flight: usize,
    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "PLENUM_MAX_REQUEST_BYTES", default_value = "24MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    pub max_request_bytes: u64,
    #[command(flatten)]
    pub image_limits: ImageLimitsArgs,
}

/// The service's name and default addresses.
pub const SERVICE: Service = Service {
    name: "plenum-gateway",
    listen: "127.0.0.1:7000",
    metrics_listen: "127.0.0.1:9100",
};

impl ServiceConfig for Config {
    fn shared(&self) -> (&ServerArgs, &TelemetryArgs) {
        (&self.server, &self.telemetry)
    }
}
