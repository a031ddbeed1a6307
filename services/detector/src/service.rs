//! `plenum.detector.v1.Detector`: validates, runs the pipeline, and converts every
//! error to a status in one place.

use std::sync::{Arc, OnceLock};

use plenum_engine::status::models_loading;
use plenum_proto::common::v1 as common;
use plenum_proto::detector::v1::{self as pb, detector_server::Detector as DetectorApi};
use plenum_runtime::status::{internal, invalid_field as bad};
use tonic::{Request, Response, Status};

use crate::pipeline::{DetectOptions, Detector, PipelineError, Tiling};

const DEFAULT_SCORE: f32 = 0.25;
const DEFAULT_IOU: f32 = 0.7;

pub struct DetectorService {
    /// Empty while the model loads: calls are then UNAVAILABLE at once.
    detector: Arc<OnceLock<Detector>>,
    max_images: usize,
}

impl DetectorService {
    pub fn new(detector: Arc<OnceLock<Detector>>, max_images: usize) -> Self {
        Self {
            detector,
            max_images,
        }
    }

    fn detector(&self) -> Result<&Detector, Status> {
        self.detector.get().ok_or_else(models_loading)
    }
}

impl From<PipelineError> for Status {
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::Decode { index, source } => {
                bad(format!("images[{index}]"), source.to_string())
            }
            PipelineError::Engine(error) => error.into_status("detection"),
            PipelineError::Internal(_) => internal("detection", &error),
        }
    }
}

impl DetectorService {
    fn options(
        &self,
        detector: &Detector,
        options: Option<pb::DetectOptions>,
    ) -> Result<DetectOptions, Status> {
        let options = options.unwrap_or_default();
        let score_threshold = match options.score_threshold {
            0.0 => DEFAULT_SCORE,
            s if (0.0..1.0).contains(&s) => s,
            s => {
                return Err(bad(
                    "options.score_threshold",
                    format!("must be in [0, 1), got {s}"),
                ));
            }
        };
        let iou_threshold = match options.iou_threshold {
            0.0 => DEFAULT_IOU,
            iou if iou > 0.0 && iou <= 1.0 => iou,
            iou => {
                return Err(bad(
                    "options.iou_threshold",
                    format!("must be in (0, 1], got {iou}"),
                ));
            }
        };
        let known = detector.classes();
        let classes = if options.classes.is_empty() {
            None
        } else {
            let indices = options
                .classes
                .iter()
                .map(|name| {
                    known.iter().position(|class| class == name).ok_or_else(|| {
                        bad(
                            "options.classes",
                            format!(
                                "unknown class `{name}`; this model knows {}",
                                known.join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(indices)
        };
        let tiling = match pb::Tiling::try_from(options.tiling) {
            Ok(pb::Tiling::Unspecified | pb::Tiling::Auto) => Tiling::Auto,
            Ok(pb::Tiling::Off) => Tiling::Off,
            Ok(pb::Tiling::On) => Tiling::On,
            Err(_) => {
                return Err(bad(
                    "options.tiling",
                    format!("unknown tiling {}", options.tiling),
                ));
            }
        };
        let input_size = match options.input_size {
            0 => detector.native_size(),
            size if size % 32 == 0 && (32..=4096).contains(&size) => size,
            size => {
                return Err(bad(
                    "options.input_size",
                    format!("must be a multiple of 32 in [32, 4096], got {size}"),
                ));
            }
        };
        let confirmed_score_threshold = match options.confirmed_score_threshold {
            0.0 => None,
            _ if !options.verify => {
                return Err(bad(
                    "options.confirmed_score_threshold",
                    "needs options.verify: the verifier is what confirms a weak detection",
                ));
            }
            s if s > 0.0 && s < score_threshold => Some(s),
            s => {
                return Err(bad(
                    "options.confirmed_score_threshold",
                    format!(
                        "must be 0 (off) or in (0, score_threshold {score_threshold}), got {s}"
                    ),
                ));
            }
        };
        Ok(DetectOptions {
            score_threshold,
            confirmed_score_threshold,
            iou_threshold,
            classes,
            tiling,
            input_size,
            verify: options.verify,
            large_symbol_pass: options.large_symbol_pass,
            normalize_contrast: options.normalize_contrast,
        })
    }
}

#[tonic::async_trait]
impl DetectorApi for DetectorService {
    async fn detect(
        &self,
        request: Request<pb::DetectRequest>,
    ) -> Result<Response<pb::DetectResponse>, Status> {
        let request = request.into_inner();
        if request.images.is_empty() {
            return Err(bad("images", "at least one image is required"));
        }
        if request.images.len() > self.max_images {
            return Err(bad(
                "images",
                format!(
                    "{} images; at most {} per call",
                    request.images.len(),
                    self.max_images
                ),
            ));
        }
        let detector = self.detector()?;
        let options = self.options(detector, request.options)?;
        let results = detector.detect(request.images, &options).await?;
        let classes = detector.classes();
        let placement = if detector.engine().state().borrow().placement.is_gpu() {
            common::Placement::Gpu
        } else {
            common::Placement::Cpu
        };
        Ok(Response::new(pb::DetectResponse {
            results: results
                .into_iter()
                .map(|image| pb::ImageDetections {
                    width: image.width,
                    height: image.height,
                    tiles: image.tiles,
                    refused: image.refused,
                    relabeled: image.relabeled,
                    confirmed: image.confirmed,
                    detections: image
                        .detections
                        .into_iter()
                        .map(|d| pb::Detection {
                            r#box: Some(common::Box {
                                x_min: d.bbox.x_min,
                                y_min: d.bbox.y_min,
                                x_max: d.bbox.x_max,
                                y_max: d.bbox.y_max,
                            }),
                            class_name: classes
                                .get(d.class)
                                .cloned()
                                .unwrap_or_else(|| d.class.to_string()),
                            score: d.score,
                        })
                        .collect(),
                })
                .collect(),
            model: detector.engine().manifest().name.clone(),
            placement: placement as i32,
            known_classes: classes.to_vec(),
            verified_by: match detector.verifier() {
                Some(verifier) if options.verify => verifier.name().to_owned(),
                _ => String::new(),
            },
            tag_patterns: detector
                .engine()
                .manifest()
                .labels
                .tag_patterns
                .iter()
                .map(|(class, pattern)| (class.clone(), pattern.clone()))
                .collect(),
        }))
    }
}
