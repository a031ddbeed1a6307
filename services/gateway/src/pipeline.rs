//! Analyze: check the request, read the image header, detect symbols and read the
//! page with the symbols painted out, then give each symbol its tag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use plenum_proto::common::v1 as common;
use plenum_proto::detector::v1::{self as det, detector_client::DetectorClient};
use plenum_proto::gateway::v1::{self as pb, TagMissingReason};
use plenum_proto::ocr::v1::{self as ocr, ocr_client::OcrClient};
use plenum_runtime::propagation::inject_trace_context;
use plenum_runtime::status::{internal, invalid_field as bad};
use plenum_vision::decode::{Limits, dimensions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::assign::{self, Fit, Padding, Rect, assign};
use crate::backend::{Backend, overloaded};
use crate::tag_patterns::TagPatterns;

/// Largest `tag_search_padding_px` accepted.
const MAX_PADDING_PX: u32 = 1000;
/// Longest class name accepted in `classes_to_read`.
const MAX_CLASS_NAME: usize = 128;
/// Backend answers can carry a page's worth of boxes and text.
const MAX_BACKEND_RESPONSE_BYTES: usize = 16 << 20;

/// Time kept back from the caller's deadline when OCR is called: enough to join the
/// symbols and send them back with `OCR_TIMED_OUT` when OCR does not answer in time,
/// rather than letting a hung OCR take the whole deadline and the detections with it.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// The detect → read → join pipeline over the two backends.
pub struct Pipeline {
    detector: Backend,
    ocr: Backend,
    limits: Limits,
    /// One place per OCR call the OCR backend takes at a time, reserved before
    /// detection: a page admitted is a page that will be read. Without it, under
    /// overload the detector's work was spent and OCR then shed the page (45% of OK
    /// answers came back with every tag missing at 10x the gateway's concurrency).
    ocr_places: Arc<Semaphore>,
    ocr_places_total: usize,
}

/// Options after validation.
#[derive(Debug, Clone)]
struct Options {
    score_threshold: f32,
    classes_to_read: Vec<String>,
    padding: Padding,
    include_unassigned_text: bool,
}

fn options(options: Option<pb::AnalyzeOptions>) -> Result<Options, Status> {
    let options = options.unwrap_or_default();
    let score = options.score_threshold;
    if !(0.0..1.0).contains(&score) {
        return Err(bad(
            "options.score_threshold",
            format!("must be in [0, 1), got {score}"),
        ));
    }
    for (index, class) in options.classes_to_read.iter().enumerate() {
        if class.trim().is_empty() || class.len() > MAX_CLASS_NAME {
            return Err(bad(
                format!("options.classes_to_read[{index}]"),
                format!("a class name is 1 to {MAX_CLASS_NAME} characters, got `{class}`"),
            ));
        }
    }
    let padding = match options.tag_search_padding_px {
        0 => Padding::Relative,
        px if px <= MAX_PADDING_PX => Padding::Pixels(px as f32),
        px => {
            return Err(bad(
                "options.tag_search_padding_px",
                format!("at most {MAX_PADDING_PX} px, got {px}"),
            ));
        }
    };
    Ok(Options {
        score_threshold: score,
        classes_to_read: options.classes_to_read,
        padding,
        include_unassigned_text: options.include_unassigned_text,
    })
}

/// Refuses class names in `classes_to_read` that the detector's model does not know:
/// such a name would match no symbol, and the caller would see every tag
/// `NOT_REQUESTED` with no hint why. The gateway keeps no class list of its own (the
/// replicas' model decides), so it checks against the one the Detect reply carries; a
/// detector that sends none (one older than the field) is taken at its word.
fn check_classes_to_read(wanted: &[String], known: &[String]) -> Result<(), Status> {
    if known.is_empty() {
        return Ok(());
    }
    let unknown: Vec<String> = wanted
        .iter()
        .filter(|name| !known.contains(name))
        .map(|name| format!("`{name}`"))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(bad(
        "options.classes_to_read",
        format!(
            "unknown class {}; the detector's model knows {}",
            unknown.join(", "),
            known.join(", ")
        ),
    ))
}

/// What the detector answered for the one image sent.
struct Detected {
    detections: Vec<det::Detection>,
    /// Every class the detector's model knows (empty from a detector older than the
    /// field).
    known_classes: Vec<String>,
    /// The model's tag pattern per class, from its manifest (often none).
    tag_patterns: std::collections::HashMap<String, String>,
}

/// A text line as OCR returned it.
struct Line {
    rect: Rect,
    text: String,
    score: f32,
}

fn rect(b: Option<common::Box>) -> Rect {
    let b = b.unwrap_or_default();
    Rect::new(b.x_min, b.y_min, b.x_max, b.y_max)
}

fn to_box(r: Rect) -> common::Box {
    common::Box {
        x_min: r.x_min,
        y_min: r.y_min,
        x_max: r.x_max,
        y_max: r.y_max,
    }
}

/// Pixels painted out around each detected symbol before the page is read: boxes
/// are tight on the ink, and anti-aliased edges would otherwise survive as marks.
const SYMBOL_MASK_MARGIN_PX: f32 = 2.0;

fn grown(r: Rect, by: f32) -> Rect {
    Rect::new(r.x_min - by, r.y_min - by, r.x_max + by, r.y_max + by)
}

/// The floor of the weak detections the detector's verifier may confirm, for a call
/// at `score_threshold`: only at the detector's default (0). A caller who sets a
/// threshold asked for that score and no lower. The verifier was trained on the
/// detector's detections down to this score.
const CONFIRMED_SCORE_THRESHOLD: f32 = 0.1;

fn confirmed_score_threshold(score_threshold: f32) -> f32 {
    if score_threshold == 0.0 {
        CONFIRMED_SCORE_THRESHOLD
    } else {
        0.0
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The status the client gets when detection fails: the detector's trouble in the
/// gateway's words.
fn detector_status(status: Status) -> Status {
    match status.code() {
        Code::InvalidArgument => bad(
            "image",
            format!("the detector refused it: {}", status.message()),
        ),
        Code::ResourceExhausted => overloaded(format!("detector overloaded: {}", status.message())),
        Code::DeadlineExceeded => Status::deadline_exceeded(status.message()),
        Code::Unavailable => Status::unavailable(format!(
            "no detector replica answered: {}",
            status.message()
        )),
        Code::Cancelled => Status::cancelled(status.message()),
        _ => internal("detection", &status),
    }
}

/// Why symbols carry no tag when OCR did not answer.
fn ocr_missing_reason(status: &Status) -> TagMissingReason {
    match status.code() {
        Code::Unavailable => TagMissingReason::OcrUnavailable,
        Code::ResourceExhausted => TagMissingReason::OcrOverloaded,
        Code::DeadlineExceeded => TagMissingReason::OcrTimedOut,
        _ => TagMissingReason::OcrFailed,
    }
}

/// A tag is one token: the spaces a recognizer puts around a hyphen (`SD - 22`) go,
/// and so do the symbol's strokes read as marks at either end when the text
/// detector joined them to the tag (`β MD-50`, `FD-3±`).
pub fn tag_text(raw: &str) -> String {
    let token: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    token
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Slack added around each search region sent as `read_within`: OCR's touch test
/// and the assignment's gap test round differently at the edge, and a line read in
/// vain costs only time.
const READ_WITHIN_SLACK_PX: f32 = 1.0;

/// Which lines OCR should read: `Some(regions)` where only lines touching one could
/// matter (empty = all of them), `None` when no line could, and OCR need not run.
///
/// Only lines touching a symbol's search region can become its tag, so unless the
/// caller wants the page's other text too, OCR reads just those and skips the notes,
/// dimensions and room names away from every symbol (on the dense sample pages OCR
/// took 0.95x its time; BENCHMARKS.md, issue 13).
fn lines_to_read(
    detections: &[det::Detection],
    wants_tag: &[bool],
    options: &Options,
) -> Option<Vec<common::Box>> {
    if options.include_unassigned_text {
        return Some(Vec::new());
    }
    let regions: Vec<common::Box> = detections
        .iter()
        .zip(wants_tag)
        .filter(|(_, wants)| **wants)
        .map(|(d, _)| {
            let region = assign::search_region(&rect(d.r#box), options.padding);
            to_box(grown(region, READ_WITHIN_SLACK_PX))
        })
        .collect();
    (!regions.is_empty()).then_some(regions)
}

/// The symbols as the tag rule sees them, from each one's box and score.
fn rule_symbols(
    boxes_and_scores: impl Iterator<Item = (Option<common::Box>, f32)>,
    wants_tag: &[bool],
) -> Vec<assign::Symbol> {
    boxes_and_scores
        .zip(wants_tag)
        .map(|((b, score), &wants_tag)| assign::Symbol {
            rect: rect(b),
            score,
            wants_tag,
        })
        .collect()
}

/// The tag rule over a page's lines (`classes[s]` is symbol `s`'s class, which ranks
/// lines by its pattern): each line's text as a tag, and which line each symbol takes.
fn tag_rule(
    symbols: &[assign::Symbol],
    classes: &[&str],
    lines: &[Line],
    patterns: &TagPatterns,
    padding: Padding,
) -> (Vec<String>, assign::Assignment) {
    let line_rects: Vec<Rect> = lines.iter().map(|l| l.rect).collect();
    let tags: Vec<String> = lines.iter().map(|l| tag_text(&l.text)).collect();
    let fit = |s: usize, l: usize| patterns.fit(classes[s], &tags[l]);
    let assignment = assign(symbols, &line_rects, padding, fit);
    (tags, assignment)
}

/// Most symbols of one page whose reach is read turned, best detections first: on a
/// drawing whose text the page's reading could not make out at all (a poor scan),
/// every symbol would ask, and reading them all would cost more than the page.
const MAX_TURNED_READS: usize = 16;

/// The search regions of the symbols to read turned: those that want a tag and got
/// none from the page's lines, or got one that misses their class's pattern (by the
/// tag rule as it would run on those lines alone); best detections first, at most
/// [`MAX_TURNED_READS`], together at most half the page's pixels.
fn turned_read_regions(
    detections: &[det::Detection],
    wants_tag: &[bool],
    lines: &[Line],
    patterns: &TagPatterns,
    options: &Options,
    (width, height): (u32, u32),
) -> Vec<common::Box> {
    if options.include_unassigned_text {
        // Every line of the page is wanted, and the turned read adds only some.
        return Vec::new();
    }
    let candidates = rule_symbols(detections.iter().map(|d| (d.r#box, d.score)), wants_tag);
    let classes: Vec<&str> = detections.iter().map(|d| d.class_name.as_str()).collect();
    let (tags, assignment) = tag_rule(&candidates, &classes, lines, patterns, options.padding);
    let fit = |s: usize, l: usize| patterns.fit(classes[s], &tags[l]);
    let mut wanting: Vec<usize> = (0..detections.len())
        .filter(|&s| {
            wants_tag[s]
                && match assignment.tag_of[s] {
                    None => true,
                    Some(l) => fit(s, l) == Fit::Misses,
                }
        })
        .collect();
    wanting.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let page = Rect::new(0.0, 0.0, width as f32, height as f32);
    let mut budget = page.area() / 2.0;
    let mut regions = Vec::new();
    for s in wanting.into_iter().take(MAX_TURNED_READS) {
        let region = assign::search_region(&candidates[s].rect, options.padding);
        let pixels = region.intersection(&page);
        if pixels == 0.0 {
            continue;
        }
        if pixels > budget {
            break;
        }
        budget -= pixels;
        regions.push(to_box(region));
    }
    regions
}

/// A line of the turned read overlapping one the page's reading found this much
/// (intersection over union) is that line read again.
const SAME_LINE_IOU: f32 = 0.5;

/// A line lying at least this share inside another is a piece of it: of a tag the
/// page's text detection broke (`RD` of `RD-84`), or of a line the edge of a region
/// cut through in the turned read (`8` of `CD-365`).
const PIECE_SHARE: f32 = 0.5;

/// Adds to `page` the lines of the turned read that the page's reading did not find,
/// each in place of the pieces of it the page's reading found.
fn add_new_lines(page: &mut Vec<Line>, turned: Vec<Line>) {
    for line in turned {
        if tag_text(&line.text).is_empty() {
            continue;
        }
        let known = page.iter().any(|known| {
            let overlap = line.rect.intersection(&known.rect);
            let union = line.rect.area() + known.rect.area() - overlap;
            let same = union > 0.0 && overlap >= SAME_LINE_IOU * union;
            let piece = line.rect.area() > 0.0 && overlap >= PIECE_SHARE * line.rect.area();
            same || piece
        });
        if known {
            continue;
        }
        page.retain(|known| {
            let area = known.rect.area();
            !(area > 0.0 && line.rect.intersection(&known.rect) >= PIECE_SHARE * area)
        });
        page.push(line);
    }
}

async fn timed<F: Future>(future: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let output = future.await;
    (output, started.elapsed())
}

impl Pipeline {
    /// A pipeline that admits at most `ocr_places` pages at a time: as many as the OCR
    /// backend's concurrency limit lets through.
    pub fn new(detector: Backend, ocr: Backend, limits: Limits, ocr_places: usize) -> Self {
        Self {
            detector,
            ocr,
            limits,
            ocr_places: Arc::new(Semaphore::new(ocr_places.max(1))),
            ocr_places_total: ocr_places.max(1),
        }
    }

    /// A place in OCR for this page, or a fast RESOURCE_EXHAUSTED before any work.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.ocr_places)
            .try_acquire_owned()
            .map_err(|_| {
                self.ocr.count_shed();
                overloaded(format!(
                    "OCR is reading {} pages, its limit; the page was refused before detection",
                    self.ocr_places_total
                ))
            })
    }

    /// One image through the pipeline; `deadline` (the client's) bounds every
    /// backend call and is sent on to the backends.
    pub async fn analyze(
        &self,
        request: pb::AnalyzeRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::AnalyzeResponse, Status> {
        let started = Instant::now();
        let options = options(request.options)?;
        let (width, height) = {
            let _span = tracing::info_span!("decode").entered();
            dimensions(&request.image, &self.limits).map_err(|e| bad("image", e.to_string()))?
        };
        let decoded = started.elapsed();
        let _ocr_place = self.admit()?;

        // Detection first, then the page is read with the symbols painted out: a tag
        // printed beside a symbol otherwise often merges with the symbol's strokes
        // into one text line (`β MD-50`), and a symbol's own ink reads as text. On
        // 30 sample pages (tests/end_to_end.rs) this took exact tags from 0.83 to
        // 0.95, for the price of running the two stages one after the other instead
        // of side by side.
        let image = Arc::new(request.image);
        let (detections, detect_time) =
            timed(self.detect(Arc::clone(&image), options.score_threshold, deadline))
                .instrument(tracing::info_span!("detect"))
                .await;
        let Detected {
            detections,
            known_classes,
            tag_patterns,
        } = detections?;
        // Checked before OCR runs, so a refused request costs no page read.
        check_classes_to_read(&options.classes_to_read, &known_classes)?;
        let symbol_regions: Vec<common::Box> = detections
            .iter()
            .map(|d| to_box(grown(rect(d.r#box), SYMBOL_MASK_MARGIN_PX)))
            .collect();
        let ocr_deadline = deadline.map(|deadline| {
            deadline
                .checked_sub(ANSWER_MARGIN)
                .unwrap_or(deadline)
                .max(Instant::now())
        });
        let wants_tag: Vec<bool> = detections
            .iter()
            .map(|d| {
                options.classes_to_read.is_empty()
                    || options.classes_to_read.contains(&d.class_name)
            })
            .collect();
        let (lines, mut ocr_time) = match lines_to_read(&detections, &wants_tag, &options) {
            Some(read_within) => {
                let read = self.read_text(
                    Arc::clone(&image),
                    symbol_regions.clone(),
                    read_within,
                    Vec::new(),
                    ocr_deadline,
                );
                timed(read).instrument(tracing::info_span!("ocr")).await
            }
            None => (Ok(Vec::new()), Duration::ZERO),
        };
        // Marks with no letter or digit (a lone `±`) are nobody's tag.
        let mut lines = lines.map(|lines| {
            lines
                .into_iter()
                .filter(|line| !tag_text(&line.text).is_empty())
                .collect::<Vec<Line>>()
        });

        let patterns = TagPatterns::new(&tag_patterns);
        // A second read, turned, of the reach of each symbol the page's reading left
        // without a tag that fits: tags written along a column that the page's text
        // detection did not find. What it finds joins the page's lines, and the tag
        // rule below runs once over them all.
        if let Ok(page_lines) = &mut lines {
            let turned = {
                let _span = tracing::info_span!("assign").entered();
                turned_read_regions(
                    &detections,
                    &wants_tag,
                    page_lines,
                    &patterns,
                    &options,
                    (width, height),
                )
            };
            if !turned.is_empty() {
                let read = self.read_text(image, symbol_regions, Vec::new(), turned, ocr_deadline);
                let (read, took) = timed(read)
                    .instrument(tracing::info_span!("ocr_turned"))
                    .await;
                ocr_time += took;
                match read {
                    Ok(found) => add_new_lines(page_lines, found),
                    // The page's own reading stands; only what the turned read would
                    // have added is lost.
                    Err(status) => tracing::warn!(%status, "the turned read failed"),
                }
            }
        }

        let _span = tracing::info_span!("assign").entered();
        let mut symbols: Vec<pb::Symbol> = detections
            .into_iter()
            .map(|d| pb::Symbol {
                r#box: d.r#box,
                class_name: d.class_name,
                score: d.score,
                ..Default::default()
            })
            .collect();
        let mut unassigned_text = Vec::new();
        match lines {
            Ok(lines) => {
                let candidates =
                    rule_symbols(symbols.iter().map(|s| (s.r#box, s.score)), &wants_tag);
                let classes: Vec<&str> = symbols.iter().map(|s| s.class_name.as_str()).collect();
                let (tags, assignment) =
                    tag_rule(&candidates, &classes, &lines, &patterns, options.padding);
                for (((symbol, tag), wants), outbid) in symbols
                    .iter_mut()
                    .zip(&assignment.tag_of)
                    .zip(&wants_tag)
                    .zip(&assignment.outbid)
                {
                    match tag {
                        Some(l) => {
                            let line = &lines[*l];
                            match patterns.repair(&symbol.class_name, &tags[*l]) {
                                Some(repaired) => {
                                    symbol.tag = repaired;
                                    symbol.tag_as_read = tags[*l].clone();
                                }
                                None => symbol.tag = tags[*l].clone(),
                            }
                            symbol.tag_score = line.score;
                            symbol.tag_box = Some(to_box(line.rect));
                        }
                        None if *wants && *outbid => {
                            symbol.set_tag_missing_reason(TagMissingReason::TextTaken);
                        }
                        None if *wants => {
                            symbol.set_tag_missing_reason(TagMissingReason::NoTextNearby);
                        }
                        None => symbol.set_tag_missing_reason(TagMissingReason::NotRequested),
                    }
                }
                if options.include_unassigned_text {
                    unassigned_text = assignment
                        .unassigned
                        .iter()
                        .map(|&l| pb::TextLine {
                            r#box: Some(to_box(lines[l].rect)),
                            text: lines[l].text.clone(),
                            score: lines[l].score,
                        })
                        .collect();
                }
            }
            Err(status) => {
                let reason = ocr_missing_reason(&status);
                tracing::warn!(%status, ?reason, "OCR failed; symbols go without tags");
                for (symbol, wants) in symbols.iter_mut().zip(&wants_tag) {
                    symbol.set_tag_missing_reason(if *wants {
                        reason
                    } else {
                        TagMissingReason::NotRequested
                    });
                }
            }
        }
        Ok(pb::AnalyzeResponse {
            request_id: request.request_id,
            symbols,
            unassigned_text,
            timings: Some(pb::StageTimings {
                decode_us: micros(decoded),
                detect_us: micros(detect_time),
                ocr_us: micros(ocr_time),
                total_us: micros(started.elapsed()),
            }),
            width,
            height,
        })
    }

    async fn detect(
        &self,
        image: Arc<Vec<u8>>,
        score_threshold: f32,
        deadline: Option<Instant>,
    ) -> Result<Detected, Status> {
        let response = self
            .detector
            .call(deadline, |stack, timeout| {
                let image = Vec::clone(&image);
                async move {
                    let mut client = DetectorClient::with_interceptor(stack, inject_trace_context)
                        .max_decoding_message_size(MAX_BACKEND_RESPONSE_BYTES);
                    let mut request = tonic::Request::new(det::DetectRequest {
                        images: vec![image],
                        options: Some(det::DetectOptions {
                            score_threshold,
                            // The pipeline's symbols are what users act on: the
                            // verifier's second look drops most look-alikes, a page
                            // drawn at a larger scale gets a pass at half scale, and a
                            // faded scan is stretched to black on white first. At
                            // the default threshold, the weak detections the verifier
                            // is sure of are symbols too (small or faded ones, mostly).
                            verify: true,
                            large_symbol_pass: true,
                            normalize_contrast: true,
                            confirmed_score_threshold: confirmed_score_threshold(score_threshold),
                            ..Default::default()
                        }),
                    });
                    if let Some(timeout) = timeout {
                        request.set_timeout(timeout);
                    }
                    client
                        .detect(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
                .boxed()
            })
            .await
            .map_err(detector_status)?;
        match <[_; 1]>::try_from(response.results) {
            Ok([result]) => Ok(Detected {
                detections: result.detections,
                known_classes: response.known_classes,
                tag_patterns: response.tag_patterns,
            }),
            Err(results) => {
                tracing::error!(
                    results = results.len(),
                    "the detector answered one image with a result count other than one"
                );
                Err(Status::internal(
                    "the detector's answer did not fit the request",
                ))
            }
        }
    }

    async fn read_text(
        &self,
        image: Arc<Vec<u8>>,
        ignore_regions: Vec<common::Box>,
        read_within: Vec<common::Box>,
        read_turned: Vec<common::Box>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Line>, Status> {
        let response = self
            .ocr
            .call(deadline, |stack, timeout| {
                let image = Vec::clone(&image);
                let ignore_regions = ignore_regions.clone();
                let read_within = read_within.clone();
                let read_turned = read_turned.clone();
                async move {
                    let mut client = OcrClient::with_interceptor(stack, inject_trace_context)
                        .max_decoding_message_size(MAX_BACKEND_RESPONSE_BYTES);
                    // With the angle classifier, as RapidOCR reads by default: a tall
                    // text box is turned 90° counter-clockwise before it is read, so
                    // text written bottom-to-top comes out upside down and only the
                    // classifier's 180° turn makes it readable. Vertical tags the
                    // text detector broke at the hyphen are joined and read whole.
                    let mut request = tonic::Request::new(ocr::ReadTextRequest {
                        image,
                        classify_angle: true,
                        ignore_regions,
                        read_within,
                        join_broken_lines: true,
                        read_turned,
                    });
                    if let Some(timeout) = timeout {
                        request.set_timeout(timeout);
                    }
                    client
                        .read_text(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
                .boxed()
            })
            .await?;
        Ok(response
            .lines
            .into_iter()
            .map(|line| Line {
                rect: rect(line.r#box),
                text: line.text,
                score: line.score,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_to_read_are_checked_against_the_detectors_list_when_it_sends_one() {
        let known = ["damper".to_owned(), "diffuser".to_owned()];
        let wanted = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert!(check_classes_to_read(&wanted(&["damper"]), &known).is_ok());
        assert!(check_classes_to_read(&[], &known).is_ok());
        let refused = check_classes_to_read(&wanted(&["damper", "fan"]), &known).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(
            refused.message(),
            "options.classes_to_read: unknown class `fan`; the detector's model knows damper, diffuser"
        );
        // A detector older than the field sends no list: nothing to check against.
        assert!(check_classes_to_read(&wanted(&["fan"]), &[]).is_ok());
    }

    #[test]
    fn a_tag_is_one_token_without_stray_marks() {
        assert_eq!(tag_text("SD - 22"), "SD-22");
        assert_eq!(tag_text("TS-15 "), "TS-15");
        assert_eq!(tag_text("β MD-50"), "MD-50");
        assert_eq!(tag_text("FD-3±"), "FD-3");
        assert_eq!(tag_text("VAV-203"), "VAV-203");
        assert_eq!(tag_text("±"), "");
    }

    fn detection(class: &str, score: f32, x: f32, y: f32, side: f32) -> det::Detection {
        det::Detection {
            r#box: Some(common::Box {
                x_min: x,
                y_min: y,
                x_max: x + side,
                y_max: y + side,
            }),
            class_name: class.to_owned(),
            score,
        }
    }

    fn line(text: &str, x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> Line {
        Line {
            rect: Rect::new(x_min, y_min, x_max, y_max),
            text: text.to_owned(),
            score: 0.9,
        }
    }

    fn options() -> Options {
        Options {
            score_threshold: 0.25,
            classes_to_read: Vec::new(),
            padding: Padding::Relative,
            include_unassigned_text: false,
        }
    }

    #[test]
    fn only_symbols_left_without_a_fitting_tag_are_read_turned_best_first() {
        let patterns = TagPatterns::new(
            &[("vav_box".to_owned(), r"VAV-\d+".to_owned())]
                .into_iter()
                .collect(),
        );
        let detections = [
            // Tagged as its pattern wants.
            detection("vav_box", 0.9, 100.0, 100.0, 40.0),
            // Only a room name in reach: it misses the pattern.
            detection("vav_box", 0.6, 400.0, 100.0, 40.0),
            // Nothing in reach.
            detection("vav_box", 0.8, 700.0, 100.0, 40.0),
            // Nothing in reach either, but its tags were not asked for.
            detection("vav_box", 0.95, 100.0, 500.0, 40.0),
        ];
        let wants = [true, true, true, false];
        let lines = [
            line("VAV-12", 145.0, 110.0, 190.0, 125.0),
            line("OFFICE", 445.0, 110.0, 500.0, 125.0),
        ];
        let regions = turned_read_regions(
            &detections,
            &wants,
            &lines,
            &patterns,
            &options(),
            (1600, 1200),
        );
        let reach =
            |d: &det::Detection| to_box(assign::search_region(&rect(d.r#box), Padding::Relative));
        assert_eq!(regions, vec![reach(&detections[2]), reach(&detections[1])]);

        // The caller wants every line of the page: no turned read adds to it.
        let all_text = Options {
            include_unassigned_text: true,
            ..options()
        };
        assert!(
            turned_read_regions(
                &detections,
                &wants,
                &lines,
                &patterns,
                &all_text,
                (1600, 1200)
            )
            .is_empty()
        );
        // At most half the page's pixels: a symbol whose reach covers a small page
        // is not read turned there, and is on a large one.
        let large = [detection("vav_box", 0.9, 50.0, 25.0, 100.0)];
        let read = |page| turned_read_regions(&large, &[true], &[], &patterns, &options(), page);
        assert!(read((200, 150)).is_empty());
        assert_eq!(read((1600, 1200)).len(), 1);
    }

    #[test]
    fn the_turned_read_adds_what_the_page_reading_missed_in_place_of_its_pieces() {
        let mut page = vec![
            line("VAV-12", 145.0, 110.0, 190.0, 125.0),
            // The page's reading found only the letters of a tag along a column.
            line("RD", 300.0, 40.0, 312.0, 58.0),
            // A room name the column's tag runs past.
            line("OFFICE", 250.0, 82.0, 330.0, 96.0),
        ];
        add_new_lines(
            &mut page,
            vec![
                // The same line read again, a little off.
                line("VAV-12", 146.0, 111.0, 189.0, 126.0),
                // A tag along a column the page's reading missed.
                line("T-54", 90.0, 40.0, 101.0, 80.0),
                // The whole of the broken tag.
                line("RD-84", 299.0, 39.0, 313.0, 88.0),
                // A piece of a line the page's reading found whole, cut by a
                // region's edge.
                line("12", 175.0, 110.0, 191.0, 125.0),
                // A mark with no letter or digit.
                line("|", 500.0, 40.0, 503.0, 80.0),
            ],
        );
        let texts: Vec<&str> = page.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["VAV-12", "OFFICE", "T-54", "RD-84"]);
    }
}
