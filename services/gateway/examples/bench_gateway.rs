//! Gateway overhead with instant fake backends: latency of Analyze against calling
//! the fakes directly (Detect, then ReadText with the symbols to ignore, as the
//! gateway does), one call at a time, then Analyze/s at saturation.
//!
//! `cargo run --release -p plenum-gateway --example bench_gateway -- [--calls N]
//! [--seconds S] [--concurrency C] [--image PATH]`; scripts/bench-gateway.sh runs it.
//! Everything shares one machine: the client, the gateway and the fakes each run
//! on their own Tokio runtime in this process.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use plenum_gateway::backend::BackendSettings;
use plenum_gateway::{GatewaySettings, run};
use plenum_proto::detector::v1::{self as det, detector_client::DetectorClient};
use plenum_proto::gateway::v1::{self as pb, gateway_client::GatewayClient};
use plenum_proto::ocr::v1::{self as ocr, ocr_client::OcrClient};
use plenum_vision::decode::Limits;
use support::{Behaviour, FakeServer, bx};
use tonic::transport::Channel;

struct Args {
    calls: usize,
    seconds: u64,
    concurrency: usize,
    image: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        calls: 3000,
        seconds: 5,
        concurrency: 64,
        image: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => args.calls = value.parse().unwrap(),
            "--seconds" => args.seconds = value.parse().unwrap(),
            "--concurrency" => args.concurrency = value.parse().unwrap(),
            "--image" => args.image = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

#[derive(Clone)]
struct Clients {
    gateway: GatewayClient<Channel>,
    detector: DetectorClient<Channel>,
    ocr: OcrClient<Channel>,
}

impl Clients {
    async fn analyze(&mut self, image: &[u8]) {
        self.gateway
            .analyze(pb::AnalyzeRequest {
                image: image.to_vec(),
                options: None,
                request_id: String::new(),
            })
            .await
            .unwrap();
    }

    /// What the gateway does, without it: Detect, then ReadText with the symbols.
    async fn direct(&mut self, image: &[u8]) {
        let found = self
            .detector
            .detect(det::DetectRequest {
                images: vec![image.to_vec()],
                options: None,
            })
            .await
            .unwrap()
            .into_inner();
        let ignore_regions = found.results[0]
            .detections
            .iter()
            .filter_map(|d| d.r#box)
            .collect();
        self.ocr
            .read_text(ocr::ReadTextRequest {
                image: image.to_vec(),
                classify_angle: false,
                ignore_regions,
                read_within: vec![],
                join_broken_lines: false,
                read_turned: vec![],
            })
            .await
            .unwrap();
    }
}

async fn latency(
    clients: &mut Clients,
    image: &[u8],
    calls: usize,
    gateway: bool,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls + calls / 10 {
        let started = Instant::now();
        if gateway {
            clients.analyze(image).await;
        } else {
            clients.direct(image).await;
        }
        if i >= calls / 10 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times
}

async fn throughput(
    clients: &[Clients],
    image: &[u8],
    concurrency: usize,
    seconds: u64,
    gateway: bool,
) -> f64 {
    let stop = Instant::now() + Duration::from_secs(seconds);
    let image = std::sync::Arc::new(image.to_vec());
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut clients = clients[i % clients.len()].clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < stop {
                if gateway {
                    clients.analyze(&image).await;
                } else {
                    clients.direct(&image).await;
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / seconds as f64
}

fn main() {
    let args = args();
    let image = match &args.image {
        Some(path) => std::fs::read(path).unwrap(),
        None => support::png(64, 64),
    };
    let detections = vec![det::Detection {
        r#box: bx(10.0, 10.0, 30.0, 30.0),
        class_name: "damper".into(),
        score: 0.9,
    }];
    let lines = vec![ocr::TextLine {
        quad: None,
        r#box: bx(34.0, 15.0, 60.0, 25.0),
        text: "MD-31".into(),
        score: 0.95,
        direction: ocr::ReadingDirection::LeftToRight as i32,
    }];
    let detector = FakeServer::detector(Behaviour::new(), detections);
    let ocr_fake = FakeServer::ocr(Behaviour::new(), lines);

    // The gateway on its own two-thread runtime, limits raised so nothing is shed.
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = gateway_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let backend = |url: String| BackendSettings {
        urls: vec![url],
        concurrency: 4 * args.concurrency,
        timeout: Duration::from_secs(10),
        discovery: Default::default(),
        ejection: Default::default(),
    };
    let settings = GatewaySettings {
        detector: backend(detector.url()),
        ocr: backend(ocr_fake.url()),
        limits: Limits {
            max_bytes: 20 << 20,
            max_pixels: 40_000_000,
        },
        max_request_bytes: 24 << 20,
        max_concurrent_analyze: 4 * args.concurrency,
        stream_in_flight: 4,
        drain_timeout: Duration::from_millis(100),
    };
    let registry = prometheus::Registry::new();
    let metrics = registry.clone();
    gateway_rt.spawn(async move {
        run(
            settings,
            &metrics,
            listener,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap()
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(Clients {
                gateway: GatewayClient::new(channel(&gateway_url).await)
                    .max_decoding_message_size(64 << 20),
                detector: DetectorClient::new(channel(&detector.url()).await),
                ocr: OcrClient::new(channel(&ocr_fake.url()).await),
            });
        }
        println!(
            "image: {} bytes; {} sequential calls each; {} s at concurrency {}",
            image.len(),
            args.calls,
            args.seconds,
            args.concurrency
        );
        let direct = latency(&mut clients[0], &image, args.calls, false).await;
        let gateway = latency(&mut clients[0], &image, args.calls, true).await;
        println!(
            "{:<44} {:>9} {:>9}",
            "one call at a time", "p50 ms", "p99 ms"
        );
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "direct: Detect, then ReadText",
            percentile(&direct, 0.5),
            percentile(&direct, 0.99)
        );
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "through the gateway: Analyze",
            percentile(&gateway, 0.5),
            percentile(&gateway, 0.99)
        );
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "added by the gateway",
            percentile(&gateway, 0.5) - percentile(&direct, 0.5),
            percentile(&gateway, 0.99) - percentile(&direct, 0.99)
        );
        let direct_rate = throughput(&clients, &image, args.concurrency, args.seconds, false).await;
        let gateway_rate = throughput(&clients, &image, args.concurrency, args.seconds, true).await;
        println!("{:<44} {:>9}", "at saturation", "calls/s");
        println!(
            "{:<44} {:>9.0}",
            "direct: Detect, then ReadText", direct_rate
        );
        println!(
            "{:<44} {:>9.0}",
            "through the gateway: Analyze", gateway_rate
        );
    });
    let shed: f64 = plenum_runtime::metrics::render(&registry)
        .lines()
        .filter(|l| l.starts_with("plenum_gateway_backend_shed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("calls shed by the gateway during the run: {shed}");
}
