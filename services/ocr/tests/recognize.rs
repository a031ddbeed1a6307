//! Recognize over real gRPC with the converted PP-OCRv4 models: the same texts as
//! RapidOCR 1.4.4 on the same crops, in one call; bad input named; still serving.

use plenum_proto::ocr::v1 as pb;
use serde::Deserialize;
use tonic::Code;

mod support;

use support::{repo, start};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    crop: String,
    text: String,
    score: f32,
    rotated_180: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognize_reads_what_rapidocr_reads() {
    let dir = repo().join("tests/ocr");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let crops: Vec<Vec<u8>> = reference
        .cases
        .iter()
        .map(|case| std::fs::read(dir.join(&case.crop)).unwrap())
        .collect();
    let (mut client, shutdown) = start().await;
    let response = client
        .recognize(pb::RecognizeRequest {
            crops,
            classify_angle: true,
        })
        .await
        .expect("recognized")
        .into_inner();
    assert_eq!(response.results.len(), reference.cases.len());
    let mut worst = 0.0f32;
    for (got, expected) in response.results.iter().zip(&reference.cases) {
        assert_eq!(got.text, expected.text, "{}: text", expected.crop);
        assert_eq!(
            got.rotated_180, expected.rotated_180,
            "{}: angle",
            expected.crop
        );
        worst = worst.max((got.score - expected.score).abs());
    }
    assert!(worst <= 0.01, "worst score difference {worst} > 0.01");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crops_are_named_and_the_service_keeps_serving() {
    let (mut client, shutdown) = start().await;
    let good = std::fs::read(repo().join("tests/ocr/crops/p0_00.png")).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let cases = [
        (vec![], "crops"),
        (vec![Vec::new()], "crops[0]"),
        (
            vec![good.clone(), b"definitely not a PNG".to_vec()],
            "crops[1]",
        ),
        (vec![good.clone(), good.clone(), truncated], "crops[2]"),
        (vec![good.clone(); 65], "crops"),
    ];
    for (crops, field) in cases {
        let error = client
            .recognize(pb::RecognizeRequest {
                crops,
                classify_angle: false,
            })
            .await
            .expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert!(
            error.message().starts_with(field),
            "names `{field}`: {}",
            error.message()
        );
    }
    let read = client
        .recognize(pb::RecognizeRequest {
            crops: vec![good],
            classify_angle: false,
        })
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(read.results[0].text, "D-102");
    shutdown.cancel();
}
