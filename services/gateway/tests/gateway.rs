//! The real gateway on loopback sockets against test doubles of its backends:
//! joining tags, shedding, deadlines, cancellation, balancing, failover,
//! degradation and bad input.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use plenum_gateway::GatewaySettings;
use plenum_gateway::backend::BackendSettings;
use plenum_proto::detector::v1 as det;
use plenum_proto::gateway::v1::{self as pb, TagMissingReason};
use plenum_proto::ocr::v1 as ocr;
use plenum_vision::decode::Limits;
use support::{Behaviour, FakeServer, Gateway, bx, closed_port_url, png, start_gateway};
use tonic::Code;
use tonic_types::StatusExt;

fn settings(detectors: Vec<String>, ocrs: Vec<String>) -> GatewaySettings {
    GatewaySettings {
        detector: BackendSettings {
            urls: detectors,
            concurrency: 5,
            timeout: Duration::from_secs(10),
            discovery: Default::default(),
            ejection: Default::default(),
        },
        ocr: BackendSettings {
            urls: ocrs,
            concurrency: 5,
            timeout: Duration::from_secs(10),
            discovery: Default::default(),
            ejection: Default::default(),
        },
        limits: Limits {
            max_bytes: 1 << 20,
            max_pixels: 4_000_000,
        },
        max_request_bytes: 4 << 20,
        max_concurrent_analyze: 64,
        stream_in_flight: 3,
        drain_timeout: Duration::from_millis(100),
    }
}

async fn start(settings: GatewaySettings) -> Gateway {
    start_gateway(settings).await
}

fn detection(class: &str, b: (f32, f32, f32, f32)) -> det::Detection {
    det::Detection {
        r#box: bx(b.0, b.1, b.2, b.3),
        class_name: class.into(),
        score: 0.9,
    }
}

fn line(text: &str, b: (f32, f32, f32, f32)) -> ocr::TextLine {
    ocr::TextLine {
        quad: None,
        r#box: bx(b.0, b.1, b.2, b.3),
        text: text.into(),
        score: 0.95,
        direction: ocr::ReadingDirection::LeftToRight as i32,
    }
}

/// A VAV box with its tag to the right, a damper with its tag below, a thermostat
/// with a "T" inside, and a room name far from everything.
fn page() -> (Vec<det::Detection>, Vec<ocr::TextLine>) {
    (
        vec![
            detection("vav_box", (100.0, 100.0, 122.0, 140.0)),
            detection("damper", (300.0, 300.0, 320.0, 320.0)),
            detection("thermostat", (500.0, 100.0, 530.0, 130.0)),
        ],
        vec![
            line("OFFICE 204", (700.0, 500.0, 790.0, 515.0)),
            line("VAV-203", (127.0, 115.0, 175.0, 125.0)),
            line("T", (510.0, 108.0, 520.0, 122.0)),
            line("MD-31", (292.0, 325.0, 328.0, 335.0)),
        ],
    )
}

fn analyze(image: Vec<u8>, options: pb::AnalyzeOptions) -> pb::AnalyzeRequest {
    pb::AnalyzeRequest {
        image,
        options: Some(options),
        request_id: "r1".into(),
    }
}

fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    plenum_runtime::metrics::render(registry)
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn tags_are_joined_to_their_symbols() {
    let (detections, lines) = page();
    let (db, ob) = (Behaviour::new(), Behaviour::new());
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(ob.clone(), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;

    let response = gw
        .client
        .analyze(analyze(
            png(800, 600),
            pb::AnalyzeOptions {
                include_unassigned_text: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.width, response.height), (800, 600));
    assert_eq!(response.request_id, "r1");
    let tags: Vec<(&str, &str, TagMissingReason)> = response
        .symbols
        .iter()
        .map(|s| {
            (
                s.class_name.as_str(),
                s.tag.as_str(),
                s.tag_missing_reason(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            ("vav_box", "VAV-203", TagMissingReason::Unspecified),
            ("damper", "MD-31", TagMissingReason::Unspecified),
            ("thermostat", "", TagMissingReason::NoTextNearby),
        ]
    );
    assert_eq!(response.symbols[0].tag_box, bx(127.0, 115.0, 175.0, 125.0));
    assert!((response.symbols[0].tag_score - 0.95).abs() < 1e-6);
    // The room name is page text; the thermostat's own "T" is neither tag nor text.
    let texts: Vec<&str> = response
        .unassigned_text
        .iter()
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(texts, vec!["OFFICE 204"]);
    let timings = response.timings.unwrap();
    assert!(timings.total_us >= timings.detect_us.max(timings.ocr_us));
    // One call to each backend, with no deadline when the client gave none.
    assert_eq!((db.calls(), ob.calls()), (1, 1));
    assert_eq!(*db.last_timeout.lock().unwrap(), None);
    // The detector was asked for its verifier's second look at every symbol and, the
    // threshold being left at the default, to keep the weak detections it confirms.
    assert!(db.last_verify.load(Ordering::SeqCst));
    assert_eq!(*db.last_confirmed_score_threshold.lock().unwrap(), 0.1);
    // OCR was told to paint out the three symbols before reading, and to read every
    // line: the caller wants the page's other text too.
    assert_eq!(ob.last_ignore_regions.load(Ordering::SeqCst), 3);
    assert!(ob.last_read_within.lock().unwrap().is_empty());
    // ... and to join vertical tags its text detector broke in two.
    assert!(ob.last_join_broken_lines.load(Ordering::SeqCst));
    assert_eq!(
        metric(
            &gw.registry,
            "plenum_gateway_analyze_requests_total",
            &[("code", "Ok")]
        ),
        1.0
    );

    // A caller who sets a threshold gets nothing scoring under it.
    gw.client
        .analyze(analyze(
            png(800, 600),
            pb::AnalyzeOptions {
                score_threshold: 0.3,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(*db.last_confirmed_score_threshold.lock().unwrap(), 0.0);
}

/// A tag OCR misread by one look-alike character is corrected when the corrected
/// tag fits its class's pattern, and says what was read; a class without a pattern
/// keeps what was read.
#[tokio::test]
async fn a_tag_one_slip_from_its_class_pattern_is_corrected_saying_what_was_read() {
    let (detections, mut lines) = page();
    lines[1].text = "VAV-2O3".into();
    lines[3].text = "MO-31".into();
    let db = Behaviour::new();
    db.tag_patterns
        .lock()
        .unwrap()
        .insert("vav_box".into(), r"VAV-\d+".into());
    let detector = FakeServer::detector(db, detections);
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let response = gw
        .client
        .analyze(analyze(png(800, 600), pb::AnalyzeOptions::default()))
        .await
        .unwrap()
        .into_inner();
    let tags: Vec<(&str, &str)> = response
        .symbols
        .iter()
        .map(|s| (s.tag.as_str(), s.tag_as_read.as_str()))
        .collect();
    assert_eq!(tags, vec![("VAV-203", "VAV-2O3"), ("MO-31", ""), ("", "")]);
}

/// The sample page analyzed asking for the tags of `classes` only; the OCR fake's
/// record comes back with the answer.
async fn analyze_reading(classes: &[&str]) -> (pb::AnalyzeResponse, Arc<Behaviour>) {
    let (detections, lines) = page();
    let detector = FakeServer::detector(Behaviour::new(), detections);
    let ob = Behaviour::new();
    let ocr = FakeServer::ocr(Arc::clone(&ob), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let response = gw
        .client
        .analyze(analyze(
            png(800, 600),
            pb::AnalyzeOptions {
                classes_to_read: classes.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (response, ob)
}

#[tokio::test]
async fn only_the_classes_asked_for_are_read_and_unassigned_text_is_opt_in() {
    let (response, ob) = analyze_reading(&["damper"]).await;
    assert_eq!(response.symbols[0].tag, "");
    assert_eq!(
        response.symbols[0].tag_missing_reason(),
        TagMissingReason::NotRequested
    );
    assert_eq!(response.symbols[1].tag, "MD-31");
    assert!(response.unassigned_text.is_empty());
    // OCR reads only the lines within the damper's reach: its 20 px box grown by 1.6
    // times its side (32 px) and a pixel of slack.
    assert_eq!(
        *ob.last_read_within.lock().unwrap(),
        vec![bx(267.0, 267.0, 353.0, 353.0).unwrap()]
    );
}

#[tokio::test]
async fn a_page_with_no_symbol_wanting_a_tag_is_not_sent_to_ocr() {
    let (response, ob) = analyze_reading(&["diffuser"]).await;
    assert_eq!(response.symbols.len(), 3);
    for symbol in &response.symbols {
        assert_eq!(symbol.tag_missing_reason(), TagMissingReason::NotRequested);
    }
    assert_eq!(ob.calls(), 0, "no line could be a tag, so none was read");
    assert_eq!(response.timings.unwrap().ocr_us, 0);
}

#[tokio::test]
async fn the_call_past_the_backend_limit_is_shed_not_queued() {
    let (detections, lines) = page();
    let db = Behaviour::new();
    db.set_delay(Duration::from_secs(5));
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let mut config = settings(vec![detector.url()], vec![ocr.url()]);
    config.detector.concurrency = 2;
    let gw = start(config).await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = gw.client.clone();
        held.push(tokio::spawn(async move {
            client
                .analyze(analyze(png(64, 64), Default::default()))
                .await
        }));
    }
    db.wait_in_flight(2).await;
    let started = Instant::now();
    let status = gw
        .client
        .clone()
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "shed at once");
    assert!(
        status.get_details_retry_info().is_some(),
        "with a retry hint"
    );
    assert_eq!(db.calls(), 2, "the third call never reached the detector");
    assert_eq!(
        metric(
            &gw.registry,
            "plenum_gateway_backend_shed_total",
            &[("backend", "detector")]
        ),
        1.0
    );
    for call in held {
        call.abort();
    }
}

#[tokio::test]
async fn the_gateway_wide_limit_refuses_at_once_with_a_retry_hint() {
    let (detections, lines) = page();
    let db = Behaviour::new();
    db.set_delay(Duration::from_secs(5));
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let mut config = settings(vec![detector.url()], vec![ocr.url()]);
    config.max_concurrent_analyze = 1;
    let gw = start(config).await;
    let mut client = gw.client.clone();
    let held = tokio::spawn(async move {
        client
            .analyze(analyze(png(64, 64), Default::default()))
            .await
    });
    db.wait_in_flight(1).await;
    let status = gw
        .client
        .clone()
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.get_details_retry_info().is_some());
    held.abort();
}

#[tokio::test]
async fn the_client_deadline_bounds_the_backends_and_maps_to_deadline_exceeded() {
    let (detections, lines) = page();
    let db = Behaviour::new();
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    // One call first, so connecting (and the gateway's start-up work) is not
    // part of the 5 ms between the client's clock and the gateway's.
    gw.client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap();
    db.set_delay(Duration::from_secs(5));
    let mut request = tonic::Request::new(analyze(png(64, 64), Default::default()));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = gw.client.analyze(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The detector was told how long it had, and its call was dropped at the deadline.
    let sent = db
        .last_timeout
        .lock()
        .unwrap()
        .clone()
        .expect("grpc-timeout sent on");
    let micros: u64 = sent[..sent.len() - 1].parse().unwrap();
    assert!(sent.ends_with('u') && micros <= 300_000, "{sent}");
    db.wait_cancelled(1).await;
}

#[tokio::test]
async fn a_backend_timeout_is_deadline_exceeded_and_an_ocr_timeout_degrades() {
    let (detections, lines) = page();
    let (db, ob) = (Behaviour::new(), Behaviour::new());
    ob.set_delay(Duration::from_secs(5));
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(ob.clone(), lines);
    let mut config = settings(vec![detector.url()], vec![ocr.url()]);
    config.ocr.timeout = Duration::from_millis(200);
    config.detector.timeout = Duration::from_millis(200);
    let mut gw = start(config).await;
    let response = gw
        .client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        response
            .symbols
            .iter()
            .all(|s| s.tag.is_empty() && s.tag_missing_reason() == TagMissingReason::OcrTimedOut)
    );
    db.set_delay(Duration::from_secs(5));
    let status = gw
        .client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn a_hung_ocr_leaves_the_caller_its_symbols_within_the_deadline() {
    let (detections, lines) = page();
    let ob = Behaviour::new();
    // Far longer than the caller's deadline, and than the gateway's OCR timeout is not.
    ob.set_delay(Duration::from_secs(30));
    let detector = FakeServer::detector(Behaviour::new(), detections);
    let ocr = FakeServer::ocr(ob.clone(), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let mut request = tonic::Request::new(analyze(png(64, 64), Default::default()));
    request.set_timeout(Duration::from_millis(800));
    let started = Instant::now();
    let response = gw
        .client
        .analyze(request)
        .await
        .expect("the symbols come back, not DEADLINE_EXCEEDED")
        .into_inner();
    assert!(started.elapsed() < Duration::from_millis(800));
    assert_eq!(response.symbols.len(), 3);
    assert!(
        response
            .symbols
            .iter()
            .all(|s| s.tag.is_empty() && s.tag_missing_reason() == TagMissingReason::OcrTimedOut),
        "{:?}",
        response.symbols
    );
    // OCR was told less than the caller's deadline: the gateway kept its margin.
    let sent = ob
        .last_timeout
        .lock()
        .unwrap()
        .clone()
        .expect("grpc-timeout sent on");
    let micros: u64 = sent[..sent.len() - 1].parse().unwrap();
    let limit = 800_000 - plenum_gateway::pipeline::ANSWER_MARGIN.as_micros() as u64;
    assert!(sent.ends_with('u') && micros <= limit, "{sent}");
}

#[tokio::test]
async fn a_page_ocr_has_no_room_for_is_refused_before_detection() {
    let (detections, lines) = page();
    let (db, ob) = (Behaviour::new(), Behaviour::new());
    ob.set_delay(Duration::from_secs(1));
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(ob.clone(), lines);
    let mut config = settings(vec![detector.url()], vec![ocr.url()]);
    config.ocr.concurrency = 1;
    let gw = start(config).await;
    let mut client = gw.client.clone();
    let first = tokio::spawn(async move {
        client
            .analyze(analyze(png(64, 64), Default::default()))
            .await
    });
    ob.wait_in_flight(1).await;
    let started = Instant::now();
    let status = gw
        .client
        .clone()
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert!(
        status.get_details_retry_info().is_some(),
        "with a retry hint"
    );
    assert_eq!(db.calls(), 1, "the refused page cost the detector nothing");
    // The page that was admitted is read.
    let response = first.await.unwrap().unwrap().into_inner();
    assert!(response.symbols.iter().any(|s| s.tag == "VAV-203"));
    assert!(
        response
            .symbols
            .iter()
            .all(|s| s.tag_missing_reason() != TagMissingReason::OcrOverloaded)
    );
    assert_eq!(
        metric(
            &gw.registry,
            "plenum_gateway_backend_shed_total",
            &[("backend", "ocr")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_backend_calls() {
    let (detections, lines) = page();
    let (db, ob) = (Behaviour::new(), Behaviour::new());
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(ob.clone(), lines);
    let gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let call = |gw: &Gateway| {
        let mut client = gw.client.clone();
        tokio::spawn(async move {
            client
                .analyze(analyze(png(64, 64), Default::default()))
                .await
        })
    };

    // Gone while the detector works: its call is dropped, OCR is never asked.
    db.set_delay(Duration::from_secs(30));
    let first = call(&gw);
    db.wait_in_flight(1).await;
    first.abort();
    db.wait_cancelled(1).await;
    assert_eq!(ob.calls(), 0);

    // Gone while OCR reads the page: the OCR call is dropped.
    db.set_delay(Duration::ZERO);
    ob.set_delay(Duration::from_secs(30));
    let second = call(&gw);
    ob.wait_in_flight(1).await;
    second.abort();
    ob.wait_cancelled(1).await;
}

#[tokio::test]
async fn load_spreads_across_replicas() {
    let (detections, lines) = page();
    let behaviours: Vec<Arc<Behaviour>> = (0..3).map(|_| Behaviour::new()).collect();
    for b in &behaviours {
        b.set_delay(Duration::from_millis(5));
    }
    let detectors: Vec<FakeServer> = behaviours
        .iter()
        .map(|b| FakeServer::detector(b.clone(), detections.clone()))
        .collect();
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let gw = start(settings(
        detectors.iter().map(FakeServer::url).collect(),
        vec![ocr.url()],
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = gw.client.clone();
        calls.push(tokio::spawn(async move {
            for _ in 0..30 {
                client
                    .analyze(analyze(png(64, 64), Default::default()))
                    .await
                    .unwrap();
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let counts: Vec<usize> = behaviours.iter().map(|b| b.calls()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 120);
    assert!(counts.iter().all(|&c| c >= 15), "uneven spread: {counts:?}");
}

#[tokio::test]
async fn calls_move_to_the_other_replicas_when_one_is_killed() {
    let (detections, lines) = page();
    let behaviours: Vec<Arc<Behaviour>> = (0..2).map(|_| Behaviour::new()).collect();
    for b in &behaviours {
        b.set_delay(Duration::from_millis(5));
    }
    let mut detectors: Vec<FakeServer> = behaviours
        .iter()
        .map(|b| FakeServer::detector(b.clone(), detections.clone()))
        .collect();
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let gw = start(settings(
        detectors.iter().map(FakeServer::url).collect(),
        vec![ocr.url()],
    ))
    .await;
    let run = |n: usize| {
        let gw_client = gw.client.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let mut client = gw_client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut failures = 0;
                    for _ in 0..n {
                        if client
                            .analyze(analyze(png(64, 64), Default::default()))
                            .await
                            .is_err()
                        {
                            failures += 1;
                        }
                    }
                    failures
                }));
            }
            let mut failures = 0;
            for task in tasks {
                failures += task.await.unwrap();
            }
            failures
        }
    };
    // Kill replica 0 while calls are in flight on it.
    let load = tokio::spawn(run(25));
    behaviours[0].wait_in_flight(1).await;
    detectors[0].kill();
    let failures_during = load.await.unwrap();
    let before = behaviours[1].calls();
    let failures_after = run(10).await;
    assert_eq!(failures_after, 0, "every call after the kill succeeds");
    assert_eq!(
        behaviours[1].calls() - before,
        40,
        "all of them on replica 1"
    );
    // Calls cut by the kill are retried once on the other replica.
    assert!(
        failures_during <= 1,
        "{failures_during} calls failed during the kill"
    );
}

#[tokio::test]
async fn an_ocr_outage_gives_symbols_without_tags_saying_why() {
    let (detections, lines) = page();
    let detector = FakeServer::detector(Behaviour::new(), detections);
    let mut gw = start(settings(vec![detector.url()], vec![closed_port_url()])).await;
    let response = gw
        .client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.symbols.len(), 3);
    for symbol in &response.symbols {
        assert_eq!(symbol.tag, "");
        assert_eq!(
            symbol.tag_missing_reason(),
            TagMissingReason::OcrUnavailable
        );
    }

    // OCR up but refusing work: overloaded, still not a failed call.
    let ob = Behaviour::new();
    ob.fail_with(Some(Code::ResourceExhausted));
    let ocr = FakeServer::ocr(ob, lines);
    let detector = FakeServer::detector(Behaviour::new(), page().0);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let response = gw
        .client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        response
            .symbols
            .iter()
            .all(|s| s.tag_missing_reason() == TagMissingReason::OcrOverloaded)
    );
}

#[tokio::test]
async fn a_detector_outage_is_unavailable() {
    let ocr = FakeServer::ocr(Behaviour::new(), page().1);
    let mut gw = start(settings(vec![closed_port_url()], vec![ocr.url()])).await;
    let started = Instant::now();
    let status = gw
        .client
        .analyze(analyze(png(64, 64), Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let detector = FakeServer::detector(Behaviour::new(), page().0);
    let ocr = FakeServer::ocr(Behaviour::new(), page().1);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    // A PNG header declaring 3000 x 3000 (over 4 Mpx) followed by nothing.
    let mut huge = png(1, 1);
    huge[16..20].copy_from_slice(&3000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&3000u32.to_be_bytes());
    let cases: Vec<(pb::AnalyzeRequest, &str)> = vec![
        (analyze(vec![], Default::default()), "image"),
        (
            analyze(b"hello, not an image".to_vec(), Default::default()),
            "image",
        ),
        (analyze(huge, Default::default()), "image"),
        (analyze(vec![0x89; 2 << 20], Default::default()), "image"),
        (
            analyze(
                png(8, 8),
                pb::AnalyzeOptions {
                    score_threshold: f32::NAN,
                    ..Default::default()
                },
            ),
            "options.score_threshold",
        ),
        (
            analyze(
                png(8, 8),
                pb::AnalyzeOptions {
                    score_threshold: 1.5,
                    ..Default::default()
                },
            ),
            "options.score_threshold",
        ),
        (
            analyze(
                png(8, 8),
                pb::AnalyzeOptions {
                    score_threshold: -0.1,
                    ..Default::default()
                },
            ),
            "options.score_threshold",
        ),
        (
            analyze(
                png(8, 8),
                pb::AnalyzeOptions {
                    classes_to_read: vec!["damper".into(), " ".into()],
                    ..Default::default()
                },
            ),
            "options.classes_to_read[1]",
        ),
        (
            analyze(
                png(8, 8),
                pb::AnalyzeOptions {
                    tag_search_padding_px: 5000,
                    ..Default::default()
                },
            ),
            "options.tag_search_padding_px",
        ),
    ];
    for (request, field) in cases {
        let status = gw.client.analyze(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(violations.field_violations[0].field, field, "{status:?}");
    }
    // A request over the gRPC size limit is refused by tonic before it is decoded.
    let status = gw
        .client
        .analyze(analyze(vec![0; 5 << 20], Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn a_rotated_jpeg_reports_the_displayed_size_its_boxes_are_in() {
    let detector = FakeServer::detector(Behaviour::new(), page().0);
    let ocr = FakeServer::ocr(Behaviour::new(), page().1);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let response = gw
        .client
        .analyze(analyze(
            support::jpeg_quarter_turned(800, 600),
            Default::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.width, response.height), (600, 800));
}

#[tokio::test]
async fn an_unknown_class_to_read_is_refused_naming_it_and_the_known_ones() {
    let ocr_behaviour = Behaviour::new();
    let detector = FakeServer::detector(Behaviour::new(), page().0);
    let ocr = FakeServer::ocr(Arc::clone(&ocr_behaviour), page().1);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let status = gw
        .client
        .analyze(analyze(
            png(800, 600),
            pb::AnalyzeOptions {
                classes_to_read: vec!["damper".into(), "sprinkler".into(), "Damper".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status.get_details_bad_request().expect("BadRequest detail");
    let violation = &violations.field_violations[0];
    assert_eq!(violation.field, "options.classes_to_read", "{status:?}");
    assert!(
        violation.description.contains("`sprinkler`, `Damper`")
            && !violation.description.contains("`damper`"),
        "names exactly the unknown ones: {status:?}"
    );
    for known in support::KNOWN_CLASSES {
        assert!(
            violation.description.contains(known),
            "names {known}: {status:?}"
        );
    }
    assert_eq!(ocr_behaviour.calls(), 0, "refused before the page is read");
    // The gateway keeps serving, and known names are accepted.
    gw.client
        .analyze(analyze(
            png(800, 600),
            pb::AnalyzeOptions {
                classes_to_read: vec!["damper".into(), "diffuser".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_answers_in_order_with_bounded_work_in_flight() {
    let (detections, lines) = page();
    let db = Behaviour::new();
    db.set_delay(Duration::from_millis(20));
    let detector = FakeServer::detector(db.clone(), detections);
    let ocr = FakeServer::ocr(Behaviour::new(), lines);
    let mut gw = start(settings(vec![detector.url()], vec![ocr.url()])).await;
    let requests: Vec<pb::AnalyzeRequest> = (0..12)
        .map(|i| pb::AnalyzeRequest {
            image: png(32 + i, 32),
            options: None,
            request_id: format!("img-{i}"),
        })
        .collect();
    let mut results = gw
        .client
        .analyze_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(result) = results.message().await.unwrap() {
        assert_eq!(result.symbols[0].tag, "VAV-203");
        assert_eq!(result.width, 32 + ids.len() as u32);
        ids.push(result.request_id);
    }
    let expected: Vec<String> = (0..12).map(|i| format!("img-{i}")).collect();
    assert_eq!(ids, expected);
    let most = db.max_in_flight.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} images in work at once, the window is 3");
    assert!(most >= 2, "the window was used");

    // A bad image ends the stream with its status, naming the request.
    let requests = vec![
        analyze(png(8, 8), Default::default()),
        pb::AnalyzeRequest {
            image: vec![1, 2, 3],
            options: None,
            request_id: "bad".into(),
        },
    ];
    let mut results = gw
        .client
        .analyze_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert!(results.message().await.unwrap().is_some());
    let status = results.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("bad"), "{status:?}");
}
