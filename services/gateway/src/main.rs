use plenum_gateway::backend::BackendSettings;
use plenum_gateway::config::{Config, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN};
use plenum_gateway::discovery::{Discovery, Resolver};
use plenum_gateway::{GatewaySettings, run};
use plenum_runtime::config::parse_with_defaults;
use plenum_runtime::{metrics, shutdown, telemetry};
use plenum_vision::decode::Limits;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = parse_with_defaults(&[
        ("listen", DEFAULT_LISTEN),
        ("metrics_listen", DEFAULT_METRICS_LISTEN),
    ]);
    let telemetry = telemetry::init("plenum-gateway", &config.telemetry)?;
    tracing::info!(?config, "starting plenum-gateway");
    let shutdown = shutdown::on_signal();

    let registry = prometheus::Registry::new();
    if let Some(addr) = config.server.metrics_listen {
        metrics::spawn(addr, registry.clone(), shutdown.clone()).await?;
    }
    let listener = config.server.bind().await?;
    let discovery = Discovery {
        resolver: Resolver::default(),
        interval: config.resolve_interval,
    };
    let settings = GatewaySettings {
        detector: BackendSettings {
            urls: config.detector.clone(),
            concurrency: config.detector_concurrency,
            timeout: config.detector_timeout,
            discovery: discovery.clone(),
        },
        ocr: BackendSettings {
            urls: config.ocr.clone(),
            concurrency: config.ocr_concurrency,
            timeout: config.ocr_timeout,
            discovery,
        },
        limits: Limits {
            max_bytes: config.max_image_bytes as usize,
            max_pixels: config.max_image_pixels,
        },
        max_request_bytes: config.max_request_bytes as usize,
        max_concurrent_analyze: config.max_concurrent_analyze,
        stream_in_flight: config.stream_in_flight,
        drain_timeout: config.server.drain_timeout,
    };
    tracing::info!(addr = %listener.local_addr()?, detector = ?settings.detector.urls, ocr = ?settings.ocr.urls, "gateway listening");
    run(settings, &registry, listener, shutdown).await?;
    telemetry.shutdown();
    Ok(())
}
