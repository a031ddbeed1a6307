//! Overlapping tiles over a page and padded crops, for detecting at training scale and for
//! cutting out what the detector found.

use image::{Rgb, RgbImage};

use crate::letterbox::{PAD_VALUE, paste};

/// Top-left corners `(x, y)` of `tile x tile` squares covering a `width x height` page, row by
/// row. Neighbours overlap by at least `overlap` pixels; the last tile of a row or column is
/// moved back to end exactly at the page's edge (so it may overlap more). A side shorter than
/// a tile gets one tile at 0, which then reaches past the page (see [`crop`]).
///
/// # Panics
///
/// When `tile` is 0 or `overlap >= tile`.
pub fn tile_grid(width: u32, height: u32, tile: u32, overlap: u32) -> Vec<(u32, u32)> {
    assert!(
        tile > 0 && overlap < tile,
        "tile {tile} with overlap {overlap}: the overlap must be smaller than the tile"
    );
    let xs = starts(width, tile, tile - overlap);
    let ys = starts(height, tile, tile - overlap);
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
        .collect()
}

fn starts(len: u32, tile: u32, stride: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let last = len - tile;
    let mut out: Vec<u32> = (0..last).step_by(stride as usize).collect();
    out.push(last);
    out
}

/// The `width x height` region of `image` whose top-left corner is `(x, y)`; whatever lies
/// outside the image (negative coordinates included) is [`PAD_VALUE`] grey.
pub fn crop(image: &RgbImage, x: i64, y: i64, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::from_pixel(width, height, Rgb([PAD_VALUE; 3]));
    paste(&mut out, image, -x, -y);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grid_on_a_page() {
        // 1600 wide, tiles of 640 overlapping 128: stride 512, starts 0, 512, then 960 at the edge.
        let grid = tile_grid(1600, 1200, 640, 128);
        let xs: Vec<u32> = grid.iter().filter(|p| p.1 == 0).map(|p| p.0).collect();
        let ys: Vec<u32> = grid.iter().filter(|p| p.0 == 0).map(|p| p.1).collect();
        assert_eq!(xs, [0, 512, 960]);
        assert_eq!(ys, [0, 512, 560]);
        assert_eq!(grid.len(), 9);
        assert_eq!(
            grid[..4],
            [(0, 0), (512, 0), (960, 0), (0, 512)],
            "row by row"
        );
    }

    #[test]
    fn grid_exact_fit_and_small_pages() {
        assert_eq!(tile_grid(640, 640, 640, 64), [(0, 0)]);
        assert_eq!(tile_grid(100, 50, 640, 64), [(0, 0)]);
        assert_eq!(
            tile_grid(1152, 10, 640, 128),
            [(0, 0), (512, 0)],
            "last tile ends at 1152"
        );
        assert_eq!(tile_grid(0, 0, 640, 0), [(0, 0)]);
    }

    #[test]
    #[should_panic(expected = "overlap must be smaller")]
    fn overlap_must_be_smaller_than_the_tile() {
        tile_grid(100, 100, 10, 10);
    }

    #[test]
    fn crop_inside_and_past_the_edges() {
        let image = RgbImage::from_fn(4, 3, |x, y| Rgb([x as u8, y as u8, 1]));
        let inside = crop(&image, 1, 1, 2, 2);
        assert_eq!(inside.get_pixel(0, 0), &Rgb([1, 1, 1]));
        assert_eq!(inside.get_pixel(1, 1), &Rgb([2, 2, 1]));

        let around = crop(&image, -1, -2, 6, 6);
        assert_eq!(around.dimensions(), (6, 6));
        assert_eq!(around.get_pixel(0, 0), &Rgb([PAD_VALUE; 3]));
        assert_eq!(around.get_pixel(1, 2), &Rgb([0, 0, 1]));
        assert_eq!(around.get_pixel(4, 4), &Rgb([3, 2, 1]));
        assert_eq!(around.get_pixel(5, 4), &Rgb([PAD_VALUE; 3]));
        assert_eq!(around.get_pixel(4, 5), &Rgb([PAD_VALUE; 3]));

        let outside = crop(&image, 10, 10, 2, 2);
        assert!(outside.pixels().all(|p| *p == Rgb([PAD_VALUE; 3])));
        assert_eq!(crop(&image, 0, 0, 0, 0).dimensions(), (0, 0));
    }

    proptest! {
        /// Every pixel is covered, neighbours overlap by at least `overlap`, tiles stay on the
        /// page when it is larger than a tile.
        #[test]
        fn grid_covers_the_page(w in 1u32..3000, h in 1u32..3000, tile in 16u32..1000, overlap_pct in 0u32..90) {
            let overlap = tile * overlap_pct / 100;
            let grid = tile_grid(w, h, tile, overlap);
            for (len, coord) in [(w, 0usize), (h, 1)] {
                let mut starts: Vec<u32> = grid.iter().map(|p| if coord == 0 { p.0 } else { p.1 }).collect();
                starts.sort_unstable();
                starts.dedup();
                prop_assert_eq!(starts[0], 0);
                prop_assert!(starts.last().unwrap() + tile >= len);
                if len >= tile {
                    prop_assert_eq!(starts.last().unwrap() + tile, len);
                }
                for pair in starts.windows(2) {
                    prop_assert!(pair[0] + tile >= pair[1] + overlap, "{:?}", pair);
                }
            }
        }
    }
}
