use anyhow::Context;
use plenum_detector::config::{Config, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN};
use plenum_detector::{DetectorSettings, load_manifest, run};
use plenum_engine::manifest::default_models_dir;
use plenum_lease::LeaseClient;
use plenum_runtime::config::parse_with_defaults;
use plenum_runtime::{metrics, shutdown, telemetry};
use plenum_vision::decode::Limits;

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
        ("listen", DEFAULT_LISTEN),
        ("metrics_listen", DEFAULT_METRICS_LISTEN),
    ]);
    let telemetry = telemetry::init("plenum-detector", &config.telemetry)?;
    tracing::info!(?config, "starting plenum-detector");
    let shutdown = shutdown::on_signal();

    let models = config
        .models
        .clone()
        .unwrap_or_else(|| default_models_dir("detector"));
    let manifest = load_manifest(&models, &config.model).with_context(|| {
        format!(
            "cannot load model `{}` from {}",
            config.model,
            models.display()
        )
    })?;
    let lease = LeaseClient::from_args(&config.broker, "detector")?;
    let registry = prometheus::Registry::new();
    if let Some(addr) = config.server.metrics_listen {
        metrics::spawn(addr, registry.clone(), shutdown.clone()).await?;
    }
    let listener = config.server.bind().await?;
    let settings = DetectorSettings {
        manifest,
        engine: config.engine.settings(),
        lease,
        limits: Limits {
            max_bytes: config.max_image_bytes as usize,
            max_pixels: config.max_image_pixels,
        },
        max_images: config.max_images,
        max_request_bytes: config.max_request_bytes as usize,
        tile_overlap: config.tile_overlap,
        max_single_pass: config.max_single_pass,
        drain_timeout: config.server.drain_timeout,
    };
    tracing::info!(addr = %listener.local_addr()?, "detector listening; NOT_SERVING until the model is loaded");
    let outcome = run(settings, &registry, listener, shutdown).await;
    telemetry.shutdown();
    outcome
}
