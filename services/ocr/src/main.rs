use std::path::PathBuf;

use plenum_engine::EngineArgs;
use plenum_engine::manifest::default_models_dir;
use plenum_engine::serving::ModelServiceConfig;
use plenum_lease::LeaseClient;
use plenum_ocr::{OcrSettings, run};
use plenum_runtime::config::{BrokerClientArgs, ImageLimitsArgs, ServerArgs, TelemetryArgs};
use plenum_runtime::service::{Service, ServiceConfig, Started};

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
    // Pages come whole from the gateway, so the limits match the detector's. Pages
    // are scaled to at most 2000 px on the longer side before detection, so a 300 dpi
    // A4 scan (8.7 MP) costs no more to read than a screen shot.
    #[command(flatten)]
    image_limits: ImageLimitsArgs,
    /// Most crops in one Recognize call.
    #[arg(long, env = "PLENUM_MAX_CROPS", default_value_t = 256)]
    max_crops: usize,
    /// Read `read_within` calls (the gateway's) the fast way: recognition at the
    /// crops' own widths, not RapidOCR's 320 columns at least. `false` reads as
    /// RapidOCR does and keeps the lines touching a region.
    #[arg(long, env = "PLENUM_FAST_READ_WITHIN", default_value_t = true, action = clap::ArgAction::Set)]
    fast_read_within: bool,
}

const SERVICE: Service = Service {
    name: "plenum-ocr",
    listen: "127.0.0.1:7003",
    metrics_listen: "127.0.0.1:9103",
};

impl ServiceConfig for Config {
    fn shared(&self) -> (&ServerArgs, &TelemetryArgs) {
        (&self.server, &self.telemetry)
    }
}

impl ModelServiceConfig for Config {
    fn gpu_plan(&self) -> anyhow::Result<Option<u64>> {
        let models = self
            .models
            .clone()
            .unwrap_or_else(|| default_models_dir("ocr"));
        Ok(self.engine.gpu_plan(&plenum_ocr::manifests(&models)?))
    }
}

fn main() -> anyhow::Result<()> {
    plenum_engine::serving::main(&SERVICE, |started: Started<Config>| async move {
        let config = &started.config;
        let settings = OcrSettings {
            models: config
                .models
                .clone()
                .unwrap_or_else(|| default_models_dir("ocr")),
            engine: config.engine.settings(),
            lease: LeaseClient::from_args(&config.broker, "ocr")?,
            limits: config.image_limits.limits(),
            max_crops: config.max_crops,
            fast_within: config.fast_read_within,
            max_request_bytes: config.max_request_bytes as usize,
            drain_timeout: config.server.drain_timeout,
        };
        run(
            settings,
            &started.registry,
            started.listener,
            started.shutdown,
        )
        .await
    })
}
