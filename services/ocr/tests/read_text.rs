//! ReadText over real gRPC with the converted PP-OCRv4 models: the same lines, boxes
//! and scores as RapidOCR 1.4.4 (`RapidOCR()(path)`) on rendered HVAC labels and a
//! drawing sheet (tests/ocr/make_read_reference.py); bad pages named; still serving.

use std::path::PathBuf;

use image::ImageEncoder;
use plenum_proto::ocr::v1::{self as pb, ocr_client::OcrClient};
use serde::Deserialize;
use tonic::Code;
use tonic::transport::Channel;

mod support;

use support::{repo, start};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    width: u32,
    height: u32,
    lines: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "box")]
    quad: Vec<[f32; 2]>,
    text: String,
    score: f32,
}

/// RapidOCR's box corners are whole pixels (up to its ratio mapping); ours follow the
/// same arithmetic. A corner may move by a pixel where the converted detector's map
/// crosses the 0.3 threshold on a different pixel than ONNX Runtime's.
const BOX_TOLERANCE_PX: f32 = 2.0;
const SCORE_TOLERANCE: f32 = 0.01;

/// ReadText on the image at `path` as RapidOCR reads by default: with the angle
/// classifier, nothing painted out, every line read, none joined.
async fn read(client: &mut OcrClient<Channel>, path: PathBuf) -> pb::ReadTextResponse {
    client
        .read_text(pb::ReadTextRequest {
            image: std::fs::read(path).unwrap(),
            classify_angle: true,
            ignore_regions: vec![],
            read_within: vec![],
            join_broken_lines: false,
            read_turned: vec![],
        })
        .await
        .expect("read")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_text_reads_what_rapidocr_reads() {
    let dir = repo().join("tests/ocr");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("read/reference.json")).unwrap())
            .unwrap();
    let (mut client, shutdown) = start().await;
    let mut table = vec![format!(
        "{:<26} {:>5} {:>5} {:>12} {:>13} {:>15}",
        "image", "lines", "ours", "texts equal", "max box err", "max score diff"
    )];
    let mut failures = Vec::new();
    for case in &reference.cases {
        let response = read(&mut client, dir.join(&case.image)).await;
        assert_eq!((response.width, response.height), (case.width, case.height));
        let texts_equal = response.lines.len() == case.lines.len()
            && response
                .lines
                .iter()
                .zip(&case.lines)
                .all(|(a, b)| a.text == b.text);
        let (mut box_err, mut score_diff) = (0f32, 0f32);
        for (got, expected) in response.lines.iter().zip(&case.lines) {
            let points = &got.quad.as_ref().expect("quad").points;
            assert_eq!(points.len(), 4);
            for (p, e) in points.iter().zip(&expected.quad) {
                box_err = box_err.max((p.x - e[0]).abs()).max((p.y - e[1]).abs());
            }
            score_diff = score_diff.max((got.score - expected.score).abs());
            let b = got.r#box.as_ref().expect("box");
            assert!(
                points
                    .iter()
                    .all(|p| p.x >= b.x_min && p.x <= b.x_max && p.y >= b.y_min && p.y <= b.y_max)
            );
        }
        table.push(format!(
            "{:<26} {:>5} {:>5} {:>12} {:>13.2} {:>15.6}",
            case.image,
            case.lines.len(),
            response.lines.len(),
            if texts_equal { "yes" } else { "NO" },
            box_err,
            score_diff
        ));
        if !texts_equal || box_err > BOX_TOLERANCE_PX || score_diff > SCORE_TOLERANCE {
            let ours: Vec<(&str, Vec<(f32, f32)>)> = response
                .lines
                .iter()
                .map(|l| {
                    (
                        l.text.as_str(),
                        l.quad
                            .as_ref()
                            .unwrap()
                            .points
                            .iter()
                            .map(|p| (p.x, p.y))
                            .collect(),
                    )
                })
                .collect();
            let theirs: Vec<(&str, &Vec<[f32; 2]>)> = case
                .lines
                .iter()
                .map(|l| (l.text.as_str(), &l.quad))
                .collect();
            failures.push(format!(
                "{}:\n  ours   {ours:?}\n  theirs {theirs:?}",
                case.image
            ));
        }
    }
    println!(
        "ReadText vs RapidOCR 1.4.4 (classify_angle = true)\n{}",
        table.join("\n")
    );
    shutdown.cancel();
    assert!(
        failures.is_empty(),
        "not at parity:\n{}",
        failures.join("\n")
    );
}

/// Each line says which way its text runs across the page (the gateway joins a
/// vertical tag the text detector broke in two in that order): labels turned 90°
/// clockwise run top to bottom, 90° counter-clockwise bottom to top, 180° right to
/// left (tests/ocr/make_read_reference.py turns them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_line_says_which_way_its_text_runs() {
    use pb::ReadingDirection as Way;
    let (mut client, shutdown) = start().await;
    for (image, text, way) in [
        ("tag_ahu.png", "AHU-1", Way::LeftToRight),
        ("tag_cw.png", "VAV-117", Way::TopToBottom),
        ("tag_ccw.png", "SD-42", Way::BottomToTop),
        ("tag_180.png", "FD-305", Way::RightToLeft),
    ] {
        let response = read(&mut client, repo().join("tests/ocr/read").join(image)).await;
        let lines: Vec<(&str, Way)> = response
            .lines
            .iter()
            .map(|l| (l.text.as_str(), l.direction()))
            .collect();
        assert_eq!(lines, vec![(text, way)], "{image}");
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pages_are_named_and_the_service_keeps_serving() {
    let (mut client, shutdown) = start().await;
    let good = std::fs::read(repo().join("tests/ocr/read/tag_ahu.png")).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    // A well-formed PNG header claiming 20000 x 20000: refused from the header.
    let mut ihdr = 20_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.extend(chunk(b"IHDR", &ihdr));
    huge.extend(chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    ));
    huge.extend(chunk(b"IEND", &[]));
    // A 2000 x 1 strip: RapidOCR would scale it 30x and letterbox it to 60000 x 15000.
    let mut strip = Vec::new();
    image::codecs::png::PngEncoder::new(&mut strip)
        .write_image(&[255; 6000], 2000, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    for (image, what) in [
        (strip, "a strip that would blow up"),
        (Vec::new(), "empty"),
        (b"definitely not a PNG".to_vec(), "not an image"),
        (truncated, "truncated"),
        (huge, "over the pixel limit"),
    ] {
        let error = client
            .read_text(pb::ReadTextRequest {
                image,
                classify_angle: false,
                ignore_regions: vec![],
                read_within: vec![],
                join_broken_lines: false,
                read_turned: vec![],
            })
            .await
            .expect_err(what);
        assert_eq!(error.code(), Code::InvalidArgument, "{what}: {error:?}");
        assert!(
            error.message().starts_with("image"),
            "{what} names `image`: {}",
            error.message()
        );
        if what == "over the pixel limit" {
            assert!(
                error.message().contains("20000x20000"),
                "{}",
                error.message()
            );
        }
    }
    let read = client
        .read_text(pb::ReadTextRequest {
            image: good,
            classify_angle: false,
            ignore_regions: vec![],
            read_within: vec![],
            join_broken_lines: false,
            read_turned: vec![],
        })
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(read.lines.len(), 1);
    assert_eq!(read.lines[0].text, "AHU-1");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_black_ink_on_transparency_reads_as_ink_on_white() {
    let (mut client, shutdown) = start().await;
    // tag_ahu.png as a vector export would give it: black ink, its darkness in alpha,
    // the paper transparent. Composited onto white it is the original page again;
    // with the alpha dropped it is all black and reads as nothing.
    let page = image::open(repo().join("tests/ocr/read/tag_ahu.png"))
        .unwrap()
        .into_luma8();
    let rgba: Vec<u8> = page
        .as_raw()
        .iter()
        .flat_map(|&grey| [0, 0, 0, 255 - grey])
        .collect();
    let mut transparent = Vec::new();
    image::codecs::png::PngEncoder::new(&mut transparent)
        .write_image(
            &rgba,
            page.width(),
            page.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    let read = client
        .read_text(pb::ReadTextRequest {
            image: transparent,
            classify_angle: false,
            ignore_regions: vec![],
            read_within: vec![],
            join_broken_lines: false,
            read_turned: vec![],
        })
        .await
        .expect("read")
        .into_inner();
    let texts: Vec<&str> = read.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["AHU-1"]);
    shutdown.cancel();
}

/// A PNG chunk: length, kind, data, CRC-32 of kind and data.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &byte in kind.iter().chain(data) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut out = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}
