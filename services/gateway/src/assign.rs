//! Which text line is which symbol's tag: pure geometry (plus an optional per-class
//! pattern verdict), no I/O.
//!
//! The page is read once; each symbol then gets the cheapest free line that touches
//! its search region (its box grown by the padding on every side). Tags sit on any
//! side of their symbol, from touching it to about one and a half symbol widths away,
//! often centred on its axis. The cost of a pair is:
//!
//! - the gap between the two boxes plus a quarter of the misalignment across that gap (a tag
//!   to the right shares the symbol's vertical centre, one above its horizontal
//!   centre), so a centred tag wins over an off-axis neighbour's at the same distance;
//! - measured in the symbol's size (plus [`SIZE_SOFTENING_PX`]): a tag 60 px from a
//!   120 px VAV box is as near as one 10 px from a 20 px damper, because drawings
//!   come at many scales and tag gaps grow with the symbol;
//! - divided by the detection's score, so a doubtful detection (a look-alike at 0.3)
//!   must be much nearer a line than a confident one before it can take it, and a false
//!   positive does not steal the tag of the real symbol beside it;
//! - times [`PATTERN_MISS_FACTOR`] when the class has a tag pattern (e.g. `VAV-\d+`)
//!   and the line does not match it: such a line is taken only when nothing better is
//!   left, since a misread tag is still worth more than none.
//!
//! Pairs are taken cheapest first over the whole page, so each line goes to at most one
//! symbol and a symbol never takes the tag that sits right beside another one.
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

    pub(crate) fn area(&self) -> f32 {
        self.width() * self.height()
    }

    pub(crate) fn intersection(&self, other: &Rect) -> f32 {
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
    /// [`RELATIVE_REACH`] times the symbol's longer side, at least
    /// [`MIN_RELATIVE_PADDING`] pixels: tags sit up to about one and a half symbol
    /// widths away, and text detection boxes grow a little beyond the ink.
    Relative,
    /// The same number of pixels for every symbol.
    Pixels(f32),
}

/// The region a symbol looks for its tag in: its box grown by `padding` on every
/// side. [`assign`] pairs a symbol only with lines that touch it, so text touching
/// no symbol's region can never be a tag.
pub fn search_region(symbol: &Rect, padding: Padding) -> Rect {
    let pad = padding.around(symbol);
    Rect::new(
        symbol.x_min - pad,
        symbol.y_min - pad,
        symbol.x_max + pad,
        symbol.y_max + pad,
    )
}

pub const MIN_RELATIVE_PADDING: f32 = 12.0;
/// The default search region, in symbol sizes (longer side) around the box.
pub const RELATIVE_REACH: f32 = 1.6;

impl Padding {
    fn around(self, symbol: &Rect) -> f32 {
        match self {
            Padding::Relative => {
                (RELATIVE_REACH * symbol.width().max(symbol.height())).max(MIN_RELATIVE_PADDING)
            }
            Padding::Pixels(px) => px,
        }
    }
}

/// A line is the symbol's own ink when this share of its area lies inside the box.
const INSIDE_SYMBOL: f32 = 0.5;
/// Weight of the misalignment across the gap, against the gap itself. At 0.5 two
/// tags of the independent pages went to a neighbour (a tag touching its symbol's
/// corner lost to the neighbour's centred but farther one); 0.25 places every tag of
/// both page sets (tests/tag_rule.rs) and still prefers a centred tag.
const MISALIGNMENT_WEIGHT: f32 = 0.25;
/// Added to a symbol's size before gaps are measured in it: the smallest symbols
/// (16 px) would otherwise make a few pixels of text-box slack look far.
pub const SIZE_SOFTENING_PX: f32 = 24.0;
/// Scores below this count as this: no pair becomes unreachable through the division.
const MIN_SCORE: f32 = 0.05;
/// Cost factor of a line that does not match its symbol class's tag pattern.
pub const PATTERN_MISS_FACTOR: f32 = 4.0;

/// One detected symbol as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Symbol {
    pub rect: Rect,
    /// The detector's confidence, in (0, 1].
    pub score: f32,
    /// False when the caller did not ask for this class's tags.
    pub wants_tag: bool,
}

impl Symbol {
    /// A confident symbol that wants its tag (the shape of the tests).
    pub fn at(rect: Rect) -> Self {
        Self {
            rect,
            score: 1.0,
            wants_tag: true,
        }
    }
}

/// Whether a line's text fits a symbol's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The class has a tag pattern and the line matches it.
    Matches,
    /// The class has a tag pattern and the line does not match it.
    Misses,
    /// The class has no pattern: geometry alone decides.
    Unknown,
}

/// The outcome for a page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignment {
    /// For each symbol, the index of its tag line.
    pub tag_of: Vec<Option<usize>>,
    /// For each symbol without a tag: whether some line was within reach (it went to
    /// a symbol with a better claim) rather than none at all.
    pub outbid: Vec<bool>,
    /// Lines given to no symbol and not inside one, in their original order.
    pub unassigned: Vec<usize>,
}

/// Gives each symbol that wants a tag at most one of `lines`, each line to at most
/// one symbol, cheapest pairs first (see the module docs). `fit(s, l)` says whether
/// line `l`'s text fits symbol `s`'s class.
pub fn assign(
    symbols: &[Symbol],
    lines: &[Rect],
    padding: Padding,
    fit: impl Fn(usize, usize) -> Fit,
) -> Assignment {
    let inside: Vec<bool> = lines
        .iter()
        .map(|line| {
            let area = line.area();
            area > 0.0
                && symbols
                    .iter()
                    .any(|symbol| line.intersection(&symbol.rect) >= INSIDE_SYMBOL * area)
        })
        .collect();

    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for (s, candidate) in symbols.iter().enumerate() {
        if !candidate.wants_tag {
            continue;
        }
        let symbol = &candidate.rect;
        let pad = padding.around(symbol);
        let size = symbol.width().max(symbol.height()) + SIZE_SOFTENING_PX;
        let confidence = candidate.score.clamp(MIN_SCORE, 1.0);
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
            let distance = (dx.hypot(dy) + MISALIGNMENT_WEIGHT * misalignment) / size;
            let pattern = match fit(s, l) {
                Fit::Misses => PATTERN_MISS_FACTOR,
                Fit::Matches | Fit::Unknown => 1.0,
            };
            pairs.push((distance * pattern / confidence, s, l));
        }
    }
    // Index order breaks ties, so the answer never depends on the sort's stability.
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    let mut tag_of = vec![None; symbols.len()];
    let mut outbid = vec![false; symbols.len()];
    let mut taken = vec![false; lines.len()];
    for &(_, s, l) in &pairs {
        outbid[s] = true;
        if tag_of[s].is_none() && !taken[l] {
            tag_of[s] = Some(l);
            taken[l] = true;
        }
    }
    for (s, tag) in tag_of.iter().enumerate() {
        outbid[s] &= tag.is_none();
    }
    let unassigned = (0..lines.len())
        .filter(|&l| !taken[l] && !inside[l])
        .collect();
    Assignment {
        tag_of,
        outbid,
        unassigned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Rect {
        Rect::new(x_min, y_min, x_max, y_max)
    }

    fn plain(symbols: &[Symbol], lines: &[Rect], padding: Padding) -> Assignment {
        assign(symbols, lines, padding, |_, _| Fit::Unknown)
    }

    fn scored(rect: Rect, score: f32) -> Symbol {
        Symbol {
            score,
            ..Symbol::at(rect)
        }
    }

    #[test]
    fn every_line_a_symbol_can_take_touches_its_search_region() {
        let symbol = r(300.0, 300.0, 340.0, 340.0);
        let padding = Padding::Relative;
        let region = search_region(&symbol, padding);
        let touches = |l: &Rect| {
            l.x_min <= region.x_max
                && region.x_min <= l.x_max
                && l.y_min <= region.y_max
                && region.y_min <= l.y_max
        };
        // Lines on a grid around the symbol, near and far: taken exactly when touching.
        for x in (150..500).step_by(7) {
            for y in (150..500).step_by(11) {
                let line = r(x as f32, y as f32, x as f32 + 30.0, y as f32 + 8.0);
                let taken = plain(&[Symbol::at(symbol)], &[line], padding).tag_of[0].is_some();
                let inside = line.intersection(&symbol) >= INSIDE_SYMBOL * line.area();
                assert_eq!(taken, touches(&line) && !inside, "{line:?}");
            }
        }
    }

    #[test]
    fn a_tag_on_each_of_eight_sides_is_found_from_touching_to_one_and_a_half_widths() {
        let symbol = r(300.0, 300.0, 340.0, 340.0); // 40 px
        for gap in [0.0, 4.0, 20.0, 60.0] {
            let (w, h) = (44.0, 12.0);
            for (x, y) in [
                (340.0 + gap, 314.0),               // right
                (300.0 - gap - w, 314.0),           // left
                (298.0, 300.0 - gap - h),           // above
                (298.0, 340.0 + gap),               // below
                (340.0 + gap, 300.0 - gap - h),     // upper right
                (300.0 - gap - w, 300.0 - gap - h), // upper left
                (340.0 + gap, 340.0 + gap),         // lower right
                (300.0 - gap - w, 340.0 + gap),     // lower left
            ] {
                let tag = r(x, y, x + w, y + h);
                let out = plain(&[Symbol::at(symbol)], &[tag], Padding::Relative);
                assert_eq!(out.tag_of, vec![Some(0)], "gap {gap}, tag at {tag:?}");
                assert!(out.unassigned.is_empty());
            }
        }
        // A vertical tag (read bottom-to-top) beside it.
        let out = plain(
            &[Symbol::at(symbol)],
            &[r(350.0, 296.0, 362.0, 344.0)],
            Padding::Relative,
        );
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn the_reach_grows_with_the_symbol() {
        let big = r(100.0, 100.0, 220.0, 160.0); // a 120 px VAV box
        let tag = r(390.0, 124.0, 450.0, 136.0); // 170 px away: within 1.6 x 120
        let out = plain(&[Symbol::at(big)], &[tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn text_beyond_the_padding_is_left_unassigned() {
        let symbol = r(100.0, 100.0, 120.0, 120.0);
        let far = r(160.0, 105.0, 200.0, 115.0); // 40 px away, reach 32
        let out = plain(&[Symbol::at(symbol)], &[far], Padding::Relative);
        assert_eq!(out.tag_of, vec![None]);
        assert_eq!(out.outbid, vec![false], "nothing was within reach");
        assert_eq!(out.unassigned, vec![0]);
        let out = plain(&[Symbol::at(symbol)], &[far], Padding::Pixels(40.0));
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn each_line_goes_to_one_symbol_closest_first() {
        // Two symbols side by side; the line between them is nearer to the second.
        let a = r(0.0, 0.0, 30.0, 30.0);
        let b = r(80.0, 0.0, 110.0, 30.0);
        let between = r(45.0, 10.0, 75.0, 20.0); // 15 px from a, 5 px from b
        let right_of_a = r(34.0, 40.0, 60.0, 48.0); // below-right of a, off-axis
        let out = plain(
            &[Symbol::at(a), Symbol::at(b)],
            &[between, right_of_a],
            Padding::Pixels(20.0),
        );
        assert_eq!(out.tag_of, vec![Some(1), Some(0)]);
    }

    #[test]
    fn a_symbol_outbid_for_the_only_line_says_so() {
        let a = r(0.0, 0.0, 30.0, 30.0);
        let b = r(80.0, 0.0, 110.0, 30.0);
        let between = r(45.0, 10.0, 75.0, 20.0);
        let out = plain(
            &[Symbol::at(a), Symbol::at(b)],
            &[between],
            Padding::Relative,
        );
        assert_eq!(out.tag_of, vec![None, Some(0)]);
        assert_eq!(out.outbid, vec![true, false]);
    }

    #[test]
    fn a_centred_tag_beats_an_off_axis_one_at_the_same_gap() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        let off_axis = r(136.0, 131.0, 180.0, 141.0); // right, below the centre line
        let centred = r(136.0, 110.0, 180.0, 120.0);
        let out = plain(
            &[Symbol::at(symbol)],
            &[off_axis, centred],
            Padding::Relative,
        );
        assert_eq!(out.tag_of, vec![Some(1)]);
        assert_eq!(out.unassigned, vec![0]);
    }

    #[test]
    fn a_doubtful_detection_does_not_steal_a_confident_ones_tag() {
        // The real damper's tag sits 20 px to its right; a look-alike detected at 0.3
        // sits 10 px beyond the tag. By distance alone the look-alike would win.
        let real = r(100.0, 100.0, 130.0, 130.0);
        let tag = r(150.0, 110.0, 190.0, 120.0);
        let look_alike = r(200.0, 100.0, 230.0, 130.0);
        let out = plain(
            &[scored(real, 0.9), scored(look_alike, 0.3)],
            &[tag],
            Padding::Relative,
        );
        assert_eq!(out.tag_of, vec![Some(0), None]);
        // Equally confident, the nearer one takes it: the score is what decided.
        let out = plain(
            &[scored(real, 0.9), scored(look_alike, 0.9)],
            &[tag],
            Padding::Relative,
        );
        assert_eq!(out.tag_of, vec![None, Some(0)]);
    }

    #[test]
    fn a_line_matching_the_class_pattern_beats_a_nearer_one_that_does_not() {
        let vav = r(100.0, 100.0, 160.0, 130.0);
        let stray = r(166.0, 110.0, 200.0, 120.0); // "EF-2", 6 px away
        let tag = r(100.0, 150.0, 150.0, 162.0); // "VAV-3", 20 px below
        let fit = |_: usize, l: usize| if l == 1 { Fit::Matches } else { Fit::Misses };
        let out = assign(&[Symbol::at(vav)], &[stray, tag], Padding::Relative, fit);
        assert_eq!(out.tag_of, vec![Some(1)]);
        // Without a pattern the nearer line wins.
        let out = plain(&[Symbol::at(vav)], &[stray, tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn a_line_missing_the_pattern_is_still_taken_when_nothing_else_is_there() {
        let vav = r(100.0, 100.0, 160.0, 130.0);
        let misread = r(166.0, 110.0, 200.0, 120.0); // "VAV-1O3"
        let out = assign(&[Symbol::at(vav)], &[misread], Padding::Relative, |_, _| {
            Fit::Misses
        });
        assert_eq!(out.tag_of, vec![Some(0)]);
    }

    #[test]
    fn text_inside_a_symbol_is_its_ink_not_a_tag() {
        let symbol = r(100.0, 100.0, 130.0, 130.0);
        let letter_t = r(110.0, 108.0, 120.0, 122.0);
        let tag = r(136.0, 110.0, 170.0, 120.0);
        let out = plain(&[Symbol::at(symbol)], &[letter_t, tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![Some(1)]);
        assert!(out.unassigned.is_empty(), "the symbol's own T is dropped");
    }

    #[test]
    fn symbols_not_asked_for_get_nothing_and_leave_their_tag_free() {
        let symbol = Symbol {
            wants_tag: false,
            ..Symbol::at(r(100.0, 100.0, 130.0, 130.0))
        };
        let tag = r(136.0, 110.0, 170.0, 120.0);
        let out = plain(&[symbol], &[tag], Padding::Relative);
        assert_eq!(out.tag_of, vec![None]);
        assert_eq!(out.outbid, vec![false]);
        assert_eq!(out.unassigned, vec![0]);
    }
}
