//! The OpenCV geometry in `quad` and `contours` against what opencv-python 5.0 and
//! pyclipper 1.4 (RapidOCR 1.4.4's dependencies) return on the same inputs; fixtures
//! made by `make_opencv_fixtures.py` beside this file.

use plenum_vision::contours::{contour_point_sets, dilate_2x2};
use plenum_vision::quad::{
    PointF, convex_hull, min_area_rect, perspective_transform, round_offset, warp_perspective_cubic,
};
use serde_json::Value;

fn fixtures() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/opencv_geometry.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn points_i(v: &Value) -> Vec<[i32; 2]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_i64().unwrap() as i32, p[1].as_i64().unwrap() as i32])
        .collect()
}

fn points_f(v: &Value) -> Vec<PointF> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
        .collect()
}

fn sorted(mut points: Vec<PointF>) -> Vec<PointF> {
    points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    points
}

#[test]
fn min_area_rect_and_box_points_match_opencv() {
    let mut worst = 0f32;
    for case in fixtures()["min_area_rect"].as_array().unwrap() {
        let rect = min_area_rect(&points_i(&case["points"]));
        let ours = rect.points().to_vec();
        let theirs = points_f(&case["box"]);
        // The same rectangle; OpenCV may start its corner list elsewhere.
        for (a, b) in sorted(ours).iter().zip(sorted(theirs.clone())) {
            worst = worst.max((a[0] - b[0]).abs()).max((a[1] - b[1]).abs());
        }
        let mut sides = rect.size;
        sides.sort_by(f32::total_cmp);
        let mut expected = [
            case["size"][0].as_f64().unwrap() as f32,
            case["size"][1].as_f64().unwrap() as f32,
        ];
        expected.sort_by(f32::total_cmp);
        assert!(
            (sides[0] - expected[0]).abs() < 1e-3,
            "{sides:?} vs {expected:?}"
        );
    }
    assert!(worst < 1e-3, "worst corner difference {worst}");
}

#[test]
fn round_offset_matches_pyclipper() {
    for case in fixtures()["unclip"].as_array().unwrap() {
        let quad = points_f(&case["box"]);
        let ours = round_offset(&quad, case["distance"].as_f64().unwrap());
        let theirs: Vec<[i32; 2]> = case["expanded"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(points_i)
            .collect();
        // Clipper's final union may drop collinear vertices: compare hulls.
        let (mut a, mut b) = (convex_hull(&ours), convex_hull(&theirs));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "box {quad:?}");
    }
}

#[test]
fn warp_perspective_matches_opencv() {
    let fx = fixtures();
    let warp = &fx["warp"];
    let (w, h) = (
        warp["width"].as_u64().unwrap() as u32,
        warp["height"].as_u64().unwrap() as u32,
    );
    let pixels: Vec<u8> = warp["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let image = image::RgbImage::from_raw(w, h, pixels).unwrap();
    for case in warp["cases"].as_array().unwrap() {
        let quad = points_f(&case["quad"]);
        let (cw, ch) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let (fw, fh) = (cw as f32, ch as f32);
        let src = [quad[0], quad[1], quad[2], quad[3]];
        let m = perspective_transform(&src, &[[0.0, 0.0], [fw, 0.0], [fw, fh], [0.0, fh]]).unwrap();
        let expected: Vec<f64> = case["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        for (a, b) in m.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-9, "matrix {m:?} vs {expected:?}");
        }
        let ours = warp_perspective_cubic(&image, &m, cw, ch);
        let theirs: Vec<u8> = case["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        let differ = ours
            .as_raw()
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .count();
        let worst = ours
            .as_raw()
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap_or(0);
        eprintln!(
            "warp {quad:?}: {differ} of {} values differ, by at most {worst}",
            theirs.len()
        );
        assert!(
            worst <= 1 && differ * 100 <= theirs.len(),
            "quad {quad:?}: {differ} differ, worst {worst}"
        );
    }
}

#[test]
fn dilation_and_contour_hulls_match_opencv() {
    let fx = fixtures();
    let c = &fx["contours"];
    let (w, h) = (
        c["width"].as_u64().unwrap() as usize,
        c["height"].as_u64().unwrap() as usize,
    );
    let bytes = |key: &str| -> Vec<u8> {
        c[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect()
    };
    let dilated = dilate_2x2(&bytes("bitmap"), w, h);
    assert_eq!(dilated, bytes("dilated"));
    let mut ours: Vec<Vec<[i32; 2]>> = contour_point_sets(&dilated, w, h)
        .iter()
        .map(|set| {
            let mut hull = convex_hull(set);
            hull.sort_unstable();
            hull
        })
        .collect();
    ours.sort();
    let theirs: Vec<Vec<[i32; 2]>> = c["hulls"]
        .as_array()
        .unwrap()
        .iter()
        .map(points_i)
        .collect();
    assert_eq!(ours.len(), theirs.len(), "contour count");
    assert_eq!(ours, theirs);
}
