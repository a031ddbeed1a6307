//! One start-up for every service binary: its flags (with the service's own
//! listen addresses as defaults), logs and traces, the shutdown signal, the
//! metrics endpoint and the bound gRPC listener; then the service's own code
//! runs, and the traces are flushed last.
//!
//! ```ignore
//! fn main() -> anyhow::Result<()> {
//!     plenum_runtime::service::main(&SERVICE, |started: Started<Config>| async move {
//!         run(settings(&started.config), &started.registry, started.listener, started.shutdown).await
//!     })
//! }
//! ```

use std::fmt::Debug;
use std::future::Future;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerArgs, TelemetryArgs, parse_with_defaults};
use crate::listen::Listener;
use crate::{metrics, shutdown, telemetry};

/// A service's name and where it listens unless its flags say otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The binary's name, also the traces' `service.name` (e.g. `plenum-gateway`).
    pub name: &'static str,
    /// Default of `--listen`.
    pub listen: &'static str,
    /// Default of `--metrics-listen`.
    pub metrics_listen: &'static str,
}

/// A service's one clap struct, which flattens the shared groups.
pub trait ServiceConfig: clap::Parser + Debug {
    /// Its `ServerArgs` and `TelemetryArgs`.
    fn shared(&self) -> (&ServerArgs, &TelemetryArgs);
}

/// What the start-up hands the service: its flags, the registry the metrics
/// endpoint serves, the bound listener and the shutdown signal.
pub struct Started<C> {
    pub config: C,
    pub registry: prometheus::Registry,
    pub listener: Listener,
    pub shutdown: CancellationToken,
}

/// The whole of a service's `main`: starts it on a Tokio runtime and runs `serve`.
pub fn main<C, F, Fut>(service: &Service, serve: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(Started<C>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_then(service, serve, |outcome| outcome)
}

/// [`main`], with `exit` given the outcome while the runtime still runs: a model
/// service ends the process there when a model's thread stopped, and that thread
/// may still be using the runtime.
pub fn main_then<C, F, Fut>(
    service: &Service,
    serve: F,
    exit: impl FnOnce(anyhow::Result<()>) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(Started<C>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(start_and_serve(service, serve));
    exit(outcome)
}

async fn start_and_serve<C, F, Fut>(service: &Service, serve: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(Started<C>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = parse_with_defaults(&[
        ("listen", service.listen),
        ("metrics_listen", service.metrics_listen),
    ]);
    let (server, telemetry_args) = config.shared();
    let telemetry = telemetry::init(service.name, telemetry_args)?;
    tracing::info!(?config, "starting {}", service.name);
    let shutdown = shutdown::on_signal();
    let registry = prometheus::Registry::new();
    if let Some(addr) = server.metrics_listen {
        metrics::spawn(addr, registry.clone(), shutdown.clone())
            .await
            .with_context(|| format!("cannot bind metrics on {addr}"))?;
    }
    let listener = server.bind().await?;
    tracing::info!(addr = %listener.local_addr()?, "{} listening", service.name);
    let outcome = serve(Started {
        config,
        registry,
        listener,
        shutdown,
    })
    .await;
    telemetry.shutdown();
    outcome
}
