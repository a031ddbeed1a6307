//! From encoded images to detections in source pixels: admit the call's working
//! memory (estimated from the image headers, before any pixel is decoded), decode with
//! limits, fit each page to the model (letterbox, or tiles at the native scale for
//! large pages), run every input of the call through the engine as one batch, decode,
//! merge. A call whose pages together exceed the budget goes through in turns.

use std::sync::Arc;
use std::time::Duration;

use image::{Rgb, RgbImage};
use plenum_engine::admission::split_to_fit;
use plenum_engine::tch::{Kind, Tensor};
use plenum_engine::{AdmissionError, Engine, EngineError, WorkBudget};
use plenum_vision::contrast::normalize_contrast;
use plenum_vision::decode::{DecodeError, DecodedImage, Limits, decode, dimensions};
use plenum_vision::geometry::BoxF;
use plenum_vision::letterbox::{PAD_VALUE, paste, to_nchw_f32};
use plenum_vision::resize::resize_linear;
use plenum_vision::tiles::{crop, tile_grid};

use crate::verify::{CROP, Candidate, Verdict, Verifier, crop_input, drop_nested, inside_share};
use crate::yolo::{self, RawDetection};

/// How one call wants its images fitted and filtered, already validated.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    pub score_threshold: f32,
    /// Keep also the detections scoring from this up to `score_threshold` that the
    /// verifier confirms (when it takes its look).
    pub confirmed_score_threshold: Option<f32>,
    pub iou_threshold: f32,
    /// Class indices to keep; None = all.
    pub classes: Option<Vec<usize>>,
    pub tiling: Tiling,
    /// Letterbox size when not tiling.
    pub input_size: u32,
    /// Drop the detections the model's verifier refuses (when it has one).
    pub verify: bool,
    /// Look again at half scale when the page's symbols came out large.
    pub large_symbol_pass: bool,
    /// Stretch a faded page to black ink on white paper before anything else.
    pub normalize_contrast: bool,
}

/// How one page is fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// One input, letterboxed to this size.
    Letterbox(u32),
    /// Overlapping tiles at the native size.
    Tiles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    Auto,
    Off,
    On,
}

/// A detection in source-image pixels.
pub type Detection = RawDetection;

#[derive(Debug, Clone)]
pub struct ImageResult {
    pub width: u32,
    pub height: u32,
    pub tiles: u32,
    pub detections: Vec<Detection>,
    /// Detections the second look dropped.
    pub refused: u32,
    /// Detections the second look gave another class (those kept and those then
    /// dropped as nested or not asked for).
    pub relabeled: u32,
    /// Weak detections the second look confirmed (in `detections`).
    pub confirmed: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("images[{index}]: {source}")]
    Decode { index: usize, source: DecodeError },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("internal: {0}")]
    Internal(String),
}

/// The model and what the pipeline needs to know about it.
#[derive(Clone)]
pub struct Detector {
    engine: Engine,
    classes: Arc<Vec<String>>,
    native_size: u32,
    limits: Limits,
    tile_overlap: u32,
    stride: u32,
    max_single_pass: u32,
    /// Scale of the one pass a page up to `max_single_pass` gets (1 = its own).
    pass_scale: f32,
    /// The second look at each detection, when the model has one.
    verifier: Option<Verifier>,
    budget: WorkBudget,
}

/// Bytes a decoder may hold per pixel: a 16-bit RGBA frame and the RGB page made from
/// it (the decoder's own allocation limit, `Limits`, allows the same).
const DECODE_BYTES_PER_PIXEL: u64 = 8 + 3;

/// How a page became model inputs, to map boxes back.
enum Plan {
    /// The letterboxed input's size.
    Letterbox {
        width: u32,
        height: u32,
    },
    Tiles {
        origins: Vec<(u32, u32)>,
    },
}

impl Detector {
    pub fn new(engine: Engine, limits: Limits, tile_overlap: u32, max_single_pass: u32) -> Self {
        let manifest = engine.manifest();
        let classes = Arc::new(manifest.labels.classes.clone());
        let native_size = manifest.input.size.unwrap_or(640).max(32) as u32;
        let stride = manifest.input.stride.unwrap_or(32).max(1) as u32;
        Self {
            stride,
            max_single_pass,
            pass_scale: 1.0,
            verifier: None,
            engine,
            classes,
            native_size,
            limits,
            tile_overlap,
            // Replaced at once: the default is worked out from the detector itself.
            budget: WorkBudget::new(0, Duration::ZERO),
        }
        .with_work_memory(None, Duration::from_secs(10))
    }

    /// Pages fed in one pass go through at `scale` times their own size (1 by
    /// default): a speed for the smallest symbols' recall trade. Set before the work
    /// budget, whose default is worked out from the inputs this makes.
    pub fn with_pass_scale(mut self, scale: f32) -> Self {
        self.pass_scale = scale;
        self
    }

    /// Detections of calls that ask to verify go through `verifier` before they are
    /// answered.
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// The score a detection must pass to be kept or, when the verifier will look
    /// at it, to be put to the verifier as a weak one.
    fn decode_threshold(&self, options: &DetectOptions) -> f32 {
        match options.confirmed_score_threshold {
            Some(weak) if self.verifies(options) => weak.min(options.score_threshold),
            _ => options.score_threshold,
        }
    }

    /// Whether a call with `options` gets the second look.
    fn verifies(&self, options: &DetectOptions) -> bool {
        options.verify && self.verifier.is_some()
    }

    /// Admits calls against `bytes` of working memory (None: the default, enough for
    /// one largest admissible page), each waiting at most `wait` for room.
    pub fn with_work_memory(mut self, bytes: Option<u64>, wait: Duration) -> Self {
        let bytes = bytes.unwrap_or_else(|| self.default_work_memory());
        self.budget = WorkBudget::new(bytes, wait);
        self
    }

    pub fn work_budget(&self) -> &WorkBudget {
        &self.budget
    }

    /// Enough for one page of the most pixels admitted, fitted with the default options
    /// (automatic tiling at the native size). Calls asking for more (a larger
    /// `input_size`, tiling off on a huge page) may be refused as too large.
    pub fn default_work_memory(&self) -> u64 {
        let side = (self.limits.max_pixels as f64).sqrt() as u32;
        let options = DetectOptions {
            score_threshold: 0.25,
            confirmed_score_threshold: Some(0.1),
            iou_threshold: 0.7,
            classes: None,
            tiling: Tiling::Auto,
            input_size: self.native_size,
            verify: true,
            large_symbol_pass: true,
            normalize_contrast: true,
        };
        self.work_bytes(side, side, &options)
    }

    /// The working memory of detecting on one `width`×`height` page: the decoded
    /// page (kept for the verifier's crops and the large-symbol pass) and, when the
    /// call stretches a faded page's contrast, its stretched copy; its model
    /// inputs twice over (the pixels, then the tensor made from them), and the model's
    /// passes over them when it computes on the CPU; with the large-symbol pass, its
    /// half-scale input and pass too, since whether it runs is known only after the
    /// first. The verifier's crops are small beside these.
    pub fn work_bytes(&self, width: u32, height: u32, options: &DetectOptions) -> u64 {
        let pixels = u64::from(width) * u64::from(height);
        let stretched = if options.normalize_contrast { 3 } else { 0 };
        let decoded = pixels * (DECODE_BYTES_PER_PIXEL + stretched);
        let (inputs, side_w, side_h) = match self.fit(width, height, options) {
            Fit::Letterbox(size) => (1, size, size),
            Fit::Tiles => (
                tile_grid(width, height, self.native_size, self.tile_overlap).len(),
                self.native_size,
                self.native_size,
            ),
        };
        let pass_bytes = |inputs: usize, side_w: u32, side_h: u32| {
            let row_elements = 3 * u64::from(side_w) * u64::from(side_h);
            2 * inputs as u64 * row_elements * 4 + self.engine.host_work_bytes(inputs, row_elements)
        };
        let large_symbol_pass = match self.large_symbol_side(width, height, options) {
            Some(half) => pass_bytes(1, half, half),
            None => 0,
        };
        decoded + pass_bytes(inputs, side_w, side_h) + large_symbol_pass
    }

    /// The letterbox size of the large-symbol pass over a `width`×`height` page, when
    /// the call asks for it and the page is letterboxed whole: half the first pass's.
    fn large_symbol_side(&self, width: u32, height: u32, options: &DetectOptions) -> Option<u32> {
        if !options.large_symbol_pass || options.tiling != Tiling::Auto {
            return None;
        }
        match self.fit(width, height, options) {
            Fit::Letterbox(size) => Some((size / 2).div_ceil(self.stride).max(1) * self.stride),
            Fit::Tiles => None,
        }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn native_size(&self) -> u32 {
        self.native_size
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How a page of this size becomes model inputs under `tiling`. Automatically:
    /// pages up to 4/3 of the native size are letterboxed at `input_size`; larger ones
    /// would shrink below 75% of the scale the model was trained at, where small
    /// symbols are missed, so they go through at their own scale (times the pass
    /// scale) — in one pass up to `max_single_pass` pixels on the longer side (one
    /// input is cheaper than overlapping tiles: measured 320 ms against 728 ms for a
    /// 1600×1200 page, same recall), and as overlapping native tiles beyond that,
    /// where one input would need too much memory.
    pub fn fit(&self, width: u32, height: u32, options: &DetectOptions) -> Fit {
        let longer = width.max(height);
        match options.tiling {
            Tiling::On => Fit::Tiles,
            Tiling::Off => Fit::Letterbox(options.input_size),
            Tiling::Auto if u64::from(longer) * 3 <= u64::from(self.native_size) * 4 => {
                Fit::Letterbox(options.input_size)
            }
            Tiling::Auto if longer <= self.max_single_pass => {
                let side = (longer as f32 * self.pass_scale).round() as u32;
                Fit::Letterbox(side.div_ceil(self.stride).max(1) * self.stride)
            }
            Tiling::Auto => Fit::Tiles,
        }
    }

    /// Detects on every image, admitted by bytes first: images whose working memory
    /// together exceeds the budget go through in turns; one that alone does is
    /// refused, as is a call that waits too long for room.
    pub async fn detect(
        &self,
        images: Vec<Vec<u8>>,
        options: &DetectOptions,
    ) -> Result<Vec<ImageResult>, PipelineError> {
        let costs = images
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let (width, height) = dimensions(bytes, &self.limits)
                    .map_err(|source| PipelineError::Decode { index, source })?;
                Ok(self.work_bytes(width, height, options))
            })
            .collect::<Result<Vec<u64>, PipelineError>>()?;
        let runs = split_to_fit(&costs, self.budget.bytes()).map_err(|index| {
            EngineError::Admission(AdmissionError::TooLarge {
                bytes: costs[index],
                budget: self.budget.bytes(),
            })
        })?;
        let mut images = images.into_iter();
        let mut results = Vec::with_capacity(costs.len());
        for run in runs {
            let bytes = costs[run.clone()].iter().sum();
            let _permit = self.budget.admit(bytes).await.map_err(EngineError::from)?;
            let taken: Vec<Vec<u8>> = images.by_ref().take(run.len()).collect();
            results.extend(self.detect_admitted(taken, options).await?);
        }
        Ok(results)
    }

    async fn detect_admitted(
        &self,
        images: Vec<Vec<u8>>,
        options: &DetectOptions,
    ) -> Result<Vec<ImageResult>, PipelineError> {
        let this = self.clone();
        let options_for_prep = options.clone();
        // Decoding and resizing are CPU work: keep them off the async threads.
        let mut prepared =
            tokio::task::spawn_blocking(move || this.prepare(&images, &options_for_prep))
                .await
                .map_err(|error| PipelineError::Internal(error.to_string()))??;

        // Letterboxed inputs of one size and tiles (all native size) go through the
        // engine as batches; sizes differ only when callers ask for input_size.
        // Each input's pixels move into their group (never copied twice), and each
        // group's pixels are dropped once its tensor is made: the admitted bytes hold.
        let mut groups: Vec<((u32, u32), Vec<f32>, usize)> = Vec::new();
        for page in &prepared {
            for (size, pixels) in &page.inputs {
                match groups.iter_mut().find(|(s, _, _)| s == size) {
                    Some((_, _, elements)) => *elements += pixels.len(),
                    None => groups.push((*size, Vec::new(), pixels.len())),
                }
            }
        }
        for (_, data, elements) in &mut groups {
            *data = Vec::with_capacity(*elements);
        }
        for page in &mut prepared {
            for (size, pixels) in &mut page.inputs {
                let pixels = std::mem::take(pixels);
                if let Some((_, data, _)) = groups.iter_mut().find(|(s, _, _)| s == size) {
                    data.extend_from_slice(&pixels);
                }
            }
        }
        let mut outputs_by_size = Vec::new();
        for ((width, height), data, _) in groups {
            let count = data.len() / (3 * width as usize * height as usize);
            let input = Tensor::from_slice(&data).view([
                count as i64,
                3,
                i64::from(height),
                i64::from(width),
            ]);
            drop(data);
            let output = self.engine.infer(input).await?;
            outputs_by_size.push(((width, height), yolo::split_batch(&output).into_iter()));
        }

        let decode_threshold = self.decode_threshold(options);
        let mut results = Vec::with_capacity(prepared.len());
        let mut weak = Vec::with_capacity(prepared.len());
        for page in &prepared {
            let mut raw = Vec::new();
            for (size, _) in &page.inputs {
                let (_, outputs) = outputs_by_size
                    .iter_mut()
                    .find(|(s, _)| s == size)
                    .ok_or_else(|| PipelineError::Internal("lost a batch".into()))?;
                let output = outputs
                    .next()
                    .ok_or_else(|| PipelineError::Internal("short batch".into()))?;
                raw.push(yolo::decode(
                    &output.to_kind(Kind::Float),
                    decode_threshold,
                    options.iou_threshold,
                    options.classes.as_deref(),
                ));
            }
            let detections: Vec<Detection> = match &page.plan {
                Plan::Letterbox { width, height } => raw
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| Detection {
                        bbox: yolo::scale_to_source(
                            &d.bbox,
                            *width,
                            *height,
                            page.width,
                            page.height,
                        ),
                        class: d.class,
                        score: d.score,
                    })
                    .collect(),
                Plan::Tiles { origins } => merge_tiles(
                    raw,
                    origins,
                    self.native_size,
                    page.width,
                    page.height,
                    options.iou_threshold,
                ),
            };
            // Those under the call's threshold wait for the verifier's confirmation
            // (decoded at all only when it looks), apart from the large-symbol pass.
            let (detections, unsure): (Vec<_>, Vec<_>) = detections
                .into_iter()
                .partition(|d| d.score > options.score_threshold);
            weak.push(unsure);
            results.push(ImageResult {
                width: page.width,
                height: page.height,
                tiles: page.inputs.len() as u32,
                detections,
                refused: 0,
                relabeled: 0,
                confirmed: 0,
            });
        }
        self.large_symbol_pass(&prepared, &mut results, options)
            .await?;
        if let Some(verifier) = self.verifier.as_ref().filter(|_| options.verify) {
            let pages: Vec<Option<RgbImage>> = prepared.into_iter().map(|p| p.decoded).collect();
            second_look(
                verifier,
                pages,
                weak,
                options.classes.as_deref(),
                &mut results,
            )
            .await?;
        }
        Ok(results)
    }

    fn prepare(
        &self,
        images: &[Vec<u8>],
        options: &DetectOptions,
    ) -> Result<Vec<PreparedPage>, PipelineError> {
        images
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let image = decode(bytes, &self.limits)
                    .map_err(|source| PipelineError::Decode { index, source })?;
                // The model sees the stretched page; the verifier, trained on crops of
                // pages as scanned (grey paper included), sees the page as it came.
                let mut stretched = None;
                if options.normalize_contrast {
                    let mut copy = image.image.clone();
                    if normalize_contrast(&mut copy).is_some() {
                        stretched = Some(DecodedImage {
                            image: copy,
                            ..image
                        });
                    }
                }
                let mut page = self.prepare_page(stretched.as_ref().unwrap_or(&image), options);
                let large_symbol_pass = self
                    .large_symbol_side(image.width, image.height, options)
                    .is_some();
                if large_symbol_pass {
                    page.stretched = stretched.map(|s| s.image);
                }
                if self.verifies(options) || large_symbol_pass {
                    page.decoded = Some(image.image);
                }
                Ok(page)
            })
            .collect()
    }

    fn prepare_page(&self, image: &DecodedImage, options: &DetectOptions) -> PreparedPage {
        let (width, height) = (image.width, image.height);
        let input_size = match self.fit(width, height, options) {
            Fit::Letterbox(size) => size,
            Fit::Tiles => 0,
        };
        if input_size == 0 {
            let side = self.native_size;
            let origins = tile_grid(width, height, side, self.tile_overlap);
            let inputs = origins
                .iter()
                .map(|&(x, y)| {
                    let tile = crop(&image.image, i64::from(x), i64::from(y), side, side);
                    ((side, side), to_nchw_f32(&[&tile]).0)
                })
                .collect();
            PreparedPage {
                width,
                height,
                plan: Plan::Tiles { origins },
                inputs,
                decoded: None,
                stretched: None,
            }
        } else {
            let boxed = letterbox_rect(&image.image, input_size, self.stride);
            let size = boxed.dimensions();
            PreparedPage {
                width,
                height,
                plan: Plan::Letterbox {
                    width: size.0,
                    height: size.1,
                },
                inputs: vec![(size, to_nchw_f32(&[&boxed]).0)],
                decoded: None,
                stretched: None,
            }
        }
    }

    /// Gives each page whose symbols came out large (see [`LARGE_SYMBOL`]) a second
    /// pass at half scale, and adds what it finds where the first pass found nothing.
    /// The model was trained at one drawing scale: symbols twice that size and more
    /// (a plan at another scale, a scan at a higher DPI) it misses at full scale and
    /// finds at half, while at half scale it loses the small ones, which is why this
    /// is a second pass and only where the first found large symbols.
    async fn large_symbol_pass(
        &self,
        pages: &[PreparedPage],
        results: &mut [ImageResult],
        options: &DetectOptions,
    ) -> Result<(), PipelineError> {
        for (page, result) in pages.iter().zip(results.iter_mut()) {
            let (Some(side), Some(image)) = (
                self.large_symbol_side(page.width, page.height, options),
                page.stretched.as_ref().or(page.decoded.as_ref()),
            ) else {
                continue;
            };
            if !symbols_are_large(&result.detections) {
                continue;
            }
            let boxed = letterbox_rect(image, side, self.stride);
            let (width, height) = boxed.dimensions();
            let input = Tensor::from_slice(&to_nchw_f32(&[&boxed]).0).view([
                1,
                3,
                i64::from(height),
                i64::from(width),
            ]);
            drop(boxed);
            let output = self.engine.infer(input).await?;
            let found = yolo::decode(
                &output.get(0).to_kind(Kind::Float),
                options.score_threshold,
                options.iou_threshold,
                options.classes.as_deref(),
            );
            for detection in found {
                let bbox =
                    yolo::scale_to_source(&detection.bbox, width, height, page.width, page.height);
                let new = result
                    .detections
                    .iter()
                    .all(|kept| kept.bbox.iou(&bbox) < SAME_SYMBOL_IOU);
                if new {
                    result.detections.push(Detection { bbox, ..detection });
                }
            }
            result
                .detections
                .sort_by(|a, b| b.score.total_cmp(&a.score));
            result.tiles += 1;
        }
        Ok(())
    }
}

/// The median longer side (page pixels) of a page's detections from which it gets the
/// large-symbol pass. The generator's pages, drawn at the training scale, have medians
/// of 29-38 px; the independent renderer's pages with 122 px VAV boxes the first pass
/// missed, 68 and 86.
pub const LARGE_SYMBOL: f32 = 60.0;

/// A detection of the half-scale pass overlapping one of the first pass this much is
/// the same symbol (the overlap at which detections count as found).
const SAME_SYMBOL_IOU: f32 = 0.5;

fn symbols_are_large(detections: &[Detection]) -> bool {
    let mut sides: Vec<f32> = detections
        .iter()
        .map(|d| (d.bbox.x_max - d.bbox.x_min).max(d.bbox.y_max - d.bbox.y_min))
        .collect();
    if sides.is_empty() {
        return false;
    }
    sides.sort_by(f32::total_cmp);
    sides[sides.len() / 2] >= LARGE_SYMBOL
}

struct PreparedPage {
    width: u32,
    height: u32,
    plan: Plan,
    /// ((width, height), RGB/255 NCHW pixels) of each model input
    inputs: Vec<((u32, u32), Vec<f32>)>,
    /// The decoded page, for the verifier's crops (when the call verifies).
    decoded: Option<RgbImage>,
    /// The page as the model saw it when the call stretched its contrast, for the
    /// large-symbol pass (when the call asks for it).
    stretched: Option<RgbImage>,
}

/// Drops from each page's detections those `verifier` refuses and gives those it is
/// sure the detector misnamed its class, in one batch for the whole call; then drops
/// those nested in a better one of their class, and those whose new class the call
/// did not ask for. Last, it adds each page's `weak` detections (under the call's
/// threshold) that it confirms and that no detection kept overlaps. Pages not kept
/// for it are left as they are.
async fn second_look(
    verifier: &Verifier,
    pages: Vec<Option<RgbImage>>,
    weak: Vec<Vec<Detection>>,
    wanted: Option<&[usize]>,
    results: &mut [ImageResult],
) -> Result<(), PipelineError> {
    let looked_at: Vec<bool> = pages.iter().map(Option::is_some).collect();
    let weak: Vec<Vec<Detection>> = weak
        .into_iter()
        .zip(&looked_at)
        .map(|(weak, looked)| if *looked { weak } else { Vec::new() })
        .collect();
    // Each looked-at page's detections, then its weak ones.
    let boxes: Vec<Vec<BoxF>> = results
        .iter()
        .zip(&weak)
        .map(|(result, weak)| {
            (result.detections.iter().chain(weak))
                .map(|d| d.bbox)
                .collect()
        })
        .collect();
    let candidates: Vec<Candidate> = results
        .iter()
        .zip(&weak)
        .zip(&looked_at)
        .filter(|(_, looked)| **looked)
        .flat_map(|((result, weak), _)| {
            let strong = result.detections.iter().map(|d| Candidate {
                class: d.class,
                weak: false,
            });
            strong.chain(weak.iter().map(|d| Candidate {
                class: d.class,
                weak: true,
            }))
        })
        .collect();
    let count = candidates.len();
    // Cropping reads up to every pixel of every page: CPU work, off the async threads.
    let crops = tokio::task::spawn_blocking(move || {
        let mut crops = Vec::with_capacity(count * CROP * CROP);
        for (page, boxes) in pages.iter().zip(&boxes) {
            if let Some(page) = page {
                for bbox in boxes {
                    crop_input(page, bbox, &mut crops);
                }
            }
        }
        crops
    })
    .await
    .map_err(|error| PipelineError::Internal(error.to_string()))?;
    let mut verdicts = verifier.judge(crops, &candidates).await?.into_iter();
    for ((looked, result), weak) in looked_at.into_iter().zip(results.iter_mut()).zip(weak) {
        if !looked {
            continue;
        }
        let before = result.detections.len();
        let mut relabeled = 0;
        result
            .detections
            .retain_mut(|detection| match verdicts.next() {
                Some(Verdict::Refused) => false,
                Some(Verdict::Class(class)) if class != detection.class => {
                    relabeled += 1;
                    detection.class = class;
                    wanted.is_none_or(|wanted| wanted.contains(&class))
                }
                Some(Verdict::Class(_)) | None => true,
            });
        drop_nested(&mut result.detections);
        result.refused = (before - result.detections.len()) as u32;
        result.relabeled = relabeled;
        // Best first: each confirmed one joins the kept before the next is weighed.
        // The verdicts follow the order the crops were made in.
        let mut weak: Vec<(Detection, Option<Verdict>)> =
            weak.into_iter().map(|d| (d, verdicts.next())).collect();
        weak.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
        for (detection, verdict) in weak {
            let confirmed = matches!(verdict, Some(Verdict::Class(_)))
                && result
                    .detections
                    .iter()
                    .all(|kept| inside_share(&kept.bbox, &detection.bbox) < CONFIRMED_APART);
            if confirmed {
                result.detections.push(detection);
                result.confirmed += 1;
            }
        }
        result
            .detections
            .sort_by(|a, b| b.score.total_cmp(&a.score));
    }
    Ok(())
}

/// A confirmed weak detection must stand apart from every kept one: this share of the
/// smaller box inside the other is already a second box on a symbol the page has
/// (a weak box on a kept symbol's part, or around it with its neighbour), not a new one.
const CONFIRMED_APART: f32 = 0.1;

/// Ultralytics' letterbox for a dynamic export (`auto=True`, what `predict` does with
/// this model): scale to fit `size`, then pad only up to the next multiple of `stride`
/// (the minimum rectangle), centred with the `round(d ∓ 0.1)` split, grey 114. A
/// 1600×1200 page becomes 640×480, not 640×640: a quarter less compute.
fn letterbox_rect(source: &RgbImage, size: u32, stride: u32) -> RgbImage {
    let (w, h) = source.dimensions();
    let ratio = f64::min(
        f64::from(size) / f64::from(h),
        f64::from(size) / f64::from(w),
    );
    let unpad_w = (f64::from(w) * ratio)
        .round_ties_even()
        .clamp(1.0, f64::from(size)) as u32;
    let unpad_h = (f64::from(h) * ratio)
        .round_ties_even()
        .clamp(1.0, f64::from(size)) as u32;
    let dw = f64::from((size - unpad_w) % stride) / 2.0;
    let dh = f64::from((size - unpad_h) % stride) / 2.0;
    let (left, right) = (
        (dw - 0.1).round_ties_even() as u32,
        (dw + 0.1).round_ties_even() as u32,
    );
    let (top, bottom) = (
        (dh - 0.1).round_ties_even() as u32,
        (dh + 0.1).round_ties_even() as u32,
    );
    let mut out = RgbImage::from_pixel(
        unpad_w + left + right,
        unpad_h + top + bottom,
        Rgb([PAD_VALUE; 3]),
    );
    if (unpad_w, unpad_h) == (w, h) {
        paste(&mut out, source, i64::from(left), i64::from(top));
    } else {
        let resized = resize_linear(source, unpad_w, unpad_h);
        paste(&mut out, &resized, i64::from(left), i64::from(top));
    }
    out
}

/// Tiles back to one page: shift each tile's boxes by its origin, drop boxes cut by
/// an inner tile edge (the overlap guarantees a neighbour saw the whole symbol), then
/// class-wise NMS across tiles.
fn merge_tiles(
    per_tile: Vec<Vec<RawDetection>>,
    origins: &[(u32, u32)],
    side: u32,
    width: u32,
    height: u32,
    iou_threshold: f32,
) -> Vec<Detection> {
    const EDGE: f32 = 2.0;
    let mut candidates = Vec::new();
    for (detections, &(x0, y0)) in per_tile.into_iter().zip(origins) {
        let (x0, y0) = (x0 as f32, y0 as f32);
        let (x1, y1) = (x0 + side as f32, y0 + side as f32);
        for d in detections {
            let b = BoxF {
                x_min: (d.bbox.x_min + x0).clamp(0.0, width as f32),
                y_min: (d.bbox.y_min + y0).clamp(0.0, height as f32),
                x_max: (d.bbox.x_max + x0).clamp(0.0, width as f32),
                y_max: (d.bbox.y_max + y0).clamp(0.0, height as f32),
            };
            let cut = (x0 > 0.0 && b.x_min - x0 < EDGE)
                || (y0 > 0.0 && b.y_min - y0 < EDGE)
                || (x1 < width as f32 && x1 - b.x_max < EDGE)
                || (y1 < height as f32 && y1 - b.y_max < EDGE);
            if !cut {
                candidates.push(Detection {
                    bbox: b,
                    class: d.class,
                    score: d.score,
                });
            }
        }
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    yolo::class_wise_nms(candidates, iou_threshold)
}
