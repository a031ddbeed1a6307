use std::path::PathBuf;

use plenum_engine::EngineArgs;
use plenum_engine::manifest::default_models_dir;
use plenum_lease::LeaseClient;
use plenum_ocr::{OcrSettings, run};
use plenum_runtime::config::{BrokerClientArgs, ServerArgs, TelemetryArgs, parse_with_defaults};
use plenum_runtime::{metrics, shutdown, telemetry};
use plenum_vision::decode::Limits;

/// plenum-ocr: PP-OCRv4 text detection and recognition on tch, placed under a broker lease.
#[derive(Debug, clap::Parser)]
#[command(name = "plenum-ocr", version)]
struct Config {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(flatten)]
    broker: BrokerClientArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Folder holding the models (default: `models/` of the checkout).
    #[arg(long, env = "PLENUM_MODELS")]
    models: Option<PathBuf>,
    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "PLENUM_MAX_REQUEST_BYTES", default_value = "64MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    max_request_bytes: u64,
    /// Largest encoded crop or page accepted, in bytes. Pages come whole from the
    /// gateway, so this matches the detector's limit.
    #[arg(long, env = "PLENUM_MAX_IMAGE_BYTES", default_value = "20MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    max_image_bytes: u64,
    /// Largest crop or page accepted, in pixels (checked from the header, before decoding).
    /// Pages are scaled to at most 2000 px on the longer side before detection, so a
    /// 300 dpi A4 scan (8.7 MP) costs no more to read than a screen shot.
    #[arg(long, env = "PLENUM_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    max_image_pixels: u64,
    /// Most crops in one Recognize call.
    #[arg(long, env = "PLENUM_MAX_CROPS", default_value_t = 256)]
    max_crops: usize,
}

fn main() -> anyhow::Result<()> {
    // Before libtorch loads: libgomp reads its wait policy only once.
    plenum_engine::omp::ensure_passive_wait_policy();
    // The runtime stays alive until the exit: a stopped model's thread may still use it.
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(serve());
    // A model that stopped ends the process with its own code, for a restart.
    plenum_engine::health::exit_if_stopped(outcome)
}

async fn serve() -> anyhow::Result<()> {
    let config: Config = parse_with_defaults(&[
        ("listen", "127.0.0.1:7003"),
        ("metrics_listen", "127.0.0.1:9103"),
    ]);
    let telemetry = telemetry::init("plenum-ocr", &config.telemetry)?;
    tracing::info!(?config, "starting plenum-ocr");
    let shutdown = shutdown::on_signal();
    let lease = LeaseClient::from_args(&config.broker, "ocr")?;
    let registry = prometheus::Registry::new();
    if let Some(addr) = config.server.metrics_listen {
        metrics::spawn(addr, registry.clone(), shutdown.clone()).await?;
    }
    let listener = config.server.bind().await?;
    let settings = OcrSettings {
        models: config
            .models
            .clone()
            .unwrap_or_else(|| default_models_dir("ocr")),
        engine: config.engine.settings(),
        lease,
        limits: Limits {
            max_bytes: config.max_image_bytes as usize,
            max_pixels: config.max_image_pixels,
        },
        max_crops: config.max_crops,
        max_request_bytes: config.max_request_bytes as usize,
        drain_timeout: config.server.drain_timeout,
    };
    let outcome = run(settings, &registry, listener, shutdown).await;
    telemetry.shutdown();
    outcome
}
