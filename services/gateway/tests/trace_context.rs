//! W3C trace context crosses the gateway: a client's `traceparent` reaches both
//! backends with the same trace id (a separate test binary, because it installs the
//! global tracing subscriber and propagator).

mod support;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use plenum_gateway::backend::BackendSettings;
use plenum_gateway::{GatewaySettings, run};
use plenum_proto::detector::v1 as det;
use plenum_proto::gateway::v1::{self as pb, gateway_client::GatewayClient};
use plenum_vision::decode::Limits;
use support::{Behaviour, FakeServer, bx, png};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_callers_trace_reaches_every_backend() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("gateway-test")))
        .init();

    let (db, ob) = (Behaviour::new(), Behaviour::new());
    let detector = FakeServer::detector(
        db.clone(),
        vec![det::Detection {
            r#box: bx(10.0, 10.0, 30.0, 30.0),
            class_name: "damper".into(),
            score: 0.9,
        }],
    );
    let ocr = FakeServer::ocr(ob.clone(), vec![]);
    let backend = |url: String| BackendSettings {
        urls: vec![url],
        concurrency: 5,
        timeout: Duration::from_secs(10),
        discovery: Default::default(),
        ejection: Default::default(),
    };
    let settings = GatewaySettings {
        detector: backend(detector.url()),
        ocr: backend(ocr.url()),
        limits: Limits::default(),
        max_request_bytes: 4 << 20,
        max_concurrent_analyze: 8,
        stream_in_flight: 2,
        drain_timeout: Duration::from_millis(100),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        run(settings, &prometheus::Registry::new(), listener, stop)
            .await
            .unwrap()
    });
    let mut client = GatewayClient::connect(url).await.unwrap();
    let mut request = tonic::Request::new(pb::AnalyzeRequest {
        image: png(64, 64),
        options: None,
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.analyze(request).await.unwrap();

    for (backend, behaviour) in [("detector", &db), ("ocr", &ob)] {
        let traceparent = behaviour
            .last_traceparent
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| panic!("{backend} got no traceparent"));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts[1], TRACE_ID, "{backend}: {traceparent}");
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "{backend}: a gateway span is the parent"
        );
    }
    shutdown.cancel();
}
