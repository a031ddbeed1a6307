use plenum_gateway::backend::{BackendSettings, Ejection};
use plenum_gateway::config::{Config, SERVICE};
use plenum_gateway::discovery::{Discovery, Resolver};
use plenum_gateway::{GatewaySettings, run};
use plenum_runtime::service::{self, Started};

fn main() -> anyhow::Result<()> {
    service::main(&SERVICE, |started: Started<Config>| async move {
        let settings = settings(&started.config);
        tracing::info!(detector = ?settings.detector.urls, ocr = ?settings.ocr.urls, "gateway backends");
        run(
            settings,
            &started.registry,
            started.listener,
            started.shutdown,
        )
        .await
    })
}

fn settings(config: &Config) -> GatewaySettings {
    let discovery = Discovery {
        resolver: Resolver::default(),
        interval: config.resolve_interval,
    };
    let ejection = Ejection {
        duration: config.eject_for,
        after_timeouts: config.eject_after_timeouts,
    };
    GatewaySettings {
        detector: BackendSettings {
            urls: config.detector.clone(),
            concurrency: config.detector_concurrency,
            timeout: config.detector_timeout,
            discovery: discovery.clone(),
            ejection,
        },
        ocr: BackendSettings {
            urls: config.ocr.clone(),
            concurrency: config.ocr_concurrency,
            timeout: config.ocr_timeout,
            discovery,
            ejection,
        },
        limits: config.image_limits.limits(),
        max_request_bytes: config.max_request_bytes as usize,
        max_concurrent_analyze: config.max_concurrent_analyze,
        stream_in_flight: config.stream_in_flight,
        drain_timeout: config.server.drain_timeout,
    }
}
