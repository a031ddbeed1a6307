//! Idle offload and promotion per model, through the real engine and a real broker
//! over a simulated GPU: how long an idle model takes to move to the CPU and give
//! its lease back, how long a request takes to bring it back to the GPU, and the
//! latency of that first request (served from the CPU while the promotion runs)
//! next to a request on the (simulated) GPU.
//!
//!   cargo build --workspace --example bench_offload
//!   OMP_WAIT_POLICY=PASSIVE target/debug/examples/bench_offload [CYCLES]
//!
//! With a simulated GPU both placements compute on the CPU, so the moves cost the
//! lease protocol (Acquire, Commit, Release over gRPC) plus a CPU-to-CPU move; a lent
//! GPU adds the weights' copy (`scripts/gpu-check.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plenum_broker::inventory::Simulated;
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_engine::tch::{self, Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, EngineState, ModelManifest, Move,
};
use plenum_lease::{LeaseClient, LeaseClientConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const MODELS: [&str; 4] = [
    "detector/hvac-yolov8n.toml",
    "ocr/generated/ppocr-v4-det.toml",
    "ocr/generated/ppocr-v4-rec.toml",
    "ocr/generated/ppocr-mobile-v2-cls.toml",
];

async fn start_broker() -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: 1 << 30,
                ..LedgerConfig::default()
            },
            inventory: Arc::new(Simulated::parse("GTX 1070:8GiB").unwrap()),
            token: None,
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await.unwrap() });
    (url, shutdown)
}

async fn wait_for(engine: &Engine, check: impl Fn(&EngineState) -> bool) {
    let mut state = engine.state();
    tokio::time::timeout(Duration::from_secs(60), state.wait_for(|s| check(s)))
        .await
        .expect("state reached in time")
        .expect("engine alive");
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cycles: usize = std::env::args()
        .nth(1)
        .map_or(5, |arg| arg.parse().expect("CYCLES is a number"));
    tch::set_num_threads(2);
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let (url, shutdown) = start_broker().await;
    println!(
        "| model | offload (move to CPU + release) | promotion (request → on GPU) | first request after offload | request on GPU |"
    );
    println!("|---|---|---|---|---|");
    for path in MODELS {
        let manifest = ModelManifest::load(&models.join(path)).expect("provisioned model");
        let name = manifest.name.clone();
        let mut shape = manifest.warmup_shape();
        if manifest.task == "detect" || manifest.task == "text-detect" {
            shape = vec![1, 3, 640, 640];
        }
        let lease =
            LeaseClient::connect(LeaseClientConfig::new(url.clone(), name.clone())).unwrap();
        let metrics = EngineMetrics::unregistered(&name);
        let engine = Engine::start(
            manifest,
            EngineSettings {
                device: DeviceChoice::SimGpu,
                idle_after: Duration::from_millis(100),
                idle_offload: Some(Duration::from_millis(300)),
                ..EngineSettings::default()
            },
            Some(lease),
            metrics.clone(),
        )
        .await
        .expect("engine starts");
        let input = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu));
        let (mut first, mut on_gpu) = (Vec::new(), Vec::new());
        for _ in 0..cycles {
            wait_for(&engine, |s| s.placement.is_gpu()).await;
            let started = Instant::now();
            let _output = engine.infer(input.shallow_clone()).await.expect("served");
            on_gpu.push(started.elapsed().as_secs_f64() * 1e3);
            wait_for(&engine, |s| !s.placement.is_gpu()).await;
            let started = Instant::now();
            let _output = engine.infer(input.shallow_clone()).await.expect("served");
            first.push(started.elapsed().as_secs_f64() * 1e3);
        }
        wait_for(&engine, |s| s.placement.is_gpu()).await;
        let mean_ms = |kind| {
            let (count, sum) = metrics.moves(kind);
            sum * 1e3 / count.max(1) as f64
        };
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            mean_ms(Move::Offload),
            mean_ms(Move::Promotion),
            median(first),
            median(on_gpu),
        );
    }
    shutdown.cancel();
}
