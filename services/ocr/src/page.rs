//! Reading a whole page: DB text detection on the det engine, perspective crops, then
//! the crops through [`Reader`] (angle classifier, recognizer). CPU steps run on the
//! blocking pool; the models on their engines.

use image::RgbImage;
use plenum_engine::tch::{Kind, Tensor};
use plenum_engine::{Engine, EngineError};
use plenum_vision::quad::PointF;

use crate::broken::join_broken_lines;
use crate::detect::{self, Page, PageTooLarge, TEXT_SCORE};
use crate::reader::Reader;
use crate::text::RecWidth;
use crate::work::OcrWork;

/// One line found and read on a page, in source pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Corners clockwise from the top-left.
    pub quad: [PointF; 4],
    pub text: String,
    pub score: f32,
    /// Which way across the page the text runs.
    pub direction: Direction,
}

/// Which way across the page a line's text runs, from how it was read: turned 90°
/// counter-clockwise when tall, then perhaps 180° by the angle classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    LeftToRight,
    BottomToTop,
    RightToLeft,
    TopToBottom,
}

impl Direction {
    pub fn of(turned_90: bool, turned_180: bool) -> Self {
        match (turned_90, turned_180) {
            (false, false) => Self::LeftToRight,
            // Turned 90° counter-clockwise, text written top to bottom stands upright;
            // text written bottom to top comes out upside down and needs the 180°.
            (true, false) => Self::TopToBottom,
            (false, true) => Self::RightToLeft,
            (true, true) => Self::BottomToTop,
        }
    }
}

/// The text detector beside the crop reader.
#[derive(Clone)]
pub struct PageReader {
    det: Engine,
    reader: Reader,
    work: OcrWork,
    /// Reading within regions takes the fast path (see [`PageReader::read`]).
    fast_within: bool,
}

/// Why a page was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    TooLarge(#[from] PageTooLarge),
}

fn blocking_failed(error: tokio::task::JoinError) -> EngineError {
    EngineError::Inference(format!("page processing failed: {error}"))
}

impl PageReader {
    pub fn new(det: Engine, reader: Reader, work: OcrWork) -> Self {
        Self {
            det,
            reader,
            work,
            fast_within: true,
        }
    }

    /// With `false`, reading within regions finds and reads the lines as RapidOCR
    /// does on the whole page and then keeps those touching a region: slower, and the
    /// answer is exactly RapidOCR's, filtered.
    pub fn with_fast_within(mut self, on: bool) -> Self {
        self.fast_within = on;
        self
    }

    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The working-memory budget requests are admitted against.
    pub fn work(&self) -> &OcrWork {
        &self.work
    }

    /// The lines of `image` in reading order, those read with a score under 0.5 left
    /// out, as RapidOCR returns them. With `within` regions (source pixels), only the
    /// lines whose box touches one of them are read; empty reads every line. Reading
    /// within regions is Plenum's own path, not RapidOCR's: unless turned off, it
    /// recognizes at the crops' own widths ([`RecWidth::Tight`]), which can read a
    /// line differently. With `join_broken`, the pieces of a vertical line the text
    /// detector broke are joined and read as one ([`broken`](crate::broken)).
    pub async fn read(
        &self,
        image: RgbImage,
        classify_angle: bool,
        within: &[[f32; 4]],
        join_broken: bool,
    ) -> Result<Vec<Line>, ReadError> {
        let prepared = tokio::task::spawn_blocking(move || {
            let Some(page) = Page::new(image)? else {
                return Ok(None);
            };
            Ok::<_, PageTooLarge>(detect::det_input(&page.image).map(|input| (page, input)))
        })
        .await
        .map_err(blocking_failed)??;
        let Some((page, (data, width, height))) = prepared else {
            return Ok(Vec::new());
        };
        let input = Tensor::from_slice(&data).view([1, 3, i64::from(height), i64::from(width)]);
        let output = self
            .det
            .infer(input)
            .await?
            .to_kind(Kind::Float)
            .contiguous();
        let pred: Vec<f32> = output
            .view([-1])
            .try_into()
            .map_err(|e: plenum_engine::tch::TchError| EngineError::Inference(e.to_string()))?;
        let rec_width = if self.fast_within && !within.is_empty() {
            RecWidth::Tight
        } else {
            RecWidth::RapidOcr
        };
        let within = within.to_vec();
        let (page, quads, crops) = tokio::task::spawn_blocking(move || {
            let (w, h) = page.image.dimensions();
            let mut quads = detect::boxes_from_map(&pred, width as usize, height as usize, w, h);
            if join_broken {
                quads = join_broken_lines(quads);
            }
            let quads = detect::reading_order(quads);
            let (quads, crops): (Vec<_>, Vec<_>) = quads
                .into_iter()
                .filter(|quad| within.is_empty() || touches_any(&page.to_source(quad), &within))
                .filter_map(|quad| detect::crop(&page.image, &quad).map(|crop| (quad, crop)))
                .unzip();
            (page, quads, crops)
        })
        .await
        .map_err(blocking_failed)?;
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let read = self
            .reader
            .recognize(crops, classify_angle, rec_width)
            .await?;
        Ok(quads
            .iter()
            .zip(read)
            .filter(|(_, r)| r.score >= TEXT_SCORE)
            .map(|(quad, r)| Line {
                direction: Direction::of(detect::read_turned(quad), r.rotated),
                quad: page.to_source(quad),
                text: r.text,
                score: r.score,
            })
            .collect())
    }
}

/// Whether the bounding box of `quad` touches (shares at least a point with) one of
/// `regions`.
fn touches_any(quad: &[PointF; 4], regions: &[[f32; 4]]) -> bool {
    let xs = quad.map(|p| p[0]);
    let ys = quad.map(|p| p[1]);
    let (x_min, x_max) = (
        xs.into_iter().fold(f32::INFINITY, f32::min),
        xs.into_iter().fold(f32::NEG_INFINITY, f32::max),
    );
    let (y_min, y_max) = (
        ys.into_iter().fold(f32::INFINITY, f32::min),
        ys.into_iter().fold(f32::NEG_INFINITY, f32::max),
    );
    regions.iter().any(|&[rx_min, ry_min, rx_max, ry_max]| {
        x_min <= rx_max && rx_min <= x_max && y_min <= ry_max && ry_min <= y_max
    })
}

#[cfg(test)]
mod tests {
    use super::touches_any;

    #[test]
    fn a_line_touching_a_region_even_at_one_edge_is_read_and_one_apart_is_not() {
        let line = [[10.0, 20.0], [50.0, 20.0], [50.0, 30.0], [10.0, 30.0]];
        assert!(touches_any(&line, &[[40.0, 25.0, 90.0, 90.0]]));
        assert!(
            touches_any(&line, &[[50.0, 30.0, 60.0, 40.0]]),
            "corner to corner"
        );
        assert!(!touches_any(&line, &[[50.5, 0.0, 90.0, 90.0]]));
        assert!(!touches_any(&line, &[[0.0, 30.5, 90.0, 90.0]]));
        assert!(touches_any(
            &line,
            &[[0.0, 30.5, 90.0, 90.0], [0.0, 0.0, 10.0, 20.0]]
        ));
    }
}
