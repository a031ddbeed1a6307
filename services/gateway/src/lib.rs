//! The gateway: detect symbols and read the tag beside each, over the detector and
//! OCR services, each behind its own tower stack.
//!
//! Rooms: [`backend`] is one backend's stack (shed, limit, timeout, p2c over its
//! replicas), [`discovery`] finds the replicas (fixed URLs, DNS names), `replica`
//! keeps one out of the balancer while it is ejected or its `health_watch` says
//! it takes no work, [`assign`] the pure tag rule ([`tag_patterns`] its per-class
//! text check), [`pipeline`] one image through
//! both backends, [`service`] the gRPC face (admission, deadline, stream window),
//! [`metrics`] and [`config`] the rest.
#![forbid(unsafe_code)]

pub mod assign;
pub mod backend;
pub mod config;
pub mod discovery;
mod health_watch;
pub mod metrics;
pub mod pipeline;
mod replica;
pub mod service;
pub mod tag_patterns;

use std::time::Duration;

use plenum_proto::detector::v1::detector_server;
use plenum_proto::gateway::v1::gateway_server::GatewayServer;
use plenum_proto::ocr::v1::ocr_server;
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use plenum_vision::decode::Limits;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendSettings};
use crate::metrics::GatewayMetrics;
use crate::pipeline::Pipeline;
use crate::service::GatewayService;

/// Everything the gateway needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub detector: BackendSettings,
    pub ocr: BackendSettings,
    /// Byte and pixel limits on the image (the pixel count is read from the header).
    pub limits: Limits,
    pub max_request_bytes: usize,
    /// Analyze calls and streamed images in work at once, gateway-wide.
    pub max_concurrent_analyze: usize,
    /// Images of one stream in work at once.
    pub stream_in_flight: usize,
    pub drain_timeout: Duration,
}

/// Serves the gateway on `listener` until `shutdown`. Backends are connected lazily,
/// so the gateway starts (and reports SERVING) before they do; their `dns://`
/// names are resolved on tasks of their own.
pub async fn run(
    settings: GatewaySettings,
    registry: &prometheus::Registry,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = GatewayMetrics::register(registry)?;
    let pipeline = Pipeline::new(
        Backend::new(
            "detector",
            detector_server::SERVICE_NAME,
            &settings.detector,
            metrics.clone(),
        )?,
        Backend::new(
            "ocr",
            ocr_server::SERVICE_NAME,
            &settings.ocr,
            metrics.clone(),
        )?,
        settings.limits,
        settings.ocr.concurrency,
    );
    let service = GatewayService::new(
        pipeline,
        settings.max_concurrent_analyze,
        settings.stream_in_flight,
        metrics,
    );
    let service = GatewayServer::new(service).max_decoding_message_size(settings.max_request_bytes);
    let server = GrpcServer::new();
    server
        .health()
        .set_serving::<GatewayServer<GatewayService>>()
        .await;
    server
        .add_service(service)
        .serve(listener, shutdown, settings.drain_timeout)
        .await?;
    Ok(())
}
