//! CPU speed of the converted OCR models on tch (libtorch from Rust), without the
//! engine: each model's TorchScript called directly on fixed inputs.
//!
//!   OMP_WAIT_POLICY=PASSIVE cargo run --release -p plenum-engine --example bench_models \
//!       -- [--threads 2] [--warmup 3] [--runs 10] [--model det,rec,cls]
//!
//! Prints a table (median and p90 per model) and one line starting with `BENCH_JSON `
//! (the same, plus every sample) for scripts: `scripts/bench-models.sh` puts it beside
//! onnxruntime's numbers.

use std::path::PathBuf;
use std::time::Instant;

use plenum_engine::ModelManifest;
use plenum_engine::tch::{self, CModule, Device, Kind, Tensor};

/// Model key, manifest file, input shape: the shapes of models/bench_ocr_models.py.
const MODELS: [(&str, &str, [i64; 4]); 3] = [
    ("det", "ppocr-v4-det.toml", [1, 3, 960, 960]),
    ("rec", "ppocr-v4-rec.toml", [8, 3, 48, 320]),
    ("cls", "ppocr-mobile-v2-cls.toml", [6, 3, 48, 192]),
];

struct Options {
    threads: i32,
    warmup: usize,
    runs: usize,
    dir: PathBuf,
    /// Model keys to run, in `MODELS` order.
    only: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        threads: 2,
        warmup: 3,
        runs: 10,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/ocr/generated"),
        only: MODELS.iter().map(|(key, _, _)| (*key).to_owned()).collect(),
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
            "--model" => {
                options.only = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = options
                    .only
                    .iter()
                    .find(|key| !MODELS.iter().any(|(k, _, _)| k == key))
                {
                    return Err(format!("--model {bad}: not one of det, rec, cls"));
                }
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --threads N --warmup N --runs N --model det,rec,cls --models DIR"
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
    module: &CModule,
    input: &Tensor,
    warmup: usize,
    runs: usize,
) -> Result<Vec<f64>, tch::TchError> {
    tch::no_grad(|| {
        for _ in 0..warmup {
            let _ = module.forward_ts(&[input])?;
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let output = module.forward_ts(&[input])?;
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
    println!(
        "tch (libtorch) on CPU, {} threads, median of {} runs after {} warm-up",
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
        manifest.verify()?;
        let mut module = CModule::load_on_device(manifest.model_path(), Device::Cpu)?;
        module.f_set_eval()?;
        tch::manual_seed(0);
        let input = Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let samples = bench(&module, &input, options.warmup, options.runs)?;
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
        "{:<5} {:<14} {:>10} {:>10}",
        "model", "input", "median ms", "p90 ms"
    );
    for t in &timings {
        println!(
            "{:<5} {:<14} {:>10.1} {:>10.1}",
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
        r#"BENCH_JSON {{"backend":"tch","threads":{},"runs":{},"warmup":{},"models":[{}]}}"#,
        tch::get_num_threads(),
        options.runs,
        options.warmup,
        models.join(",")
    );
    Ok(())
}
