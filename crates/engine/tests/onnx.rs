//! ONNX Runtime for the OCR models (models/provision_onnx.py): RapidOCR's own ONNX files
//! answer what the TorchScript conversions answer, and `--model-format auto` runs ONNX
//! Runtime only where provisioning timed it fastest and only for the TorchScript file it
//! was checked against.

mod runtimes;

use std::path::Path;

use plenum_engine::ModelManifest;
use plenum_engine::aoti::ModelFormat;
use plenum_engine::onnx::{OnnxManifest, load_session};
use plenum_engine::tch::{self, CModule, Device, Tensor};
use runtimes::{
    assert_answers_as_torchscript, copied, engine, manifest, max_diff, new_shapes, random, scratch,
};

#[test]
fn every_ocr_model_answers_on_onnx_runtime_what_its_torchscript_answers() {
    for (name, shapes) in new_shapes() {
        let (mut session, _) = load_session(&manifest(name))
            .expect("the sidecar is current and the library loads")
            .unwrap_or_else(|| panic!("{name}: no ONNX sidecar; run `make setup`"));
        assert_answers_as_torchscript(name, &shapes, |input| {
            session.run(input).expect("ONNX Runtime answers")
        });
    }
}

/// A copy of the angle classifier and its ONNX file in `scratch` (no AOTInductor
/// package: the choice is ONNX Runtime or TorchScript), the ONNX sidecar rewritten by
/// `edit`.
fn copied_classifier(scratch: &Path, edit: impl Fn(String) -> String) -> ModelManifest {
    let sidecar = OnnxManifest::beside(&manifest("ppocr-mobile-v2-cls"))
        .unwrap()
        .unwrap();
    copied(
        scratch,
        "ppocr-mobile-v2-cls",
        "onnx",
        &sidecar.path(),
        edit,
    )
}

/// Sets the sidecar's timings: ONNX Runtime's and TorchScript's medians.
fn timed(onnxruntime_ms: f64, torchscript_ms: f64) -> impl Fn(String) -> String {
    move |text| {
        text.lines()
            .map(|line| {
                if line.starts_with("onnxruntime_ms = ") {
                    format!("onnxruntime_ms = {onnxruntime_ms}")
                } else if line.starts_with("torchscript_ms = ") {
                    format!("torchscript_ms = {torchscript_ms}")
                } else if line.starts_with("package_") {
                    String::new()
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the engine answers for `input`, and whether that is exactly TorchScript's or
/// exactly ONNX Runtime's answer (the two differ in the last bits on random input).
async fn who_answered(
    manifest: &ModelManifest,
    format: ModelFormat,
    input: &Tensor,
) -> &'static str {
    let got = engine(manifest.clone(), format)
        .await
        .infer(input.shallow_clone())
        .await
        .expect("answer");
    let module = CModule::load_on_device(manifest.model_path(), Device::Cpu).unwrap();
    let torchscript = tch::no_grad(|| module.forward_ts(&[input]).unwrap());
    let (mut session, _) = load_session(manifest).unwrap().unwrap();
    let onnxruntime = session.run(input).unwrap();
    assert!(
        max_diff(&torchscript, &onnxruntime) > 0.0,
        "the runtimes must differ on this input for the test to tell them apart"
    );
    if max_diff(&got, &torchscript) == 0.0 {
        "torchscript"
    } else if max_diff(&got, &onnxruntime) == 0.0 {
        "onnxruntime"
    } else {
        "neither"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_runs_onnx_runtime_only_where_it_was_timed_fastest() {
    let dir = scratch("fastest");
    let input = random(&[5, 3, 48, 192], 11);

    let faster = copied_classifier(&dir, timed(5.0, 25.0));
    assert_eq!(
        who_answered(&faster, ModelFormat::Auto, &input).await,
        "onnxruntime"
    );

    let slower = copied_classifier(&dir, timed(25.0, 5.0));
    assert_eq!(
        who_answered(&slower, ModelFormat::Auto, &input).await,
        "torchscript"
    );
    // Asked for by name, it runs whatever the timing said.
    assert_eq!(
        who_answered(&slower, ModelFormat::Onnx, &input).await,
        "onnxruntime"
    );
    assert_eq!(
        who_answered(&faster, ModelFormat::Torchscript, &input).await,
        "torchscript"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_file_checked_against_another_torchscript_file_is_not_run() {
    let dir = scratch("stale");
    let fresh = copied_classifier(&dir, timed(5.0, 25.0));
    let stale = copied_classifier(&dir, |text| {
        timed(5.0, 25.0)(text).replace(&fresh.sha256, &"0".repeat(fresh.sha256.len()))
    });
    let why = load_session(&stale)
        .err()
        .expect("a stale sidecar is refused");
    assert!(why.contains("another TorchScript file"), "{why}");

    // The engine still serves, on TorchScript.
    let input = random(&[3, 3, 48, 192], 5);
    let got = engine(stale.clone(), ModelFormat::Auto)
        .await
        .infer(input.shallow_clone())
        .await
        .expect("answer");
    let module = CModule::load_on_device(stale.model_path(), Device::Cpu).unwrap();
    let want = tch::no_grad(|| module.forward_ts(&[&input]).unwrap());
    assert_eq!(max_diff(&got, &want), 0.0, "TorchScript answered");

    let tampered = copied_classifier(&dir, |text| {
        let line = text.lines().find(|l| l.starts_with("sha256 = ")).unwrap();
        text.replace(line, &format!("sha256 = \"{}\"", "f".repeat(64)))
    });
    let why = load_session(&tampered)
        .err()
        .expect("a changed ONNX file is refused");
    assert!(why.contains("sha256"), "{why}");
    std::fs::remove_dir_all(&dir).unwrap();
}
