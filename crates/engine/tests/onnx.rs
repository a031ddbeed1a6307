//! ONNX Runtime for the OCR models (models/provision_onnx.py): RapidOCR's own ONNX files
//! answer what the TorchScript conversions answer, and `--model-format auto` runs ONNX
//! Runtime only where provisioning timed it fastest and only for the TorchScript file it
//! was checked against.

use std::path::{Path, PathBuf};

use plenum_engine::aoti::ModelFormat;
use plenum_engine::onnx::{OnnxManifest, load_session};
use plenum_engine::tch::{self, CModule, Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, ModelLoader, ModelManifest,
};

/// The bound provisioning holds the conversion to (provision_ocr.py TOLERANCE).
const TOLERANCE: f64 = 1e-4;

fn manifest(name: &str) -> ModelManifest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../models/ocr/generated/{name}.toml"));
    assert!(
        path.exists(),
        "{} is missing: run `make setup` to provision the models",
        path.display()
    );
    ModelManifest::load(&path).expect("valid manifest")
}

fn random(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_ocr_model_answers_on_onnx_runtime_what_its_torchscript_answers() {
    for (name, shapes) in [
        (
            "ppocr-v4-det",
            vec![vec![1, 3, 224, 352], vec![2, 3, 480, 320]],
        ),
        (
            "ppocr-v4-rec",
            vec![vec![1, 3, 48, 96], vec![7, 3, 48, 416]],
        ),
        (
            "ppocr-mobile-v2-cls",
            vec![vec![1, 3, 48, 192], vec![9, 3, 48, 192]],
        ),
    ] {
        let manifest = manifest(name);
        let (mut session, _) = load_session(&manifest)
            .expect("the sidecar is current and the library loads")
            .unwrap_or_else(|| panic!("{name}: no ONNX sidecar; run `make setup`"));
        let module = CModule::load_on_device(manifest.model_path(), Device::Cpu).unwrap();
        for (seed, shape) in shapes.iter().enumerate() {
            let input = random(shape, seed as i64);
            let want = tch::no_grad(|| module.forward_ts(&[&input]).unwrap());
            let got = session.run(&input).expect("ONNX Runtime answers");
            let diff = max_diff(&got, &want);
            assert!(
                diff <= TOLERANCE,
                "{name} {shape:?}: max|diff| {diff:e} > {TOLERANCE:e}"
            );
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plenum-onnx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the angle classifier's manifest, TorchScript file and ONNX file in `scratch`
/// (no AOTInductor package: the choice is ONNX Runtime or TorchScript), with the ONNX
/// sidecar rewritten by `edit`.
fn copied_classifier(scratch: &Path, edit: impl Fn(String) -> String) -> ModelManifest {
    let original = manifest("ppocr-mobile-v2-cls");
    let sidecar = OnnxManifest::beside(&original).unwrap().unwrap();
    std::fs::copy(original.model_path(), scratch.join(&original.file)).unwrap();
    std::fs::copy(sidecar.path(), scratch.join(&sidecar.file)).unwrap();
    let dir = original.dir.clone();
    std::fs::copy(
        dir.join("ppocr-mobile-v2-cls.toml"),
        scratch.join("ppocr-mobile-v2-cls.toml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("ppocr-mobile-v2-cls.onnx.toml")).unwrap();
    std::fs::write(scratch.join("ppocr-mobile-v2-cls.onnx.toml"), edit(text)).unwrap();
    ModelManifest::load(&scratch.join("ppocr-mobile-v2-cls.toml")).unwrap()
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

async fn engine(manifest: ModelManifest, format: ModelFormat) -> Engine {
    let settings = EngineSettings {
        device: DeviceChoice::Cpu,
        loader: ModelLoader::for_format(format),
        ..EngineSettings::default()
    };
    let name = manifest.name.clone();
    Engine::start(manifest, settings, None, EngineMetrics::unregistered(&name))
        .await
        .expect("engine starts")
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
