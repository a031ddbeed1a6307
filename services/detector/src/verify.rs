//! The second look: a small classifier of the crop around each detection drops the
//! look-alikes the detector takes for symbols (grid bubbles and octagons for a
//! thermostat's hexagon), and corrects the class of a symbol the detector named
//! wrongly (a small diffuser taken for a thermostat). It is trained on the detector's
//! own mistakes by `training/train_verifier.py`, whose crop this file must reproduce
//! exactly.

use image::{Rgb, RgbImage};
use plenum_engine::tch::{Kind, Tensor};
use plenum_engine::{Engine, EngineError, ModelManifest};
use plenum_vision::geometry::BoxF;

use crate::pipeline::Detection;

/// The verifier's input side, in pixels.
pub const CROP: usize = 48;
/// The crop's side over the box's longer side: the outline and a little around it.
const CONTEXT: f32 = 1.25;
/// Pixels added to the side, so that the smallest boxes still show their outline.
const MARGIN: i64 = 4;
/// A detection is dropped when the verifier gives `none` at least this probability.
const REFUSE_AT: f32 = 0.5;
/// The verifier is sure of a class it gives at least this probability. A detection
/// takes the verifier's class instead of the detector's when the verifier is sure of
/// it, and a weak one (under the call's score threshold) is kept only when the
/// verifier is sure of its own class. The verifier sees the symbol alone at 48 px,
/// where the detector sees it among the page at a fraction of a 20 px symbol's size;
/// it is sure (≥ 0.99) of the small diffusers the detector calls thermostats on the
/// independent renderer's pages, so only a near-certain answer overrides.
const SURE: f32 = 0.9;
/// The verifier's label for "not a symbol".
const NONE: &str = "none";
/// A detection this share of whose area lies inside a better one of its class is a
/// second box on the same symbol: symbols on a drawing do not nest.
const NESTED: f32 = 0.8;

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(
        "the verifier {verifier} labels {labels:?}; the detector's classes and `{NONE}` ({expected:?}) were expected"
    )]
    Labels {
        verifier: String,
        labels: Vec<String>,
        expected: Vec<String>,
    },
}

/// The verifier model and where its `none` label sits.
#[derive(Clone)]
pub struct Verifier {
    engine: Engine,
    none: usize,
}

impl Verifier {
    /// Checks that `engine` labels exactly `classes` (in order) and `none`: a verifier
    /// trained for another detector would answer for the wrong classes.
    pub fn new(engine: Engine, classes: &[String]) -> Result<Self, VerifierError> {
        let labels = &engine.manifest().labels.classes;
        let expected: Vec<String> = classes.iter().cloned().chain([NONE.to_owned()]).collect();
        if *labels != expected {
            return Err(VerifierError::Labels {
                verifier: engine.manifest().name.clone(),
                labels: labels.clone(),
                expected,
            });
        }
        Ok(Self {
            none: classes.len(),
            engine,
        })
    }

    pub fn name(&self) -> &str {
        &self.engine.manifest().name
    }

    /// For each crop made by [`crop_input`] (back to back in `inputs`, one per
    /// entry of `detected`): what becomes of the detection.
    pub async fn judge(
        &self,
        inputs: Vec<f32>,
        detected: &[Candidate],
    ) -> Result<Vec<Verdict>, EngineError> {
        if detected.is_empty() {
            return Ok(Vec::new());
        }
        let side = CROP as i64;
        let input = Tensor::from_slice(&inputs).view([detected.len() as i64, 1, side, side]);
        drop(inputs);
        let probabilities = self.engine.infer(input).await?.to_kind(Kind::Float);
        let labels = self.none + 1;
        let probabilities = Vec::<f32>::try_from(&probabilities.flatten(0, -1))
            .ok()
            .filter(|p| p.len() == detected.len() * labels)
            .ok_or_else(|| {
                EngineError::NotReady(format!(
                    "the verifier's answer is not {} x {labels} probabilities",
                    detected.len()
                ))
            })?;
        Ok(probabilities
            .chunks(labels)
            .zip(detected)
            .map(|(p, &candidate)| verdict(p, candidate, self.none))
            .collect())
    }
}

/// What the second look makes of one detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a symbol: dropped.
    Refused,
    /// A symbol of this class (the detector's, or the verifier's when it is sure).
    Class(usize),
}

/// A detection put to the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The class the detector gave it.
    pub class: usize,
    /// It scored under the call's score threshold: kept only when confirmed.
    pub weak: bool,
}

/// The verdict on one crop from the verifier's `probabilities` (the classes, then
/// `none` at index `none`) for `candidate`. A weak one is confirmed in its own class
/// or refused: the detector being unsure, only a sure second look keeps it.
pub fn verdict(probabilities: &[f32], candidate: Candidate, none: usize) -> Verdict {
    let detected = candidate.class;
    if candidate.weak {
        return if probabilities[detected] >= SURE {
            Verdict::Class(detected)
        } else {
            Verdict::Refused
        };
    }
    if probabilities[none] >= REFUSE_AT {
        return Verdict::Refused;
    }
    let surest = probabilities[..none]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(class, &p)| (class, p));
    match surest {
        Some((class, p)) if class != detected && p >= SURE => Verdict::Class(class),
        _ => Verdict::Class(detected),
    }
}

/// Drops the detections lying mostly ([`NESTED`]) inside a better-scored one of the
/// same class: class-wise NMS keeps both when their IoU stays under its threshold (a
/// box on a VAV box's outline and one on its diagonal), and the verifier rightly sees
/// a symbol in each crop. Returns how many were dropped.
pub fn drop_nested(detections: &mut Vec<Detection>) -> usize {
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let mut kept: Vec<usize> = Vec::with_capacity(order.len());
    for index in order {
        let candidate = &detections[index];
        let nested = kept.iter().any(|&better| {
            let better = &detections[better];
            better.class == candidate.class && inside_share(&candidate.bbox, &better.bbox) >= NESTED
        });
        if !nested {
            kept.push(index);
        }
    }
    let before = detections.len();
    let mut keep = vec![false; before];
    for index in kept {
        keep[index] = true;
    }
    let mut flags = keep.into_iter();
    detections.retain(|_| flags.next().unwrap_or(true));
    before - detections.len()
}

/// The share of the smaller of the two boxes that lies inside the other.
pub fn inside_share(a: &BoxF, b: &BoxF) -> f32 {
    let smaller = a.area().min(b.area());
    if smaller > 0.0 {
        a.intersection(b) / smaller
    } else {
        0.0
    }
}

/// A page pixel in grey, as OpenCV's `IMREAD_GRAYSCALE` reads pages in training (its
/// fixed-point BT.601 weights, so grey pages stay exactly as drawn). Only the
/// crops' pixels are converted, not the page.
fn gray(pixel: &Rgb<u8>) -> u8 {
    let [r, g, b] = pixel.0.map(u32::from);
    ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14) as u8
}

/// Appends the verifier's input for `bbox` to `out`: the square of side
/// round(1.25 × the box's longer side) + 4 around its centre (white outside the
/// page), in grey, averaged to 48×48 the way torch's `adaptive_avg_pool2d` does, as
/// `x / 127.5 − 1`.
pub fn crop_input(page: &RgbImage, bbox: &BoxF, out: &mut Vec<f32>) {
    let longer = bbox.width().max(bbox.height());
    let side = round_half_up(longer * CONTEXT) + MARGIN;
    let left = round_half_up((bbox.x_min + bbox.x_max) / 2.0 - side as f32 / 2.0);
    let top = round_half_up((bbox.y_min + bbox.y_max) / 2.0 - side as f32 / 2.0);
    let pixel = |x: i64, y: i64| -> f32 {
        let inside =
            (0..i64::from(page.width())).contains(&x) && (0..i64::from(page.height())).contains(&y);
        if inside {
            f32::from(gray(page.get_pixel(x as u32, y as u32)))
        } else {
            255.0
        }
    };
    let side = side.max(1);
    for row in 0..CROP as i64 {
        let (y0, y1) = pooled_range(row, side);
        for column in 0..CROP as i64 {
            let (x0, x1) = pooled_range(column, side);
            let mut sum = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    sum += pixel(left + x, top + y);
                }
            }
            let mean = sum / ((y1 - y0) * (x1 - x0)) as f32;
            out.push(mean / 127.5 - 1.0);
        }
    }
}

/// The source rows (or columns) that output `index` of 48 averages over, out of
/// `side`: torch's adaptive pooling, `[⌊i·side/48⌋, ⌈(i+1)·side/48⌉)`.
fn pooled_range(index: i64, side: i64) -> (i64, i64) {
    let crop = CROP as i64;
    let start = index * side / crop;
    let end = ((index + 1) * side + crop - 1) / crop;
    (start, end)
}

/// Python's training code rounds with `floor(x + 0.5)`; so does this.
fn round_half_up(x: f32) -> i64 {
    (x + 0.5).floor() as i64
}

/// The verifier's manifest for `detector`, if it names one.
pub fn manifest_for(
    detector: &ModelManifest,
) -> Result<Option<ModelManifest>, plenum_engine::manifest::ManifestError> {
    detector
        .verifier_manifest()
        .map(|path| ModelManifest::load(&path))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_refuses_on_none_and_relabels_only_when_sure() {
        // Labels: two classes, then none at 2.
        let strong = |class| Candidate { class, weak: false };
        assert_eq!(verdict(&[0.3, 0.2, 0.5], strong(0), 2), Verdict::Refused);
        assert_eq!(verdict(&[0.6, 0.0, 0.4], strong(1), 2), Verdict::Class(1));
        assert_eq!(verdict(&[0.1, 0.85, 0.05], strong(0), 2), Verdict::Class(0));
        assert_eq!(
            verdict(&[0.02, 0.95, 0.03], strong(0), 2),
            Verdict::Class(1)
        );
        assert_eq!(
            verdict(&[0.95, 0.02, 0.03], strong(0), 2),
            Verdict::Class(0)
        );
    }

    #[test]
    fn a_weak_detection_is_kept_only_when_the_verifier_is_sure_of_its_own_class() {
        let weak = |class| Candidate { class, weak: true };
        assert_eq!(verdict(&[0.95, 0.02, 0.03], weak(0), 2), Verdict::Class(0));
        // Not a look-alike, but not sure either: a strong detection would stay.
        assert_eq!(verdict(&[0.85, 0.1, 0.05], weak(0), 2), Verdict::Refused);
        // Sure of another class: no relabelling on a detection the detector doubted.
        assert_eq!(verdict(&[0.02, 0.95, 0.03], weak(0), 2), Verdict::Refused);
    }

    fn page(width: u32, height: u32, ink: impl Fn(u32, u32) -> bool) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([if ink(x, y) { 0 } else { 255 }; 3])
        })
    }

    fn crop(page: &RgbImage, bbox: BoxF) -> Vec<f32> {
        let mut out = Vec::new();
        crop_input(page, &bbox, &mut out);
        assert_eq!(out.len(), CROP * CROP);
        out
    }

    #[test]
    fn pooling_covers_every_source_row_and_overlaps_only_when_uneven() {
        // 96 rows into 48: two rows each, no overlap.
        assert_eq!(pooled_range(0, 96), (0, 2));
        assert_eq!(pooled_range(47, 96), (94, 96));
        // 16 rows into 48: each row repeated three times.
        assert_eq!(pooled_range(0, 16), (0, 1));
        assert_eq!(pooled_range(3, 16), (1, 2));
        // 100 into 48: ranges overlap where the division is uneven, as torch's do.
        assert_eq!(pooled_range(0, 100), (0, 3));
        assert_eq!(pooled_range(1, 100), (2, 5));
        assert_eq!(pooled_range(47, 100), (97, 100));
    }

    #[test]
    fn a_box_on_a_blank_page_is_all_white_and_off_the_page_is_white_too() {
        let blank = page(200, 100, |_, _| false);
        assert!(
            crop(&blank, BoxF::new(10.0, 10.0, 50.0, 50.0))
                .iter()
                .all(|&v| v == 1.0)
        );
        let black = page(200, 100, |_, _| true);
        // A box in the corner: the part of the square beyond the page is white.
        let corner = crop(&black, BoxF::new(0.0, 0.0, 40.0, 40.0));
        assert_eq!(corner[0], 1.0, "above and left of the page");
        assert_eq!(corner[CROP * CROP - 1], -1.0, "on the page");
    }

    #[test]
    fn the_crop_is_centred_on_the_box_with_a_quarter_more_around_it() {
        // A 40-px black square: the crop's side is 54 (40 × 1.25 + 4), so the
        // square fills the middle 40/54 of it, with white all round.
        let square = page(300, 300, |x, y| {
            (100..140).contains(&x) && (100..140).contains(&y)
        });
        let input = crop(&square, BoxF::new(100.0, 100.0, 140.0, 140.0));
        let at = |row: usize, column: usize| input[row * CROP + column];
        assert_eq!(at(24, 24), -1.0, "the centre is ink");
        assert_eq!(at(0, 24), 1.0, "the top margin is white");
        assert_eq!(at(24, 47), 1.0, "the right margin is white");
        // 7 px of margin each side out of 54 is 6.2 of 48 outputs.
        assert_eq!(at(24, 5), 1.0);
        assert_eq!(at(24, 7), -1.0);
    }

    fn detection(class: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection {
            bbox: BoxF::new(bbox[0], bbox[1], bbox[2], bbox[3]),
            class,
            score,
        }
    }

    #[test]
    fn a_box_inside_a_better_one_of_its_class_is_dropped_and_only_that() {
        let mut detections = vec![
            // A VAV box's outline, and a weaker box on its diagonal half inside it.
            detection(1, 0.9, [100.0, 100.0, 160.0, 130.0]),
            detection(1, 0.4, [100.0, 100.0, 135.0, 130.0]),
            // The same nesting across classes stays: the verifier already decided.
            detection(2, 0.5, [102.0, 102.0, 130.0, 128.0]),
            // Neighbours of one class touching at an edge stay.
            detection(3, 0.8, [300.0, 300.0, 330.0, 330.0]),
            detection(3, 0.7, [325.0, 300.0, 355.0, 330.0]),
            // A stronger box inside a weaker one: the weaker, outer one goes.
            detection(0, 0.3, [500.0, 500.0, 560.0, 560.0]),
            detection(0, 0.95, [505.0, 505.0, 555.0, 555.0]),
        ];
        assert_eq!(drop_nested(&mut detections), 2);
        let scores: Vec<f32> = detections.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.5, 0.8, 0.7, 0.95]);
    }

    #[test]
    fn grey_is_opencvs_grey() {
        // cv2.cvtColor of pure red and green (BGR2GRAY): 76 and 150; grey stays grey.
        assert_eq!(gray(&Rgb([255, 0, 0])), 76);
        assert_eq!(gray(&Rgb([0, 255, 0])), 150);
        assert_eq!(gray(&Rgb([90, 90, 90])), 90);
    }
}
