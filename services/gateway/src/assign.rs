//! Which text line is which symbol's tag: pure geometry, no I/O.
//!
//! The page is read once; each symbol then gets the closest free line that touches
//! its search region (its box grown by the padding on every side). "Closest" is the
//! gap between the two boxes plus half the misalignment across that gap (tags are
//! printed centred beside their symbol: a tag to the right shares the symbol's
//! vertical centre, one above shares its horizontal centre), so a centred tag wins
//! over an off-axis neighbour's at the same distance. Pairs are taken closest first
//! over the whole page, so each line goes to at most one symbol and a symbol never
//! takes the tag that sits right beside another one.
//!
//! Lines lying mostly inside a symbol's box are the symbol's own strokes read as
//! text (the "T" in a thermostat): they are dropped, neither tag nor page text.

/// An axis-aligned box in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl Rect {
    pub fn new(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Self {
        Self {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }

    fn width(&self) -> f32 {
        (self.x_max - self.x_min).max(0.0)
    }

    fn height(&self) -> f32 {
        (self.y_max - self.y_min).max(0.0)
    }

    fn area(&self) -> f32 {
        self.width() * self.height()
    }

    fn intersection(&self, other: &Rect) -> f32 {
        let w = self.x_max.min(other.x_max) - self.x_min.max(other.x_min);
        let h = self.y_max.min(other.y_max) - self.y_min.max(other.y_min);
        w.max(0.0) * h.max(0.0)
    }

    /// Empty space between the boxes along x and along y (0 where they overlap).
    fn gaps(&self, other: &Rect) -> (f32, f32) {
        let dx = (other.x_min - self.x_max)
            .max(self.x_min - other.x_max)
            .max(0.0);
        let dy = (other.y_min - self.y_max)
            .max(self.y_min - other.y_max)
            .max(0.0);
        (dx, dy)
    }
}

/// How far around a symbol to look for its tag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// Half the symbol's longer side, at least [`MIN_RELATIVE_PADDING`] pixels: tags
    /// sit a few pixels from their symbol, and text detection boxes grow a little
    /// beyond the ink.
    Relative,
    /// The same number of pixels for every symbol.
    Pixels(f32),
}

pub const MIN_RELATIVE_PADDING: f32 = 12.0;

impl Padding {
    fn around(self, symbol: &Rect) -> f32 {
        match self {
            Padding::Relative => {
                (0.5 * symbol.width().max(symbol.height())).max(MIN_RELATIVE_PADDING)
            }
            Padding::Pixels(px) => px,
        }
    }
}

/// A line is the symbol's own ink when this share of its area lies inside the box.
const INSIDE_SYMBOL: f32 = 0.5;
/// Weight of the misalignment across the gap, against the gap itself.
const MISALIGNMENT_WEIGHT: f32 = 0.5;

/// The outcome for a page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignment {
    /// For each symbol, the index of its tag line.
    pub tag_of: Vec<Option<usize>>,
    /// Lines given to no symbol and not inside one, in their original order.
    pub unassigned: Vec<usize>,
}

/// Gives each symbol whose `wants_tag` is true at most one of `lines`, each line to
/// at most one symbol, closest pairs first (see the module docs).
pub fn assign(
    symbols: &[Rect],
    wants_tag: &[bool],
    lines: &[Rect],
    padding: Padding,
) -> Assignment {
    let inside: Vec<bool> = lines
        .iter()
        .map(|line| {
            let area = line.area();
            area > 0.0
                && symbols
                    .iter()
                    .any(|symbol| line.intersection(symbol) >= INSIDE_SYMBOL * area)
        })
        .collect();

    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (s, symbol) in symbols.iter().enumerate() {
        if !wants_tag.get(s).copied().unwrap_or(true) {
            continue;
        }
        let pad = padding.around(symbol);
        for (l, line) in lines.iter().enumerate() {
            if inside[l] {
                continue;
            }
            let (dx, dy) = symbol.gaps(line);
            if dx > pad || dy > pad {
                continue;
            }
            let misalignment = if dx >= dy {
                ((line.y_min + line.y_max) - (symbol.y_min + symbol.y_max)).abs() / 2.0
            } else {
                ((line.x_min + line.x_max) - (symbol.x_min + symbol.x_max)).abs() / 2.0
            };
            let cost = dx.hypot(dy) + MISALIGNMENT_WEIGHT * misalignment;
            pairs.push((cost, s, l));
        }
    }
    // Index order breaks ties, so the answer never depends on the sort's stability.
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    let mut tag_of = vec![None; symbols.len()];
    let mut taken = vec![false; lines.len()];
    for (_, s, l) in pairs {
        if tag_of[s].is_none() && !taken[l] {
            tag_of[s] = Some(l);
            taken[l] = true;
        }
    }
    let unassigned = (0..lines.len())
        .filter(|&l| !taken[l] && !inside[l])
        .collect();
    Assignment { tag_of, unassigned }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Rect {
        Rect::new(x_min, y_min, x_max, y_max)
    }

    #[test]
    fn a_tag_on_each_side_is_found() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        for tag in [
            r(136.0, 110.0, 180.0, 120.0), // right
            r(50.0, 110.0, 94.0, 120.0),   // left
            r(93.0, 84.0, 137.0, 94.0),    // above
            r(93.0, 136.0, 137.0, 146.0),  // below
        ] {
            let out = assign(&[symbol], &[true], &[tag], Padding::Relative);
            assert_eq!(out.tag_of, vec![Some(0)], "tag at {tag:?}");
            assert!(out.unassigned.is_empty());
        }
    }

    #[test]
    fn text_beyond_the_padding_is_left_unassigned() {
        let symbol = r(100.0, 100.0, 120.0, 120.0);
        let far = r(150.0, 105.0, 190.0, 115.0); // 30 px away, padding 12
        let out = assign(&[symbol], &[true], &[far], Padding::Relative);
        assert_eq!(out.tag_of, vec![None]);
        assert_eq!(out.unassigned, vec![0]);
        let out = assign(&[symbol], &[true], &[far], Padding::Pixels(40.0));
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn each_line_goes_to_one_symbol_closest_first() {
        // Two symbols side by side; the line between them is nearer to the second.
        let a = r(0.0, 0.0, 30.0, 30.0);
        let b = r(80.0, 0.0, 110.0, 30.0);
        let between = r(45.0, 10.0, 75.0, 20.0); // 15 px from a, 5 px from b
        let right_of_a = r(34.0, 40.0, 60.0, 48.0); // below-right of a, off-axis
        let out = assign(
            &[a, b],
            &[true, true],
            &[between, right_of_a],
            Padding::Pixels(20.0),
        );
        assert_eq!(out.tag_of, vec![Some(1), Some(0)]);
    }

    #[test]
    fn a_centred_tag_beats_an_off_axis_one_at_the_same_gap() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        let off_axis = r(136.0, 131.0, 180.0, 141.0); // right, below the centre line
        let centred = r(136.0, 110.0, 180.0, 120.0);
        let out = assign(&[symbol], &[true], &[off_axis, centred], Padding::Relative);
        assert_eq!(out.tag_of, vec![Some(1)]);
        assert_eq!(out.unassigned, vec![0]);
    }

    #[test]
    fn text_inside_a_symbol_is_its_ink_not_a_tag() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        let letter_t = r(110.0, 108.0, 120.0, 122.0);
        let tag = r(136.0, 110.0, 170.0, 120.0);
        let out = assign(&[symbol], &[true], &[letter_t, tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![Some(1)]);
        assert!(out.unassigned.is_empty(), "the symbol's own T is dropped");
    }

    #[test]
    fn symbols_not_asked_for_get_nothing_and_leave_their_tag_free() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        let tag = r(136.0, 110.0, 170.0, 120.0);
        let out = assign(&[symbol], &[false], &[tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![None]);
        assert_eq!(out.unassigned, vec![0]);
    }
}
