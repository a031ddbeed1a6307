use anyhow::Context;
use plenum_detector::config::{Config, SERVICE};
use plenum_detector::{DetectorSettings, load_manifest, run};
use plenum_engine::manifest::default_models_dir;
use plenum_lease::LeaseClient;
use plenum_runtime::service::Started;

fn main() -> anyhow::Result<()> {
    plenum_engine::serving::main(&SERVICE, |started: Started<Config>| async move {
        let config = &started.config;
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
        let settings = DetectorSettings {
            manifest,
            engine: config.engine.settings(),
            lease: LeaseClient::from_args(&config.broker, "detector")?,
            limits: config.image_limits.limits(),
            max_images: config.max_images,
            max_request_bytes: config.max_request_bytes as usize,
            tile_overlap: config.tile_overlap,
            max_single_pass: config.max_single_pass,
            pass_scale: config.pass_scale,
            drain_timeout: config.server.drain_timeout,
        };
        tracing::info!("NOT_SERVING until the model is loaded");
        run(
            settings,
            &started.registry,
            started.listener,
            started.shutdown,
        )
        .await
    })
}
