//! Regions read turned (`ReadTextRequest.read_turned`). DB finds text lines that run
//! across; a tag written along a column, 10 px across, it often does not find at all
//! when reading the page, and finds once the tag is turned to run across. So the
//! regions are cut out of the page, turned 90° clockwise and laid out on one white
//! sheet, which is read like a page; the lines found are mapped back to where they
//! lie on the page. One sheet keeps it to one pass of each model however many
//! regions a call sends.

use image::{Rgb, RgbImage};
use plenum_vision::geometry::BoxF;
use plenum_vision::paste;
use plenum_vision::quad::PointF;

use crate::page::{Direction, Line};

/// White between the regions on the sheet, wide enough that DB's unclipped boxes of
/// two neighbours never meet.
const GAP: u32 = 24;

/// A line found twice where regions overlap is one line.
const SAME_LINE_IOU: f32 = 0.5;

/// Where one region of the page went on the sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The region's top-left corner on the page.
    pub page_origin: (u32, u32),
    /// Its height on the page (the width it has on the sheet, turned).
    pub page_height: u32,
    /// The turned region's top-left corner on the sheet.
    pub sheet_origin: (u32, u32),
    /// The turned region's size on the sheet.
    pub sheet_size: (u32, u32),
}

impl Placement {
    fn contains(self, [u, v]: PointF) -> bool {
        let (x, y) = (self.sheet_origin.0 as f32, self.sheet_origin.1 as f32);
        let (w, h) = (self.sheet_size.0 as f32, self.sheet_size.1 as f32);
        (x..=x + w).contains(&u) && (y..=y + h).contains(&v)
    }

    /// The page point under sheet point `(u, v)`: turning clockwise took page point
    /// `(x, y)` of the region to `(height - y, x)`, so this turns it back.
    fn to_page(self, [u, v]: PointF) -> PointF {
        let local_u = u - self.sheet_origin.0 as f32;
        let local_v = v - self.sheet_origin.1 as f32;
        [
            self.page_origin.0 as f32 + local_v,
            self.page_origin.1 as f32 + self.page_height as f32 - local_u,
        ]
    }
}

/// The sheet of `regions` (page pixels: x_min, y_min, x_max, y_max) cut from `page`
/// and turned 90° clockwise, in rows, and where each went. Regions are clamped to the
/// page; one with nothing left is skipped.
pub fn sheet(page: &RgbImage, regions: &[[f32; 4]]) -> (RgbImage, Vec<Placement>) {
    let (width, height) = page.dimensions();
    let cuts: Vec<(u32, u32, u32, u32)> = regions
        .iter()
        .filter_map(|&[x_min, y_min, x_max, y_max]| {
            let clamp = |v: f32, limit: u32| v.clamp(0.0, limit as f32) as u32;
            let (x0, y0) = (clamp(x_min.floor(), width), clamp(y_min.floor(), height));
            let (x1, y1) = (clamp(x_max.ceil(), width), clamp(y_max.ceil(), height));
            (x1 > x0 && y1 > y0).then_some((x0, y0, x1 - x0, y1 - y0))
        })
        .collect();
    // Rows about as wide as the sheet will be high: the text detector brings a
    // sheet's shorter side up to 736 px, so a long thin sheet would be read hugely
    // enlarged. Turned, a region is as wide as it was high.
    let area: u64 = cuts
        .iter()
        .map(|&(_, _, w, h)| u64::from(w + GAP) * u64::from(h + GAP))
        .sum();
    let widest = cuts.iter().map(|&(_, _, _, h)| h).max().unwrap_or(0);
    let row_width = widest.max((area as f64).sqrt().ceil() as u32);
    let mut placements = Vec::with_capacity(cuts.len());
    let (mut x, mut y, mut row_height) = (GAP, GAP, 0);
    for &(x0, y0, w, h) in &cuts {
        if x > GAP && x + h > row_width + GAP {
            (x, y, row_height) = (GAP, y + row_height + GAP, 0);
        }
        placements.push(Placement {
            page_origin: (x0, y0),
            page_height: h,
            sheet_origin: (x, y),
            sheet_size: (h, w),
        });
        x += h + GAP;
        row_height = row_height.max(w);
    }
    let sheet_width = placements
        .iter()
        .map(|p| p.sheet_origin.0 + p.sheet_size.0 + GAP)
        .max()
        .unwrap_or(0);
    let mut sheet = RgbImage::from_pixel(sheet_width, y + row_height + GAP, Rgb([255; 3]));
    for (placement, &(x0, y0, w, h)) in placements.iter().zip(&cuts) {
        let region = image::imageops::crop_imm(page, x0, y0, w, h).to_image();
        let turned = image::imageops::rotate90(&region);
        paste(
            &mut sheet,
            &turned,
            i64::from(placement.sheet_origin.0),
            i64::from(placement.sheet_origin.1),
        );
    }
    (sheet, placements)
}

/// Which way a line runs across the page when it ran `on_sheet` across the sheet:
/// turning back counter-clockwise takes right to up, down to right, left to down
/// and up to left.
pub fn page_direction(on_sheet: Direction) -> Direction {
    match on_sheet {
        Direction::LeftToRight => Direction::BottomToTop,
        Direction::TopToBottom => Direction::LeftToRight,
        Direction::RightToLeft => Direction::TopToBottom,
        Direction::BottomToTop => Direction::RightToLeft,
    }
}

fn bounds(quad: &[PointF; 4]) -> BoxF {
    let xs = quad.map(|p| p[0]);
    let ys = quad.map(|p| p[1]);
    BoxF {
        x_min: xs.into_iter().fold(f32::INFINITY, f32::min),
        y_min: ys.into_iter().fold(f32::INFINITY, f32::min),
        x_max: xs.into_iter().fold(f32::NEG_INFINITY, f32::max),
        y_max: ys.into_iter().fold(f32::NEG_INFINITY, f32::max),
    }
}

/// The sheet's lines on the page: each mapped back through the region its centre lies
/// in (a line in no region is dropped), its corners again clockwise from the one
/// nearest the page's top-left, its direction the page's; of a line found in two
/// overlapping regions, the better read stays.
pub fn lines_on_page(lines: Vec<Line>, placements: &[Placement]) -> Vec<Line> {
    let mut kept: Vec<(Line, BoxF)> = Vec::new();
    for line in lines {
        let on_sheet = bounds(&line.quad);
        let centre = [
            (on_sheet.x_min + on_sheet.x_max) / 2.0,
            (on_sheet.y_min + on_sheet.y_max) / 2.0,
        ];
        let Some(placement) = placements.iter().find(|p| p.contains(centre)) else {
            continue;
        };
        let mapped = line.quad.map(|point| placement.to_page(point));
        let first = (0..4)
            .min_by(|&a, &b| {
                (mapped[a][0] + mapped[a][1]).total_cmp(&(mapped[b][0] + mapped[b][1]))
            })
            .unwrap_or(0);
        let quad = std::array::from_fn(|i| mapped[(first + i) % 4]);
        let line = Line {
            quad,
            direction: page_direction(line.direction),
            ..line
        };
        let on_page = bounds(&line.quad);
        match kept
            .iter_mut()
            .find(|(_, other)| other.iou(&on_page) >= SAME_LINE_IOU)
        {
            Some(same) if same.0.score < line.score => *same = (line, on_page),
            Some(_) => {}
            None => kept.push((line, on_page)),
        }
    }
    kept.into_iter().map(|(line, _)| line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page whose pixel (x, y) encodes its own position, to follow it onto the sheet.
    fn marked_page(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn each_region_is_turned_clockwise_onto_the_sheet_and_maps_back() {
        let page = marked_page(200, 150);
        let regions = [[10.0, 20.0, 50.0, 80.0], [100.5, 5.0, 130.0, 45.2]];
        let (sheet, placements) = sheet(&page, &regions);
        assert_eq!(placements.len(), 2);
        for placement in &placements {
            let (sx, sy) = placement.sheet_origin;
            let (w, h) = placement.sheet_size;
            for v in 0..h {
                for u in 0..w {
                    // The centre of sheet pixel (u, v) lies over the centre of the
                    // page pixel it was copied from.
                    let [x, y] = placement.to_page([(sx + u) as f32 + 0.5, (sy + v) as f32 + 0.5]);
                    let source = page.get_pixel(x.floor() as u32, y.floor() as u32);
                    assert_eq!(sheet.get_pixel(sx + u, sy + v), source, "({u}, {v})");
                }
            }
        }
        // Turned clockwise: the region's top-left corner is the sheet's top-right.
        let first = placements[0];
        assert_eq!(first.sheet_size, (60, 40));
        let top_right = sheet.get_pixel(first.sheet_origin.0 + 59, first.sheet_origin.1);
        assert_eq!(top_right, &Rgb([10, 20, 7]));
        // Between and around the regions the sheet is white.
        assert_eq!(sheet.get_pixel(0, 0), &Rgb([255; 3]));
    }

    #[test]
    fn regions_outside_the_page_are_clamped_or_skipped_and_rows_wrap() {
        let page = marked_page(100, 100);
        let (_, placements) = sheet(
            &page,
            &[[-20.0, 90.0, 30.0, 140.0], [150.0, 0.0, 160.0, 9.0]],
        );
        assert_eq!(placements.len(), 1, "the region beyond the page is skipped");
        assert_eq!(placements[0].page_origin, (0, 90));
        assert_eq!(placements[0].sheet_size, (10, 30));

        let tall = [[0.0, 0.0, 10.0, 100.0]; 30];
        let (sheet, placements) = sheet(&page, &tall);
        assert!(
            placements.iter().any(|p| p.sheet_origin.1 > GAP),
            "a second row"
        );
        let (w, h) = sheet.dimensions();
        assert!(w <= 2 * h && h <= 2 * w, "about square: {w}x{h}");
        for (a, b) in placements.iter().zip(placements.iter().skip(1)) {
            let apart = a.sheet_origin.1 != b.sheet_origin.1
                || b.sheet_origin.0 >= a.sheet_origin.0 + a.sheet_size.0 + GAP;
            assert!(apart, "{a:?} and {b:?} overlap");
        }
    }

    fn line(quad: [PointF; 4], text: &str, score: f32, direction: Direction) -> Line {
        Line {
            quad,
            text: text.into(),
            score,
            direction,
        }
    }

    #[test]
    fn lines_come_back_where_they_lie_on_the_page_running_the_page_s_way() {
        // A region 40 wide and 60 high at (10, 20): on the sheet, 60 wide and 40 high.
        let placement = Placement {
            page_origin: (10, 20),
            page_height: 60,
            sheet_origin: (24, 24),
            sheet_size: (60, 40),
        };
        // A line across the sheet near the region's turned top edge, read left to
        // right: on the page it runs up the region's left side.
        let on_sheet = [[34.0, 26.0], [74.0, 26.0], [74.0, 36.0], [34.0, 36.0]];
        let lines = lines_on_page(
            vec![line(on_sheet, "VAV-10", 0.9, Direction::LeftToRight)],
            &[placement],
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].direction, Direction::BottomToTop);
        let b = bounds(&lines[0].quad);
        assert_eq!(
            (b.x_min, b.y_min, b.x_max, b.y_max),
            (12.0, 30.0, 22.0, 70.0)
        );
        assert_eq!(
            lines[0].quad[0],
            [12.0, 30.0],
            "clockwise from the top-left"
        );
        assert_eq!(lines[0].quad[1], [22.0, 30.0]);

        // Outside every region: dropped. Found twice: the better read stays.
        let outside = [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]];
        let twice = lines_on_page(
            vec![
                line(on_sheet, "VAV-1O", 0.7, Direction::LeftToRight),
                line(outside, "X", 0.9, Direction::LeftToRight),
                line(on_sheet, "VAV-10", 0.95, Direction::LeftToRight),
            ],
            &[placement],
        );
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].text, "VAV-10");
    }

    #[test]
    fn directions_turn_back_counter_clockwise() {
        use Direction::*;
        for (sheet, page) in [
            (LeftToRight, BottomToTop),
            (TopToBottom, LeftToRight),
            (RightToLeft, TopToBottom),
            (BottomToTop, RightToLeft),
        ] {
            assert_eq!(page_direction(sheet), page);
        }
    }
}
