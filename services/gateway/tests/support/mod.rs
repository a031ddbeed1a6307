//! Test doubles of the backends: real gRPC Detector and Ocr servers on loopback
//! sockets, each on its own Tokio runtime so a test can kill one outright (every
//! connection closes, as when a process dies). They record what they were asked
//! and whether the caller went away before they answered, and serve
//! `grpc.health.v1` (SERVING until told otherwise). A DNS double answers the
//! gateway's `dns://` lookups from a table the test changes.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use plenum_gateway::discovery::Resolve;
use plenum_proto::common::v1 as common;
use plenum_proto::detector::v1::{self as det, detector_server};
use plenum_proto::ocr::v1::{self as ocr, ocr_server};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// What a fake saw and how it behaves; shared between the test and the server.
#[derive(Default)]
pub struct Behaviour {
    /// Calls received.
    pub calls: AtomicUsize,
    /// Calls whose future was dropped before it answered (the caller went away).
    pub cancelled: AtomicUsize,
    /// Most calls in flight at once.
    pub max_in_flight: AtomicUsize,
    in_flight: AtomicUsize,
    in_flight_watch: Mutex<Option<watch::Sender<usize>>>,
    /// How long each call takes.
    pub delay: Mutex<Duration>,
    /// Answer every call with this code instead.
    pub fail_with: Mutex<Option<Code>>,
    /// The `grpc-timeout` header of the last call.
    pub last_timeout: Mutex<Option<String>>,
    /// How many regions to ignore the last ReadText call carried.
    pub last_ignore_regions: AtomicUsize,
    /// The `read_within` regions of the last ReadText call.
    pub last_read_within: Mutex<Vec<common::Box>>,
    /// Whether the last Detect call asked for the verifier's second look.
    pub last_verify: AtomicBool,
    /// The threshold of weak detections to confirm the last Detect call asked for.
    pub last_confirmed_score_threshold: Mutex<f32>,
    /// Whether the last ReadText call asked to join broken vertical lines.
    pub last_join_broken_lines: AtomicBool,
    /// The per-class tag patterns a fake detector sends with its answer.
    pub tag_patterns: Mutex<std::collections::HashMap<String, String>>,
    /// Whether the last call carried a `traceparent`.
    pub last_traceparent: Mutex<Option<String>>,
}

impl Behaviour {
    pub fn new() -> Arc<Self> {
        let behaviour = Self::default();
        *behaviour.in_flight_watch.lock().unwrap() = Some(watch::channel(0).0);
        Arc::new(behaviour)
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn fail_with(&self, code: Option<Code>) {
        *self.fail_with.lock().unwrap() = code;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Waits (without sleeping) until `n` calls are in flight at once.
    pub async fn wait_in_flight(&self, n: usize) {
        let mut rx = self
            .in_flight_watch
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&v| v >= n))
            .await
            .expect("calls in flight in time")
            .unwrap();
    }

    /// Waits until `n` calls were dropped by their caller.
    pub async fn wait_cancelled(&self, n: usize) {
        let mut rx = self
            .in_flight_watch
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .subscribe();
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.cancelled() < n {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the backend call was dropped in time");
    }

    /// Runs one call: counts it, waits the delay, notices a drop.
    async fn serve<T>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        answer: T,
    ) -> Result<T, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_timeout.lock().unwrap() = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.last_traceparent.lock().unwrap() = metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.notify();
        let mut guard = InFlight {
            behaviour: self,
            finished: false,
        };
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        guard.finished = true;
        drop(guard);
        match *self.fail_with.lock().unwrap() {
            Some(code) => Err(Status::new(code, "the fake was told to fail")),
            None => Ok(answer),
        }
    }

    fn notify(&self) {
        if let Some(tx) = self.in_flight_watch.lock().unwrap().as_ref() {
            tx.send_replace(self.in_flight.load(Ordering::SeqCst));
        }
    }
}

struct InFlight<'a> {
    behaviour: &'a Behaviour,
    finished: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.behaviour.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.behaviour.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.behaviour.notify();
    }
}

pub fn bx(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Option<common::Box> {
    Some(common::Box {
        x_min,
        y_min,
        x_max,
        y_max,
    })
}

/// The classes the fake detector's model knows, as its replies say.
pub const KNOWN_CLASSES: [&str; 4] = ["diffuser", "vav_box", "thermostat", "damper"];

/// A detector that finds the same detections on every image.
pub struct FakeDetector {
    pub behaviour: Arc<Behaviour>,
    pub detections: Vec<det::Detection>,
}

#[tonic::async_trait]
impl detector_server::Detector for FakeDetector {
    async fn detect(
        &self,
        request: Request<det::DetectRequest>,
    ) -> Result<Response<det::DetectResponse>, Status> {
        let images = request.get_ref().images.len();
        let options = request.get_ref().options.clone().unwrap_or_default();
        let behaviour = &self.behaviour;
        behaviour
            .last_verify
            .store(options.verify, Ordering::SeqCst);
        *behaviour.last_confirmed_score_threshold.lock().unwrap() =
            options.confirmed_score_threshold;
        let answer = det::DetectResponse {
            results: (0..images)
                .map(|_| det::ImageDetections {
                    detections: self.detections.clone(),
                    width: 0,
                    height: 0,
                    tiles: 1,
                    refused: 0,
                    relabeled: 0,
                    confirmed: 0,
                })
                .collect(),
            model: "fake".into(),
            placement: common::Placement::Cpu as i32,
            known_classes: KNOWN_CLASSES.map(String::from).to_vec(),
            tag_patterns: self.behaviour.tag_patterns.lock().unwrap().clone(),
            verified_by: String::new(),
        };
        self.behaviour
            .serve(request.metadata(), answer)
            .await
            .map(Response::new)
    }
}

/// An OCR service that reads the same lines on every page.
pub struct FakeOcr {
    pub behaviour: Arc<Behaviour>,
    pub lines: Vec<ocr::TextLine>,
}

#[tonic::async_trait]
impl ocr_server::Ocr for FakeOcr {
    async fn recognize(
        &self,
        _request: Request<ocr::RecognizeRequest>,
    ) -> Result<Response<ocr::RecognizeResponse>, Status> {
        Err(Status::unimplemented("the gateway reads whole pages"))
    }

    async fn read_text(
        &self,
        request: Request<ocr::ReadTextRequest>,
    ) -> Result<Response<ocr::ReadTextResponse>, Status> {
        self.behaviour
            .last_ignore_regions
            .store(request.get_ref().ignore_regions.len(), Ordering::SeqCst);
        self.behaviour
            .last_read_within
            .lock()
            .unwrap()
            .clone_from(&request.get_ref().read_within);
        self.behaviour
            .last_join_broken_lines
            .store(request.get_ref().join_broken_lines, Ordering::SeqCst);
        let answer = ocr::ReadTextResponse {
            lines: self.lines.clone(),
            width: 0,
            height: 0,
        };
        self.behaviour
            .serve(request.metadata(), answer)
            .await
            .map(Response::new)
    }
}

/// A fake server on its own runtime; `kill` drops the runtime and every socket.
pub struct FakeServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    /// The server's health and its service's name; `None` when it serves no health.
    health: Option<(HealthReporter, &'static str)>,
}

impl FakeServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server's health service says of its one service.
    pub async fn set_serving(&self, serving: bool) {
        let (reporter, name) = self.health.as_ref().expect("a server with health");
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(*name, status).await;
    }

    /// Ends the server at once, as a crash would: its connections close mid-call.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    fn start<S>(service: S, with_health: bool) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = with_health.then(|| (reporter.clone(), S::NAME));
        runtime.spawn(async move {
            // SERVING before the first connection is accepted.
            reporter
                .set_service_status(S::NAME, ServingStatus::Serving)
                .await;
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_optional_service(with_health.then_some(health_service))
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        Self {
            addr,
            runtime: Some(runtime),
            health,
        }
    }

    pub fn detector(behaviour: Arc<Behaviour>, detections: Vec<det::Detection>) -> Self {
        Self::start(
            detector_server::DetectorServer::new(FakeDetector {
                behaviour,
                detections,
            }),
            true,
        )
    }

    /// A detector that serves no `grpc.health.v1` (answers UNIMPLEMENTED to it).
    pub fn detector_without_health(
        behaviour: Arc<Behaviour>,
        detections: Vec<det::Detection>,
    ) -> Self {
        Self::start(
            detector_server::DetectorServer::new(FakeDetector {
                behaviour,
                detections,
            }),
            false,
        )
    }

    pub fn ocr(behaviour: Arc<Behaviour>, lines: Vec<ocr::TextLine>) -> Self {
        Self::start(
            ocr_server::OcrServer::new(FakeOcr { behaviour, lines }),
            true,
        )
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A DNS double: every name resolves to the addresses the test set last, or
/// fails while the test says so. Counts the questions it was asked.
pub struct FakeDns {
    answer: Mutex<Result<Vec<SocketAddr>, String>>,
    asked: watch::Sender<usize>,
}

impl FakeDns {
    pub fn new(addrs: &[SocketAddr]) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(Ok(addrs.to_vec())),
            asked: watch::channel(0).0,
        })
    }

    pub fn answer(&self, addrs: &[SocketAddr]) {
        *self.answer.lock().unwrap() = Ok(addrs.to_vec());
    }

    pub fn fail(&self, error: &str) {
        *self.answer.lock().unwrap() = Err(error.to_owned());
    }

    pub fn asked(&self) -> usize {
        *self.asked.borrow()
    }

    /// Waits until `n` questions were asked in all.
    pub async fn wait_asked(&self, n: usize) {
        let mut rx = self.asked.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&asked| asked >= n))
            .await
            .expect("the gateway resolved again in time")
            .unwrap();
    }
}

impl Resolve for FakeDns {
    fn resolve(&self, _host: &str, _port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let answer = self.answer.lock().unwrap().clone();
        self.asked.send_modify(|asked| *asked += 1);
        Box::pin(std::future::ready(answer.map_err(io::Error::other)))
    }
}

/// A port nothing listens on (bound, then closed).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A small white PNG of `width` x `height`.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// A white JPEG stored `width` x `height` whose EXIF orientation (6) shows it a
/// quarter turn clockwise, so it displays `height` x `width`.
pub fn jpeg_quarter_turned(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut jpeg = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    // APP1 "Exif": a big-endian TIFF header and one IFD entry, Orientation (0x0112),
    // one SHORT, value 6.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec(); // start of image
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(exif.len() + 2).unwrap().to_be_bytes());
    out.extend(exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The real gateway served on a loopback port, with a client connected to it and its
/// metrics registry; it stops when dropped.
pub struct Gateway {
    pub client: plenum_proto::gateway::v1::gateway_client::GatewayClient<tonic::transport::Channel>,
    pub registry: prometheus::Registry,
    _shutdown: tokio_util::sync::DropGuard,
}

pub async fn start_gateway(settings: plenum_gateway::GatewaySettings) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = prometheus::Registry::new();
    let (stop, metrics) = (shutdown.clone(), registry.clone());
    tokio::spawn(async move {
        plenum_gateway::run(settings, &metrics, listener, stop)
            .await
            .unwrap()
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Gateway {
        client: plenum_proto::gateway::v1::gateway_client::GatewayClient::new(channel),
        registry,
        _shutdown: shutdown.drop_guard(),
    }
}
