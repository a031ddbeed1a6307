//! An OTLP/gRPC trace receiver for tests: it implements the collector's
//! `TraceService` on the official OTLP protobufs and keeps every span it is sent,
//! flattened with the `service.name` of the process that sent it.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One received span, ids in lowercase hex as `traceparent` writes them.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP `SpanKind` as a number (1 internal, 2 server, 3 client).
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    changed: Notify,
}

/// A running receiver; spans collect until it is dropped.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    store: Arc<Store>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OtlpReceiver {
    /// Binds 127.0.0.1:0 and serves OTLP/gRPC traces in the background.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let store = Arc::new(Store::default());
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let service = TraceServiceServer::new(Collector(Arc::clone(&store)));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(error) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
            {
                eprintln!("OTLP receiver stopped: {error}");
            }
        });
        Ok(Self {
            endpoint,
            store,
            shutdown: Some(shutdown),
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received, or `timeout` passes; returns
    /// the spans either way so the caller's assertion can show what did arrive.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> (bool, Vec<ReceivedSpan>) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.store.changed.notified();
            let spans = self.spans();
            if done(&spans) {
                return (true, spans);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let spans = self.spans();
                return (done(&spans), spans);
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Collector(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| find(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_text(kv)))
                            .collect(),
                    });
                }
            }
        }
        self.0.spans.lock().unwrap().extend(received);
        self.0.changed.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn find(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(value_text)
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Lowercase hex, as in `traceparent`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}
