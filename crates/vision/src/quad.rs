//! Rotated-rectangle and quadrilateral geometry as OpenCV and pyclipper compute it, for
//! PaddleOCR's DB post-processing and text-line crops: convex hull, `cv2.minAreaRect` +
//! `cv2.boxPoints`, pyclipper's round offset ("unclip"), `cv2.getPerspectiveTransform`
//! and `cv2.warpPerspective(INTER_CUBIC, BORDER_REPLICATE)`.
//!
//! The arithmetic follows OpenCV's in type and order (`f32` calipers, `f64` transforms,
//! fixed-point cubic weights) because the callers truncate and round the results: a box
//! corner at 9.999999 instead of 10 moves a crop by a pixel.

use image::RgbImage;

/// A point in pixels, `[x, y]`.
pub type PointF = [f32; 2];

/// OpenCV's `RotatedRect`: centre, side lengths, angle in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotatedRect {
    pub center: PointF,
    pub size: [f32; 2],
    pub angle: f32,
}

fn cross(o: [i64; 2], a: [i64; 2], b: [i64; 2]) -> i64 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// The convex hull of integer points (Andrew's monotone chain), without collinear
/// vertices. The minimum-area rectangle depends only on the hull, not on its start.
pub fn convex_hull(points: &[[i32; 2]]) -> Vec<[i32; 2]> {
    let mut pts: Vec<[i64; 2]> = points
        .iter()
        .map(|p| [i64::from(p[0]), i64::from(p[1])])
        .collect();
    pts.sort_unstable();
    pts.dedup();
    if pts.len() < 3 {
        return pts.iter().map(|p| [p[0] as i32, p[1] as i32]).collect();
    }
    let mut hull: Vec<[i64; 2]> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[i64; 2]>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull.iter().map(|p| [p[0] as i32, p[1] as i32]).collect()
}

/// The hull as `minAreaRect` walks it for a contour from `findContours`: OpenCV's
/// "clockwise" hull (counter-clockwise on screen, y down), starting at the contour's
/// first point, which for an outer border is its topmost-leftmost pixel. Where the
/// walk starts decides which of two equal-area rectangles the calipers keep, and with
/// it the last bits of the corners (330.99997 instead of 331, truncated later).
fn caliper_hull(points: &[[i32; 2]]) -> Vec<PointF> {
    let mut hull = convex_hull(points);
    let doubled_area: i64 = (0..hull.len())
        .map(|i| {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            i64::from(a[0]) * i64::from(b[1]) - i64::from(b[0]) * i64::from(a[1])
        })
        .sum();
    if doubled_area > 0 {
        hull.reverse();
    }
    if let Some(start) = (0..hull.len()).min_by_key(|&i| (hull[i][1], hull[i][0])) {
        hull.rotate_left(start);
    }
    hull.iter().map(|p| [p[0] as f32, p[1] as f32]).collect()
}

/// `cv2.minAreaRect` of integer points: rotating calipers over the convex hull, in
/// OpenCV's `f32` arithmetic (modules/imgproc/src/rotcalipers.cpp).
pub fn min_area_rect(points: &[[i32; 2]]) -> RotatedRect {
    let hull = caliper_hull(points);
    let n = hull.len();
    let mut rect = RotatedRect {
        center: [0.0, 0.0],
        size: [0.0, 0.0],
        angle: 0.0,
    };
    match n {
        0 => {}
        1 => rect.center = hull[0],
        2 => {
            rect.center = [
                (hull[0][0] + hull[1][0]) * 0.5,
                (hull[0][1] + hull[1][1]) * 0.5,
            ];
            let dx = f64::from(hull[1][0] - hull[0][0]);
            let dy = f64::from(hull[1][1] - hull[0][1]);
            rect.size = [(dx * dx + dy * dy).sqrt() as f32, 0.0];
            rect.angle = dy.atan2(dx) as f32;
        }
        _ => {
            let out = calipers(&hull);
            rect.center = [
                out[0][0] + (out[1][0] + out[2][0]) * 0.5,
                out[0][1] + (out[1][1] + out[2][1]) * 0.5,
            ];
            let norm = |v: PointF| {
                let (x, y) = (f64::from(v[0]), f64::from(v[1]));
                (x * x + y * y).sqrt() as f32
            };
            rect.size = [norm(out[1]), norm(out[2])];
            rect.angle = f64::from(out[1][1]).atan2(f64::from(out[1][0])) as f32;
        }
    }
    rect.angle = (f64::from(rect.angle) * 180.0 / std::f64::consts::PI) as f32;
    rect
}

/// OpenCV's `rotatingCalipers(CALIPERS_MINAREARECT)`: a corner and the two side vectors.
fn calipers(points: &[PointF]) -> [PointF; 3] {
    let n = points.len();
    let mut vect = vec![[0f32; 2]; n];
    let mut inv_len = vec![0f32; n];
    let (mut left, mut bottom, mut right, mut top) = (0, 0, 0, 0);
    let mut pt0 = points[0];
    let (mut left_x, mut right_x, mut top_y, mut bottom_y) = (pt0[0], pt0[0], pt0[1], pt0[1]);
    for i in 0..n {
        if pt0[0] < left_x {
            left_x = pt0[0];
            left = i;
        }
        if pt0[0] > right_x {
            right_x = pt0[0];
            right = i;
        }
        if pt0[1] > top_y {
            top_y = pt0[1];
            top = i;
        }
        if pt0[1] < bottom_y {
            bottom_y = pt0[1];
            bottom = i;
        }
        let pt = points[(i + 1) % n];
        let dx = f64::from(pt[0] - pt0[0]);
        let dy = f64::from(pt[1] - pt0[1]);
        vect[i] = [dx as f32, dy as f32];
        inv_len[i] = (1.0 / (dx * dx + dy * dy).sqrt()) as f32;
        pt0 = pt;
    }
    let mut orientation = 0f32;
    let (mut ax, mut ay) = (f64::from(vect[n - 1][0]), f64::from(vect[n - 1][1]));
    for v in &vect {
        let (bx, by) = (f64::from(v[0]), f64::from(v[1]));
        let convexity = ax * by - ay * bx;
        if convexity != 0.0 {
            orientation = if convexity > 0.0 { 1.0 } else { -1.0 };
            break;
        }
        (ax, ay) = (bx, by);
    }
    let (mut base_a, mut base_b) = (orientation, 0f32);
    let mut seq = [bottom, right, top, left];
    let mut min_area = f32::MAX;
    // (leftmost index, base_a, width, base_b, height, bottom index)
    let mut best = (0usize, 0f32, 0f32, 0f32, 0f32, 0usize);
    for _ in 0..n {
        let dp = [
            base_a * vect[seq[0]][0] + base_b * vect[seq[0]][1],
            -base_b * vect[seq[1]][0] + base_a * vect[seq[1]][1],
            -base_a * vect[seq[2]][0] - base_b * vect[seq[2]][1],
            base_b * vect[seq[3]][0] - base_a * vect[seq[3]][1],
        ];
        let mut max_cos = dp[0] * inv_len[seq[0]];
        let mut main = 0;
        for i in 1..4 {
            let cos = dp[i] * inv_len[seq[i]];
            if cos > max_cos {
                max_cos = cos;
                main = i;
            }
        }
        let p = seq[main];
        let (lead_x, lead_y) = (vect[p][0] * inv_len[p], vect[p][1] * inv_len[p]);
        (base_a, base_b) = match main {
            0 => (lead_x, lead_y),
            1 => (lead_y, -lead_x),
            2 => (-lead_x, -lead_y),
            _ => (-lead_y, lead_x),
        };
        seq[main] = (seq[main] + 1) % n;
        let dx = points[seq[1]][0] - points[seq[3]][0];
        let dy = points[seq[1]][1] - points[seq[3]][1];
        let width = dx * base_a + dy * base_b;
        let dx = points[seq[2]][0] - points[seq[0]][0];
        let dy = points[seq[2]][1] - points[seq[0]][1];
        let height = -dx * base_b + dy * base_a;
        let area = width * height;
        if area <= min_area {
            min_area = area;
            best = (seq[3], base_a, width, base_b, height, seq[0]);
        }
    }
    let (l, a1, width, b1, height, b) = best;
    let (a2, b2) = (-b1, a1);
    let c1 = a1 * points[l][0] + points[l][1] * b1;
    let c2 = a2 * points[b][0] + points[b][1] * b2;
    let idet = 1.0 / (a1 * b2 - a2 * b1);
    let px = (c1 * b2 - c2 * b1) * idet;
    let py = (a1 * c2 - a2 * c1) * idet;
    [
        [px, py],
        [a1 * width, b1 * width],
        [a2 * height, b2 * height],
    ]
}

impl RotatedRect {
    /// `cv2.boxPoints`: the four corners in OpenCV's order.
    pub fn points(&self) -> [PointF; 4] {
        let angle = f64::from(self.angle) * std::f64::consts::PI / 180.0;
        let b = angle.cos() as f32 * 0.5;
        let a = angle.sin() as f32 * 0.5;
        let [cx, cy] = self.center;
        let [w, h] = self.size;
        let p0 = [cx - a * h - b * w, cy + b * h - a * w];
        let p1 = [cx + a * h - b * w, cy - b * h - a * w];
        [
            p0,
            p1,
            [2.0 * cx - p0[0], 2.0 * cy - p0[1]],
            [2.0 * cx - p1[0], 2.0 * cy - p1[1]],
        ]
    }
}

/// pyclipper's `PyclipperOffset` with `JT_ROUND`/`ET_CLOSEDPOLYGON` (Clipper 6.4.2,
/// default arc tolerance 0.25) of one closed polygon by `delta` > 0: the vertices of the
/// grown polygon. pyclipper truncates float input to integers first, as done here.
///
/// Clipper finishes with a union of the result, which for the convex polygons it is given
/// here only drops duplicate or collinear vertices; what callers use (the convex hull) is
/// unchanged, so the union is left out.
pub fn round_offset(polygon: &[PointF], delta: f64) -> Vec<[i32; 2]> {
    // AddPath: truncate, drop repeated points.
    let mut path: Vec<[i64; 2]> = Vec::with_capacity(polygon.len());
    for p in polygon {
        let q = [p[0] as i64, p[1] as i64];
        if path.last() != Some(&q) {
            path.push(q);
        }
    }
    while path.len() > 1 && path.first() == path.last() {
        path.pop();
    }
    if path.len() < 3 {
        return Vec::new();
    }
    // FixOrientations: Clipper grows polygons of positive area (its orientation).
    let area: f64 = (0..path.len())
        .map(|i| {
            let j = (i + path.len() - 1) % path.len();
            (path[j][0] + path[i][0]) as f64 * (path[j][1] - path[i][1]) as f64
        })
        .sum::<f64>()
        * -0.5;
    if area < 0.0 {
        path.reverse();
    }
    let len = path.len();
    let arc_tolerance = if 0.25 > delta.abs() * 0.25 {
        delta.abs() * 0.25
    } else {
        0.25
    };
    let mut steps = std::f64::consts::PI / (1.0 - arc_tolerance / delta.abs()).acos();
    if steps > delta.abs() * std::f64::consts::PI {
        steps = delta.abs() * std::f64::consts::PI;
    }
    let (sin, cos) = (
        (2.0 * std::f64::consts::PI / steps).sin(),
        (2.0 * std::f64::consts::PI / steps).cos(),
    );
    let steps_per_rad = steps / (2.0 * std::f64::consts::PI);
    let normal = |a: [i64; 2], b: [i64; 2]| -> [f64; 2] {
        let (dx, dy) = ((b[0] - a[0]) as f64, (b[1] - a[1]) as f64);
        if dx == 0.0 && dy == 0.0 {
            return [0.0, 0.0];
        }
        let f = 1.0 / (dx * dx + dy * dy).sqrt();
        [dy * f, -dx * f]
    };
    let normals: Vec<[f64; 2]> = (0..len)
        .map(|j| normal(path[j], path[(j + 1) % len]))
        .collect();
    // Clipper's Round: half away from zero.
    let round = |v: f64| -> i32 {
        if v < 0.0 {
            (v - 0.5) as i32
        } else {
            (v + 0.5) as i32
        }
    };
    let at = |j: usize, n: [f64; 2]| -> [i32; 2] {
        [
            round(path[j][0] as f64 + n[0] * delta),
            round(path[j][1] as f64 + n[1] * delta),
        ]
    };
    let mut out = Vec::new();
    let mut k = len - 1;
    for j in 0..len {
        let (nk, nj) = (normals[k], normals[j]);
        let mut sin_a = nk[0] * nj[1] - nj[0] * nk[1];
        let cos_a = nk[0] * nj[0] + nk[1] * nj[1];
        if (sin_a * delta).abs() < 1.0 {
            if cos_a > 0.0 {
                out.push(at(j, nk));
                k = j;
                continue;
            }
        } else {
            sin_a = sin_a.clamp(-1.0, 1.0);
        }
        if sin_a * delta < 0.0 {
            out.push(at(j, nk));
            out.push([path[j][0] as i32, path[j][1] as i32]);
            out.push(at(j, nj));
        } else {
            // DoRound
            let a = sin_a.atan2(cos_a);
            let n_steps = ((steps_per_rad * a.abs()).round() as i64).max(1);
            let (mut x, mut y) = (nk[0], nk[1]);
            for _ in 0..n_steps {
                out.push(at(j, [x, y]));
                let x2 = x;
                x = x * cos - sin * y;
                y = x2 * sin + y * cos;
            }
            out.push(at(j, nj));
        }
        k = j;
    }
    out
}

/// `cv2.getPerspectiveTransform`: the 3x3 matrix (row-major) taking `src[i]` to `dst[i]`,
/// solved as OpenCV does (8x8 system, Gaussian elimination with partial pivoting).
pub fn perspective_transform(src: &[PointF; 4], dst: &[PointF; 4]) -> Option<[f64; 9]> {
    let mut a = [[0f64; 8]; 8];
    let mut b = [0f64; 8];
    for i in 0..4 {
        let (sx, sy, dx, dy) = (src[i][0], src[i][1], dst[i][0], dst[i][1]);
        a[i][0] = f64::from(sx);
        a[i + 4][3] = f64::from(sx);
        a[i][1] = f64::from(sy);
        a[i + 4][4] = f64::from(sy);
        a[i][2] = 1.0;
        a[i + 4][5] = 1.0;
        // Products in f32, as OpenCV multiplies its Point2f coordinates.
        a[i][6] = f64::from(-sx * dx);
        a[i][7] = f64::from(-sy * dx);
        a[i + 4][6] = f64::from(-sx * dy);
        a[i + 4][7] = f64::from(-sy * dy);
        b[i] = f64::from(dx);
        b[i + 4] = f64::from(dy);
    }
    let m = 8;
    for i in 0..m {
        let mut k = i;
        for j in i + 1..m {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        if a[k][i].abs() < f64::EPSILON * 10.0 {
            return None;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        for j in i + 1..m {
            let alpha = a[j][i] * d;
            let pivot = a[i];
            for (value, p) in a[j].iter_mut().zip(pivot).skip(i + 1) {
                *value += alpha * p;
            }
            b[j] += alpha * b[i];
        }
        a[i][i] = -d;
    }
    for i in (0..m).rev() {
        let mut s = b[i];
        for c in i + 1..m {
            s -= a[i][c] * b[c];
        }
        b[i] = s * a[i][i];
    }
    Some([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 1.0])
}

/// OpenCV's 3x3 inverse (`cv::invert`, DECOMP_LU, which uses the adjugate for 3x3).
fn invert3(m: &[f64; 9]) -> [f64; 9] {
    let s = |r: usize, c: usize| m[r * 3 + c];
    let det = s(0, 0) * (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1))
        - s(0, 1) * (s(1, 0) * s(2, 2) - s(1, 2) * s(2, 0))
        + s(0, 2) * (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0));
    if det == 0.0 {
        return [0.0; 9];
    }
    let d = 1.0 / det;
    [
        (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) * d,
        (s(0, 2) * s(2, 1) - s(0, 1) * s(2, 2)) * d,
        (s(0, 1) * s(1, 2) - s(0, 2) * s(1, 1)) * d,
        (s(1, 2) * s(2, 0) - s(1, 0) * s(2, 2)) * d,
        (s(0, 0) * s(2, 2) - s(0, 2) * s(2, 0)) * d,
        (s(0, 2) * s(1, 0) - s(0, 0) * s(1, 2)) * d,
        (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0)) * d,
        (s(0, 1) * s(2, 0) - s(0, 0) * s(2, 1)) * d,
        (s(0, 0) * s(1, 1) - s(0, 1) * s(1, 0)) * d,
    ]
}

/// OpenCV's bicubic kernel (`interpolateCubic`, a = −0.75) at fraction `x`.
fn cubic(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// `cv2.warpPerspective(image, m, (width, height), flags=INTER_CUBIC,
/// borderMode=BORDER_REPLICATE)` for 8-bit RGB. OpenCV 5.0 (what RapidOCR runs on here)
/// no longer rounds source positions to 1/32 pixel for this call: positions are exact
/// (`f64`), the a = −0.75 kernel weights `f32`, rows and columns outside the source
/// clamped to the edge, the sum rounded to nearest. Checked against opencv-python 5.0
/// (tests/opencv_parity.rs): equal but for an occasional ±1.
///
/// # Panics
///
/// When `width` or `height` is zero.
pub fn warp_perspective_cubic(image: &RgbImage, m: &[f64; 9], width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "warp to {width}x{height}");
    let inv = invert3(m);
    let (sw, sh) = (i64::from(image.width()), i64::from(image.height()));
    let src = image.as_raw();
    let mut out = RgbImage::new(width, height);
    let dst = out.as_mut();
    for y in 0..height as usize {
        for x in 0..width as usize {
            let (xf, yf) = (x as f64, y as f64);
            let w = inv[6] * xf + inv[7] * yf + inv[8];
            let w = if w != 0.0 { 1.0 / w } else { 0.0 };
            let fx = (inv[0] * xf + inv[1] * yf + inv[2]) * w;
            let fy = (inv[3] * xf + inv[4] * yf + inv[5]) * w;
            let (x0, y0) = (fx.floor(), fy.floor());
            let wx = cubic((fx - x0) as f32);
            let wy = cubic((fy - y0) as f32);
            let (x0, y0) = (x0 as i64 - 1, y0 as i64 - 1);
            let xs: [usize; 4] = std::array::from_fn(|i| (x0 + i as i64).clamp(0, sw - 1) as usize);
            let ys: [usize; 4] = std::array::from_fn(|i| (y0 + i as i64).clamp(0, sh - 1) as usize);
            let offset = (y * width as usize + x) * 3;
            for c in 0..3 {
                let mut sum = 0f32;
                for (r, &yy) in ys.iter().enumerate() {
                    let row = yy * sw as usize * 3;
                    let mut line = 0f32;
                    for (k, &xx) in xs.iter().enumerate() {
                        line += f32::from(src[row + xx * 3 + c]) * wx[k];
                    }
                    sum += line * wy[r];
                }
                dst[offset + c] = sum.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_area_rect_of_an_upright_rectangle_is_itself() {
        let rect = min_area_rect(&[[0, 0], [10, 0], [10, 5], [0, 5], [4, 2]]);
        assert_eq!(rect.center, [5.0, 2.5]);
        let mut sides = rect.size;
        sides.sort_by(f32::total_cmp);
        assert_eq!(sides, [5.0, 10.0]);
        let mut corners: Vec<[i32; 2]> = rect
            .points()
            .iter()
            .map(|p| [p[0].round() as i32, p[1].round() as i32])
            .collect();
        corners.sort_unstable();
        assert_eq!(corners, vec![[0, 0], [0, 5], [10, 0], [10, 5]]);
    }

    #[test]
    fn min_area_rect_of_a_diamond_is_turned_45_degrees() {
        let rect = min_area_rect(&[[0, 5], [5, 0], [10, 5], [5, 10]]);
        assert!((rect.size[0] * rect.size[1] - 50.0).abs() < 1e-3);
        assert!((rect.angle.abs() % 90.0 - 45.0).abs() < 1e-3);
    }

    #[test]
    fn round_offset_grows_a_rectangle_by_delta_on_every_side() {
        let grown = round_offset(
            &[[10.0, 10.0], [50.0, 10.0], [50.0, 20.0], [10.0, 20.0]],
            3.0,
        );
        let rect = min_area_rect(&grown);
        let mut sides = rect.size;
        sides.sort_by(f32::total_cmp);
        assert_eq!(sides, [16.0, 46.0]);
        assert_eq!(rect.center, [30.0, 15.0]);
    }

    #[test]
    fn the_perspective_transform_maps_the_corners() {
        let src = [[3.0, 4.0], [40.0, 9.0], [38.0, 30.0], [1.0, 22.0]];
        let dst = [[0.0, 0.0], [37.0, 0.0], [37.0, 21.0], [0.0, 21.0]];
        let m = perspective_transform(&src, &dst).unwrap();
        for (s, d) in src.iter().zip(&dst) {
            let (x, y) = (f64::from(s[0]), f64::from(s[1]));
            let w = m[6] * x + m[7] * y + m[8];
            let u = (m[0] * x + m[1] * y + m[2]) / w;
            let v = (m[3] * x + m[4] * y + m[5]) / w;
            assert!((u - f64::from(d[0])).abs() < 1e-9 && (v - f64::from(d[1])).abs() < 1e-9);
        }
    }

    #[test]
    fn an_integer_shift_copies_pixels() {
        let image = RgbImage::from_fn(8, 6, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 7]));
        let src = [[2.0, 1.0], [6.0, 1.0], [6.0, 4.0], [2.0, 4.0]];
        let dst = [[0.0, 0.0], [4.0, 0.0], [4.0, 3.0], [0.0, 3.0]];
        let m = perspective_transform(&src, &dst).unwrap();
        let crop = warp_perspective_cubic(&image, &m, 4, 3);
        for (x, y, p) in crop.enumerate_pixels() {
            assert_eq!(p, image.get_pixel(x + 2, y + 1));
        }
    }
}
