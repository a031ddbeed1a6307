//! `plenum-gpu-check`: on a machine with an NVIDIA GPU, starts a broker on NVML,
//! loads each provisioned model onto cuda:0 through a lease, in every precision its
//! manifest lists (fp32, and the fp16 variant once provisioned), and prints what the
//! broker granted against what NVML measured, the committed size, per-batch
//! latency, and one idle offload and promotion (GPU ⇄ CPU) with the latency of the
//! first request after it. Fails clearly (exit 2) without a GPU. `burst` replays
//! the old system's crash against the real services (see [`burst`]). Run by
//! scripts/gpu-check.sh.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use plenum_broker::inventory::{Inventory, Nvml};
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_engine::tch::{self, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, ModelManifest, Move, Precision,
};
use plenum_lease::{LeaseClient, LeaseClientConfig, Priority};
use plenum_proto::broker::v1 as pb;
use plenum_runtime::bytes::format_bytes;
use tokio_util::sync::CancellationToken;

mod burst;

/// Loads every model on the GPU through a broker lease and reports the books; `burst`
/// replays the old system's crash against the real services.
#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Manifests to load (default: every *.toml under models/ocr/generated and models/detector).
    manifests: Vec<PathBuf>,
    /// Timed runs per batch size.
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The broker on NVML, the detector and OCR services on cuda, a burst of large pages,
    /// NVML sampled every 100 ms against the leases, and one deliberate over-allocation.
    Burst(burst::BurstArgs),
}

fn default_manifests() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["models/ocr/generated", "models/detector"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let provisioned_variants = path.to_string_lossy().ends_with(".variants.toml");
                if path.extension().is_some_and(|ext| ext == "toml") && !provisioned_variants {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    found
}

#[tokio::main]
async fn main() -> ExitCode {
    plenum_engine::omp::ensure_passive_wait_policy();
    let args = Args::parse();
    let outcome = match args.command {
        Some(Command::Burst(burst)) => burst::run(burst).await,
        None => run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpu-check FAILED: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let nvml = Nvml::open()
        .map_err(|e| anyhow::anyhow!("no NVML here ({e}): this check needs an NVIDIA GPU"))?;
    anyhow::ensure!(!nvml.devices().is_empty(), "NVML sees no GPU");
    anyhow::ensure!(
        tch::Cuda::is_available(),
        "libtorch sees no CUDA device (is LD_LIBRARY_PATH on torch/lib, and was libtorch_cuda linked?)"
    );
    for device in nvml.devices() {
        println!(
            "GPU {}: {} ({}), {}",
            device.index,
            device.name,
            device.uuid,
            format_bytes(device.total_bytes)
        );
    }
    let manifests = if args.manifests.is_empty() {
        default_manifests()
    } else {
        args.manifests
    };
    anyhow::ensure!(
        !manifests.is_empty(),
        "no model manifests found (run from the repository root)"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: 512 << 20,
                ..LedgerConfig::default()
            },
            inventory: Arc::new(nvml),
            token: None,
            poll_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(1),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await });

    let mut status_client = pb::broker_client::BrokerClient::connect(url.clone()).await?;
    println!();
    println!(
        "{:<27} {:>10} {:>12} {:>12} {:>12} {:>14} {:>14} {:>11} {:>11} {:>13}",
        "model",
        "placement",
        "estimate",
        "granted",
        "committed",
        "batch 1 p50",
        "batch 8 p50",
        "offload",
        "promotion",
        "1st after"
    );
    let mut engines = Vec::new();
    let mut runs = Vec::new();
    for path in manifests {
        let manifest = ModelManifest::load(&path)?;
        runs.push((manifest.clone(), Precision::Fp32));
        for variant in &manifest.variants {
            runs.push((manifest.clone(), variant.precision));
        }
    }
    for (manifest, precision) in runs {
        let manifest = manifest.with_precision(precision)?;
        let estimate = manifest.vram_estimate_bytes;
        let name = format!("{}/{precision}", manifest.name);
        let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), name.clone()))?;
        let metrics = EngineMetrics::unregistered(&manifest.name);
        let settings = EngineSettings {
            device: DeviceChoice::Cuda,
            lease_wait: Duration::from_secs(10),
            priority: Priority::Normal,
            idle_after: Duration::from_millis(200),
            // One idle offload and promotion is measured after the latencies.
            idle_offload: Some(Duration::from_secs(1)),
            ..EngineSettings::default()
        };
        let engine =
            Engine::start(manifest.clone(), settings, Some(lease), metrics.clone()).await?;
        let placement = engine.state().borrow().placement;
        let status = status_client
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        let lease = status.leases.iter().find(|lease| {
            lease
                .holder
                .as_ref()
                .is_some_and(|holder| holder.name == name)
        });
        let (granted, committed) =
            lease.map_or((0, 0), |lease| (lease.granted_bytes, lease.measured_bytes));
        let mut shape = manifest.warmup_shape();
        let mut latencies = Vec::new();
        for batch in [1, 8] {
            shape[0] = batch;
            let mut times = Vec::new();
            for _ in 0..args.runs {
                let input = Tensor::rand(shape.as_slice(), (Kind::Float, tch::Device::Cpu));
                let started = Instant::now();
                let _output = engine.infer(input).await?;
                times.push(started.elapsed());
            }
            times.sort();
            latencies.push(times[times.len() / 2]);
        }
        // Idle: offloaded to the CPU; one request promotes it back.
        let mut state = engine.state();
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| !s.placement.is_gpu()),
        )
        .await??;
        shape[0] = 1;
        let started = Instant::now();
        let _output = engine
            .infer(Tensor::rand(
                shape.as_slice(),
                (Kind::Float, tch::Device::Cpu),
            ))
            .await?;
        let first_after = started.elapsed();
        tokio::time::timeout(
            Duration::from_secs(30),
            state.wait_for(|s| s.placement.is_gpu()),
        )
        .await??;
        let move_ms = |kind| {
            let (count, sum) = metrics.moves(kind);
            sum * 1e3 / count.max(1) as f64
        };
        println!(
            "{:<27} {:>10} {:>12} {:>12} {:>12} {:>11.2} ms {:>11.2} ms {:>8.1} ms {:>8.1} ms {:>10.1} ms",
            name,
            format!("{placement:?}"),
            format_bytes(estimate),
            format_bytes(granted),
            format_bytes(committed),
            latencies[0].as_secs_f64() * 1e3,
            latencies[1].as_secs_f64() * 1e3,
            move_ms(Move::Offload),
            move_ms(Move::Promotion),
            first_after.as_secs_f64() * 1e3
        );
        engines.push(engine);
    }
    let status = status_client
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    println!();
    for device in &status.devices {
        println!(
            "device {}: NVML used {}, leased {}, measured {}, external {}, free for leases {}",
            device.index,
            format_bytes(device.used_bytes),
            format_bytes(device.leased_bytes),
            format_bytes(device.measured_bytes),
            format_bytes(device.external_bytes),
            format_bytes(device.free_for_lease_bytes)
        );
    }
    shutdown.cancel();
    Ok(())
}
