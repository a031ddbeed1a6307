//! Text-recognition throughput through the [`Engine`] on the CPU: one caller with no
//! batching, against concurrent callers whose requests the engine batches.
//!
//!   OMP_WAIT_POLICY=PASSIVE cargo run --release -p plenum-engine --example bench_batching \
//!       -- [--requests 64] [--callers 16] [--threads 2]
//!
//! (a) `sequential`: one caller sends 1x3x48x320 crops one after another, max_batch 1.
//! (b) `batched`: `--callers` callers each send their share of the same number of
//!     requests, one at a time (closed loop), max_batch 16, max_queue_delay 5 ms.
//!
//! Prints a markdown table: requests/s, latency per request (p50, p99) and the mean
//! rows per model call (from the engine's metrics).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plenum_engine::tch::{self, Device, Kind, Tensor};
use plenum_engine::{DeviceChoice, Engine, EngineMetrics, EngineSettings, ModelManifest};

const CROP: [i64; 4] = [1, 3, 48, 320];

struct Options {
    requests: usize,
    callers: usize,
    threads: i32,
    manifest: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        requests: 64,
        callers: 16,
        threads: 2,
        manifest: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/ocr/generated/ppocr-v4-rec.toml"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|error| format!("{flag} {value}: {error}"))
        };
        match flag.as_str() {
            "--requests" => options.requests = number()?.max(1),
            "--callers" => options.callers = number()?.max(1),
            "--threads" => options.threads = number()? as i32,
            "--manifest" => options.manifest = PathBuf::from(&value),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --requests N --callers N --threads N --manifest FILE"
                ));
            }
        }
    }
    Ok(options)
}

struct Outcome {
    mode: String,
    requests: usize,
    elapsed: Duration,
    /// Per request, sorted, in ms.
    latencies: Vec<f64>,
    calls: u64,
    rows: f64,
}

impl Outcome {
    fn quantile(&self, q: f64) -> f64 {
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

fn crop(seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand(CROP, (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn settings(max_batch: usize) -> EngineSettings {
    EngineSettings {
        device: DeviceChoice::Cpu,
        max_batch,
        max_queue_delay: Duration::from_millis(5),
        queue_capacity: 64,
        warmup_timeout: Duration::from_secs(60),
        ..EngineSettings::default()
    }
}

/// `callers` tasks share `requests` requests; each sends its next one when the
/// previous is answered. Returns wall time and per-request latencies.
async fn run(
    manifest: &ModelManifest,
    mode: &str,
    max_batch: usize,
    callers: usize,
    requests: usize,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let engine = Engine::start(
        manifest.clone(),
        settings(max_batch),
        None,
        EngineMetrics::unregistered(&manifest.name),
    )
    .await?;
    // A few requests beyond the engine's own warmup, not counted.
    for seed in 0..3 {
        let _ = engine.infer(crop(seed)).await?;
    }
    let (calls_before, rows_before) = engine.metrics().batches();

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let share = requests / callers + usize::from(caller < requests % callers);
        let inputs: Vec<Tensor> = (0..share)
            .map(|i| crop(1000 + (caller * requests + i) as i64))
            .collect();
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(inputs.len());
            for input in inputs {
                let sent = Instant::now();
                let _ = engine.infer(input).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, plenum_engine::EngineError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let (calls_after, rows_after) = engine.metrics().batches();
    latencies.sort_by(f64::total_cmp);
    Ok(Outcome {
        mode: mode.to_owned(),
        requests,
        elapsed,
        latencies,
        calls: calls_after - calls_before,
        rows: rows_after - rows_before,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    plenum_engine::omp::ensure_passive_wait_policy();
    let options = options()?;
    tch::set_num_threads(options.threads);
    let manifest = ModelManifest::load(&options.manifest)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcomes = runtime.block_on(async {
        let sequential = run(
            &manifest,
            "sequential (1 caller, max_batch 1)",
            1,
            1,
            options.requests,
        )
        .await?;
        let batched_mode = format!("batched ({} callers, max_batch 16, 5 ms)", options.callers);
        let batched = run(
            &manifest,
            &batched_mode,
            16,
            options.callers,
            options.requests,
        )
        .await?;
        Ok::<_, Box<dyn std::error::Error>>([sequential, batched])
    })?;

    println!(
        "{} ({}), {} requests of {}, tch {} threads, tokio 2 workers",
        manifest.name,
        manifest.file.display(),
        options.requests,
        CROP.map(|d| d.to_string()).join("x"),
        tch::get_num_threads()
    );
    println!(
        "| mode | requests | wall s | requests/s | p50 ms | p99 ms | model calls | mean rows/call |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
            o.mode,
            o.requests,
            o.elapsed.as_secs_f64(),
            o.requests as f64 / o.elapsed.as_secs_f64(),
            o.quantile(0.5),
            o.quantile(0.99),
            o.calls,
            o.rows / o.calls.max(1) as f64
        );
    }
    Ok(())
}
