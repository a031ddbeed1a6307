//! Binary-map regions for DB text detection: OpenCV's 2x2 `dilate`, the point sets of
//! `findContours(RETR_LIST, CHAIN_APPROX_SIMPLE)` as far as `minAreaRect` sees them,
//! and `fillPoly` masks.
//!
//! Why components and hulls stand in for contour tracing: PaddleOCR only passes each
//! contour to `minAreaRect`, which keeps nothing but the contour's convex hull. RETR_LIST
//! lists one outer border per 8-connected foreground component and one border per hole
//! (a 4-connected background region not reaching the image edge; OpenCV pads the image
//! with zeros). Every hull vertex of a component is a pixel extreme in some direction,
//! and such a pixel always lies on the outer border, so the hull of the component's
//! pixels equals the hull of its outer border; we keep each row's first and last pixel.
//! A hole's border is the ring of the enclosing component's pixels that touch the hole
//! side-on (the trace steps diagonally past pixels that only touch it at a corner).

/// `cv2.dilate(mask, np.ones((2, 2)))`: the anchor is the kernel centre (1, 1), so each
/// pixel becomes the maximum of itself and its left, upper and upper-left neighbours.
pub fn dilate_2x2(mask: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = vec![0u8; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let mut v = mask[y * width + x];
            if x > 0 {
                v = v.max(mask[y * width + x - 1]);
            }
            if y > 0 {
                v = v.max(mask[(y - 1) * width + x]);
                if x > 0 {
                    v = v.max(mask[(y - 1) * width + x - 1]);
                }
            }
            out[y * width + x] = v;
        }
    }
    out
}

/// The point sets (`[x, y]`) whose convex hulls equal those of the contours
/// `cv2.findContours(mask, RETR_LIST, …)` returns, one per outer border and per hole, in
/// raster order of their first pixel.
pub fn contour_point_sets(mask: &[u8], width: usize, height: usize) -> Vec<Vec<[i32; 2]>> {
    let labels = label(mask, width, height, true, true);
    let background = label_background(mask, width, height);
    // (first pixel index in raster order, points)
    let mut sets: Vec<(usize, Vec<[i32; 2]>)> = Vec::new();

    // Outer borders: each row's extreme pixels of every component.
    let count = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut first = vec![usize::MAX; count + 1];
    let mut rows: Vec<Vec<[i32; 2]>> = vec![Vec::new(); count + 1];
    for y in 0..height {
        let mut x = 0;
        while x < width {
            let l = labels[y * width + x] as usize;
            if l == 0 {
                x += 1;
                continue;
            }
            first[l] = first[l].min(y * width + x);
            let start = x;
            while x < width && labels[y * width + x] as usize == l {
                x += 1;
            }
            rows[l].push([start as i32, y as i32]);
            rows[l].push([(x - 1) as i32, y as i32]);
        }
    }
    for l in 1..=count {
        sets.push((first[l], std::mem::take(&mut rows[l])));
    }

    // Holes: background regions (4-connected) that do not reach the edge.
    let holes = background.iter().copied().max().unwrap_or(0) as usize;
    if holes > 1 {
        let mut first = vec![usize::MAX; holes + 1];
        let mut owner = vec![0u32; holes + 1];
        let mut ring: Vec<Vec<[i32; 2]>> = vec![Vec::new(); holes + 1];
        for y in 0..height {
            for x in 0..width {
                let h = background[y * width + x] as usize;
                if h > 1 && first[h] == usize::MAX {
                    first[h] = y * width + x;
                    // The pixel left of a hole's first pixel belongs to the component
                    // that encloses it (islands inside the hole cannot reach its top row).
                    owner[h] = labels[y * width + x - 1];
                }
            }
        }
        for y in 0..height {
            for x in 0..width {
                let l = labels[y * width + x];
                if l == 0 {
                    continue;
                }
                let mut touched = [0usize; 4];
                let neighbours = [
                    (x > 0).then(|| y * width + x - 1),
                    (x + 1 < width).then(|| y * width + x + 1),
                    (y > 0).then(|| (y - 1) * width + x),
                    (y + 1 < height).then(|| (y + 1) * width + x),
                ];
                for (slot, n) in neighbours.into_iter().enumerate() {
                    if let Some(n) = n {
                        let h = background[n] as usize;
                        if h > 1 && owner[h] == l && !touched.contains(&h) {
                            touched[slot] = h;
                            ring[h].push([x as i32, y as i32]);
                        }
                    }
                }
            }
        }
        for h in 2..=holes {
            sets.push((first[h], std::mem::take(&mut ring[h])));
        }
    }
    sets.sort_by_key(|(start, _)| *start);
    sets.into_iter().map(|(_, points)| points).collect()
}

/// Connected components of the non-zero pixels (`foreground`) or of the zero pixels,
/// labelled from 1 in raster order of their first pixel (0 for pixels of the other
/// kind); 8-connected when `eight`, else 4-connected.
///
/// Why runs: a DB map is mostly background, and labelling and renumbering its background
/// pixel by pixel (for the holes) made [`contour_point_sets`] take 60-80 ms a 1600x1200
/// page (12-15 ms now; `examples/bench_vision.rs`). Each row's runs of like pixels are
/// joined to the runs they touch in the row above with a union-find, then written out
/// run by run.
fn label(mask: &[u8], width: usize, height: usize, foreground: bool, eight: bool) -> Vec<u32> {
    if width == 0 {
        return Vec::new();
    }
    let runs = Runs::of(mask, width, height, foreground);
    let mut sets = UnionFind::new(runs.spans.len());
    // 8-connected runs also touch corner to corner: one column further either way.
    let reach = usize::from(eight);
    for y in 1..height {
        let (above, below) = (runs.row(y - 1), runs.row(y));
        let (mut i, mut j) = (above.start, below.start);
        while i < above.end && j < below.end {
            let ([a0, a1], [b0, b1]) = (runs.spans[i], runs.spans[j]);
            if a0 < b1 + reach && b0 < a1 + reach {
                sets.union(i, j);
            }
            // The run ending first can touch nothing further along the other row.
            if a1 <= b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
    }
    let mut label_of_root = vec![0u32; runs.spans.len()];
    let mut next = 0u32;
    let mut labels = vec![0u32; mask.len()];
    for y in 0..height {
        for r in runs.row(y) {
            let root = sets.find(r);
            if label_of_root[root] == 0 {
                next += 1;
                label_of_root[root] = next;
            }
            let [start, end] = runs.spans[r];
            labels[y * width + start..y * width + end].fill(label_of_root[root]);
        }
    }
    labels
}

/// Each row's maximal runs of pixels of one kind, `[start, end)`, row after row.
struct Runs {
    spans: Vec<[usize; 2]>,
    /// Where each row's runs begin in `spans`, and one past the last row's.
    row_starts: Vec<usize>,
}

impl Runs {
    fn of(mask: &[u8], width: usize, height: usize, foreground: bool) -> Self {
        let mut spans = Vec::new();
        let mut row_starts = Vec::with_capacity(height + 1);
        for line in mask.chunks_exact(width).take(height) {
            row_starts.push(spans.len());
            let mut x = 0;
            while x < width {
                if (line[x] != 0) != foreground {
                    x += 1;
                    continue;
                }
                let start = x;
                while x < width && (line[x] != 0) == foreground {
                    x += 1;
                }
                spans.push([start, x]);
            }
        }
        row_starts.push(spans.len());
        Self { spans, row_starts }
    }

    fn row(&self, y: usize) -> std::ops::Range<usize> {
        self.row_starts[y]..self.row_starts[y + 1]
    }
}

/// Disjoint sets of indices, with path halving.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(len: usize) -> Self {
        Self {
            parent: (0..len).collect(),
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            // The smaller index is the run nearer the top-left: any root works, this
            // one keeps the trees shallow on text, which grows downwards.
            self.parent[a.max(b)] = a.min(b);
        }
    }
}

/// 4-connected background regions: 0 on foreground, 1 for the region(s) touching the
/// edge (the outside), 2.. for holes.
fn label_background(mask: &[u8], width: usize, height: usize) -> Vec<u32> {
    let mut regions = label(mask, width, height, false, false);
    let count = regions.iter().copied().max().unwrap_or(0) as usize;
    let mut outside = vec![false; count + 1];
    for x in 0..width {
        outside[regions[x] as usize] = true;
        outside[regions[(height - 1) * width + x] as usize] = true;
    }
    for y in 0..height {
        outside[regions[y * width] as usize] = true;
        outside[regions[y * width + width - 1] as usize] = true;
    }
    // Labels run in raster order of first pixel, so holes keep that order: 2, 3, ...
    let mut renumber = vec![0u32; count + 1];
    let mut next = 1u32;
    for (region, new) in renumber.iter_mut().enumerate().skip(1) {
        *new = if outside[region] {
            1
        } else {
            next += 1;
            next
        };
    }
    for region in &mut regions {
        *region = renumber[*region as usize];
    }
    regions
}

/// The pixels `cv2.fillPoly(mask, [polygon], 1)` sets in a `width` x `height` mask for an
/// integer polygon: the interior by scanlines (a pixel is in when its centre lies between
/// the edges, edges included) plus the outline drawn as 8-connected lines.
pub fn fill_polygon(polygon: &[[i32; 2]], width: usize, height: usize) -> Vec<u8> {
    let mut mask = vec![0u8; width * height];
    let mut set = |x: i64, y: i64| {
        if x >= 0 && y >= 0 && (x as usize) < width && (y as usize) < height {
            mask[y as usize * width + x as usize] = 1;
        }
    };
    let n = polygon.len();
    for i in 0..n {
        let (a, b) = (polygon[(i + n - 1) % n], polygon[i]);
        let (x0, y0, x1, y1) = (
            i64::from(a[0]),
            i64::from(a[1]),
            i64::from(b[0]),
            i64::from(b[1]),
        );
        let steps = (x1 - x0).abs().max((y1 - y0).abs());
        for s in 0..=steps {
            let (x, y) = if steps == 0 {
                (x0, y0)
            } else {
                (
                    x0 + ((x1 - x0) * s * 2 + steps).div_euclid(2 * steps),
                    y0 + ((y1 - y0) * s * 2 + steps).div_euclid(2 * steps),
                )
            };
            set(x, y);
        }
    }
    let min_y = polygon.iter().map(|p| p[1]).min().unwrap_or(0);
    let max_y = polygon.iter().map(|p| p[1]).max().unwrap_or(-1);
    for y in min_y..=max_y {
        let mut xs: Vec<f64> = Vec::new();
        for i in 0..n {
            let (a, b) = (polygon[i], polygon[(i + 1) % n]);
            let (lo, hi) = if a[1] < b[1] { (a, b) } else { (b, a) };
            if lo[1] == hi[1] || y < lo[1] || y >= hi[1] {
                continue;
            }
            let t = f64::from(y - lo[1]) / f64::from(hi[1] - lo[1]);
            xs.push(f64::from(lo[0]) + t * f64::from(hi[0] - lo[0]));
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks(2) {
            if let [left, right] = pair {
                let (from, to) = ((left + 0.5).ceil() as i64, (right + 0.5).floor() as i64);
                for x in from..=to {
                    set(x, i64::from(y));
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quad::convex_hull;

    #[test]
    fn a_ring_gives_an_outer_border_and_a_hole() {
        let (w, h) = (8, 7);
        let mut mask = vec![0u8; w * h];
        for y in 1..6 {
            for x in 1..7 {
                mask[y * w + x] = 1;
            }
        }
        mask[3 * w + 3] = 0;
        mask[3 * w + 4] = 0;
        let sets = contour_point_sets(&mask, w, h);
        assert_eq!(sets.len(), 2);
        let mut outer = convex_hull(&sets[0]);
        outer.sort_unstable();
        assert_eq!(outer, vec![[1, 1], [1, 5], [6, 1], [6, 5]]);
        let mut hole = convex_hull(&sets[1]);
        hole.sort_unstable();
        assert_eq!(hole, vec![[2, 3], [3, 2], [3, 4], [4, 2], [4, 4], [5, 3]]);
    }

    /// The labelling as first written: a flood fill from each unlabelled pixel in raster
    /// order, pixel by pixel.
    fn flood_fill_labels(mask: &[u8], width: usize, foreground: bool, eight: bool) -> Vec<u32> {
        let height = mask.len() / width;
        let wanted = |i: usize| (mask[i] != 0) == foreground;
        let mut labels = vec![0u32; mask.len()];
        let mut next = 0;
        for start in 0..mask.len() {
            if !wanted(start) || labels[start] != 0 {
                continue;
            }
            next += 1;
            labels[start] = next;
            let mut stack = vec![start];
            while let Some(i) = stack.pop() {
                let (x, y) = ((i % width) as i64, (i / width) as i64);
                for dy in -1..=1i64 {
                    for dx in -1..=1i64 {
                        let (nx, ny) = (x + dx, y + dy);
                        if (dx != 0 && dy != 0 && !eight)
                            || nx < 0
                            || ny < 0
                            || nx >= width as i64
                            || ny >= height as i64
                        {
                            continue;
                        }
                        let n = ny as usize * width + nx as usize;
                        if wanted(n) && labels[n] == 0 {
                            labels[n] = next;
                            stack.push(n);
                        }
                    }
                }
            }
        }
        labels
    }

    proptest::proptest! {
        #[test]
        fn runs_label_the_components_a_flood_fill_finds(
            width in 1usize..24,
            cells in proptest::collection::vec(proptest::bool::weighted(0.45), 1..480),
            foreground: bool,
            eight: bool,
        ) {
            let height = (cells.len() / width).max(1);
            let mask: Vec<u8> = cells.iter().cycle().take(width * height).map(|&on| u8::from(on)).collect();
            proptest::prop_assert_eq!(
                label(&mask, width, height, foreground, eight),
                flood_fill_labels(&mask, width, foreground, eight)
            );
        }
    }

    #[test]
    fn diagonal_neighbours_join_only_when_eight_connected() {
        // X.
        // .X
        let mask = [1, 0, 0, 1];
        assert_eq!(label(&mask, 2, 2, true, true), vec![1, 0, 0, 1]);
        assert_eq!(label(&mask, 2, 2, true, false), vec![1, 0, 0, 2]);
    }

    #[test]
    fn dilation_reaches_right_and_down() {
        let mut mask = vec![0u8; 9];
        mask[4] = 1;
        assert_eq!(dilate_2x2(&mask, 3, 3), vec![0, 0, 0, 0, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn a_filled_rectangle_covers_its_corners() {
        let mask = fill_polygon(&[[1, 1], [3, 1], [3, 2], [1, 2]], 5, 4);
        let set: Vec<usize> = (0..20).filter(|&i| mask[i] == 1).collect();
        assert_eq!(set, vec![6, 7, 8, 11, 12, 13]);
    }
}
