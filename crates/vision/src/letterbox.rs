//! Ultralytics' `LetterBox` as a TorchScript export sees it (`auto=False`, `scaleup=True`,
//! `center=True`): scale to fit, pad to the model's input size with grey 114, and map boxes back.

use image::{Rgb, RgbImage};

use crate::geometry::BoxF;
use crate::resize::resize_linear;

/// The grey Ultralytics pads with, on all three channels.
pub const PAD_VALUE: u8 = 114;

/// A source image scaled and padded to a model's input size, with what it takes to undo it.
#[derive(Debug, Clone)]
pub struct Letterboxed {
    /// Exactly the requested size.
    pub image: RgbImage,
    /// Source pixels to letterboxed pixels: `min(new_h / h, new_w / w)`.
    pub ratio: f32,
    /// Columns of padding on the left.
    pub pad_x: f32,
    /// Rows of padding on top.
    pub pad_y: f32,
    pub source_width: u32,
    pub source_height: u32,
}

impl Letterboxed {
    /// Maps a box from letterboxed coordinates back to the source image: `(x - pad_x) / ratio`,
    /// clipped to `[0, width] x [0, height]` as Ultralytics' `scale_boxes` does.
    pub fn to_source(&self, b: &BoxF) -> BoxF {
        BoxF {
            x_min: (b.x_min - self.pad_x) / self.ratio,
            y_min: (b.y_min - self.pad_y) / self.ratio,
            x_max: (b.x_max - self.pad_x) / self.ratio,
            y_max: (b.y_max - self.pad_y) / self.ratio,
        }
        .clip(self.source_width as f32, self.source_height as f32)
    }

    /// Maps a box from source coordinates into the letterboxed image (the inverse of
    /// [`Self::to_source`], without clipping).
    pub fn to_letterboxed(&self, b: &BoxF) -> BoxF {
        BoxF {
            x_min: b.x_min * self.ratio + self.pad_x,
            y_min: b.y_min * self.ratio + self.pad_y,
            x_max: b.x_max * self.ratio + self.pad_x,
            y_max: b.y_max * self.ratio + self.pad_y,
        }
    }
}

/// Python's `int(round(x))`: ties go to the even neighbour.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Scales `source` to fit `new_width x new_height` keeping its aspect ratio (up or down),
/// centres it and pads the rest with [`PAD_VALUE`], exactly as Ultralytics does, including its
/// resize (OpenCV `INTER_LINEAR`, see [`crate::resize`]) and its padding split (`top =
/// round(dh - 0.1)`, `bottom = round(dh + 0.1)`).
///
/// One deliberate difference: a side that would scale to 0 pixels (a 1x10000 strip) is kept at
/// 1 pixel, where OpenCV would throw.
///
/// # Panics
///
/// When the source or the target has a zero dimension.
pub fn letterbox(source: &RgbImage, new_width: u32, new_height: u32) -> Letterboxed {
    let (w, h) = source.dimensions();
    let plan = Plan::new(w, h, new_width, new_height);
    let mut image = RgbImage::from_pixel(new_width, new_height, Rgb([PAD_VALUE; 3]));
    if plan.unpadded == (w, h) {
        paste(&mut image, source, plan.left, plan.top);
    } else {
        let resized = resize_linear(source, plan.unpadded.0, plan.unpadded.1);
        paste(&mut image, &resized, plan.left, plan.top);
    }
    plan.with_image(image, w, h)
}

/// Copies `image` onto `canvas` with its top-left corner at (`left`, `top`), clipped to
/// the canvas, row by row: `image::imageops::replace` goes pixel by pixel, which in a
/// profile of the stack was ~0.3% of all samples, about 5 ms of every detector page.
pub fn paste(canvas: &mut RgbImage, image: &RgbImage, left: i64, top: i64) {
    const CHANNELS: i64 = 3;
    let (canvas_w, canvas_h) = (i64::from(canvas.width()), i64::from(canvas.height()));
    let (image_w, image_h) = (i64::from(image.width()), i64::from(image.height()));
    let (x0, x1) = (left.max(0), (left + image_w).min(canvas_w));
    let (y0, y1) = (top.max(0), (top + image_h).min(canvas_h));
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    // In range and non-negative by the clipping above.
    let index = |v: i64| v as usize;
    let row_bytes = index((x1 - x0) * CHANNELS);
    let source = image.as_raw();
    let target: &mut [u8] = canvas;
    for y in y0..y1 {
        let from = index(((y - top) * image_w + (x0 - left)) * CHANNELS);
        let to = index((y * canvas_w + x0) * CHANNELS);
        target[to..to + row_bytes].copy_from_slice(&source[from..from + row_bytes]);
    }
}

/// The arithmetic of a letterbox, apart from the pixels.
#[derive(Debug, Clone, Copy)]
struct Plan {
    ratio: f64,
    unpadded: (u32, u32),
    left: i64,
    top: i64,
}

impl Plan {
    fn new(w: u32, h: u32, new_width: u32, new_height: u32) -> Self {
        assert!(
            w > 0 && h > 0 && new_width > 0 && new_height > 0,
            "letterbox {w}x{h} into {new_width}x{new_height}: every side must be positive"
        );
        let ratio = f64::min(
            f64::from(new_height) / f64::from(h),
            f64::from(new_width) / f64::from(w),
        );
        let unpad_w = py_round(f64::from(w) * ratio).clamp(1, i64::from(new_width)) as u32;
        let unpad_h = py_round(f64::from(h) * ratio).clamp(1, i64::from(new_height)) as u32;
        let dw = f64::from(new_width - unpad_w) / 2.0;
        let dh = f64::from(new_height - unpad_h) / 2.0;
        // Python's round(d - 0.1) on the left and round(d + 0.1) on the right puts an odd
        // pixel of padding at the bottom and right.
        Self {
            ratio,
            unpadded: (unpad_w, unpad_h),
            left: py_round(dw - 0.1),
            top: py_round(dh - 0.1),
        }
    }

    fn with_image(self, image: RgbImage, source_width: u32, source_height: u32) -> Letterboxed {
        Letterboxed {
            image,
            ratio: self.ratio as f32,
            pad_x: self.left as f32,
            pad_y: self.top as f32,
            source_width,
            source_height,
        }
    }
}

/// Packs same-size images into one `[N, 3, H, W]` batch of `f32` in `[0, 1]` (RGB planes,
/// each value `/ 255`), the layout and scaling of Ultralytics' preprocessing.
///
/// # Panics
///
/// When the images differ in size.
pub fn to_nchw_f32(images: &[&RgbImage]) -> (Vec<f32>, [usize; 4]) {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    assert!(
        images.iter().all(|i| i.dimensions() == (w, h)),
        "to_nchw_f32: every image in a batch must be {w}x{h}"
    );
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (image, out) in images.iter().zip(data.chunks_exact_mut(3 * plane.max(1))) {
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, p) in image.pixels().enumerate() {
            r[i] = f32::from(p[0]) / 255.0;
            g[i] = f32::from(p[1]) / 255.0;
            b[i] = f32::from(p[2]) / 255.0;
        }
    }
    (data, [images.len(), 3, h as usize, w as usize])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn grey(w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb([10, 20, 30]))
    }

    /// The rows (or columns) of `line` that are not padding.
    fn content_span(line: impl Iterator<Item = Rgb<u8>>) -> (usize, usize) {
        let content: Vec<usize> = line
            .enumerate()
            .filter(|(_, p)| *p != Rgb([PAD_VALUE; 3]))
            .map(|(i, _)| i)
            .collect();
        (content[0], *content.last().unwrap())
    }

    #[test]
    fn pasting_matches_the_image_crates_replace_inside_and_across_every_edge() {
        let image = RgbImage::from_fn(5, 4, |x, y| Rgb([x as u8 * 40, y as u8 * 60, 7]));
        for (left, top) in [(0, 0), (2, 1), (-2, -1), (4, 3), (-5, 0), (6, 6), (-1, 2)] {
            let mut ours = RgbImage::from_pixel(7, 6, Rgb([PAD_VALUE; 3]));
            let mut theirs = ours.clone();
            paste(&mut ours, &image, left, top);
            image::imageops::replace(&mut theirs, &image, left, top);
            assert_eq!(ours, theirs, "at ({left}, {top})");
        }
    }

    #[test]
    fn blueprint_page_to_640() {
        let lb = letterbox(&grey(1600, 1200), 640, 640);
        assert_eq!(lb.image.dimensions(), (640, 640));
        assert_eq!(lb.ratio, 0.4);
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 80.0));
        let column = (0..640).map(|y| *lb.image.get_pixel(320, y));
        assert_eq!(content_span(column), (80, 559)); // 80 rows on top, 480 of image, 80 below
    }

    #[test]
    fn odd_sizes_put_the_extra_pixel_bottom_right() {
        // 333x517 into 640: r = 640/517, unpad = round(412.22) = 412 wide, 640 high;
        // dw = 114 exactly, so left = round(113.9) = 114, right = round(114.1) = 114.
        let lb = letterbox(&grey(333, 517), 640, 640);
        assert_eq!((lb.pad_x, lb.pad_y), (114.0, 0.0));
        let row = (0..640).map(|x| *lb.image.get_pixel(x, 300));
        assert_eq!(content_span(row), (114, 114 + 412 - 1));

        // 517x334 into 640: unpad 640 x round(413.46) = 413, dh = 113.5:
        // top = round(113.4) = 113, bottom = round(113.6) = 114.
        let lb = letterbox(&grey(517, 334), 640, 640);
        assert_eq!(lb.pad_y, 113.0);
        let column = (0..640).map(|y| *lb.image.get_pixel(300, y));
        assert_eq!(content_span(column), (113, 113 + 413 - 1));
    }

    #[test]
    fn python_rounding_of_the_unpadded_size() {
        // 5x3 into 8x8: r = 1.6, 3 * 1.6 = 4.800000000000001 rounds to 5; 5 * 1.6 = 8.
        let lb = letterbox(&grey(5, 3), 8, 8);
        let column = (0..8).map(|y| *lb.image.get_pixel(4, y));
        // dh = 1.5: top = round(1.4) = 1, bottom = round(1.6) = 2.
        assert_eq!(content_span(column), (1, 5));
        // 4x5 into 5x5: r = 1, no resize, the source pasted untouched.
        let source = RgbImage::from_fn(4, 5, |x, y| Rgb([x as u8, y as u8, 7]));
        let lb = letterbox(&source, 5, 5);
        assert_eq!(lb.ratio, 1.0);
        assert_eq!(lb.pad_x, 0.0); // dw = 0.5: left = round(0.4) = 0, right = round(0.6) = 1
        assert_eq!(lb.image.get_pixel(3, 4), &Rgb([3, 4, 7]));
        assert_eq!(lb.image.get_pixel(4, 4), &Rgb([PAD_VALUE; 3]));
    }

    #[test]
    fn degenerate_strip_keeps_one_pixel() {
        let lb = letterbox(&grey(10_000, 1), 640, 640);
        assert_eq!(lb.image.dimensions(), (640, 640));
        assert_eq!(lb.image.get_pixel(0, 319), &Rgb([10, 20, 30])); // dh = 319.5: top = 319
    }

    #[test]
    fn box_mapping_is_clipped_to_the_source() {
        let lb = letterbox(&grey(1600, 1200), 640, 640);
        let source = lb.to_source(&BoxF::new(100.0, 120.0, 200.0, 160.0));
        assert_eq!(source, BoxF::new(250.0, 100.0, 500.0, 200.0));
        // A box reaching into the padding ends at the source's edge.
        let edge = lb.to_source(&BoxF::new(-5.0, 60.0, 650.0, 600.0));
        assert_eq!(edge, BoxF::new(0.0, 0.0, 1600.0, 1200.0));
    }

    proptest! {
        #[test]
        fn box_mapping_round_trips(
            w in 1u32..3000, h in 1u32..3000,
            x in 0f32..1.0, y in 0f32..1.0, bw in 0f32..1.0, bh in 0f32..1.0,
        ) {
            // The geometry alone: resizing thousands of large images would only slow the test.
            let lb = Plan::new(w, h, 640, 640).with_image(RgbImage::new(1, 1), w, h);
            let (w_f, h_f) = (w as f32, h as f32);
            let b = BoxF::new(x * w_f, y * h_f, (x + bw * (1.0 - x)) * w_f, (y + bh * (1.0 - y)) * h_f);
            let back = lb.to_source(&lb.to_letterboxed(&b));
            let tolerance = 1e-3 * w_f.max(h_f);
            prop_assert!((back.x_min - b.x_min).abs() <= tolerance, "{:?} -> {:?}", b, back);
            prop_assert!((back.y_min - b.y_min).abs() <= tolerance, "{:?} -> {:?}", b, back);
            prop_assert!((back.x_max - b.x_max).abs() <= tolerance, "{:?} -> {:?}", b, back);
            prop_assert!((back.y_max - b.y_max).abs() <= tolerance, "{:?} -> {:?}", b, back);
        }

        #[test]
        fn always_the_requested_size_and_inside_it(w in 1u32..200, h in 1u32..200, size in 1u32..100) {
            let lb = letterbox(&grey(w, h), size, size);
            prop_assert_eq!(lb.image.dimensions(), (size, size));
            prop_assert!(lb.pad_x >= 0.0 && lb.pad_y >= 0.0);
        }
    }

    #[test]
    fn nchw_layout_and_scale() {
        let a = RgbImage::from_fn(2, 1, |x, _| Rgb([255, 0, x as u8 * 51]));
        let b = RgbImage::from_pixel(2, 1, Rgb([0, 255, 0]));
        let (data, shape) = to_nchw_f32(&[&a, &b]);
        assert_eq!(shape, [2, 3, 1, 2]);
        assert_eq!(
            data,
            [1.0, 1.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(to_nchw_f32(&[]), (vec![], [0, 3, 0, 0]));
    }
}
