//! Config groups shared by every binary, flattened into each binary's one clap
//! struct. Every flag is also a `PLENUM_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use plenum_vision::decode::Limits;

use crate::connections::ConnectionLimits;
use crate::listen::{ListenAddr, ListenError, Listener};

/// Where a gRPC server listens and how it stops.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address of the gRPC server: HOST:PORT, or unix:///PATH for a Unix socket
    /// (its folder is created, a stale socket file replaced, the file made mode 0660).
    #[arg(long, env = "PLENUM_LISTEN")]
    pub listen: ListenAddr,
    /// Address of the Prometheus `/metrics` HTTP endpoint.
    #[arg(long, env = "PLENUM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may finish after SIGTERM before the server stops anyway.
    #[arg(long, env = "PLENUM_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub connections: ConnectionLimits,
}

impl ServerArgs {
    /// Binds the gRPC address, with the connection limits of the flags.
    pub async fn bind(&self) -> Result<Listener, ListenError> {
        Ok(Listener::bind(&self.listen)
            .await?
            .with_limits(self.connections))
    }
}

/// How large an image a service accepts: the encoded bytes, and the pixels its
/// header declares (checked before any pixel is decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ImageLimitsArgs {
    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "PLENUM_MAX_IMAGE_BYTES", default_value = "20MiB", value_parser = crate::bytes::parse_bytes)]
    pub max_image_bytes: u64,
    /// Largest image accepted, in pixels (read from its header, before decoding).
    #[arg(long, env = "PLENUM_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
}

impl ImageLimitsArgs {
    /// The decoder's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: usize::try_from(self.max_image_bytes).unwrap_or(usize::MAX),
            max_pixels: self.max_image_pixels,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,plenum_broker=debug`.
    #[arg(long = "log", env = "PLENUM_LOG", default_value = "info")]
    pub log_filter: String,
    /// Log line format.
    #[arg(long, env = "PLENUM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces (e.g. http://collector:4317); no export when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// How a service finds the GPU broker.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerClientArgs {
    /// Broker URL, e.g. http://127.0.0.1:7001 or unix:///run/plenum/broker.sock.
    /// Without it a model service runs on CPU.
    #[arg(long, env = "PLENUM_BROKER")]
    pub broker: Option<String>,
    /// Shared secret sent as `authorization: Bearer <token>` to the broker.
    #[arg(
        long = "broker-token",
        env = "PLENUM_BROKER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,
}

/// A secret from a flag or the environment: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.into()))
    }
}

/// Parses the command line of `T`, with per-binary defaults for shared flags (each
/// service listens on its own port). `defaults` pairs an argument id with a value.
pub fn parse_with_defaults<T: clap::Parser>(defaults: &[(&'static str, &'static str)]) -> T {
    let mut command = T::command();
    for &(id, value) in defaults {
        command = command.mut_arg(id, |arg| arg.default_value(value).required(false));
    }
    let matches = command.get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}
