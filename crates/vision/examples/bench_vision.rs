//! The CPU steps around the models on one page: decoding, the DB detector's resize, and
//! the contour point sets of a text map. Median of 9 runs after one warm-up.
//!
//! `cargo run --release -p plenum-vision --example bench_vision -- tests/pages/page_0003.png`

use std::time::Instant;

use plenum_vision::contours::{contour_point_sets, dilate_2x2};
use plenum_vision::{Limits, decode, resize_linear};

fn median_ms(mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/pages/page_0003.png".to_owned());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let limits = Limits::default();
    let page = decode(&bytes, &limits).expect("a page").image;
    let (width, height) = page.dimensions();
    println!("{path}: {width}x{height}");
    let ms = median_ms(|| {
        decode(&bytes, &limits).expect("a page");
    });
    println!("decode to RGB                {ms:6.1} ms");
    // Sides rounded up to multiples of 32: for a 1600x1200 page that is 1600x1216, the
    // size RapidOCR's det input has (it rounds to the nearest multiple).
    let (det_w, det_h) = (width.div_ceil(32) * 32, height.div_ceil(32) * 32);
    let ms = median_ms(|| {
        resize_linear(&page, det_w, det_h);
    });
    println!("resize to {det_w}x{det_h}        {ms:6.1} ms");
    // A text map's stand-in: the page's ink, dilated as DB post-processing does.
    let (w, h) = (width as usize, height as usize);
    let ink: Vec<u8> = page.pixels().map(|p| u8::from(p[0] < 128)).collect();
    let map = dilate_2x2(&ink, w, h);
    let sets = contour_point_sets(&map, w, h).len();
    let ms = median_ms(|| {
        contour_point_sets(&map, w, h);
    });
    println!("contour point sets ({sets:4})    {ms:6.1} ms");
}
