//! A machine without the ONNX Runtime library (an image that did not ship it, a wheel
//! removed after provisioning) still serves the model: the engine says why it is not
//! using ONNX Runtime and runs TorchScript. Its own test binary, because the process's
//! one ONNX Runtime environment is set up by the first library asked for.

use std::path::PathBuf;

use plenum_engine::aoti::ModelFormat;
use plenum_engine::onnx::{OnnxManifest, load_session};
use plenum_engine::tch::{self, CModule, Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, ModelLoader, ModelManifest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_onnx_runtime_library_the_model_runs_on_torchscript() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_none(),
        "ORT_DYLIB_PATH would override the sidecar's library"
    );
    let generated = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/ocr/generated");
    let original = ModelManifest::load(&generated.join("ppocr-mobile-v2-cls.toml"))
        .expect("provisioned: run `make setup`");
    let sidecar = OnnxManifest::beside(&original)
        .unwrap()
        .expect("an ONNX sidecar: run `make setup`");

    let dir = std::env::temp_dir().join(format!("plenum-onnx-noruntime-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(original.model_path(), dir.join(&original.file)).unwrap();
    std::fs::copy(sidecar.path(), dir.join(&sidecar.file)).unwrap();
    std::fs::copy(
        generated.join("ppocr-mobile-v2-cls.toml"),
        dir.join("ppocr-mobile-v2-cls.toml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(generated.join("ppocr-mobile-v2-cls.onnx.toml")).unwrap();
    let runtime = text.lines().find(|l| l.starts_with("runtime = ")).unwrap();
    let text = text.replace(runtime, "runtime = \"/nonexistent/libonnxruntime.so.1\"");
    std::fs::write(dir.join("ppocr-mobile-v2-cls.onnx.toml"), text).unwrap();
    let manifest = ModelManifest::load(&dir.join("ppocr-mobile-v2-cls.toml")).unwrap();

    let why = load_session(&manifest)
        .err()
        .expect("no library, no session");
    assert!(why.contains("/nonexistent/libonnxruntime.so.1"), "{why}");

    let settings = EngineSettings {
        device: DeviceChoice::Cpu,
        loader: ModelLoader::for_format(ModelFormat::Onnx),
        ..EngineSettings::default()
    };
    let engine = Engine::start(
        manifest.clone(),
        settings,
        None,
        EngineMetrics::unregistered("cls"),
    )
    .await
    .expect("the engine starts without ONNX Runtime");
    tch::manual_seed(3);
    let input = Tensor::rand([4, 3, 48, 192], (Kind::Float, Device::Cpu));
    let got = engine.infer(input.shallow_clone()).await.expect("answer");
    let module = CModule::load_on_device(manifest.model_path(), Device::Cpu).unwrap();
    let want = tch::no_grad(|| module.forward_ts(&[&input]).unwrap());
    assert_eq!(
        (&got - &want).abs().max().double_value(&[]),
        0.0,
        "TorchScript answered"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
