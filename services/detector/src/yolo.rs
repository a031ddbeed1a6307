//! Ultralytics' post-processing for a YOLOv8/YOLO11 detection export, exactly:
//! output `[B, 4 + nc, A]` (cx, cy, w, h, then one score per class, no objectness);
//! keep the best class per anchor when it scores above the threshold; class-wise
//! NMS (torchvision semantics, classes separated by a 7680 px offset); at most 300.

use plenum_engine::tch::{Kind, Tensor};
use plenum_vision::geometry::{BoxF, nms};

/// Ultralytics' `max_wh`: the offset that keeps classes apart in one NMS call.
const MAX_WH: f32 = 7680.0;
/// Ultralytics' `max_nms`: candidates considered per image, best first.
const MAX_NMS: usize = 30_000;
/// Ultralytics' `max_det`.
pub const MAX_DETECTIONS: usize = 300;

/// One detection in model-input pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDetection {
    pub bbox: BoxF,
    pub class: usize,
    pub score: f32,
}

/// Decodes one image's output `[4 + nc, A]` into detections, best first.
pub fn decode(
    output: &Tensor,
    score_threshold: f32,
    iou_threshold: f32,
    classes: Option<&[usize]>,
) -> Vec<RawDetection> {
    let size = output.size();
    let (rows, anchors) = (size[0] as usize, size[1] as usize);
    if rows <= 4 {
        return Vec::new();
    }
    let values: Vec<f32> = output
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1])
        .try_into()
        .unwrap_or_default();
    let classes_count = rows - 4;
    let mut candidates = Vec::new();
    for anchor in 0..anchors {
        let mut best = (0usize, f32::NEG_INFINITY);
        for class in 0..classes_count {
            let score = values[(4 + class) * anchors + anchor];
            if score > best.1 {
                best = (class, score);
            }
        }
        if best.1 <= score_threshold {
            continue;
        }
        if let Some(allowed) = classes
            && !allowed.contains(&best.0)
        {
            continue;
        }
        let (cx, cy, w, h) = (
            values[anchor],
            values[anchors + anchor],
            values[2 * anchors + anchor],
            values[3 * anchors + anchor],
        );
        candidates.push(RawDetection {
            bbox: BoxF::from_cxcywh(cx, cy, w, h),
            class: best.0,
            score: best.1,
        });
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(MAX_NMS);
    class_wise_nms(candidates, iou_threshold)
}

/// Ultralytics' class-wise NMS over `candidates` sorted best first: boxes of each
/// class shifted by `class × 7680` so one torchvision-style NMS never compares two
/// classes; at most 300 kept, best first.
pub fn class_wise_nms(candidates: Vec<RawDetection>, iou_threshold: f32) -> Vec<RawDetection> {
    let offset_boxes: Vec<BoxF> = candidates
        .iter()
        .map(|candidate| {
            let offset = candidate.class as f32 * MAX_WH;
            BoxF {
                x_min: candidate.bbox.x_min + offset,
                y_min: candidate.bbox.y_min + offset,
                x_max: candidate.bbox.x_max + offset,
                y_max: candidate.bbox.y_max + offset,
            }
        })
        .collect();
    let scores: Vec<f32> = candidates.iter().map(|candidate| candidate.score).collect();
    let mut keep = nms(&offset_boxes, &scores, iou_threshold);
    keep.truncate(MAX_DETECTIONS);
    keep.into_iter()
        .map(|index| candidates[index].clone())
        .collect()
}

/// Maps a box from a `input_w × input_h` letterboxed input back to a `width ×
/// height` source, as Ultralytics' `scale_boxes` does (padding recomputed from the
/// gain with the `round(x − 0.1)` rule), clipped to the source.
pub fn scale_to_source(bbox: &BoxF, input_w: u32, input_h: u32, width: u32, height: u32) -> BoxF {
    let gain = (input_h as f32 / height as f32).min(input_w as f32 / width as f32);
    let pad_x = round_half_even((input_w as f32 - width as f32 * gain) / 2.0 - 0.1);
    let pad_y = round_half_even((input_h as f32 - height as f32 * gain) / 2.0 - 0.1);
    BoxF {
        x_min: ((bbox.x_min - pad_x) / gain).clamp(0.0, width as f32),
        y_min: ((bbox.y_min - pad_y) / gain).clamp(0.0, height as f32),
        x_max: ((bbox.x_max - pad_x) / gain).clamp(0.0, width as f32),
        y_max: ((bbox.y_max - pad_y) / gain).clamp(0.0, height as f32),
    }
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(value: f32) -> f32 {
    value.round_ties_even()
}

/// A batch of decoded outputs, one `[4 + nc, A]` view per image.
pub fn split_batch(output: &Tensor) -> Vec<Tensor> {
    (0..output.size()[0])
        .map(|index| output.get(index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_boxes_matches_ultralytics_for_a_landscape_page() {
        // 1600×1200 into 640×640: gain 0.4, pad y = round(80 − 0.1) = 80.
        let bbox = BoxF {
            x_min: 40.0,
            y_min: 120.0,
            x_max: 80.0,
            y_max: 160.0,
        };
        let source = scale_to_source(&bbox, 640, 640, 1600, 1200);
        assert_eq!(
            source,
            BoxF {
                x_min: 100.0,
                y_min: 100.0,
                x_max: 200.0,
                y_max: 200.0
            }
        );
    }

    #[test]
    fn decode_keeps_the_best_class_above_the_threshold_and_suppresses_overlaps() {
        // Two classes, three anchors: two overlapping boxes of class 1, one weak box.
        let rows: [[f32; 3]; 6] = [
            [50.0, 52.0, 200.0], // cx
            [50.0, 50.0, 200.0], // cy
            [20.0, 20.0, 10.0],  // w
            [20.0, 20.0, 10.0],  // h
            [0.1, 0.05, 0.2],    // class 0
            [0.9, 0.8, 0.1],     // class 1
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let output = Tensor::from_slice(&flat).view([6, 3]);
        let detections = decode(&output, 0.25, 0.7, None);
        assert_eq!(detections.len(), 1);
        assert_eq!(detections[0].class, 1);
        assert!((detections[0].score - 0.9).abs() < 1e-6);
        assert_eq!(
            detections[0].bbox,
            BoxF {
                x_min: 40.0,
                y_min: 40.0,
                x_max: 60.0,
                y_max: 60.0
            }
        );
        // Filtering to class 0 leaves nothing above the threshold.
        assert!(decode(&output, 0.25, 0.7, Some(&[0])).is_empty());
    }
}
