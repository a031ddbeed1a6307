//! The detector's one clap struct; every flag is also a `PLENUM_*` variable.

use std::path::PathBuf;

use plenum_engine::EngineArgs;
use plenum_engine::manifest::default_models_dir;
use plenum_engine::serving::ModelServiceConfig;
use plenum_runtime::config::{BrokerClientArgs, ImageLimitsArgs, ServerArgs, TelemetryArgs};
use plenum_runtime::service::{Service, ServiceConfig};

/// plenum-detector: YOLO detection on tch, placed on a GPU under a broker lease.
#[derive(Debug, clap::Parser)]
#[command(name = "plenum-detector", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub broker: BrokerClientArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Folder holding the models (default: `models/` of the checkout, found from the
    /// working directory or the binary's location).
    #[arg(long, env = "PLENUM_MODELS")]
    pub models: Option<PathBuf>,
    /// The detection model's manifest name under `<models>/detector/`.
    #[arg(long, env = "PLENUM_DETECTOR_MODEL", default_value = "hvac-yolov8n")]
    pub model: String,
    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "PLENUM_MAX_REQUEST_BYTES", default_value = "64MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    pub max_request_bytes: u64,
    #[command(flatten)]
    pub image_limits: ImageLimitsArgs,
    /// Most images in one Detect call.
    #[arg(long, env = "PLENUM_MAX_IMAGES", default_value_t = 16)]
    pub max_images: usize,
    /// Overlap between tiles of a large page, in pixels (more than the largest symbol).
    #[arg(long, env = "PLENUM_TILE_OVERLAP", default_value_t = 128)]
    pub tile_overlap: u32,
    /// Pages up to this many pixels on the longer side go through the model in one
    /// pass at their own scale; larger ones are tiled.
    #[arg(long, env = "PLENUM_MAX_SINGLE_PASS", default_value_t = 2048)]
    pub max_single_pass: u32,
    /// Scale of that one pass, in (0.25, 1]: 1 feeds the page at its own scale; 0.8
    /// reads a 1600x1200 page at 1280x960, in 0.71x the time, but misses more of the
    /// smallest symbols (docs/detector.md, "The pass scale").
    #[arg(long, env = "PLENUM_PASS_SCALE", default_value_t = 1.0, value_parser = pass_scale)]
    pub pass_scale: f32,
}

fn pass_scale(value: &str) -> Result<f32, String> {
    let scale: f32 = value.parse().map_err(|e| format!("not a number: {e}"))?;
    if scale > 0.25 && scale <= 1.0 {
        Ok(scale)
    } else {
        Err(format!("must be in (0.25, 1], got {scale}"))
    }
}

/// The service's name and default addresses.
pub const SERVICE: Service = Service {
    name: "plenum-detector",
    listen: "127.0.0.1:7002",
    metrics_listen: "127.0.0.1:9102",
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
            .unwrap_or_else(|| default_models_dir("detector"));
        let manifest = crate::load_manifest(&models, &self.model)?;
        // The verifier holds a lease of its own beside the detector's.
        let verifier = crate::verify::manifest_for(&manifest)?;
        Ok(self.engine.gpu_plan(
            &std::iter::once(manifest)
                .chain(verifier)
                .collect::<Vec<_>>(),
        ))
    }
}
