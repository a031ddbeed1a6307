//! `plenum.gateway.v1.Gateway`: admission (one limit for all Analyze work), the
//! client's deadline, metrics by outcome, and the stream's bounded window.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use plenum_proto::gateway::v1::{self as pb, gateway_server::Gateway};
use plenum_runtime::deadline::grpc_timeout;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::overloaded;
use crate::metrics::{GatewayMetrics, code_label};
use crate::pipeline::Pipeline;

/// The gateway answers this much before the client's deadline, so the client
/// hears the gateway's answer (a page without tags, or its DEADLINE_EXCEEDED) rather
/// than its own cut-off. 20 ms was too little on a loaded 2-vCPU machine: under 10x
/// overload about 1 call in 5,000 reached the caller after its deadline.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

pub struct GatewayService {
    pipeline: Arc<Pipeline>,
    /// Analyze calls and streamed images in progress, gateway-wide.
    permits: Arc<Semaphore>,
    stream_in_flight: usize,
    metrics: GatewayMetrics,
}

impl GatewayService {
    pub fn new(
        pipeline: Pipeline,
        max_concurrent_analyze: usize,
        stream_in_flight: usize,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            pipeline: Arc::new(pipeline),
            permits: Arc::new(Semaphore::new(max_concurrent_analyze)),
            stream_in_flight: stream_in_flight.max(1),
            metrics,
        }
    }
}

/// The client's deadline from its `grpc-timeout`, less the margin.
fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let timeout = grpc_timeout(metadata)?;
    Instant::now().checked_add(timeout.saturating_sub(DEADLINE_MARGIN))
}

/// Runs one image under the deadline and records its outcome.
async fn analyze_one(
    pipeline: &Pipeline,
    metrics: &GatewayMetrics,
    request: pb::AnalyzeRequest,
    deadline: Option<Instant>,
    _permit: OwnedSemaphorePermit,
) -> Result<pb::AnalyzeResponse, Status> {
    let started = Instant::now();
    let work = pipeline.analyze(request, deadline);
    let result = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("the client's deadline passed"))),
        None => work.await,
    };
    let code = code_label(match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    });
    metrics.analyze_requests.with_label_values(&[&code]).inc();
    metrics
        .analyze_seconds
        .with_label_values(&[&code])
        .observe(started.elapsed().as_secs_f64());
    result
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::AnalyzeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn analyze(
        &self,
        request: Request<pb::AnalyzeRequest>,
    ) -> Result<Response<pb::AnalyzeResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        // Full means full: refuse now, with a retry hint, rather than queue.
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.metrics
                .analyze_requests
                .with_label_values(&[&code_label(tonic::Code::ResourceExhausted)])
                .inc();
            return Err(overloaded(
                "the gateway is at its Analyze concurrency limit".into(),
            ));
        };
        // Nothing is spawned: when the client goes away, tonic drops this future and
        // with it every backend call in flight (their HTTP/2 streams are reset).
        analyze_one(
            &self.pipeline,
            &self.metrics,
            request.into_inner(),
            deadline,
            permit,
        )
        .await
        .map(Response::new)
    }

    type AnalyzeStreamStream = ResultStream;

    async fn analyze_stream(
        &self,
        request: Request<Streaming<pb::AnalyzeRequest>>,
    ) -> Result<Response<Self::AnalyzeStreamStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let pipeline = Arc::clone(&self.pipeline);
        let permits = Arc::clone(&self.permits);
        let metrics = self.metrics.clone();
        // `buffered` keeps at most `stream_in_flight` images in work and yields them in
        // order; it reads the next image only when a slot frees, so a fast sender is
        // held back by HTTP/2 flow control. Streamed images wait for a gateway-wide
        // permit instead of failing: the window bounds what one stream can queue.
        let results = request
            .into_inner()
            .map(move |item| {
                let pipeline = Arc::clone(&pipeline);
                let permits = Arc::clone(&permits);
                let metrics = metrics.clone();
                async move {
                    let request = item?;
                    let permit = permits
                        .acquire_owned()
                        .await
                        .map_err(|_| Status::unavailable("the gateway is shutting down"))?;
                    let id = request.request_id.clone();
                    analyze_one(&pipeline, &metrics, request, deadline, permit)
                        .await
                        .map_err(|status| {
                            Status::with_details(
                                status.code(),
                                format!("request_id `{id}`: {}", status.message()),
                                status.details().to_vec().into(),
                            )
                        })
                }
            })
            .buffered(self.stream_in_flight);
        Ok(Response::new(Box::pin(results)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (value, expected) in [
            ("2S", Duration::from_secs(2)),
            ("250m", Duration::from_millis(250)),
            ("1M", Duration::from_secs(60)),
            ("999999u", Duration::from_micros(999_999)),
        ] {
            metadata.insert("grpc-timeout", value.parse().unwrap());
            let left = deadline_of(&metadata).unwrap() - Instant::now();
            assert!(left <= expected - DEADLINE_MARGIN, "{value}");
            assert!(
                left + Duration::from_millis(50) > expected - DEADLINE_MARGIN,
                "{value}"
            );
        }
        metadata.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(deadline_of(&metadata), None);
    }
}
