//! Benchmark: Detect over loopback gRPC with the real model on the CPU.
//!
//!   cargo run --release -p plenum-detector --example bench_detect [-- ROUNDS]
//!
//! Prints one JSON line per scenario (scripts/bench-detector.sh sets them beside
//! Ultralytics' `predict` on the same images and thread count):
//! - single: one caller, one image per call, sequentially (a 640×640 crop);
//! - concurrent: 8 callers at once, one image per call (dynamic batching);
//! - page-*: 1600×1200 pages letterboxed to 640, 1280, native 1600, and tiled at 640,
//!   with recall (IoU ≥ 0.5, right class) against the generator's truth.
//! - page-verify: the independent renderer's 12 pages at the default fit, each without
//!   and with the verifier's second look, interleaved: what the second look costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plenum_detector::{DetectorSettings, load_manifest, run};
use plenum_engine::{DeviceChoice, EngineSettings};
use plenum_proto::detector::v1::{self as pb, detector_client::DetectorClient};
use plenum_vision::decode::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn request(image: &[u8], tiling: pb::Tiling) -> pb::DetectRequest {
    sized_request(image, tiling, 0)
}

fn sized_request(image: &[u8], tiling: pb::Tiling, input_size: u32) -> pb::DetectRequest {
    pb::DetectRequest {
        images: vec![image.to_vec()],
        options: Some(pb::DetectOptions {
            tiling: tiling as i32,
            input_size,
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    plenum_engine::tch::set_num_threads(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let settings = DetectorSettings {
        manifest: load_manifest(&repo().join("models"), "hvac-yolov8n").unwrap(),
        engine: EngineSettings {
            device: DeviceChoice::Cpu,
            max_batch: 8,
            max_queue_delay: Duration::from_millis(5),
            ..EngineSettings::default()
        },
        lease: None,
        limits: Limits::default(),
        max_images: 16,
        max_request_bytes: 64 << 20,
        tile_overlap: 128,
        max_single_pass: 2048,
        pass_scale: 1.0,
        drain_timeout: Duration::from_millis(100),
    };
    let registry = prometheus::Registry::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { run(settings, &registry, listener, stop).await.unwrap() });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    plenum_runtime::health::wait_serving(channel.clone(), Duration::from_secs(120))
        .await
        .expect("SERVING within two minutes");
    let client = DetectorClient::new(channel);

    let crop = std::fs::read(repo().join("tests/detector/images/case0_640x640.png")).unwrap();
    for _ in 0..3 {
        client
            .clone()
            .detect(request(&crop, pb::Tiling::Off))
            .await
            .unwrap();
    }

    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        client
            .clone()
            .detect(request(&crop, pb::Tiling::Off))
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"scenario\":\"single\",\"images_per_s\":{:.2},\"p50_ms\":{:.1},\"p99_ms\":{:.1}}}",
        rounds as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    let callers = 8;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = client.clone();
            let crop = crop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in 0..rounds / callers * 2 {
                    let t = Instant::now();
                    client
                        .detect(request(&crop, pb::Tiling::Off))
                        .await
                        .unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"scenario\":\"concurrent\",\"callers\":{callers},\"images_per_s\":{:.2},\"p50_ms\":{:.1},\"p99_ms\":{:.1}}}",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // A page both ways, over the committed sample pages, with recall against truth.
    let scenarios = [
        ("page-letterbox-640", pb::Tiling::Off, 640),
        ("page-letterbox-1280", pb::Tiling::Off, 1280),
        ("page-native-1600", pb::Tiling::Off, 1600),
        ("page-tiles-640", pb::Tiling::On, 0),
    ];
    for (name, tiling, input_size) in scenarios {
        let (mut found, mut total) = (0usize, 0usize);
        let mut latencies = Vec::new();
        for index in 0..10 {
            let page = repo().join(format!("tests/pages/page_{index:04}"));
            let bytes = std::fs::read(page.with_extension("png")).unwrap();
            let truth: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(page.with_extension("json")).unwrap(),
            )
            .unwrap();
            let t = Instant::now();
            let response = client
                .clone()
                .detect(sized_request(&bytes, tiling, input_size))
                .await
                .unwrap()
                .into_inner();
            latencies.push(t.elapsed());
            let detections = &response.results[0].detections;
            for symbol in truth["symbols"].as_array().unwrap() {
                total += 1;
                let b: Vec<f32> = symbol["box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                let hit = detections.iter().any(|d| {
                    let r = d.r#box.unwrap();
                    let w = (r.x_max.min(b[2]) - r.x_min.max(b[0])).max(0.0);
                    let h = (r.y_max.min(b[3]) - r.y_min.max(b[1])).max(0.0);
                    let inter = w * h;
                    let union = (r.x_max - r.x_min) * (r.y_max - r.y_min)
                        + (b[2] - b[0]) * (b[3] - b[1])
                        - inter;
                    d.class_name == symbol["class"].as_str().unwrap() && inter / union >= 0.5
                });
                found += usize::from(hit);
            }
        }
        latencies.sort();
        println!(
            "{{\"scenario\":\"{name}\",\"pages\":10,\"p50_ms\":{:.1},\"recall\":{:.3},\"found\":{found},\"symbols\":{total}}}",
            percentile(&latencies, 0.5),
            found as f64 / total as f64
        );
    }

    let (mut without, mut with, mut refused) = (Vec::new(), Vec::new(), 0);
    for _ in 0..3 {
        for index in 0..12 {
            let page = repo().join(format!("tests/pages-independent/page_{index:04}.png"));
            let bytes = std::fs::read(page).unwrap();
            for verify in [false, true] {
                let request = pb::DetectRequest {
                    images: vec![bytes.clone()],
                    options: Some(pb::DetectOptions {
                        verify,
                        ..Default::default()
                    }),
                };
                let t = Instant::now();
                let response = client.clone().detect(request).await.unwrap().into_inner();
                if verify {
                    with.push(t.elapsed());
                    refused += response.results[0].refused;
                } else {
                    without.push(t.elapsed());
                }
            }
        }
    }
    without.sort();
    with.sort();
    println!(
        "{{\"scenario\":\"page-verify\",\"pages\":12,\"rounds\":3,\"p50_ms_without\":{:.1},\"p50_ms_with\":{:.1},\"refused_per_page\":{:.1}}}",
        percentile(&without, 0.5),
        percentile(&with, 0.5),
        f64::from(refused) / with.len() as f64
    );
    shutdown.cancel();
}
