//! The detector over real gRPC with the real trained model: parity with
//! Ultralytics' own `predict`, any class count, tiling of large pages, bad input.

mod support;

use plenum_proto::detector::v1::{self as pb, detector_client::DetectorClient};
use serde::Deserialize;
use support::repo;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

async fn start(model: &str) -> (DetectorClient<Channel>, CancellationToken) {
    support::start(model, support::cpu_engine(), 12_000_000).await
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    width: u32,
    height: u32,
    detections: Vec<RefDetection>,
}

#[derive(Deserialize)]
struct RefDetection {
    class_name: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

fn detect_request(images: Vec<Vec<u8>>, tiling: pb::Tiling) -> pb::DetectRequest {
    pb::DetectRequest {
        images,
        options: Some(pb::DetectOptions {
            tiling: tiling as i32,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_equal_ultralytics_predict_on_the_same_torchscript() {
    let dir = repo().join("tests/detector");
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .unwrap();
    let (mut client, shutdown) = start("hvac-yolov8n").await;
    let mut compared = 0;
    for case in &reference.cases {
        let bytes = std::fs::read(dir.join(&case.image)).unwrap();
        let response = client
            .detect(detect_request(vec![bytes], pb::Tiling::Off))
            .await
            .unwrap()
            .into_inner();
        let got = &response.results[0];
        assert_eq!((got.width, got.height), (case.width, case.height));
        assert_eq!(
            got.detections.len(),
            case.detections.len(),
            "{}: {} detections, Ultralytics found {}",
            case.image,
            got.detections.len(),
            case.detections.len()
        );
        for expected in &case.detections {
            // Match each reference detection to ours by class and nearest box.
            let found = got
                .detections
                .iter()
                .filter(|d| d.class_name == expected.class_name)
                .map(|d| {
                    let b = d.r#box.unwrap();
                    let err = [b.x_min, b.y_min, b.x_max, b.y_max]
                        .iter()
                        .zip(expected.bbox)
                        .map(|(a, e)| (a - e).abs())
                        .fold(0.0f32, f32::max);
                    (err, (d.score - expected.score).abs())
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or_else(|| panic!("{}: no {} detection", case.image, expected.class_name));
            assert!(
                found.0 <= 0.5,
                "{}: box off by {} px (> 0.5)",
                case.image,
                found.0
            );
            assert!(
                found.1 <= 1e-3,
                "{}: score off by {} (> 1e-3)",
                case.image,
                found.1
            );
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} detections compared");
    shutdown.cancel();
}

/// The boxes, classes and scores of one image's detections, for comparing answers.
fn found(response: pb::DetectResponse) -> Vec<(String, [f32; 4], f32)> {
    response.results[0]
        .detections
        .iter()
        .map(|d| {
            let b = d.r#box.unwrap();
            (
                d.class_name.clone(),
                [b.x_min, b.y_min, b.x_max, b.y_max],
                d.score,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_scale_reads_the_page_in_one_pass_at_that_scale() {
    let page = std::fs::read(repo().join("tests/pages/page_0000.png")).unwrap();
    let (mut scaled, stop_scaled) =
        support::start_with_pass_scale("hvac-yolov8n", support::cpu_engine(), 12_000_000, 0.8)
            .await;
    let (mut native, stop_native) = start("hvac-yolov8n").await;
    let at_0_8 = found(
        scaled
            .detect(detect_request(vec![page.clone()], pb::Tiling::Auto))
            .await
            .unwrap()
            .into_inner(),
    );
    // 0.8 of the 1600x1200 page is the 1280 letterbox Ultralytics' imgsz=1280 makes.
    let mut letterboxed = detect_request(vec![page.clone()], pb::Tiling::Off);
    letterboxed.options.as_mut().unwrap().input_size = 1280;
    let at_1280 = found(native.detect(letterboxed).await.unwrap().into_inner());
    let at_own_scale = found(
        native
            .detect(detect_request(vec![page], pb::Tiling::Auto))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(at_0_8.len() >= 20, "{} symbols found", at_0_8.len());
    assert_eq!(at_0_8, at_1280);
    assert_ne!(at_0_8, at_own_scale, "the scale changed nothing");
    stop_scaled.cancel();
    stop_native.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_two_classes_works_the_same_way() {
    let (mut client, shutdown) = start("test-2class").await;
    let bytes = std::fs::read(repo().join("tests/detector/images/case0_640x640.png")).unwrap();
    let response = client
        .detect(detect_request(vec![bytes], pb::Tiling::Off))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.known_classes,
        ["diffuser", "damper"],
        "the reply lists the model's classes, which the gateway checks names against"
    );
    for detection in &response.results[0].detections {
        assert!(
            ["diffuser", "damper"].contains(&detection.class_name.as_str()),
            "a 2-class model names only its classes: {}",
            detection.class_name
        );
    }
    let error = client
        .detect(pb::DetectRequest {
            images: vec![vec![0u8; 4]],
            options: Some(pb::DetectOptions {
                classes: vec!["vav_box".into()],
                ..Default::default()
            }),
        })
        .await
        .expect_err("vav_box is not a class of this model");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("options.classes"),
        "{}",
        error.message()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_problem_and_the_service_keeps_serving() {
    let (mut client, shutdown) = start("hvac-yolov8n").await;
    let good = std::fs::read(repo().join("tests/detector/images/case3_333x517.png")).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let cases: Vec<(pb::DetectRequest, &str)> = vec![
        (pb::DetectRequest::default(), "images"),
        (
            detect_request(vec![Vec::new()], pb::Tiling::Auto),
            "images[0]",
        ),
        (
            detect_request(vec![b"not an image at all".to_vec()], pb::Tiling::Auto),
            "images[0]",
        ),
        (
            detect_request(vec![good.clone(), truncated], pb::Tiling::Auto),
            "images[1]",
        ),
        (
            detect_request(vec![good.clone(); 9], pb::Tiling::Auto),
            "images",
        ),
        (
            pb::DetectRequest {
                images: vec![good.clone()],
                options: Some(pb::DetectOptions {
                    score_threshold: 1.5,
                    ..Default::default()
                }),
            },
            "options.score_threshold",
        ),
        (
            pb::DetectRequest {
                images: vec![good.clone()],
                options: Some(pb::DetectOptions {
                    input_size: 100,
                    ..Default::default()
                }),
            },
            "options.input_size",
        ),
        (
            pb::DetectRequest {
                images: vec![good.clone()],
                options: Some(pb::DetectOptions {
                    verify: true,
                    confirmed_score_threshold: 0.25,
                    ..Default::default()
                }),
            },
            "options.confirmed_score_threshold",
        ),
        (
            pb::DetectRequest {
                images: vec![good.clone()],
                options: Some(pb::DetectOptions {
                    confirmed_score_threshold: 0.1,
                    ..Default::default()
                }),
            },
            "options.confirmed_score_threshold",
        ),
    ];
    for (request, field) in cases {
        let error = client.detect(request).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert!(
            error.message().starts_with(field),
            "names `{field}`: {}",
            error.message()
        );
    }
    // A 20000×20000 PNG header is refused from the header, before any decoding.
    let huge = huge_png_header(20_000, 20_000);
    let error = client
        .detect(detect_request(vec![huge], pb::Tiling::Auto))
        .await
        .expect_err("too many pixels");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("images[0]"));

    let ok = client
        .detect(detect_request(vec![good], pb::Tiling::Auto))
        .await;
    assert!(ok.is_ok(), "still serving: {ok:?}");
    shutdown.cancel();
}

/// A PNG signature and IHDR declaring `width × height`, with a valid CRC and no data.
fn huge_png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[derive(Deserialize)]
struct Truth {
    symbols: Vec<TruthSymbol>,
}

#[derive(Deserialize)]
struct TruthSymbol {
    #[serde(rename = "class")]
    class_name: String,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_page_keeps_its_scale_in_one_pass_or_in_tiles_and_finds_its_symbols() {
    let dir = repo().join("tests/pages");
    let (mut client, shutdown) = start("hvac-yolov8n").await;
    for (tiling, expect_tiles) in [(pb::Tiling::Auto, 1), (pb::Tiling::On, 9)] {
        let (mut found, mut total) = (0, 0);
        for index in 0..3 {
            let stem = format!("page_{index:04}");
            let bytes =
                std::fs::read(dir.join(format!("{stem}.png"))).expect("committed sample page");
            let truth: Truth = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap(),
            )
            .unwrap();
            let response = client
                .detect(detect_request(vec![bytes], tiling))
                .await
                .unwrap()
                .into_inner();
            let result = &response.results[0];
            // 1600×1200: automatically one native-scale pass; tiled, 3×3 tiles of 640.
            assert_eq!(result.tiles, expect_tiles, "{tiling:?}");
            for symbol in &truth.symbols {
                total += 1;
                let hit = result.detections.iter().any(|d| {
                    let b = d.r#box.unwrap();
                    d.class_name == symbol.class_name
                        && iou([b.x_min, b.y_min, b.x_max, b.y_max], symbol.bbox) >= 0.5
                });
                found += usize::from(hit);
            }
        }
        let recall = found as f32 / total as f32;
        assert!(
            recall >= 0.9,
            "{tiling:?}: recall {recall:.3} ({found}/{total})"
        );
    }
    shutdown.cancel();
}
