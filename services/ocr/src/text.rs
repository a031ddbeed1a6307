//! PaddleOCR's recognition and angle-classification pre/post-processing, as
//! RapidOCR 1.4.4 runs it: crops sorted by aspect ratio, batches of 6, each batch
//! resized to height 48 and padded to the batch's widest ratio; BGR, (x/255 − 0.5)/0.5;
//! greedy CTC against the model's dictionary (blank first, space last).

use image::RgbImage;
use plenum_vision::resize::resize_linear;

/// RapidOCR's `rec_batch_num` and `cls_batch_num`.
pub const BATCH: usize = 6;
/// The recognizer's input height and its minimum width (`rec_img_shape`).
pub const REC_HEIGHT: u32 = 48;
pub const REC_MIN_WIDTH: u32 = 320;
/// The angle classifier's fixed input (`cls_image_shape`).
pub const CLS_WIDTH: u32 = 192;
/// RapidOCR's `cls_thresh`: a crop is turned only when "180" scores above this.
pub const CLS_THRESHOLD: f32 = 0.9;

/// Indices of `crops` in RapidOCR's processing order (ascending width/height), cut
/// into batches of [`BATCH`].
pub fn batches(crops: &[RgbImage]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..crops.len()).collect();
    // Stable, like numpy's argsort on the short lists it sees here.
    order.sort_by(|&a, &b| ratio(&crops[a]).total_cmp(&ratio(&crops[b])));
    order.chunks(BATCH).map(<[usize]>::to_vec).collect()
}

fn ratio(image: &RgbImage) -> f64 {
    f64::from(image.width()) / f64::from(image.height())
}

/// How wide the recognizer's input is made for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecWidth {
    /// RapidOCR's: 48 × the widest ratio, at least 320 (its `rec_image_shape`).
    RapidOcr,
    /// The widest crop's own, up to a multiple of [`TIGHT_STEP`] (at least two): a
    /// tag (ratio 2.5 to 4) then costs 128-192 columns instead of 320. Text can read
    /// differently from RapidOCR's, so only reading within regions uses it.
    Tight,
}

/// Tight widths are rounded up to multiples of this, so that batches of similar crops
/// share a shape and the engine runs them as one call.
pub const TIGHT_STEP: u32 = 32;

/// The recognizer input width for a batch.
pub fn rec_width(batch: &[&RgbImage], rule: RecWidth) -> u32 {
    let least = match rule {
        RecWidth::RapidOcr => f64::from(REC_MIN_WIDTH) / f64::from(REC_HEIGHT),
        RecWidth::Tight => 0.0,
    };
    let max_ratio = batch.iter().map(|image| ratio(image)).fold(least, f64::max);
    let width = (f64::from(REC_HEIGHT) * max_ratio) as u32;
    match rule {
        RecWidth::RapidOcr => width,
        RecWidth::Tight => width.div_ceil(TIGHT_STEP).max(2) * TIGHT_STEP,
    }
}

/// One crop as PaddleOCR feeds it: resized to height 48 keeping its ratio (at most
/// `width`), BGR planes normalised to [−1, 1], zero-padded on the right to `width`.
pub fn normalise_into(image: &RgbImage, width: u32, out: &mut Vec<f32>) {
    let h = REC_HEIGHT;
    let wanted = (f64::from(h) * ratio(image)).ceil() as u32;
    let resized_w = wanted.min(width).max(1);
    let resized = resize_linear(image, resized_w, h);
    let plane = (h * width) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    for (x, y, pixel) in resized.enumerate_pixels() {
        let offset = (y * width + x) as usize;
        // RapidOCR reads with OpenCV: channel 0 is blue.
        for (channel, value) in [pixel[2], pixel[1], pixel[0]].into_iter().enumerate() {
            out[start + channel * plane + offset] = (f32::from(value) / 255.0 - 0.5) / 0.5;
        }
    }
}

/// Greedy CTC: best class per step, repeats merged, blanks (0) dropped; the score is
/// the mean probability of the kept steps (0 when nothing is kept).
pub fn ctc_decode(
    probabilities: &[f32],
    steps: usize,
    classes: usize,
    dictionary: &[String],
) -> (String, f32) {
    let mut text = String::new();
    let mut kept = Vec::new();
    let mut previous = usize::MAX;
    for step in 0..steps {
        let row = &probabilities[step * classes..(step + 1) * classes];
        let (best, probability) = first_max(row);
        if best != 0 && best != previous {
            text.push_str(character(best, dictionary));
            kept.push(probability);
        }
        previous = best;
    }
    let score = if kept.is_empty() {
        0.0
    } else {
        kept.iter().sum::<f32>() / kept.len() as f32
    };
    (text, score)
}

/// The first index of the row's largest value and the value; `(0, -inf)` when no value
/// beats minus infinity (NaN never does), as NumPy's `argmax` is used by RapidOCR.
///
/// Why two passes: a step has 6,625 classes, and the maximum over eight independent
/// lanes, then a search for it, took CTC decoding from 0.4% to 0.1% of a profile's
/// samples, where one pass carried the index along.
fn first_max(row: &[f32]) -> (usize, f32) {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &p) in lanes.iter_mut().zip(chunk) {
            *lane = if p > *lane { p } else { *lane };
        }
    }
    let max = lanes
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, |max, p| if p > max { p } else { max });
    match row.iter().position(|&p| p == max) {
        Some(index) if max > f32::NEG_INFINITY => (index, max),
        _ => (0, f32::NEG_INFINITY),
    }
}

/// Class `index` of the recognizer: 1..=N are the dictionary, N+1 is a space.
fn character(index: usize, dictionary: &[String]) -> &str {
    dictionary.get(index - 1).map_or(" ", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_first_largest_value_is_found_as_a_plain_scan_finds_it(
            row in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => -4.0f32..4.0,
                    1 => proptest::sample::select(vec![1.5f32, f32::NAN, f32::NEG_INFINITY, f32::INFINITY]),
                ],
                0..40,
            )
        ) {
            let plain = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (index, &p)| if p > best.1 { (index, p) } else { best });
            proptest::prop_assert_eq!(first_max(&row), plain);
        }
    }

    #[test]
    fn ctc_merges_repeats_drops_blanks_and_averages_kept_steps() {
        let dictionary: Vec<String> = ["A", "B"].iter().map(|s| s.to_string()).collect();
        // classes: blank, A, B, space
        let steps = [
            [0.1, 0.8, 0.05, 0.05],  // A
            [0.1, 0.6, 0.2, 0.1],    // A again: merged
            [0.9, 0.05, 0.03, 0.02], // blank
            [0.1, 0.7, 0.1, 0.1],    // A after a blank: kept
            [0.1, 0.1, 0.1, 0.7],    // space
            [0.0, 0.0, 1.0, 0.0],    // B
        ];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let (text, score) = ctc_decode(&flat, 6, 4, &dictionary);
        assert_eq!(text, "AA B");
        assert!((score - (0.8 + 0.7 + 0.7 + 1.0) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn batches_follow_the_aspect_ratio_in_groups_of_six() {
        let crops: Vec<RgbImage> = [5, 1, 3, 2, 4, 7, 6]
            .iter()
            .map(|&w| RgbImage::new(w * 10, 10))
            .collect();
        assert_eq!(batches(&crops), vec![vec![1, 3, 2, 4, 0, 6], vec![5]]);
        let widest: Vec<&RgbImage> = vec![&crops[5]];
        assert_eq!(rec_width(&widest, RecWidth::RapidOcr), 336); // 48 × 7
        assert_eq!(rec_width(&widest, RecWidth::Tight), 352); // 11 × 32
        let narrow: Vec<&RgbImage> = vec![&crops[1]];
        assert_eq!(rec_width(&narrow, RecWidth::RapidOcr), 320);
        assert_eq!(
            rec_width(&narrow, RecWidth::Tight),
            64,
            "48 columns, at least two steps"
        );
        let tag: Vec<&RgbImage> = vec![&crops[2], &crops[4]]; // ratios 3 and 4
        assert_eq!(rec_width(&tag, RecWidth::Tight), 192);
    }
}
