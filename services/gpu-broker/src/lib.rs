//! The GPU broker: no process loads a model onto a GPU without a lease for the
//! bytes it needs, and the books are checked against what NVML measures.
//!
//! Rooms: [`inventory`] measures the devices, [`ledger`] keeps the books (pure,
//! clock passed in), [`service`] is the gRPC face (`convert` turns the wire into
//! the ledger's types, `delivery` owns the channels to holders), [`metrics`] the
//! Prometheus one.
#![forbid(unsafe_code)]

pub mod config;
mod convert;
mod delivery;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod metrics;
pub mod process;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use plenum_proto::broker::v1::broker_server::BrokerServer;
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::inventory::{Inventory, NoDevices, Nvml, Simulated};
use crate::ledger::{Ledger, LedgerConfig};
use crate::metrics::BrokerMetrics;
use crate::service::{BrokerService, Gauges, Shared, TokenCheck};

/// What a broker needs to run, already resolved from flags.
pub struct BrokerSettings {
    pub ledger: LedgerConfig,
    pub inventory: Arc<dyn Inventory>,
    pub token: Option<Arc<str>>,
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
}

/// Picks the inventory: the simulation when asked for, else NVML, else no devices
/// (every Acquire is then refused and model services run on CPU).
pub fn open_inventory(
    simulate: Option<&str>,
) -> Result<Arc<dyn Inventory>, inventory::InventoryError> {
    if let Some(spec) = simulate {
        let simulated = Simulated::parse(spec)?;
        tracing::info!(devices = ?simulated.devices(), "using simulated GPUs");
        return Ok(Arc::new(simulated));
    }
    match Nvml::open() {
        Ok(nvml) if !nvml.devices().is_empty() => {
            tracing::info!(devices = ?nvml.devices(), "using NVML");
            Ok(Arc::new(nvml))
        }
        Ok(_) => {
            tracing::warn!(
                "NVML found no GPU: running with zero devices; every Acquire is refused so callers use the CPU"
            );
            Ok(Arc::new(NoDevices))
        }
        Err(error) => {
            tracing::warn!(%error, "no NVML: running with zero devices; every Acquire is refused so callers use the CPU (use --simulate to test without a GPU)");
            Ok(Arc::new(NoDevices))
        }
    }
}

/// A broker ready to serve.
pub struct Broker {
    shared: Arc<Shared>,
    settings_token: Option<Arc<str>>,
    poll_interval: Duration,
    drain_timeout: Duration,
    shutdown: CancellationToken,
    metrics: BrokerMetrics,
}

impl Broker {
    pub fn new(settings: BrokerSettings, shutdown: CancellationToken) -> Self {
        Self::with_registry(settings, shutdown, &prometheus::Registry::new())
    }

    /// A broker whose metrics are registered in `registry`.
    pub fn with_registry(
        settings: BrokerSettings,
        shutdown: CancellationToken,
        registry: &prometheus::Registry,
    ) -> Self {
        let metrics = BrokerMetrics::in_registry(registry.clone());
        let ledger = Ledger::new(
            settings.ledger,
            settings.inventory.devices(),
            Instant::now().into_std(),
        );
        let shared = Arc::new(Shared::new(
            ledger,
            settings.inventory,
            metrics.clone(),
            shutdown.clone(),
        ));
        Self {
            shared,
            settings_token: settings.token,
            poll_interval: settings.poll_interval,
            drain_timeout: settings.drain_timeout,
            shutdown,
            metrics,
        }
    }

    /// The registry behind `/metrics`.
    pub fn metrics_registry(&self) -> prometheus::Registry {
        self.metrics.registry()
    }

    /// Serves on `listener` until the shutdown token is cancelled.
    pub async fn serve(self, listener: impl Into<Listener>) -> Result<(), tonic::transport::Error> {
        self.shared.measure_and_tick(Gauges::Refresh);
        let bookkeeper = tokio::spawn(keep_books(
            Arc::clone(&self.shared),
            self.poll_interval,
            self.shutdown.clone(),
        ));

        let service = BrokerServer::with_interceptor(
            BrokerService::new(Arc::clone(&self.shared)),
            TokenCheck::new(self.settings_token.clone()),
        );
        let server = GrpcServer::new();
        server
            .health()
            .set_serving::<BrokerServer<BrokerService>>()
            .await;
        let shared = Arc::clone(&self.shared);
        let announce = self.shutdown.clone();
        tokio::spawn(async move {
            announce.cancelled().await;
            shared.announce_shutdown();
        });
        let result = server
            .add_service(service)
            .serve(listener, self.shutdown.clone(), self.drain_timeout)
            .await;
        bookkeeper.abort();
        result
    }
}

/// Measures and advances the books every `interval`, or sooner when a release
/// asks for it, until shutdown.
async fn keep_books(shared: Arc<Shared>, interval: Duration, shutdown: CancellationToken) {
    let mut poll = tokio::time::interval(interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => shared.measure_and_tick(Gauges::Refresh),
            // A release or grant wants its measurement now; gauges wait for the poll,
            // so thousands of leases a second do not each rebuild the metrics.
            () = shared.measure_soon_notified() => shared.measure_and_tick(Gauges::Skip),
            () = shutdown.cancelled() => return,
        }
    }
}
