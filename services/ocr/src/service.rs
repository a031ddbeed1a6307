//! `plenum.ocr.v1.Ocr`: validates crops and pages, reads them, converts errors in one
//! place.

use std::sync::{Arc, OnceLock};

use plenum_engine::EngineError;
use plenum_engine::status::models_loading;
use plenum_proto::common::v1 as common;
use plenum_proto::ocr::v1::{self as pb, ocr_server::Ocr};
use plenum_runtime::status::invalid_field as bad;
use plenum_vision::decode::{Limits, decode, dimensions};
use tonic::{Request, Response, Status};

use crate::page::{Direction, Line, PageReader, ReadError};
use crate::text::RecWidth;
use crate::turned;

pub struct OcrService {
    /// Empty while the models load: calls are then UNAVAILABLE at once.
    reader: Arc<OnceLock<PageReader>>,
    limits: Limits,
    max_crops: usize,
}

impl OcrService {
    pub fn new(reader: Arc<OnceLock<PageReader>>, limits: Limits, max_crops: usize) -> Self {
        Self {
            reader,
            limits,
            max_crops,
        }
    }

    fn reader(&self) -> Result<&PageReader, Status> {
        self.reader.get().ok_or_else(models_loading)
    }
}

/// What the caller hears when the models could not read: the engine's status.
fn engine_status(error: EngineError) -> Status {
    error.into_status("recognition")
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
        let reader = self.reader()?;
        let limits = self.limits;
        let sizes = request
            .crops
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                dimensions(bytes, &limits)
                    .map_err(|e| bad(format!("crops[{index}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let work = reader.work();
        let _permit = work
            .budget()
            .admit(work.crops_bytes(&sizes))
            .await
            .map_err(|error| engine_status(error.into()))?;
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
        let results = reader
            .reader()
            .recognize(crops, request.classify_angle, RecWidth::RapidOcr)
            .await
            .map_err(engine_status)?;
        let placement = if reader.reader().rec().state().borrow().placement.is_gpu() {
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
        request: Request<pb::ReadTextRequest>,
    ) -> Result<Response<pb::ReadTextResponse>, Status> {
        let request = request.into_inner();
        let ignore = regions("ignore_regions", &request.ignore_regions)?;
        let within = regions("read_within", &request.read_within)?;
        let turned = regions("read_turned", &request.read_turned)?;
        if turned.len() > MAX_TURNED_REGIONS {
            return Err(bad(
                "read_turned",
                format!("{} regions; at most {MAX_TURNED_REGIONS}", turned.len()),
            ));
        }
        if !turned.is_empty() && !within.is_empty() {
            return Err(bad(
                "read_turned",
                "reads regions instead of the page: read_within must be empty",
            ));
        }
        let reader = self.reader()?;
        let limits = self.limits;
        let (width, height) =
            dimensions(&request.image, &limits).map_err(|e| bad("image", e.to_string()))?;
        // What the sheet copies: the regions as clamped to the page.
        let turned_pixels: f64 = turned
            .iter()
            .map(|&[x_min, y_min, x_max, y_max]| {
                let span = |lo: f32, hi: f32, limit: u32| {
                    f64::from(hi.clamp(0.0, limit as f32) - lo.clamp(0.0, limit as f32))
                };
                span(x_min, x_max, width) * span(y_min, y_max, height)
            })
            .sum();
        if turned_pixels > f64::from(width) * f64::from(height) {
            return Err(bad(
                "read_turned",
                format!(
                    "the regions cover {turned_pixels:.0} pixels, more than the page's {width}x{height}"
                ),
            ));
        }
        let work = reader.work();
        // Read turned, the page is decoded, then cut into a sheet of at most its
        // pixels (and the white between them) that is read in its place.
        let reads = if turned.is_empty() { 1 } else { 2 };
        let _permit = work
            .budget()
            .admit(reads * work.page_bytes(width, height))
            .await
            .map_err(|error| engine_status(error.into()))?;
        // Decoding is CPU work: off the async threads.
        let (image, placements, (width, height)) = tokio::task::spawn_blocking(move || {
            decode(&request.image, &limits).map(|decoded| {
                let mut image = decoded.image;
                blank(&mut image, &ignore);
                // As oriented (EXIF), which the header's size is not.
                let size = image.dimensions();
                if turned.is_empty() {
                    (image, None, size)
                } else {
                    let (sheet, placements) = turned::sheet(&image, &turned);
                    (sheet, Some(placements), size)
                }
            })
        })
        .await
        .map_err(|_| Status::internal("decoding failed"))?
        .map_err(|e| bad("image", e.to_string()))?;
        let lines = reader
            .read(
                image,
                request.classify_angle,
                &within,
                request.join_broken_lines,
            )
            .await
            .map_err(|error| match error {
                ReadError::Engine(error) => engine_status(error),
                ReadError::TooLarge(error) => bad("image", error.to_string()),
            })?;
        let lines = match placements {
            Some(placements) => turned::lines_on_page(lines, &placements),
            None => lines,
        };
        Ok(Response::new(pb::ReadTextResponse {
            lines: lines.into_iter().map(text_line).collect(),
            width,
            height,
        }))
    }
}

/// Most regions one ReadText may list in each of its region fields.
const MAX_REGIONS: usize = 10_000;

/// Most regions one ReadText may ask to read turned: each is copied onto the sheet
/// that is read, so they are bounded tighter than the other region fields (a sheet
/// of 64 regions of a 40 px symbol's reach is about half a page).
const MAX_TURNED_REGIONS: usize = 64;

/// The checked regions of the request field `field`: finite, not inverted.
fn regions(field: &str, regions: &[common::Box]) -> Result<Vec<[f32; 4]>, Status> {
    if regions.len() > MAX_REGIONS {
        return Err(bad(
            field,
            format!("{} regions; at most {MAX_REGIONS}", regions.len()),
        ));
    }
    regions
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let corners = [r.x_min, r.y_min, r.x_max, r.y_max];
            if corners.iter().any(|v| !v.is_finite()) || r.x_min > r.x_max || r.y_min > r.y_max {
                return Err(bad(
                    format!("{field}[{index}]"),
                    "must be finite with x_min <= x_max and y_min <= y_max",
                ));
            }
            Ok(corners)
        })
        .collect()
}

/// Paints each region white, covering every pixel it touches.
fn blank(image: &mut image::RgbImage, regions: &[[f32; 4]]) {
    let (width, height) = image.dimensions();
    for &[x_min, y_min, x_max, y_max] in regions {
        let x0 = x_min.floor().clamp(0.0, width as f32) as u32;
        let y0 = y_min.floor().clamp(0.0, height as f32) as u32;
        let x1 = x_max.ceil().clamp(0.0, width as f32) as u32;
        let y1 = y_max.ceil().clamp(0.0, height as f32) as u32;
        for y in y0..y1 {
            for x in x0..x1 {
                image.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
    }
}

fn text_line(line: Line) -> pb::TextLine {
    let (xs, ys) = (line.quad.map(|p| p[0]), line.quad.map(|p| p[1]));
    let bound = |values: [f32; 4], pick: fn(f32, f32) -> f32| {
        values.into_iter().reduce(pick).unwrap_or(0.0)
    };
    pb::TextLine {
        quad: Some(common::Quad {
            points: line
                .quad
                .iter()
                .map(|&[x, y]| common::Point { x, y })
                .collect(),
        }),
        r#box: Some(common::Box {
            x_min: bound(xs, f32::min),
            y_min: bound(ys, f32::min),
            x_max: bound(xs, f32::max),
            y_max: bound(ys, f32::max),
        }),
        text: line.text,
        score: line.score,
        direction: match line.direction {
            Direction::LeftToRight => pb::ReadingDirection::LeftToRight,
            Direction::BottomToTop => pb::ReadingDirection::BottomToTop,
            Direction::RightToLeft => pb::ReadingDirection::RightToLeft,
            Direction::TopToBottom => pb::ReadingDirection::TopToBottom,
        } as i32,
    }
}
