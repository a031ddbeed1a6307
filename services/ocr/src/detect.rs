//! Page reading's pure steps, as RapidOCR 1.4.4 runs them with its default config
//! (rapidocr_onnxruntime/main.py and ch_ppocr_det/): the page's own resize and
//! letterbox, the DB detector's input, DB post-processing (binarise at 0.3, dilate,
//! contours, box score ≥ 0.5, unclip 1.6), box filtering, reading order, perspective
//! crops, and boxes mapped back to the source image.
//!
//! Arithmetic keeps NumPy's types (`f32` boxes, `f64` ratios) because results are
//! truncated and rounded along the way.

use image::RgbImage;
use plenum_vision::contours::{contour_point_sets, dilate_2x2, fill_polygon};
use plenum_vision::quad::{
    PointF, min_area_rect, perspective_transform, round_offset, warp_perspective_cubic,
};
use plenum_vision::{paste, resize_linear};

/// `Global.max_side_len` / `min_side_len`: pages are resized into this range first.
const MAX_SIDE: u32 = 2000;
const MIN_SIDE: u32 = 30;
/// `Global.min_height` / `width_height_ratio`: lower or wider pages are letterboxed.
const MIN_HEIGHT: u32 = 30;
const WIDTH_HEIGHT_RATIO: u32 = 8;
/// `Det.limit_side_len` with `limit_type: min`: the short side is brought up to this.
const DET_LIMIT_SIDE: u32 = 736;
/// `Det.thresh`, `box_thresh`, `max_candidates`, `unclip_ratio`; DBPostProcess' min_size.
const THRESH: f32 = 0.3;
const BOX_THRESH: f64 = 0.5;
const MAX_CANDIDATES: usize = 1000;
const UNCLIP_RATIO: f64 = 1.6;
const MIN_SIZE: f32 = 3.0;
/// `Global.text_score`: lines read with a lower score are dropped.
pub const TEXT_SCORE: f32 = 0.5;

/// A page after RapidOCR's own preprocessing, with what it takes to map boxes back.
pub struct Page {
    /// Resized (when a side is out of range) and letterboxed (when low or wide) page.
    pub image: RgbImage,
    ratio_w: f64,
    ratio_h: f64,
    pad_top: u32,
    width: u32,
    height: u32,
}

/// Python's `round`: half to even.
fn py_round(v: f64) -> f64 {
    v.round_ties_even()
}

/// Most pixels the detector is given. RapidOCR's own sizes stay under it for every page
/// (long side at most 2000, letterboxed to at most a quarter of that high, short side up
/// to 736) except one: its minimum-side rule scales a strip under 30 px thick up by as
/// much as 30×, and its letterbox then pads the result to a quarter of its new width
/// high (a 2 x 2000 strip would become a 30000 x 7500 page and a 10 GB tensor). Those
/// are refused instead of read.
pub const MAX_DET_PIXELS: u64 = 2048 * 2048;

/// A page RapidOCR's rules would blow up past [`MAX_DET_PIXELS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {width}x{height} page would be read as a {det_width}x{det_height} detector input \
     (pages thinner than 30 px are scaled up and letterboxed); at most {MAX_DET_PIXELS} pixels"
)]
pub struct PageTooLarge {
    pub width: u32,
    pub height: u32,
    pub det_width: u32,
    pub det_height: u32,
}

/// Sides scaled by `ratio`, truncated, rounded (half to even) to multiples of 32.
fn scaled_32(w: f64, h: f64, ratio: f64) -> (u32, u32) {
    let round = |v: f64| (py_round(f64::from((v * ratio) as u32) / 32.0) * 32.0) as u32;
    (round(w), round(h))
}

/// `reduce_max_side` / `increase_min_side` sizes: the long (short) side to `side`.
fn side_sizes(w: u32, h: u32, side: u32, long: bool) -> (u32, u32) {
    let (w, h) = (f64::from(w), f64::from(h));
    let ratio = if (h > w) == long {
        f64::from(side) / h
    } else {
        f64::from(side) / w
    };
    scaled_32(w, h, ratio)
}

/// `DetPreProcess.resize` sizes (`limit_type: min`): the short side up to 736.
fn det_sizes(w: u32, h: u32) -> (u32, u32) {
    let (w, h) = (f64::from(w), f64::from(h));
    let limit = f64::from(DET_LIMIT_SIDE);
    let ratio = if h.min(w) < limit {
        if h < w { limit / h } else { limit / w }
    } else {
        1.0
    };
    scaled_32(w, h, ratio)
}

/// `maybe_add_letterbox`: rows of black added above (and as many below) a page lower
/// than 30 px or wider than 8:1.
fn letterbox_rows(w: u32, h: u32) -> u32 {
    if h <= MIN_HEIGHT || f64::from(w) / f64::from(h) > f64::from(WIDTH_HEIGHT_RATIO) {
        ((w / WIDTH_HEIGHT_RATIO).max(MIN_HEIGHT) * 2).abs_diff(h) / 2
    } else {
        0
    }
}

/// `reduce_max_side` / `increase_min_side`: the image at the new size and the ratios
/// back (source over new, per axis); `None` when a side rounds to zero.
fn resize_to_side(image: &RgbImage, side: u32, long: bool) -> Option<(RgbImage, f64, f64)> {
    let (w, h) = image.dimensions();
    let (rw, rh) = side_sizes(w, h, side, long);
    if rw == 0 || rh == 0 {
        return None;
    }
    Some((
        resize_linear(image, rw, rh),
        f64::from(h) / f64::from(rh),
        f64::from(w) / f64::from(rw),
    ))
}

/// The sizes a `width`×`height` page is read at, known before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedSizes {
    /// The page after RapidOCR's resize and letterbox.
    pub page: (u32, u32),
    /// The DB detector's input.
    pub det: (u32, u32),
}

/// [`PlannedSizes`] of a page; `None` when a side rounds to zero.
pub fn planned_sizes(width: u32, height: u32) -> Option<PlannedSizes> {
    let (mut w, mut h) = (width, height);
    if w.max(h) > MAX_SIDE {
        (w, h) = side_sizes(w, h, MAX_SIDE, true);
    }
    if w.min(h) < MIN_SIDE && w > 0 && h > 0 {
        (w, h) = side_sizes(w, h, MIN_SIDE, false);
    }
    if w == 0 || h == 0 {
        return None;
    }
    let padded = h + 2 * letterbox_rows(w, h);
    Some(PlannedSizes {
        page: (w, padded),
        det: det_sizes(w, padded),
    })
}

impl Page {
    /// `RapidOCR.preprocess` then `maybe_add_letterbox`; `Ok(None)` when a side rounds
    /// to zero (RapidOCR raises; there is nothing to read). The sizes are worked out
    /// before any pixel is allocated, so a page that would blow up is refused cheaply.
    pub fn new(image: RgbImage) -> Result<Option<Self>, PageTooLarge> {
        let (width, height) = image.dimensions();
        let Some(PlannedSizes {
            det: (det_width, det_height),
            ..
        }) = planned_sizes(width, height)
        else {
            return Ok(None);
        };
        if u64::from(det_width) * u64::from(det_height) > MAX_DET_PIXELS {
            return Err(PageTooLarge {
                width,
                height,
                det_width,
                det_height,
            });
        }

        let (mut ratio_h, mut ratio_w) = (1.0, 1.0);
        let mut image = image;
        if width.max(height) > MAX_SIDE {
            let Some((resized, rh, rw)) = resize_to_side(&image, MAX_SIDE, true) else {
                return Ok(None);
            };
            (image, ratio_h, ratio_w) = (resized, rh, rw);
        }
        if image.width().min(image.height()) < MIN_SIDE {
            // RapidOCR overwrites the ratios here rather than compounding them.
            let Some((resized, rh, rw)) = resize_to_side(&image, MIN_SIDE, false) else {
                return Ok(None);
            };
            (image, ratio_h, ratio_w) = (resized, rh, rw);
        }
        let (w, h) = image.dimensions();
        let pad_top = letterbox_rows(w, h);
        if pad_top > 0 {
            let mut padded = RgbImage::new(w, h + 2 * pad_top);
            paste(&mut padded, &image, 0, i64::from(pad_top));
            image = padded;
        }
        Ok(Some(Self {
            image,
            ratio_w,
            ratio_h,
            pad_top,
            width,
            height,
        }))
    }

    /// `_get_origin_points`: a box on [`Page::image`] in source pixels, clipped to it.
    pub fn to_source(&self, quad: &[PointF; 4]) -> [PointF; 4] {
        quad.map(|[x, y]| {
            let x = x * self.ratio_w as f32;
            let y = (y - self.pad_top as f32) * self.ratio_h as f32;
            [
                x.max(0.0).min(self.width as f32),
                y.max(0.0).min(self.height as f32),
            ]
        })
    }
}

/// The DB detector's input for `image`: short side brought to 736, sides to multiples
/// of 32, BGR planes `(x/255 − 0.5)/0.5`. `None` when a side rounds to zero.
pub fn det_input(image: &RgbImage) -> Option<(Vec<f32>, u32, u32)> {
    let (rw, rh) = det_sizes(image.width(), image.height());
    if rw == 0 || rh == 0 {
        return None;
    }
    let resized = resize_linear(image, rw, rh);
    let plane = (rw * rh) as usize;
    let mut data = vec![0f32; 3 * plane];
    // NumPy: uint8 → f32, × 1/255 in f32, then − mean and / std in f64. A function of
    // the byte alone, so worked out once per value rather than per sample.
    let scale = (1.0f64 / 255.0) as f32;
    let normalised: [f32; 256] = std::array::from_fn(|value| {
        let v = f64::from(value as f32 * scale);
        ((v - 0.5) / 0.5) as f32
    });
    let (blue, rest) = data.split_at_mut(plane);
    let (green, red) = rest.split_at_mut(plane);
    for (i, pixel) in resized.pixels().enumerate() {
        blue[i] = normalised[usize::from(pixel[2])];
        green[i] = normalised[usize::from(pixel[1])];
        red[i] = normalised[usize::from(pixel[0])];
    }
    Some((data, rw, rh))
}

/// `get_mini_boxes`: the minimum-area rectangle's corners ordered top-left, top-right,
/// bottom-right, bottom-left (PaddleOCR's rule), and its shorter side.
fn mini_box(points: &[[i32; 2]]) -> ([PointF; 4], f32) {
    let rect = min_area_rect(points);
    let mut p = rect.points().to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0])); // stable, as Python's sorted
    let (i1, i4) = if p[1][1] > p[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if p[3][1] > p[2][1] { (2, 3) } else { (3, 2) };
    ([p[i1], p[i2], p[i3], p[i4]], rect.size[0].min(rect.size[1]))
}

/// `box_score_fast`: mean of `pred` under the box's filled polygon, within its bounds.
fn box_score(pred: &[f32], width: usize, height: usize, quad: &[PointF; 4]) -> f64 {
    let clip = |v: f32, hi: usize| (v as i64).clamp(0, hi as i64 - 1) as usize;
    let xmin = clip(
        quad.iter().map(|p| p[0]).fold(f32::MAX, f32::min).floor(),
        width,
    );
    let xmax = clip(
        quad.iter().map(|p| p[0]).fold(f32::MIN, f32::max).ceil(),
        width,
    );
    let ymin = clip(
        quad.iter().map(|p| p[1]).fold(f32::MAX, f32::min).floor(),
        height,
    );
    let ymax = clip(
        quad.iter().map(|p| p[1]).fold(f32::MIN, f32::max).ceil(),
        height,
    );
    let (mw, mh) = (xmax - xmin + 1, ymax - ymin + 1);
    // NumPy's astype(int32) truncates toward zero.
    let polygon: Vec<[i32; 2]> = quad
        .iter()
        .map(|p| [(p[0] - xmin as f32) as i32, (p[1] - ymin as f32) as i32])
        .collect();
    let mask = fill_polygon(&polygon, mw, mh);
    let (mut sum, mut count) = (0f64, 0u64);
    for y in 0..mh {
        for x in 0..mw {
            if mask[y * mw + x] != 0 {
                sum += f64::from(pred[(ymin + y) * width + xmin + x]);
                count += 1;
            }
        }
    }
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// shapely's area and perimeter of the box, for the unclip distance.
fn area_and_length(quad: &[PointF; 4]) -> (f64, f64) {
    let (mut area, mut length) = (0f64, 0f64);
    for i in 0..4 {
        let (a, b) = (quad[i], quad[(i + 1) % 4]);
        let (ax, ay, bx, by) = (
            f64::from(a[0]),
            f64::from(a[1]),
            f64::from(b[0]),
            f64::from(b[1]),
        );
        area += ax * by - bx * ay;
        length += ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt();
    }
    (area.abs() / 2.0, length)
}

/// `DBPostProcess` + `filter_tag_det_res`: text boxes on a `dest_width` x `dest_height`
/// page from the probability map `pred` (`width` x `height`), corners ordered clockwise
/// from the top-left, integer-valued.
pub fn boxes_from_map(
    pred: &[f32],
    width: usize,
    height: usize,
    dest_width: u32,
    dest_height: u32,
) -> Vec<[PointF; 4]> {
    let bitmap: Vec<u8> = pred.iter().map(|&p| u8::from(p > THRESH)).collect();
    let mask = dilate_2x2(&bitmap, width, height);
    let mut boxes = Vec::new();
    for points in contour_point_sets(&mask, width, height)
        .iter()
        .take(MAX_CANDIDATES)
    {
        let (quad, short) = mini_box(points);
        if short < MIN_SIZE {
            continue;
        }
        if box_score(pred, width, height, &quad) < BOX_THRESH {
            continue;
        }
        let (area, length) = area_and_length(&quad);
        let grown = round_offset(&quad, area * UNCLIP_RATIO / length);
        if grown.is_empty() {
            continue;
        }
        let (quad, short) = mini_box(&grown);
        if short < MIN_SIZE + 2.0 {
            continue;
        }
        let (dw, dh) = (dest_width as f32, dest_height as f32);
        let scaled = quad.map(|[x, y]| {
            [
                (x / width as f32 * dw).round_ties_even().clamp(0.0, dw) as i32,
                (y / height as f32 * dh).round_ties_even().clamp(0.0, dh) as i32,
            ]
        });
        let ordered = order_clockwise(scaled).map(|[x, y]| {
            [
                x.clamp(0, dest_width as i32 - 1) as f32,
                y.clamp(0, dest_height as i32 - 1) as f32,
            ]
        });
        let side = |a: PointF, b: PointF| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        if side(ordered[0], ordered[1]) as i32 <= 3 || side(ordered[0], ordered[3]) as i32 <= 3 {
            continue;
        }
        boxes.push(ordered);
    }
    boxes
}

/// `order_points_clockwise`: the two leftmost points (by x, stable) are top-left and
/// bottom-left by y, the other two top-right and bottom-right.
fn order_clockwise(points: [[i32; 2]; 4]) -> [[i32; 2]; 4] {
    let mut by_x = points.to_vec();
    by_x.sort_by_key(|p| p[0]);
    let mut left = [by_x[0], by_x[1]];
    let mut right = [by_x[2], by_x[3]];
    left.sort_by_key(|p| p[1]);
    right.sort_by_key(|p| p[1]);
    [left[0], right[0], right[1], left[1]]
}

/// `sorted_boxes`: by the top-left corner's (y, x), then neighbours whose tops lie
/// within 10 px are put left to right (RapidOCR's one backward bubble pass).
pub fn reading_order(mut boxes: Vec<[PointF; 4]>) -> Vec<[PointF; 4]> {
    boxes.sort_by(|a, b| {
        a[0][1]
            .total_cmp(&b[0][1])
            .then(a[0][0].total_cmp(&b[0][0]))
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1][0][1] - boxes[j][0][1]).abs() < 10.0
                && boxes[j + 1][0][0] < boxes[j][0][0]
            {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
    boxes
}

/// `get_rotate_crop_image`: the box straightened by a perspective warp (bicubic,
/// replicated border), turned 90° counter-clockwise when at least 1.5 times taller
/// than wide. `None` for a degenerate box.
pub fn crop(image: &RgbImage, quad: &[PointF; 4]) -> Option<RgbImage> {
    let (w, h) = crop_size(quad);
    if w == 0 || h == 0 {
        return None;
    }
    let (fw, fh) = (w as f32, h as f32);
    let m = perspective_transform(quad, &[[0.0, 0.0], [fw, 0.0], [fw, fh], [0.0, fh]])?;
    let crop = warp_perspective_cubic(image, &m, w, h);
    if stands(w, h) {
        Some(image::imageops::rotate270(&crop))
    } else {
        Some(crop)
    }
}

/// Whether [`crop`] turns the line 90° counter-clockwise before it is read: the box
/// is at least 1.5 times taller than wide, so its text runs bottom to top (or top to
/// bottom, once the angle classifier turns it).
pub fn read_turned(quad: &[PointF; 4]) -> bool {
    let (w, h) = crop_size(quad);
    stands(w, h)
}

/// Whether a `w`×`h` crop is at least 1.5 times taller than wide, RapidOCR's test
/// for turning it.
pub fn stands(w: u32, h: u32) -> bool {
    w > 0 && f64::from(h) / f64::from(w) >= 1.5
}

/// The crop's width and height in whole pixels: the longer of each pair of sides.
pub fn crop_size(quad: &[PointF; 4]) -> (u32, u32) {
    let dist = |a: PointF, b: PointF| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let w = dist(quad[0], quad[1]).max(dist(quad[2], quad[3])) as u32;
    let h = dist(quad[0], quad[3]).max(dist(quad[1], quad[2])) as u32;
    (w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_order_puts_a_line_left_to_right() {
        let at = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]];
        let boxes = vec![at(50.0, 12.0), at(5.0, 40.0), at(10.0, 15.0), at(80.0, 8.0)];
        let order: Vec<f32> = reading_order(boxes).iter().map(|b| b[0][0]).collect();
        assert_eq!(order, vec![10.0, 50.0, 80.0, 5.0]);
    }

    #[test]
    fn clockwise_order_starts_top_left() {
        assert_eq!(
            order_clockwise([[10, 5], [0, 5], [0, 0], [10, 0]]),
            [[0, 0], [10, 0], [10, 5], [0, 5]]
        );
    }

    #[test]
    fn a_wide_low_page_is_letterboxed_and_mapped_back() {
        let page = Page::new(RgbImage::new(400, 40)).unwrap().unwrap();
        // max(400/8, 30) * 2 = 100 high: 30 px above and below.
        assert_eq!(page.image.dimensions(), (400, 100));
        assert_eq!(page.to_source(&[[10.0, 35.0]; 4])[0], [10.0, 5.0]);
        assert_eq!(page.to_source(&[[500.0, 2.0]; 4])[0], [400.0, 0.0]);
    }

    #[test]
    fn a_page_under_30_px_is_scaled_up_to_multiples_of_32() {
        let page = Page::new(RgbImage::new(120, 24)).unwrap().unwrap();
        // 30/24 → 150x30 → 160x32; then 32 px high is still above 30, ratio 5 < 8.
        assert_eq!(page.image.dimensions(), (160, 32));
        let back = page.to_source(&[[160.0, 32.0]; 4])[0];
        assert_eq!(back, [120.0, 24.0]);
    }

    #[test]
    fn a_thin_strip_that_would_blow_up_is_refused_before_allocating() {
        // 30x upscaling then a letterbox a quarter of the width high: 60000 x 15000.
        let refused = Page::new(RgbImage::new(2000, 1)).err().expect("refused");
        assert_eq!((refused.det_width, refused.det_height), (60000, 15008));
        // The largest ordinary pages pass: 2000 x 2000, and a letterboxed 2000 x 200.
        assert!(Page::new(RgbImage::new(2000, 2000)).unwrap().is_some());
        assert!(Page::new(RgbImage::new(2000, 200)).unwrap().is_some());
    }

    #[test]
    fn a_solid_block_becomes_one_grown_box() {
        let (w, h) = (64usize, 32usize);
        let mut pred = vec![0f32; w * h];
        for y in 10..20 {
            for x in 10..50 {
                pred[y * w + x] = 0.9;
            }
        }
        let boxes = boxes_from_map(&pred, w, h, 64, 32);
        assert_eq!(boxes.len(), 1);
        let b = boxes[0];
        // Dilated block 10..=50 x 10..=20 (41x11); unclip d = 451*1.6/104 ≈ 6.9.
        assert!(
            b[0][0] < 10.0 && b[0][1] < 10.0 && b[2][0] > 50.0 && b[2][1] > 20.0,
            "{b:?}"
        );
    }
}
