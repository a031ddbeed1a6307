//! libtorch registers its CUDA kernels from libtorch_cuda's static initialisers, and
//! nothing references a symbol of it: with the default --as-needed the linker drops
//! it and libtorch never sees the GPU. Force it in, for this binary only (in
//! RUSTFLAGS it would break every build script).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
    println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
}
