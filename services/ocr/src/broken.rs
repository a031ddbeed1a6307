//! Vertical lines the text detector broke in two. DB detection dilates every text
//! region by the same ratio; in a tag written bottom to top or top to bottom, the
//! hyphen is a short stroke across the column with a letter's height of paper on
//! either side, and the region often ends there: `VAV` and `-32`, each read on its
//! own (the tag's first half alone, or nothing where the piece is too short to be
//! turned). Joining the pieces before they are cropped reads the tag whole.
//!
//! RapidOCR does not do this; `ReadTextRequest.join_broken_lines` asks for it, so
//! that without it ReadText reads exactly as RapidOCR does.

use plenum_vision::quad::PointF;

use crate::detect::{crop_size, stands};

/// Two pieces are one column when they overlap across it by this share of the
/// narrower one.
const SAME_COLUMN: f32 = 0.5;
/// ... and lie at most this many widths (of the wider) apart along it: a hyphen's gap
/// is under a letter's height, the next label in a column is further.
const MAX_GAP: f32 = 0.5;
/// ... and the wider is at most this much wider: the same letters, one line.
const SAME_WIDTH: f32 = 1.6;

/// An axis-aligned extent of a quad.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Extent {
    x_min: f32,
    y_min: f32,
    x_max: f32,
    y_max: f32,
}

impl Extent {
    fn of(quad: &[PointF; 4]) -> Self {
        let xs = quad.map(|p| p[0]);
        let ys = quad.map(|p| p[1]);
        Self {
            x_min: xs.into_iter().fold(f32::INFINITY, f32::min),
            y_min: ys.into_iter().fold(f32::INFINITY, f32::min),
            x_max: xs.into_iter().fold(f32::NEG_INFINITY, f32::max),
            y_max: ys.into_iter().fold(f32::NEG_INFINITY, f32::max),
        }
    }

    fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    fn union(&self, other: &Self) -> Self {
        Self {
            x_min: self.x_min.min(other.x_min),
            y_min: self.y_min.min(other.y_min),
            x_max: self.x_max.max(other.x_max),
            y_max: self.y_max.max(other.y_max),
        }
    }

    /// Clockwise from the top-left, as the detector orders corners.
    fn quad(&self) -> [PointF; 4] {
        [
            [self.x_min, self.y_min],
            [self.x_max, self.y_min],
            [self.x_max, self.y_max],
            [self.x_min, self.y_max],
        ]
    }
}

/// A piece as the join sees it: where it lies and its shape.
#[derive(Debug, Clone, Copy)]
struct Piece {
    extent: Extent,
    /// Read turned: at least 1.5 times taller than wide.
    standing: bool,
    /// At least 1.5 times wider than tall: a horizontal line, never part of a column.
    lying: bool,
    /// Joined from pieces: its quad is `extent`'s.
    joined: bool,
}

impl Piece {
    fn of(quad: &[PointF; 4]) -> Self {
        let (w, h) = crop_size(quad);
        Self {
            extent: Extent::of(quad),
            standing: stands(w, h),
            lying: stands(h, w),
            joined: false,
        }
    }
}

/// Whether `a` and `b` are two pieces of one vertical line: at least one standing,
/// neither lying, about as wide, in one column, close along it.
fn one_column(a: &Piece, b: &Piece) -> bool {
    if !(a.standing || b.standing) || a.lying || b.lying {
        return false;
    }
    let (a, b) = (&a.extent, &b.extent);
    let (narrower, wider) = (a.width().min(b.width()), a.width().max(b.width()));
    if narrower <= 0.0 || wider > SAME_WIDTH * narrower {
        return false;
    }
    let overlap = a.x_max.min(b.x_max) - a.x_min.max(b.x_min);
    let gap = (b.y_min - a.y_max).max(a.y_min - b.y_max);
    overlap >= SAME_COLUMN * narrower && gap <= MAX_GAP * wider
}

/// `quads` with the pieces of each broken vertical line joined into one box around
/// them; every other quad is left exactly as it was.
pub fn join_broken_lines(quads: Vec<[PointF; 4]>) -> Vec<[PointF; 4]> {
    let mut pieces: Vec<Piece> = quads.iter().map(Piece::of).collect();
    let mut quads = quads;
    // A line may be broken more than once: join pairs until none is left.
    while let Some((i, j)) = (0..pieces.len())
        .flat_map(|i| (i + 1..pieces.len()).map(move |j| (i, j)))
        .find(|&(i, j)| one_column(&pieces[i], &pieces[j]))
    {
        let extent = pieces[i].extent.union(&pieces[j].extent);
        pieces[i] = Piece {
            extent,
            standing: true,
            lying: false,
            joined: true,
        };
        pieces.remove(j);
        quads.remove(j);
    }
    quads
        .into_iter()
        .zip(&pieces)
        .map(|(quad, piece)| {
            if piece.joined {
                piece.extent.quad()
            } else {
                quad
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> [PointF; 4] {
        Extent {
            x_min,
            y_min,
            x_max,
            y_max,
        }
        .quad()
    }

    #[test]
    fn a_vertical_tag_broken_at_its_hyphen_becomes_one_line() {
        // `VAV` standing, `-32` too short to stand, overlapping along the column.
        let joined = join_broken_lines(vec![
            quad(70.0, 655.0, 100.0, 695.0),
            quad(68.0, 686.0, 101.0, 750.0),
        ]);
        assert_eq!(joined, vec![quad(68.0, 655.0, 101.0, 750.0)]);
        // Three pieces, a little apart.
        let joined = join_broken_lines(vec![
            quad(10.0, 0.0, 22.0, 30.0),
            quad(10.0, 34.0, 22.0, 64.0),
            quad(11.0, 69.0, 21.0, 99.0),
        ]);
        assert_eq!(joined, vec![quad(10.0, 0.0, 22.0, 99.0)]);
    }

    #[test]
    fn lines_that_are_not_one_broken_column_stay_as_they_were() {
        let cases = [
            // Two horizontal words side by side.
            [quad(0.0, 0.0, 40.0, 12.0), quad(44.0, 0.0, 90.0, 12.0)],
            // Two short squares (neither standing) one above the other.
            [quad(0.0, 0.0, 12.0, 12.0), quad(0.0, 14.0, 12.0, 26.0)],
            // A standing line and a horizontal one touching its end.
            [quad(0.0, 0.0, 12.0, 40.0), quad(0.0, 42.0, 60.0, 54.0)],
            // Two columns side by side.
            [quad(0.0, 0.0, 12.0, 40.0), quad(14.0, 0.0, 26.0, 40.0)],
            // One column, but a label's height apart.
            [quad(0.0, 0.0, 12.0, 40.0), quad(0.0, 52.0, 12.0, 92.0)],
            // In line, but one far wider: a symbol's outline, not a letter.
            [quad(0.0, 0.0, 12.0, 40.0), quad(-10.0, 41.0, 30.0, 80.0)],
        ];
        for pair in cases {
            assert_eq!(join_broken_lines(pair.to_vec()), pair.to_vec(), "{pair:?}");
        }
        // A tilted quad not joined keeps its exact corners.
        let tilted = [[0.0, 2.0], [40.0, 0.0], [41.0, 12.0], [1.0, 14.0]];
        assert_eq!(join_broken_lines(vec![tilted]), vec![tilted]);
    }
}
