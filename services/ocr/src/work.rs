//! The OCR service's working memory, estimated from image headers before any pixel is
//! decoded, and admitted against the service's budget: concurrent large pages take
//! turns instead of multiplying. The estimate counts the decoder's frame, the page
//! after RapidOCR's resize, the detector's input twice over (the pixels, then the
//! tensor), its probability map twice over, and each model's largest pass when it
//! computes on the CPU (by its measured [`plenum_engine::MemoryProfile`]).

use std::time::Duration;

use plenum_engine::{Engine, WorkBudget};

use crate::detect::{MAX_DET_PIXELS, PlannedSizes, planned_sizes};
use crate::text::{CLS_WIDTH, REC_HEIGHT, REC_MIN_WIDTH};

/// Bytes a decoder may hold per pixel: a 16-bit RGBA frame and the RGB image made
/// from it (the decoder's own allocation limit allows the same).
const DECODE_BYTES_PER_PIXEL: u64 = 8 + 3;

/// The three models' engines and the budget their work is admitted against.
#[derive(Clone)]
pub struct OcrWork {
    det: Engine,
    rec: Engine,
    cls: Engine,
    budget: WorkBudget,
}

impl OcrWork {
    /// A budget of `bytes` (None: enough for one page of `max_pixels` pixels), each
    /// request waiting at most `wait` for room.
    pub fn new(
        det: Engine,
        rec: Engine,
        cls: Engine,
        bytes: Option<u64>,
        wait: Duration,
        max_pixels: u64,
    ) -> Self {
        let mut work = Self {
            det,
            rec,
            cls,
            budget: WorkBudget::new(0, wait),
        };
        let side = (max_pixels as f64).sqrt() as u32;
        let bytes = bytes.unwrap_or_else(|| work.page_bytes(side, side));
        work.budget = WorkBudget::new(bytes, wait);
        work
    }

    pub fn budget(&self) -> &WorkBudget {
        &self.budget
    }

    /// Reading a `width`×`height` page with ReadText.
    pub fn page_bytes(&self, width: u32, height: u32) -> u64 {
        let decoded = u64::from(width) * u64::from(height) * DECODE_BYTES_PER_PIXEL;
        let Some(PlannedSizes { page, det }) = planned_sizes(width, height) else {
            return decoded;
        };
        let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
        if area(det) > MAX_DET_PIXELS {
            return decoded; // refused as INVALID_ARGUMENT once decoded, before any work
        }
        let page_bytes = 2 * area(page) * 3;
        let det_elements = 3 * area(det);
        let det_bytes = area(det) * 3
            + 2 * det_elements * 4
            + 2 * area(det) * 4
            + self.det.host_work_bytes(1, det_elements);
        // Lines as wide as the detector's input, read at the recognizer's height.
        let rec_elements = 3 * u64::from(REC_HEIGHT) * u64::from(det.0.max(REC_MIN_WIDTH));
        decoded + page_bytes + det_bytes + self.reading_bytes(usize::MAX, rec_elements)
    }

    /// Reading crops of these sizes with Recognize.
    pub fn crops_bytes(&self, sizes: &[(u32, u32)]) -> u64 {
        let mut widest = u64::from(REC_MIN_WIDTH);
        let mut bytes = 0;
        for &(width, height) in sizes {
            let rec_width = u64::from(REC_HEIGHT) * u64::from(width) / u64::from(height.max(1));
            widest = widest.max(rec_width);
            bytes += u64::from(width) * u64::from(height) * DECODE_BYTES_PER_PIXEL;
            // The recognizer's and the classifier's inputs, each twice over.
            bytes += 2 * 3 * u64::from(REC_HEIGHT) * (rec_width + u64::from(CLS_WIDTH)) * 4;
        }
        let rec_elements = 3 * u64::from(REC_HEIGHT) * widest;
        bytes + self.reading_bytes(sizes.len(), rec_elements)
    }

    /// The recognizer's and the classifier's largest passes over `rows` crops.
    fn reading_bytes(&self, rows: usize, rec_elements: u64) -> u64 {
        let cls_elements = 3 * u64::from(REC_HEIGHT) * u64::from(CLS_WIDTH);
        self.rec.host_work_bytes(rows, rec_elements) + self.cls.host_work_bytes(rows, cls_elements)
    }
}
