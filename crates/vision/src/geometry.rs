//! Axis-aligned boxes and non-maximum suppression with torchvision's semantics.

use std::cmp::Ordering;

/// An axis-aligned box in continuous pixel coordinates: its width is `x_max - x_min`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BoxF {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl BoxF {
    pub const fn new(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Self {
        Self {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }

    /// From centre and size, the layout of a YOLO output row.
    pub fn from_cxcywh(cx: f32, cy: f32, w: f32, h: f32) -> Self {
        Self::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
    }

    pub fn width(&self) -> f32 {
        (self.x_max - self.x_min).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y_max - self.y_min).max(0.0)
    }

    /// Zero for an inverted box.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// The area the two boxes share.
    pub fn intersection(&self, other: &BoxF) -> f32 {
        (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0)
            * (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0)
    }

    /// Intersection over union, computed as torchvision's NMS kernel does (so a threshold
    /// comparison gives the same answer); 0 when both boxes are empty.
    pub fn iou(&self, other: &BoxF) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Clamps every coordinate into `[0, width] x [0, height]`.
    pub fn clip(&self, width: f32, height: f32) -> BoxF {
        BoxF::new(
            self.x_min.clamp(0.0, width),
            self.y_min.clamp(0.0, height),
            self.x_max.clamp(0.0, width),
            self.y_max.clamp(0.0, height),
        )
    }
}

/// Greedy non-maximum suppression, as `torchvision.ops.nms`: visit boxes by descending score
/// (equal scores in index order), keep a box unless a kept box overlaps it with IoU strictly
/// greater than `iou_threshold`. Returns the kept indices, highest score first. A NaN score
/// sorts last.
///
/// # Panics
///
/// When `boxes` and `scores` differ in length.
pub fn nms(boxes: &[BoxF], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    greedy(boxes, scores, None, iou_threshold)
}

/// [`nms`] within each class, as `torchvision.ops.batched_nms`: a box only suppresses boxes
/// of its own class. Returns the kept indices of all classes, highest score first.
///
/// Boxes are grouped by class rather than offset by `class * max_coordinate` (torchvision's
/// trick for small inputs), so no IoU is disturbed by float rounding of the offset.
///
/// # Panics
///
/// When `boxes`, `scores` and `classes` differ in length.
pub fn batched_nms(
    boxes: &[BoxF],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    assert_eq!(boxes.len(), classes.len(), "one class per box");
    greedy(boxes, scores, Some(classes), iou_threshold)
}

fn greedy(
    boxes: &[BoxF],
    scores: &[f32],
    classes: Option<&[usize]>,
    iou_threshold: f32,
) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() { f32::NEG_INFINITY } else { s }
    };
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable, so equal scores keep index order, as torchvision's stable sort does.
    order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(Ordering::Equal));
    let same_class = |a: usize, b: usize| classes.is_none_or(|c| c[a] == c[b]);
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let suppressed = kept
            .iter()
            .any(|&k| same_class(k, i) && boxes[k].iou(&boxes[i]) > iou_threshold);
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn box_basics() {
        let b = BoxF::from_cxcywh(10.0, 20.0, 4.0, 6.0);
        assert_eq!(b, BoxF::new(8.0, 17.0, 12.0, 23.0));
        assert_eq!(b.area(), 24.0);
        assert_eq!(BoxF::new(5.0, 5.0, 1.0, 9.0).area(), 0.0);
        assert_eq!(
            BoxF::new(-3.0, 2.0, 700.0, 500.0).clip(640.0, 480.0),
            BoxF::new(0.0, 2.0, 640.0, 480.0)
        );
    }

    #[test]
    fn iou_values() {
        let a = BoxF::new(0.0, 0.0, 2.0, 2.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BoxF::new(1.0, 0.0, 3.0, 2.0)), 2.0 / 6.0);
        assert_eq!(a.iou(&BoxF::new(2.0, 0.0, 4.0, 2.0)), 0.0, "touching edges");
        assert_eq!(a.iou(&BoxF::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        let empty = BoxF::new(1.0, 1.0, 1.0, 1.0);
        assert_eq!(empty.iou(&empty), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster() {
        let boxes = [
            BoxF::new(0.0, 0.0, 10.0, 10.0),
            BoxF::new(1.0, 1.0, 11.0, 11.0),
            BoxF::new(50.0, 50.0, 60.0, 60.0),
            BoxF::new(0.5, 0.0, 10.5, 10.0),
        ];
        let scores = [0.8, 0.9, 0.3, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.5), [1, 2]);
        // A high threshold suppresses nothing: all boxes, by score.
        assert_eq!(nms(&boxes, &scores, 0.99), [1, 0, 3, 2]);
        assert_eq!(nms(&[], &[], 0.5), Vec::<usize>::new());
    }

    #[test]
    fn nms_ties_go_to_the_lower_index() {
        let b = BoxF::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(nms(&[b, b, b], &[0.5, 0.5, 0.5], 0.5), [0]);
        let far = BoxF::new(20.0, 0.0, 30.0, 10.0);
        assert_eq!(nms(&[far, b, far], &[0.5, 0.5, 0.5], 0.5), [0, 1]);
    }

    #[test]
    fn nms_threshold_is_strict() {
        // IoU exactly 1/3 (2 / 6, both exact in f32 arithmetic as computed).
        let a = BoxF::new(0.0, 0.0, 2.0, 2.0);
        let b = BoxF::new(1.0, 0.0, 3.0, 2.0);
        let iou = a.iou(&b);
        assert_eq!(
            nms(&[a, b], &[0.9, 0.8], iou),
            [0, 1],
            "equal to the threshold: kept"
        );
        assert_eq!(
            nms(&[a, b], &[0.9, 0.8], iou - 1e-6),
            [0],
            "above it: suppressed"
        );
        // IoU exactly 0.5: 100 over 200.
        let c = BoxF::new(0.0, 0.0, 10.0, 15.0);
        let d = BoxF::new(0.0, 5.0, 10.0, 20.0);
        assert_eq!(c.iou(&d), 0.5);
        assert_eq!(nms(&[c, d], &[0.9, 0.8], 0.5), [0, 1]);
    }

    #[test]
    fn nms_nan_scores_sort_last() {
        let b = BoxF::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(nms(&[b, b], &[f32::NAN, 0.1], 0.5), [1]);
    }

    #[test]
    fn batched_nms_is_per_class() {
        let a = BoxF::new(0.0, 0.0, 10.0, 10.0);
        let b = BoxF::new(1.0, 0.0, 11.0, 10.0);
        let boxes = [a, b, a, b];
        let scores = [0.9, 0.8, 0.7, 0.95];
        let classes = [0, 0, 1, 1];
        // Class 0 keeps 0 (suppresses 1); class 1 keeps 3 (suppresses 2); sorted by score.
        assert_eq!(batched_nms(&boxes, &scores, &classes, 0.5), [3, 0]);
        // Distinct classes never suppress each other.
        assert_eq!(batched_nms(&[a, a], &[0.9, 0.8], &[3, 7], 0.5), [0, 1]);
    }

    fn arb_box() -> impl Strategy<Value = BoxF> {
        (0f32..100.0, 0f32..100.0, 1f32..40.0, 1f32..40.0)
            .prop_map(|(x, y, w, h)| BoxF::new(x, y, x + w, y + h))
    }

    proptest! {
        /// batched NMS equals NMS run on each class alone, merged by score.
        #[test]
        fn batched_matches_per_class(
            items in prop::collection::vec((arb_box(), 0f32..1.0, 0usize..3), 0..40),
            iou in 0.1f32..0.9,
        ) {
            let boxes: Vec<BoxF> = items.iter().map(|t| t.0).collect();
            let scores: Vec<f32> = items.iter().map(|t| t.1).collect();
            let classes: Vec<usize> = items.iter().map(|t| t.2).collect();
            let batched = batched_nms(&boxes, &scores, &classes, iou);
            let mut expected = Vec::new();
            for class in 0..3 {
                let members: Vec<usize> = (0..boxes.len()).filter(|&i| classes[i] == class).collect();
                let sub_boxes: Vec<BoxF> = members.iter().map(|&i| boxes[i]).collect();
                let sub_scores: Vec<f32> = members.iter().map(|&i| scores[i]).collect();
                expected.extend(nms(&sub_boxes, &sub_scores, iou).into_iter().map(|k| members[k]));
            }
            expected.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            prop_assert_eq!(batched, expected);
        }

        /// No two kept boxes overlap above the threshold, and every dropped box is covered.
        #[test]
        fn nms_invariants(
            items in prop::collection::vec((arb_box(), 0f32..1.0), 0..40),
            iou in 0.1f32..0.9,
        ) {
            let boxes: Vec<BoxF> = items.iter().map(|t| t.0).collect();
            let scores: Vec<f32> = items.iter().map(|t| t.1).collect();
            let kept = nms(&boxes, &scores, iou);
            for (n, &a) in kept.iter().enumerate() {
                for &b in &kept[n + 1..] {
                    prop_assert!(boxes[a].iou(&boxes[b]) <= iou);
                    prop_assert!(scores[a] >= scores[b]);
                }
            }
            for i in (0..boxes.len()).filter(|i| !kept.contains(i)) {
                prop_assert!(kept.iter().any(|&k| boxes[k].iou(&boxes[i]) > iou && scores[k] >= scores[i]));
            }
        }
    }
}
