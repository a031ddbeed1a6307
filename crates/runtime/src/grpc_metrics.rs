//! Requests and latency per RPC and status code, for every server: a tower layer
//! that `GrpcServer` puts in front of all its routes, so no service has to count
//! its own calls. The series live in the process-wide default registry, which
//! `metrics::render` serves beside each service's own registry.
//!
//! A call ends when its response body ends: the code is `grpc-status` from the
//! trailers (or from the headers of a trailers-only error), and a body dropped
//! before its trailers (the client went away) counts as `Cancelled`.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use prometheus::{HistogramVec, IntCounterVec};

struct Series {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

static SERIES: LazyLock<Series> = LazyLock::new(|| {
    let labels = &["grpc_service", "grpc_method", "grpc_code"];
    let requests = IntCounterVec::new(
        prometheus::Opts::new(
            "plenum_grpc_server_requests_total",
            "gRPC calls handled, by service, method and status code",
        ),
        labels,
    )
    .expect("valid metric");
    let seconds = HistogramVec::new(
        prometheus::HistogramOpts::new(
            "plenum_grpc_server_handling_seconds",
            "Time from a call's arrival to its last response frame, by service, method and status code",
        )
        .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
        labels,
    )
    .expect("valid metric");
    let registry = prometheus::default_registry();
    // Registering twice only fails when another copy already did it; ignore that.
    let _ = registry.register(Box::new(requests.clone()));
    let _ = registry.register(Box::new(seconds.clone()));
    Series { requests, seconds }
});

/// The layer `GrpcServer::serve` installs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::new(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A trailers-only response (most errors) carries the code in its headers.
            let code = grpc_status(response.headers());
            Ok(response.map(|inner| MeteredBody {
                inner,
                call: Some(call),
                code,
            }))
        })
    }
}

struct Call {
    service: String,
    method: String,
    started: Instant,
}

impl Call {
    fn new(path: &str) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
        }
    }

    fn finish(self, code: Option<tonic::Code>) {
        let code = match code {
            Some(tonic::Code::Ok) => "OK".to_owned(),
            Some(code) => format!("{code:?}"),
            None => "Cancelled".to_owned(),
        };
        let labels = [self.service.as_str(), self.method.as_str(), code.as_str()];
        SERIES.requests.with_label_values(&labels).inc();
        SERIES
            .seconds
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// The response body, recording the call when it ends or is dropped.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
    code: Option<tonic::Code>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.code = Some(tonic::Code::Internal),
            Poll::Ready(None) => {
                let code = self.code;
                if let Some(call) = self.call.take() {
                    call.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(self.code);
        }
    }
}
