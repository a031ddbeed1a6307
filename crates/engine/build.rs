//! Builds the engine's AOTInductor shim (cpp/aoti_shim.cpp) against the same libtorch
//! headers and ABI torch-sys uses: `LIBTORCH` (set by .cargo/config.toml from the venv's
//! torch), or `LIBTORCH_INCLUDE` where the headers live apart. libtorch itself is linked
//! by torch-sys; the shim only adds the loader symbols it calls from libtorch_cpu.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cpp/aoti_shim.cpp");
    println!("cargo:rerun-if-changed=cpp/shim_error.h");
    for var in ["LIBTORCH", "LIBTORCH_INCLUDE", "LIBTORCH_CXX11_ABI"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root = std::env::var_os("LIBTORCH_INCLUDE")
        .or_else(|| std::env::var_os("LIBTORCH"))
        .map(PathBuf::from)
        .expect("LIBTORCH is not set: run `make libtorch` (scripts/setup-libtorch.sh)");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("cpp/aoti_shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("plenum_aoti_shim");
    let lib = std::env::var_os("LIBTORCH_LIB")
        .or_else(|| std::env::var_os("LIBTORCH"))
        .map(PathBuf::from)
        .expect("LIBTORCH is not set");
    println!(
        "cargo:rustc-link-search=native={}",
        lib.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    build_cuda_alloc_shim(&root, &lib, &abi);
}

/// The CUDA allocator shim (cpp/cuda_alloc_shim.cpp), where libtorch was built with
/// CUDA (PyPI's default torch wheel is): `libc10_cuda.so` beside libtorch, and CUDA
/// headers (`CUDA_INCLUDE`, else those of the wheel's `nvidia` packages, whose missing
/// `crt/` headers Triton's bundled copy supplies; the shim uses no CUDA call itself,
/// only libtorch's allocator classes). Without them, or if it does not compile, the
/// engine is built without it and `cuda_alloc` says so at run time.
fn build_cuda_alloc_shim(root: &std::path::Path, lib: &std::path::Path, abi: &str) {
    println!("cargo::rustc-check-cfg=cfg(plenum_cuda_alloc)");
    println!("cargo:rerun-if-changed=cpp/cuda_alloc_shim.cpp");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE");
    let c10_cuda = lib.join("lib/libc10_cuda.so");
    let site = lib.join("..");
    let mut candidates: Vec<PathBuf> = std::env::var_os("CUDA_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia"))
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path().join("include")))
        .collect();
    wheels.sort();
    candidates.extend(wheels.into_iter().rev());
    candidates.push(site.join("triton/backends/nvidia/include"));
    let runtime = candidates
        .iter()
        .find(|dir| dir.join("cuda_runtime_api.h").is_file());
    let crt = candidates
        .iter()
        .find(|dir| dir.join("crt/host_config.h").is_file());
    let (true, Some(runtime), Some(crt)) = (c10_cuda.is_file(), runtime, crt) else {
        println!(
            "cargo:warning=libtorch without CUDA (no {} or no CUDA headers): the CUDA allocator shim is not built",
            c10_cuda.display()
        );
        return;
    };
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("cpp/cuda_alloc_shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(runtime)
        .include(crt)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    if let Err(error) = build.try_compile("plenum_cuda_alloc_shim") {
        println!(
            "cargo:warning=the CUDA allocator shim did not compile ({error}); built without it"
        );
        return;
    }
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-cfg=plenum_cuda_alloc");
}
