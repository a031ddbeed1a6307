//! libtorch registers its CUDA kernels from libtorch_cuda's static initialisers and
//! nothing references a symbol of it, so --as-needed would drop it and libtorch would
//! never see the GPU. Force it into this service's binary only (in RUSTFLAGS it would
//! break every build script).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
}
