//! `plenum.ocr.v1.Ocr`: validates crops, reads them, converts errors in one place.

use plenum_engine::EngineError;
use plenum_proto::common::v1 as common;
use plenum_proto::ocr::v1::{self as pb, ocr_server::Ocr};
use plenum_runtime::status::invalid_field as bad;
use plenum_vision::decode::{Limits, decode};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::reader::Reader;

pub struct OcrService {
    reader: Reader,
    limits: Limits,
    max_crops: usize,
}

impl OcrService {
    pub fn new(reader: Reader, limits: Limits, max_crops: usize) -> Self {
        Self {
            reader,
            limits,
            max_crops,
        }
    }
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::Overloaded { .. } => {
            let details =
                ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(100)));
            Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
        }
        EngineError::NotReady(_) => Status::unavailable(error.to_string()),
        EngineError::Inference(_) | EngineError::Load(_) => {
            tracing::error!(%error, "recognition failed");
            Status::internal("recognition failed; the details are in the OCR service's log")
        }
    }
}

#[tonic::async_trait]
impl Ocr for OcrService {
    async fn recognize(
        &self,
        request: Request<pb::RecognizeRequest>,
    ) -> Result<Response<pb::RecognizeResponse>, Status> {
        let request = request.into_inner();
        if request.crops.is_empty() {
            return Err(bad("crops", "at least one crop is required"));
        }
        if request.crops.len() > self.max_crops {
            return Err(bad(
                "crops",
                format!(
                    "{} crops; at most {} per call",
                    request.crops.len(),
                    self.max_crops
                ),
            ));
        }
        let limits = self.limits;
        // Decoding is CPU work: off the async threads.
        let crops = tokio::task::spawn_blocking(move || {
            request
                .crops
                .iter()
                .enumerate()
                .map(|(index, bytes)| {
                    decode(bytes, &limits)
                        .map(|d| d.image)
                        .map_err(|e| bad(format!("crops[{index}]"), e.to_string()))
                })
                .collect::<Result<Vec<_>, Status>>()
        })
        .await
        .map_err(|_| Status::internal("decoding failed"))??;
        let results = self
            .reader
            .recognize(crops, request.classify_angle)
            .await
            .map_err(engine_status)?;
        let placement = if self.reader.rec().state().borrow().placement.is_gpu() {
            common::Placement::Gpu
        } else {
            common::Placement::Cpu
        };
        Ok(Response::new(pb::RecognizeResponse {
            results: results
                .into_iter()
                .map(|r| pb::RecognizedText {
                    text: r.text,
                    score: r.score,
                    rotated_180: r.rotated,
                })
                .collect(),
            placement: placement as i32,
        }))
    }

    async fn read_text(
        &self,
        _request: Request<pb::ReadTextRequest>,
    ) -> Result<Response<pb::ReadTextResponse>, Status> {
        // Page reading needs DB text detection (binarise, contours, unclip) in Rust:
        // not built yet. Said plainly rather than answered wrongly.
        Err(Status::unimplemented(
            "ReadText (whole-page reading) is not built yet; Recognize reads crops",
        ))
    }
}
