//! CPU speed of the models from Rust, without the engine: each model's TorchScript (tch
//! `CModule`), its AOTInductor package (`plenum_engine::aoti`, as provisioned by
//! models/provision_aoti.py) or its ONNX file on ONNX Runtime in this process
//! (`plenum_engine::onnx`, models/provision_onnx.py) called directly on fixed inputs.
//!
//!   OMP_WAIT_POLICY=PASSIVE cargo run --release --workspace --example bench_models \
//!       -- [--threads 2] [--warmup 3] [--runs 10] [--model det,rec,cls] [--format ts|aoti|onnx]
//!
//! Prints a table (median and p90 per model) and one line starting with `BENCH_JSON `
//! (the same, plus every sample) for scripts: `scripts/bench-models.sh` puts it beside
//! onnxruntime's numbers.

use std::path::PathBuf;
use std::time::Instant;

use plenum_engine::ModelManifest;
use plenum_engine::aoti::{AotiPackage, PackageManifest};
use plenum_engine::onnx::{OnnxManifest, OnnxSession};
use plenum_engine::tch::{self, CModule, Device, Kind, Tensor};

/// Model key, manifest (under models/), input shape: the shapes of
/// models/bench_ocr_models.py, then a 1600x1200 page as the pipeline feeds it.
const MODELS: [(&str, &str, [i64; 4]); 5] = [
    ("det", "ocr/generated/ppocr-v4-det.toml", [1, 3, 960, 960]),
    ("rec", "ocr/generated/ppocr-v4-rec.toml", [8, 3, 48, 320]),
    (
        "cls",
        "ocr/generated/ppocr-mobile-v2-cls.toml",
        [6, 3, 48, 192],
    ),
    (
        "det-page",
        "ocr/generated/ppocr-v4-det.toml",
        [1, 3, 1216, 1600],
    ),
    (
        "yolo-page",
        "detector/hvac-yolov8n.toml",
        [1, 3, 1216, 1600],
    ),
];

/// Which runtime runs the models.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    TorchScript,
    Aoti,
    /// ONNX Runtime in this process, as the engine runs it (`plenum_engine::onnx`).
    Onnx,
}

impl Format {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "ts" => Ok(Self::TorchScript),
            "aoti" => Ok(Self::Aoti),
            "onnx" => Ok(Self::Onnx),
            _ => Err(format!("--format {value}: ts, aoti or onnx")),
        }
    }

    /// The name in BENCH_JSON.
    fn backend(self) -> &'static str {
        match self {
            Self::TorchScript => "tch",
            Self::Aoti => "aoti",
            Self::Onnx => "onnx",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::TorchScript => "TorchScript (libtorch)",
            Self::Aoti => "AOTInductor (libtorch)",
            Self::Onnx => "ONNX Runtime (in process)",
        }
    }
}

/// One way of running a model.
enum Runner {
    TorchScript(CModule),
    Aoti(AotiPackage),
    Onnx(OnnxSession),
}

impl Runner {
    fn load(
        manifest: &ModelManifest,
        format: Format,
        threads: usize,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        manifest.verify()?;
        match format {
            Format::Aoti => {
                let sidecar = PackageManifest::beside(manifest)?.ok_or_else(|| {
                    format!("{}: no AOTInductor package provisioned", manifest.name)
                })?;
                Ok(Self::Aoti(AotiPackage::load(&sidecar.path())?))
            }
            Format::Onnx => {
                let sidecar = OnnxManifest::beside(manifest)?
                    .ok_or_else(|| format!("{}: no ONNX file provisioned", manifest.name))?;
                Ok(Self::Onnx(OnnxSession::load(&sidecar, threads)?))
            }
            Format::TorchScript => {
                let mut module = CModule::load_on_device(manifest.model_path(), Device::Cpu)?;
                module.f_set_eval()?;
                Ok(Self::TorchScript(module))
            }
        }
    }

    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        match self {
            Self::TorchScript(module) => module.forward_ts(&[input]).map_err(|e| e.to_string()),
            Self::Aoti(package) => package.run(input),
            Self::Onnx(session) => session.run(input),
        }
    }
}

struct Options {
    threads: i32,
    warmup: usize,
    runs: usize,
    dir: PathBuf,
    /// Model keys to run, in `MODELS` order.
    only: Vec<String>,
    format: Format,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        threads: 2,
        warmup: 3,
        runs: 10,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
        only: MODELS.iter().map(|(key, _, _)| (*key).to_owned()).collect(),
        format: Format::TorchScript,
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
            "--threads" => options.threads = number()? as i32,
            "--warmup" => options.warmup = number()?,
            "--runs" => options.runs = number()?.max(1),
            "--models" => options.dir = PathBuf::from(&value),
            "--format" => options.format = Format::parse(&value)?,
            "--model" => {
                options.only = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = options
                    .only
                    .iter()
                    .find(|key| !MODELS.iter().any(|(k, _, _)| k == key))
                {
                    return Err(format!(
                        "--model {bad}: not one of det, rec, cls, det-page, yolo-page"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --threads N --warmup N --runs N --model det,rec,cls --models DIR --format ts|aoti|onnx"
                ));
            }
        }
    }
    Ok(options)
}

/// The value at quantile `q` of sorted `samples` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

struct Timing {
    key: &'static str,
    input: String,
    median_ms: f64,
    p90_ms: f64,
    /// In the order they were taken, ms.
    samples: Vec<f64>,
}

fn bench(
    runner: &mut Runner,
    input: &Tensor,
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>, String> {
    tch::no_grad(|| {
        for _ in 0..warmup {
            let _ = runner.forward(input)?;
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let output = runner.forward(input)?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            drop(output);
        }
        Ok(samples)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    plenum_engine::omp::ensure_passive_wait_policy();
    let options = options()?;
    tch::set_num_threads(options.threads);
    let backend = options.format.backend();
    println!(
        "{} on CPU, {} threads, median of {} runs after {} warm-up",
        options.format.title(),
        tch::get_num_threads(),
        options.runs,
        options.warmup
    );
    let mut timings = Vec::new();
    for (key, manifest, shape) in MODELS {
        if !options.only.iter().any(|k| k == key) {
            continue;
        }
        let manifest = ModelManifest::load(&options.dir.join(manifest))?;
        let threads = usize::try_from(options.threads).unwrap_or(1).max(1);
        let mut runner = Runner::load(&manifest, options.format, threads)?;
        tch::manual_seed(0);
        let input = Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let samples = bench(&mut runner, &input, options.warmup, options.runs)?;
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        timings.push(Timing {
            key,
            input: shape.map(|d| d.to_string()).join("x"),
            median_ms: median(&sorted),
            p90_ms: quantile(&sorted, 0.9),
            samples,
        });
    }

    println!(
        "{:<9} {:<14} {:>10} {:>10}",
        "model", "input", "median ms", "p90 ms"
    );
    for t in &timings {
        println!(
            "{:<9} {:<14} {:>10.1} {:>10.1}",
            t.key, t.input, t.median_ms, t.p90_ms
        );
    }
    let models: Vec<String> = timings
        .iter()
        .map(|t| {
            let samples: Vec<String> = t.samples.iter().map(|s| format!("{s:.3}")).collect();
            format!(
                r#"{{"model":"{}","input":"{}","median_ms":{:.3},"p90_ms":{:.3},"samples_ms":[{}]}}"#,
                t.key,
                t.input,
                t.median_ms,
                t.p90_ms,
                samples.join(",")
            )
        })
        .collect();
    println!(
        r#"BENCH_JSON {{"backend":"{}","threads":{},"runs":{},"warmup":{},"models":[{}]}}"#,
        backend,
        tch::get_num_threads(),
        options.runs,
        options.warmup,
        models.join(",")
    );
    Ok(())
}
