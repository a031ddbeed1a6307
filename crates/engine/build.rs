//! Builds the engine's AOTInductor shim (cpp/aoti_shim.cpp) against the same libtorch
//! headers and ABI torch-sys uses: `LIBTORCH` (set by .cargo/config.toml from the venv's
//! torch), or `LIBTORCH_INCLUDE` where the headers live apart. libtorch itself is linked
//! by torch-sys; the shim only adds the loader symbols it calls from libtorch_cpu.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cpp/aoti_shim.cpp");
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
}
