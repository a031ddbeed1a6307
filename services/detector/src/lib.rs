//! The detector service: YOLO (Ultralytics TorchScript exports) over the engine.
//!
//! Rooms: [`yolo`] decodes model outputs exactly as Ultralytics does, [`pipeline`]
//! turns images into model inputs and detections back into source pixels (letterbox
//! or tiles), [`verify`] takes a second look at each detection, [`service`] is the
//! gRPC face, [`config`] the flags.
#![forbid(unsafe_code)]

pub mod config;
pub mod pipeline;
pub mod service;
pub mod verify;
pub mod yolo;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plenum_engine::serving::ModelService;
use plenum_engine::{Engine, EngineMetrics, EngineSettings, ModelManifest};
use plenum_lease::LeaseClient;
use plenum_proto::detector::v1::detector_server::DetectorServer;
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use plenum_vision::decode::Limits;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Detector;
use crate::service::DetectorService;
use crate::verify::Verifier;

/// Everything the detector needs, resolved from flags.
pub struct DetectorSettings {
    pub manifest: ModelManifest,
    pub engine: EngineSettings,
    pub lease: Option<LeaseClient>,
    pub limits: Limits,
    pub max_images: usize,
    pub max_request_bytes: usize,
    pub tile_overlap: u32,
    /// Longest page side fed to the model in one pass at native scale; tiles beyond.
    pub max_single_pass: u32,
    /// Scale of that one pass (1 = the page's own).
    pub pass_scale: f32,
    pub drain_timeout: Duration,
}

/// Loads the model named `model` from `<models>/detector/<model>.toml`.
pub fn load_manifest(
    models: &Path,
    model: &str,
) -> Result<ModelManifest, plenum_engine::manifest::ManifestError> {
    ModelManifest::load(&models.join("detector").join(format!("{model}.toml")))
}

/// Serves on `listener` at once (NOT_SERVING, calls UNAVAILABLE) while the model
/// loads and is placed through the broker, then SERVING until `shutdown`. If the
/// model's thread stops, returns [`plenum_engine::ModelStopped`] after a drain.
pub async fn run(
    settings: DetectorSettings,
    metrics: &prometheus::Registry,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let engine_metrics = EngineMetrics::register(metrics, "detector", &settings.manifest.name)?;
    let verifier_manifest = verify::manifest_for(&settings.manifest)?;
    let verifier_metrics = match &verifier_manifest {
        Some(manifest) => Some(EngineMetrics::register(
            metrics,
            "detector",
            &manifest.name,
        )?),
        None => None,
    };
    let detector = Arc::new(OnceLock::new());
    let service = DetectorServer::new(DetectorService::new(
        Arc::clone(&detector),
        settings.max_images,
    ))
    .max_decoding_message_size(settings.max_request_bytes);
    let server = GrpcServer::new().add_service(service);
    let mut serving = ModelService::start::<DetectorServer<DetectorService>>(
        server,
        listener,
        &shutdown,
        settings.drain_timeout,
    )
    .await;
    let (work_memory, work_wait) = (settings.engine.work_memory, settings.engine.work_wait);
    // The same rule as the OCR service's: a model without the --precision asked for
    // runs fp32 (logged), so one PLENUM_PRECISION can cover a whole deployment.
    let engine_settings = settings.engine.for_model(&settings.manifest);
    let verifier_settings = verifier_manifest
        .as_ref()
        .map(|manifest| settings.engine.for_model(manifest));
    let lease = settings.lease;
    // One after the other, like the OCR service's models: each holds its own lease.
    let loading = async move {
        let detector = Engine::start(
            settings.manifest,
            engine_settings,
            lease.clone(),
            engine_metrics,
        )
        .await?;
        let verifier = match (verifier_manifest, verifier_settings, verifier_metrics) {
            (Some(manifest), Some(settings), Some(metrics)) => {
                Some(Engine::start(manifest, settings, lease, metrics).await?)
            }
            _ => None,
        };
        Ok::<_, plenum_engine::EngineError>((detector, verifier))
    };
    let Some((engine, verifier)) = serving.load(loading).await? else {
        return Ok(());
    };
    let mut engines = vec![engine.clone()];
    let mut pipeline = Detector::new(
        engine,
        settings.limits,
        settings.tile_overlap,
        settings.max_single_pass,
    )
    .with_pass_scale(settings.pass_scale);
    if let Some(verifier) = verifier {
        engines.push(verifier.clone());
        let verifier = Verifier::new(verifier, pipeline.classes())?;
        pipeline = pipeline.with_verifier(verifier);
    }
    let _ = detector.set(pipeline.with_work_memory(work_memory, work_wait));
    serving.serve(&engines).await
}
