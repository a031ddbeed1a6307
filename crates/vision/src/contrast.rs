//! Levels for faded pages. A scanned or photocopied drawing comes on grey paper with
//! faded strokes; the detector was trained on black ink on white, and on such a page it
//! loses the thin and small symbols first. Stretching the page's grey levels so that its
//! paper is white and its darkest ink black gives back what the scan took (on the
//! independent renderer's scanned pages, Ultralytics `predict` on the same weights found
//! 50 of 52 symbols stretched against 46 as scanned; BENCHMARKS.md, "Generalization").
//! A page already black on white is left exactly as it is.

use image::RgbImage;

/// The share of a page's pixels taken as its darkest ink: a drawing is mostly paper, and
/// its strokes cover a few percent of it, so the 0.5th percentile lies inside the ink
/// while a few dark specks of noise do not move it.
const INK_QUANTILE: f64 = 0.005;

/// The least distance between paper and ink that is stretched (at most 255/96 ≈ 2.7×).
/// Below it a page is nearly blank, or its "ink" is only antialiasing and noise, and a
/// stretch would turn grey specks into strokes.
const MIN_RANGE: u8 = 96;

/// Levels this far apart already span the range the detector was trained on (a gain of
/// at most 255/224 ≈ 1.14): such a page, white paper at 254 as a PNG quantiser left it,
/// say, is left exactly as it is rather than nudged by a level or two.
const FULL_ENOUGH: u8 = 224;

/// Paper darker than this is not paper: a dark or inverted page (white lines on blue)
/// is left alone.
const MIN_PAPER: u8 = 128;

/// A page's grey levels: its paper (the median) and its darkest ink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub ink: u8,
    pub paper: u8,
}

/// Luma of an RGB pixel (BT.601 weights in 8 bits); a grey pixel's luma is its value.
fn luma(pixel: &[u8]) -> u8 {
    ((77 * u32::from(pixel[0]) + 150 * u32::from(pixel[1]) + 29 * u32::from(pixel[2]) + 128) >> 8)
        as u8
}

/// The paper and ink levels of `image` when stretching them to white and black would
/// change it and can be trusted to help: a light page whose ink stands at least
/// [`MIN_RANGE`] and less than [`FULL_ENOUGH`] below its paper.
pub fn faded_levels(image: &RgbImage) -> Option<Levels> {
    let mut histogram = [0u64; 256];
    for pixel in image.as_raw().chunks_exact(3) {
        histogram[usize::from(luma(pixel))] += 1;
    }
    let pixels: u64 = histogram.iter().sum();
    if pixels == 0 {
        return None;
    }
    // The value at which the cumulative count first exceeds `rank`.
    let quantile = |rank: u64| {
        let mut seen = 0;
        histogram
            .iter()
            .position(|&count| {
                seen += count;
                seen > rank
            })
            .unwrap_or(255) as u8
    };
    let levels = Levels {
        ink: quantile((pixels as f64 * INK_QUANTILE) as u64),
        paper: quantile(pixels / 2),
    };
    let range = levels.paper.saturating_sub(levels.ink);
    let stretchable = levels.paper >= MIN_PAPER && range >= MIN_RANGE;
    (stretchable && range < FULL_ENOUGH).then_some(levels)
}

/// Maps `levels.ink` and below to black, `levels.paper` and above to white, linearly
/// between, on every channel alike (a coloured stroke keeps its hue).
pub fn stretch(image: &mut RgbImage, levels: Levels) {
    let range = f32::from(levels.paper.saturating_sub(levels.ink).max(1));
    let table: Vec<u8> = (0..=255u8)
        .map(|value| {
            let above_ink = f32::from(value) - f32::from(levels.ink);
            (above_ink * 255.0 / range).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    for value in image.iter_mut() {
        *value = table[usize::from(*value)];
    }
}

/// Stretches a faded page to black on white (see [`faded_levels`]); returns the levels
/// it stretched, or None when the page was left as it was.
pub fn normalize_contrast(image: &mut RgbImage) -> Option<Levels> {
    let levels = faded_levels(image)?;
    stretch(image, levels);
    Some(levels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A page of `paper` with a block of `ink` covering `ink_share` of it and a few
    /// pixels of `mid` between.
    fn page(paper: u8, ink: u8, ink_share: f64) -> RgbImage {
        let (width, height) = (200u32, 100u32);
        let ink_pixels = (f64::from(width * height) * ink_share) as u32;
        RgbImage::from_fn(width, height, |x, y| {
            let index = y * width + x;
            if index < ink_pixels {
                Rgb([ink; 3])
            } else if index < ink_pixels + 50 {
                Rgb([(ink / 2) + (paper / 2); 3])
            } else {
                Rgb([paper; 3])
            }
        })
    }

    #[test]
    fn a_faded_page_is_stretched_to_black_ink_on_white_paper() {
        let mut image = page(219, 73, 0.03);
        let levels = normalize_contrast(&mut image).expect("a faded page is stretched");
        assert_eq!(
            levels,
            Levels {
                ink: 73,
                paper: 219
            }
        );
        assert_eq!(image.get_pixel(0, 0), &Rgb([0; 3]), "the ink");
        assert_eq!(image.get_pixel(199, 99), &Rgb([255; 3]), "the paper");
        let middle = image.get_pixel(0, 3).0[0];
        assert!(
            (126..=129).contains(&middle),
            "halfway stays halfway: {middle}"
        );
    }

    #[test]
    fn a_page_already_black_on_white_is_left_exactly_as_it_is() {
        for (paper, ink) in [(255, 0), (254, 0), (250, 20)] {
            let mut image = page(paper, ink, 0.03);
            let before = image.clone();
            assert_eq!(normalize_contrast(&mut image), None, "{ink} on {paper}");
            assert_eq!(image, before);
        }
        assert!(faded_levels(&page(250, 30, 0.03)).is_some(), "221 apart");
    }

    #[test]
    fn nearly_blank_dark_and_empty_pages_are_left_alone() {
        // Paper with only light specks: its "ink" is 40 levels below the paper.
        let mut blank = page(250, 210, 0.03);
        let before = blank.clone();
        assert_eq!(normalize_contrast(&mut blank), None);
        assert_eq!(blank, before);
        // White lines on a dark page: its median is no paper.
        assert_eq!(faded_levels(&page(40, 0, 0.6)), None);
        assert_eq!(faded_levels(&RgbImage::new(0, 0)), None);
    }

    #[test]
    fn ink_below_the_quantile_does_not_decide_the_levels() {
        // 0.2% of the page is black specks; the strokes (3%) are at 90.
        let mut image = page(230, 90, 0.03);
        for x in 0..40 {
            image.put_pixel(x, 99, Rgb([0; 3]));
        }
        assert_eq!(
            faded_levels(&image),
            Some(Levels {
                ink: 90,
                paper: 230
            })
        );
    }

    #[test]
    fn colour_is_stretched_channel_by_channel_with_the_same_map() {
        let mut image = page(220, 60, 0.03);
        image.put_pixel(100, 50, Rgb([220, 60, 140]));
        normalize_contrast(&mut image).unwrap();
        assert_eq!(image.get_pixel(100, 50), &Rgb([255, 0, 128]));
    }
}
