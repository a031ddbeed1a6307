//! What the tests of the CPU runtimes beside TorchScript (tests/aoti.rs, tests/onnx.rs)
//! share: the provisioned OCR models, random inputs, how far two answers are apart,
//! scratch folders and an engine on the CPU with a given model format.

use std::path::{Path, PathBuf};

use plenum_engine::aoti::ModelFormat;
use plenum_engine::tch::{self, CModule, Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, ModelLoader, ModelManifest,
};

/// The bound provisioning holds every runtime to against TorchScript
/// (provision_ocr.py TOLERANCE).
pub const TOLERANCE: f64 = 1e-4;

/// An OCR model as `make setup` provisions it.
pub fn manifest(name: &str) -> ModelManifest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../models/ocr/generated/{name}.toml"));
    assert!(
        path.exists(),
        "{} is missing: run `make setup` to provision the models",
        path.display()
    );
    ModelManifest::load(&path).expect("valid manifest")
}

/// Uniform in [-1, 1), reproducible by `seed`.
pub fn random(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// An empty folder of this test process's own.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plenum-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An engine on the CPU running `manifest`'s model as `format` picks.
pub async fn engine(manifest: ModelManifest, format: ModelFormat) -> Engine {
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

/// A copy of OCR model `name` in `scratch`: its manifest, its TorchScript file and the
/// file `runtime_file` its `<name>.<kind>.toml` sidecar names, with that sidecar
/// rewritten by `edit`. Only that one sidecar is copied: the copy offers one runtime
/// beside TorchScript.
pub fn copied(
    scratch: &Path,
    name: &str,
    kind: &str,
    runtime_file: &Path,
    edit: impl Fn(String) -> String,
) -> ModelManifest {
    let original = manifest(name);
    std::fs::copy(original.model_path(), scratch.join(&original.file)).unwrap();
    std::fs::copy(
        runtime_file,
        scratch.join(runtime_file.file_name().unwrap()),
    )
    .unwrap();
    let manifest_file = format!("{name}.toml");
    std::fs::copy(
        original.dir.join(&manifest_file),
        scratch.join(&manifest_file),
    )
    .unwrap();
    let sidecar = format!("{name}.{kind}.toml");
    let text = std::fs::read_to_string(original.dir.join(&sidecar)).unwrap();
    std::fs::write(scratch.join(&sidecar), edit(text)).unwrap();
    ModelManifest::load(&scratch.join(&manifest_file)).unwrap()
}

/// Each OCR model with input shapes provisioning did not check its runtimes on.
pub fn new_shapes() -> [(&'static str, Vec<Vec<i64>>); 3] {
    [
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
    ]
}

/// Asserts that `run` answers what model `name`'s TorchScript file answers on random
/// inputs of each of `shapes`, within [`TOLERANCE`].
pub fn assert_answers_as_torchscript(
    name: &str,
    shapes: &[Vec<i64>],
    mut run: impl FnMut(&Tensor) -> Tensor,
) {
    let module = CModule::load_on_device(manifest(name).model_path(), Device::Cpu).unwrap();
    for (seed, shape) in shapes.iter().enumerate() {
        let input = random(shape, seed as i64);
        let want = tch::no_grad(|| module.forward_ts(&[&input]).unwrap());
        let got = tch::no_grad(|| run(&input));
        let diff = max_diff(&got, &want);
        assert!(
            diff <= TOLERANCE,
            "{name} {shape:?}: max|diff| {diff:e} > {TOLERANCE:e}"
        );
    }
}
