//! The only codegen in the workspace. protoc comes from `protoc-bin-vendored`, so a
//! fresh machine needs no system package to build.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "plenum/common/v1/common.proto",
    "plenum/broker/v1/broker.proto",
    "plenum/detector/v1/detector.proto",
    "plenum/ocr/v1/ocr.proto",
    "plenum/gateway/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("plenum_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["."])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
