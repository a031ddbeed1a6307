//! The gateway's Prometheus metrics: Analyze calls by outcome, and per backend the
//! calls, their latency, how many the gateway shed and its replicas by health.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct GatewayMetrics {
    /// Analyze calls (streamed images included) by gRPC code.
    pub analyze_requests: IntCounterVec,
    pub analyze_seconds: HistogramVec,
    /// Backend calls by backend and gRPC code, as the gateway saw them.
    pub backend_requests: IntCounterVec,
    pub backend_seconds: HistogramVec,
    /// Backend calls refused by the gateway's own concurrency limit.
    pub backend_shed: IntCounterVec,
    /// Replicas the balancer has, by backend and what their health watch last said.
    pub backend_replicas: IntGaugeVec,
}

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl GatewayMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let analyze_requests = IntCounterVec::new(
            Opts::new(
                "plenum_gateway_analyze_requests_total",
                "Analyze calls (streamed images included) by gRPC code",
            ),
            &["code"],
        )?;
        let analyze_seconds = HistogramVec::new(
            HistogramOpts::new(
                "plenum_gateway_analyze_duration_seconds",
                "Time to answer one Analyze call or streamed image",
            )
            .buckets(BUCKETS.to_vec()),
            &["code"],
        )?;
        let backend_requests = IntCounterVec::new(
            Opts::new(
                "plenum_gateway_backend_requests_total",
                "Calls to a backend by gRPC code, as the gateway saw them",
            ),
            &["backend", "code"],
        )?;
        let backend_seconds = HistogramVec::new(
            HistogramOpts::new(
                "plenum_gateway_backend_duration_seconds",
                "Time of one backend call, retries included",
            )
            .buckets(BUCKETS.to_vec()),
            &["backend"],
        )?;
        let backend_shed = IntCounterVec::new(
            Opts::new(
                "plenum_gateway_backend_shed_total",
                "Backend calls refused at once by the gateway's concurrency limit",
            ),
            &["backend"],
        )?;
        let backend_replicas = IntGaugeVec::new(
            Opts::new(
                "plenum_gateway_backend_replicas",
                "Replicas of a backend by health (unknown, unwatched, serving, not_serving, unreachable)",
            ),
            &["backend", "health"],
        )?;
        registry.register(Box::new(analyze_requests.clone()))?;
        registry.register(Box::new(analyze_seconds.clone()))?;
        registry.register(Box::new(backend_requests.clone()))?;
        registry.register(Box::new(backend_seconds.clone()))?;
        registry.register(Box::new(backend_shed.clone()))?;
        registry.register(Box::new(backend_replicas.clone()))?;
        Ok(Self {
            analyze_requests,
            analyze_seconds,
            backend_requests,
            backend_seconds,
            backend_shed,
            backend_replicas,
        })
    }
}

/// A code as a label value (`Ok`, `ResourceExhausted`, …).
pub fn code_label(code: tonic::Code) -> String {
    format!("{code:?}")
}
