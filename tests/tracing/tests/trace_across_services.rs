//! One request, one trace, across real processes: the service binaries run as
//! children exporting OTLP to a receiver in this test, and the spans they send
//! must link up by trace id and parent span id across every gRPC hop.
//!
//! Needs the binaries in the same target directory as this test; `cargo test
//! --workspace` (or `cargo build --workspace`) builds them. A missing binary is a
//! failure with the command to run, never a silent skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plenum_proto::detector::v1::DetectRequest;
use plenum_proto::detector::v1::detector_client::DetectorClient;
use plenum_proto::gateway::v1::AnalyzeRequest;
use plenum_proto::gateway::v1::gateway_client::GatewayClient;
use plenum_tracing_tests::{OtlpReceiver, ReceivedSpan};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>/NAME`, next to this test's own `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p plenum-broker -p plenum-detector -p plenum-ocr` \
         (or `cargo test --workspace`, which builds it)",
        path.display()
    );
    path
}

/// A service binary started as a child with JSON logs; dropped means killed.
struct Service {
    name: &'static str,
    child: Child,
    /// The gRPC address it logged as bound.
    addr: String,
}

impl Service {
    /// Starts `name` listening on a free port of 127.0.0.1 (`--listen` is added to
    /// `args`); [`Service::wait_serving`] waits for it.
    async fn start(name: &'static str, args: &[&str], otlp: &str) -> Self {
        // Not every binary logs the address it bound, so the port is chosen here.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .to_string();
        let mut child = Command::new(binary(name))
            .args(["--listen", &addr])
            .args(args)
            .current_dir(workspace_root())
            .env("PLENUM_LOG_FORMAT", "json")
            .env("PLENUM_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            // A batch delay far beyond the test's length: spans can only arrive
            // through the flush on SIGTERM, which is what this test checks.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        // Its log goes to the test's output; draining it keeps the child from blocking.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
        Self { name, child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server accepts connections and reports SERVING (for a model
    /// service: its models are loaded), at most two minutes.
    async fn wait_serving(&mut self) {
        let started = tokio::time::Instant::now();
        let limit = Duration::from_secs(120);
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).unwrap();
        let channel = loop {
            // A child process has no listener to hand over: its port is polled.
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(error) => {
                    if let Some(exit) = self.child.try_wait().unwrap() {
                        panic!("{} exited with {exit} before it listened", self.name);
                    }
                    assert!(
                        started.elapsed() < limit,
                        "{} not listening: {error}",
                        self.name
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let left = limit.saturating_sub(started.elapsed());
        if let Err(error) = plenum_runtime::health::wait_serving(channel, left).await {
            panic!("{}: {error}", self.name);
        }
    }

    /// SIGTERM, then waits for a clean exit: the services flush spans on the way out.
    async fn stop(mut self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} still running 30 s after SIGTERM", self.name))
            .unwrap();
        assert!(
            exit.success(),
            "{} exited with {exit} after SIGTERM",
            self.name
        );
    }
}

/// A fresh W3C trace id and span id for the test's own (client) span.
fn new_ids() -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    (
        format!("{seed:032x}"),
        format!("{:016x}", (seed as u64) | 1),
    )
}

fn render(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {:16} {:45} trace={} span={} parent={} kind={}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.kind
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

/// A client span in `client_service` named `client_name`, and the server span it
/// caused in `server_service`: same trace, the server's parent is the client span.
fn assert_hop(
    spans: &[ReceivedSpan],
    client: (&str, &str),
    server: (&str, &str),
) -> (ReceivedSpan, ReceivedSpan) {
    let clients = find(spans, client.0, client.1);
    assert!(
        !clients.is_empty(),
        "no {} span `{}`; received:\n{}",
        client.0,
        client.1,
        render(spans)
    );
    for caller in &clients {
        assert_eq!(caller.kind, CLIENT, "{} is a client span", client.1);
        if let Some(callee) = find(spans, server.0, server.1)
            .into_iter()
            .find(|s| s.parent_span_id == caller.span_id)
        {
            assert_eq!(callee.trace_id, caller.trace_id);
            assert_eq!(callee.kind, SERVER, "{} is a server span", server.1);
            return ((*caller).clone(), callee.clone());
        }
    }
    panic!(
        "no {} span `{}` is a child of {} `{}`; received:\n{}",
        server.0,
        server.1,
        client.0,
        client.1,
        render(spans)
    );
}

/// Walks parent links from `span` up to the span the test sent (`root_parent`):
/// every step must be a received span of the same trace. Returns the services passed.
fn path_to_caller(spans: &[ReceivedSpan], span: &ReceivedSpan, root_parent: &str) -> Vec<String> {
    let mut path = vec![format!("{}:{}", span.service, span.name)];
    let mut current = span;
    while current.parent_span_id != root_parent {
        let Some(parent) = spans.iter().find(|s| s.span_id == current.parent_span_id) else {
            panic!(
                "the parent {} of {} `{}` was never received; path so far {path:?}; received:\n{}",
                current.parent_span_id,
                current.service,
                current.name,
                render(spans)
            );
        };
        assert_eq!(
            parent.trace_id, span.trace_id,
            "one trace id along {path:?}"
        );
        path.push(format!("{}:{}", parent.service, parent.name));
        current = parent;
    }
    path
}

async fn start_broker(receiver: &OtlpReceiver) -> Service {
    let mut broker = Service::start(
        "plenum-broker",
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--simulate",
            "GTX 1070:8GiB",
            "--recovery-window",
            "0s",
        ],
        &receiver.endpoint,
    )
    .await;
    // Up before the model services, so their first Acquire is granted, not refused.
    broker.wait_serving().await;
    broker
}

/// A model service under a lease from `broker` (simulated GPU, CPU compute).
async fn start_model(name: &'static str, broker: &Service, receiver: &OtlpReceiver) -> Service {
    Service::start(
        name,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--broker",
            &broker.url(),
            "--device",
            "sim-gpu",
        ],
        &receiver.endpoint,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_and_its_lease_calls_are_traced_across_processes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let broker = start_broker(&receiver).await;
    let mut detector = start_model("plenum-detector", &broker, &receiver).await;
    detector.wait_serving().await;

    let (trace_id, test_span_id) = new_ids();
    let page = std::fs::read(workspace_root().join("tests/pages/page_0000.png")).unwrap();
    let mut request = tonic::Request::new(DetectRequest {
        images: vec![page],
        options: None,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{test_span_id}-01").parse().unwrap(),
    );
    let response = DetectorClient::connect(detector.url())
        .await
        .unwrap()
        .detect(request)
        .await
        .expect("Detect")
        .into_inner();
    assert!(!response.results[0].detections.is_empty());

    // The detector first: its lease release on the way out is a broker call too.
    detector.stop().await;
    broker.stop().await;
    let (_, spans) = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.service == "plenum-detector")
                && spans.iter().any(|s| s.service == "plenum-broker")
        })
        .await;

    eprintln!("spans received:\n{}", render(&spans));

    // The test's call: the detector's server span continues the test's trace.
    let detect = find(
        &spans,
        "plenum-detector",
        "plenum.detector.v1.Detector/Detect",
    );
    assert_eq!(
        detect.len(),
        1,
        "one Detect span; received:\n{}",
        render(&spans)
    );
    assert_eq!(
        detect[0].trace_id, trace_id,
        "Detect joined the caller's trace"
    );
    assert_eq!(
        detect[0].parent_span_id, test_span_id,
        "Detect's parent is the caller's span"
    );
    assert_eq!(detect[0].kind, SERVER);
    // The forward pass ran on the model's own thread, inside the caller's trace.
    let forward: Vec<_> = find(&spans, "plenum-detector", "model.forward")
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();
    assert_eq!(
        forward.len(),
        1,
        "one model.forward span in the caller's trace; received:\n{}",
        render(&spans)
    );

    // The detector's own calls to the broker: each client span in the detector has
    // the broker's server span as its child, in the same trace.
    let (acquire, _) = assert_hop(
        &spans,
        ("plenum-detector", "lease.acquire"),
        ("plenum-broker", "plenum.broker.v1.Broker/Acquire"),
    );
    assert_hop(
        &spans,
        ("plenum-detector", "lease.commit"),
        ("plenum-broker", "plenum.broker.v1.Broker/Commit"),
    );
    assert!(
        acquire
            .attribute("model_key")
            .is_some_and(|key| key.starts_with("hvac-yolov8n")),
        "lease.acquire names the model: {acquire:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_is_one_trace_through_gateway_detector_and_ocr() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let broker = start_broker(&receiver).await;
    let mut detector = start_model("plenum-detector", &broker, &receiver).await;
    let mut ocr = start_model("plenum-ocr", &broker, &receiver).await;
    detector.wait_serving().await;
    ocr.wait_serving().await;
    let mut gateway = Service::start(
        "plenum-gateway",
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--detector",
            &detector.url(),
            "--ocr",
            &ocr.url(),
        ],
        &receiver.endpoint,
    )
    .await;
    gateway.wait_serving().await;

    let (trace_id, test_span_id) = new_ids();
    let page = std::fs::read(workspace_root().join("tests/pages/page_0000.png")).unwrap();
    let mut request = tonic::Request::new(AnalyzeRequest {
        image: page,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{test_span_id}-01").parse().unwrap(),
    );
    let response = GatewayClient::connect(gateway.url())
        .await
        .unwrap()
        .analyze(request)
        .await
        .expect("Analyze")
        .into_inner();
    assert!(!response.symbols.is_empty(), "Analyze found symbols");

    // Front to back, so each one's outgoing calls are over before it flushes.
    gateway.stop().await;
    detector.stop().await;
    ocr.stop().await;
    broker.stop().await;
    let (_, spans) = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            ["plenum-gateway", "plenum-detector", "plenum-ocr"]
                .iter()
                .all(|service| spans.iter().any(|s| s.service == *service))
        })
        .await;
    eprintln!("spans received:\n{}", render(&spans));

    let analyze = find(
        &spans,
        "plenum-gateway",
        "plenum.gateway.v1.Gateway/Analyze",
    );
    assert_eq!(
        analyze.len(),
        1,
        "one Analyze span; received:\n{}",
        render(&spans)
    );
    assert_eq!(
        analyze[0].trace_id, trace_id,
        "Analyze joined the caller's trace"
    );
    assert_eq!(analyze[0].parent_span_id, test_span_id);
    assert_eq!(analyze[0].kind, SERVER);

    // Each backend's server span hangs, through the gateway's spans, off the
    // gateway's Analyze span: one tree, three processes, one trace id.
    for (service, name) in [
        ("plenum-detector", "plenum.detector.v1.Detector/Detect"),
        ("plenum-ocr", "plenum.ocr.v1.Ocr/ReadText"),
    ] {
        let in_trace: Vec<_> = find(&spans, service, name)
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        assert!(
            !in_trace.is_empty(),
            "no {service} span `{name}` in trace {trace_id}; received:\n{}",
            render(&spans)
        );
        for span in in_trace {
            assert_eq!(span.kind, SERVER);
            let path = path_to_caller(&spans, span, &test_span_id);
            eprintln!("{}", path.join(" <- "));
            let parent = spans
                .iter()
                .find(|s| s.span_id == span.parent_span_id)
                .unwrap();
            assert_eq!(
                parent.service, "plenum-gateway",
                "{name} is called by the gateway"
            );
            assert!(
                path.last()
                    .is_some_and(|top| top.ends_with("Gateway/Analyze")),
                "{name} traces back to Analyze: {path:?}"
            );
        }
    }
}
