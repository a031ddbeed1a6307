//! The AOTInductor packages `make setup` compiles for the OCR models
//! (models/provision_aoti.py): loaded through the engine's C++ shim, they answer what
//! the TorchScript files answer, and the loader uses one only for the TorchScript file
//! it was checked against.

mod runtimes;

use std::path::Path;

use plenum_engine::ModelManifest;
use plenum_engine::aoti::{AotiPackage, ModelFormat, PackageManifest, load_package};
use runtimes::{
    TOLERANCE, assert_answers_as_torchscript, copied, engine, manifest, max_diff, new_shapes,
    random, scratch,
};

#[test]
fn every_ocr_package_matches_its_torchscript_on_new_shapes() {
    for (name, shapes) in new_shapes() {
        let sidecar = PackageManifest::beside(&manifest(name))
            .expect("readable sidecar")
            .unwrap_or_else(|| panic!("{name}: no AOTInductor package; run `make setup`"));
        let mut package = AotiPackage::load(&sidecar.path()).expect("package loads");
        assert_answers_as_torchscript(name, &shapes, |input| {
            package.run(input).expect("the package answers")
        });
    }
}

/// A copy of the det model and its package in `scratch`, the sidecar rewritten by `edit`.
fn copied_model(scratch: &Path, edit: impl Fn(String) -> String) -> ModelManifest {
    let sidecar = PackageManifest::beside(&manifest("ppocr-v4-det"))
        .unwrap()
        .unwrap();
    copied(scratch, "ppocr-v4-det", "aoti", &sidecar.path(), edit)
}

#[test]
fn a_package_is_used_only_for_the_torchscript_file_it_was_checked_against() {
    let dir = scratch("stale");
    let fresh = copied_model(&dir, |text| text);
    assert!(load_package(&fresh).unwrap().is_some());

    let stale = copied_model(&dir, |text| {
        text.replace(&fresh.sha256, &"0".repeat(fresh.sha256.len()))
    });
    let why = load_package(&stale)
        .err()
        .expect("a stale package is refused");
    assert!(why.contains("another TorchScript file"), "{why}");

    let tampered = copied_model(&dir, |text| {
        let line = text.lines().find(|l| l.starts_with("sha256 = ")).unwrap();
        text.replace(line, &format!("sha256 = \"{}\"", "f".repeat(64)))
    });
    let why = load_package(&tampered)
        .err()
        .expect("a changed package is refused");
    assert!(why.contains("sha256"), "{why}");

    // Compiled (-march=native) on a CPU with an instruction this one lacks: its kernels
    // could fault here.
    let foreign = copied_model(&dir, |text| {
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu_flags = "))
            .unwrap();
        text.replace(line, "cpu_flags = [\"avx2\", \"plenum_future_isa\"]")
    });
    let why = load_package(&foreign)
        .err()
        .expect("a package for another CPU is refused");
    assert!(why.contains("plenum_future_isa"), "{why}");
    assert!(
        !why.contains("avx2"),
        "only the missing flags are named: {why}"
    );

    // A build Inductor left scalar (no vector ISA found) is slower than TorchScript.
    let scalar = copied_model(&dir, |text| {
        let line = text.lines().find(|l| l.starts_with("cpu_isa = ")).unwrap();
        text.replace(line, "cpu_isa = \"INVALID_VEC_ISA\"")
    });
    let why = load_package(&scalar)
        .err()
        .expect("a scalar build is refused");
    assert!(why.contains("vector ISA"), "{why}");

    std::fs::remove_file(dir.join("ppocr-v4-det.aoti.toml")).unwrap();
    assert!(
        load_package(&fresh).unwrap().is_none(),
        "no sidecar, no package"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_answers_the_same_with_the_package_and_with_torchscript() {
    // rec: a plain batch; cls: 20 rows, more than the package was compiled for (the
    // engine's batches of 16 go through it in chunks).
    for (name, shape) in [
        ("ppocr-v4-rec", [3, 3, 48, 256]),
        ("ppocr-mobile-v2-cls", [20, 3, 48, 192]),
    ] {
        let input = random(&shape, 7);
        let compiled = engine(manifest(name), ModelFormat::Package).await;
        let scripted = engine(manifest(name), ModelFormat::Torchscript).await;
        let got = compiled.infer(input.shallow_clone()).await.expect("answer");
        let want = scripted.infer(input.shallow_clone()).await.expect("answer");
        let diff = max_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{name}: max|diff| {diff:e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_of_sizes_the_package_was_not_compiled_for_gets_torchscripts_answer() {
    // The angle classifier was compiled for 48x192 crops and its code would not check;
    // TorchScript (adaptive pooling) answers any size.
    let input = random(&[2, 3, 40, 100], 3);
    let compiled = engine(manifest("ppocr-mobile-v2-cls"), ModelFormat::Package).await;
    let scripted = engine(manifest("ppocr-mobile-v2-cls"), ModelFormat::Torchscript).await;
    let got = compiled.infer(input.shallow_clone()).await.expect("answer");
    let want = scripted.infer(input).await.expect("answer");
    assert_eq!(max_diff(&got, &want), 0.0, "the same TorchScript answered");
}
