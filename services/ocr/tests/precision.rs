//! One `--precision` for three models: the OCR service asked for int8 runs the models
//! that have an int8 variant at int8 and ppocr-v4-det, which has none (quantized, it
//! lost text regions), at fp32, and reads as before. Until this rule it refused to
//! start.

use std::time::Duration;

use plenum_engine::{DeviceChoice, EngineSettings, ModelManifest, Precision};
use plenum_proto::ocr::v1 as pb;

#[allow(dead_code)] // this file uses start_with only
mod support;

use support::{repo, start_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asked_for_int8_the_service_runs_det_at_fp32_and_reads_the_tag() {
    let det = ModelManifest::load(&repo().join("models/ocr/generated/ppocr-v4-det.toml"))
        .expect("provisioned");
    assert!(
        det.with_precision(Precision::Int8).is_err(),
        "this test is about a model without the variant; det now has one"
    );
    let (mut client, shutdown) = start_with(EngineSettings {
        device: DeviceChoice::Cpu,
        max_queue_delay: Duration::from_millis(2),
        precision: Precision::Int8,
        ..EngineSettings::default()
    })
    .await;
    let read = client
        .read_text(pb::ReadTextRequest {
            image: std::fs::read(repo().join("tests/ocr/read/tag_ahu.png")).unwrap(),
            classify_angle: true,
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
