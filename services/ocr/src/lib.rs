//! The OCR service: PP-OCRv4 mobile over the engine, as RapidOCR 1.4.4 runs it.
//! `Recognize` reads crops (the angle classifier turns upside-down ones first);
//! `ReadText` finds the text lines of a page with DB text detection and reads them.
//!
//! Rooms: [`text`] and [`detect`] are PaddleOCR's pre/post-processing (pure),
//! [`reader`] runs recognition and angle models on crops, [`page`] adds the detector,
//! [`service`] is the gRPC face, [`work`] admits requests by their working memory.
#![forbid(unsafe_code)]

pub mod broken;
pub mod detect;
pub mod page;
pub mod reader;
pub mod service;
pub mod text;
pub mod turned;
pub mod work;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plenum_engine::serving::ModelService;
use plenum_engine::{Engine, EngineMetrics, EngineSettings, ModelManifest};
use plenum_lease::LeaseClient;
use plenum_proto::ocr::v1::ocr_server::OcrServer;
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use plenum_vision::decode::Limits;
use tokio_util::sync::CancellationToken;

use crate::page::PageReader;
use crate::reader::Reader;
use crate::service::OcrService;
use crate::work::OcrWork;

pub struct OcrSettings {
    pub models: std::path::PathBuf,
    pub engine: EngineSettings,
    pub lease: Option<LeaseClient>,
    pub limits: Limits,
    pub max_crops: usize,
    /// Reading within regions takes the fast path ([`PageReader::read`]).
    pub fast_within: bool,
    pub max_request_bytes: usize,
    pub drain_timeout: Duration,
}

/// The three models' manifests (det, rec, cls) under `models`.
pub fn manifests(models: &Path) -> anyhow::Result<[ModelManifest; 3]> {
    Ok([
        manifest(models, "ppocr-v4-det")?,
        manifest(models, "ppocr-v4-rec")?,
        manifest(models, "ppocr-mobile-v2-cls")?,
    ])
}

fn manifest(models: &Path, name: &str) -> anyhow::Result<ModelManifest> {
    let path = models.join("ocr/generated").join(format!("{name}.toml"));
    ModelManifest::load(&path)
        .map_err(|error| anyhow::anyhow!("{error} (run `make setup` to provision the OCR models)"))
}

/// Serves on `listener` at once (NOT_SERVING, calls UNAVAILABLE) while the text
/// detector, the recognizer and the angle classifier load, then SERVING until
/// `shutdown`. If a model's thread stops, returns [`plenum_engine::ModelStopped`]
/// after a drain.
pub async fn run(
    settings: OcrSettings,
    metrics: &prometheus::Registry,
    listener: impl Into<Listener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rec_manifest = manifest(&settings.models, "ppocr-v4-rec")?;
    let cls_manifest = manifest(&settings.models, "ppocr-mobile-v2-cls")?;
    let det_manifest = manifest(&settings.models, "ppocr-v4-det")?;
    let dictionary = rec_manifest.dictionary()?;
    let rec_metrics = EngineMetrics::register(metrics, "ocr", &rec_manifest.name)?;
    let cls_metrics = EngineMetrics::register(metrics, "ocr", &cls_manifest.name)?;
    let det_metrics = EngineMetrics::register(metrics, "ocr", &det_manifest.name)?;
    let reader = Arc::new(OnceLock::new());
    let service = OcrServer::new(OcrService::new(
        Arc::clone(&reader),
        settings.limits,
        settings.max_crops,
    ))
    .max_decoding_message_size(settings.max_request_bytes);
    let server = GrpcServer::new().add_service(service);
    let mut serving = ModelService::start::<OcrServer<OcrService>>(
        server,
        listener,
        &shutdown,
        settings.drain_timeout,
    )
    .await;
    let engine = settings.engine;
    let (work_memory, work_wait) = (engine.work_memory, engine.work_wait);
    let max_pixels = settings.limits.max_pixels;
    let lease = settings.lease;
    // One after the other: each model's lease is single-flight on the broker anyway.
    let loading = async move {
        // One --precision for three models: one without that variant runs fp32.
        let rec_settings = engine.for_model(&rec_manifest);
        let rec = Engine::start(rec_manifest, rec_settings, lease.clone(), rec_metrics).await?;
        let cls_settings = engine.for_model(&cls_manifest);
        let cls = Engine::start(cls_manifest, cls_settings, lease.clone(), cls_metrics).await?;
        // The detector holds its own lease, like the other two models.
        let det_settings = engine.for_model(&det_manifest);
        let det = Engine::start(det_manifest, det_settings, lease, det_metrics).await?;
        Ok::<_, plenum_engine::EngineError>([rec, cls, det])
    };
    let Some(engines) = serving.load(loading).await? else {
        return Ok(());
    };
    let [rec, cls, det] = engines.clone();
    let work = OcrWork::new(
        det.clone(),
        rec.clone(),
        cls.clone(),
        work_memory,
        work_wait,
        max_pixels,
    );
    let _ = reader.set(
        PageReader::new(det, Reader::new(rec, cls, dictionary), work)
            .with_fast_within(settings.fast_within),
    );
    serving.serve(&engines).await
}
