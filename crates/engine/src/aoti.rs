//! AOTInductor packages: the model compiled ahead of time into fused kernels for this
//! machine's CPU (models/provision_aoti.py), 1.3-2x faster than TorchScript on small
//! CPUs. A package is used when provisioning left one beside the manifest
//! (`<model>.aoti.toml`, naming the package and the TorchScript file it was checked
//! against) and that TorchScript file is still the manifest's; otherwise, and on a GPU,
//! the model runs as TorchScript.
//!
//! The package is loaded by libtorch's `AOTIModelPackageLoader` through a small C++
//! shim (cpp/aoti_shim.cpp, built by build.rs); tensors cross as tch's tensors.

// Calling the shim is this module's job; every unsafe block says what it relies on.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::Tensor;

use crate::ModelManifest;
use crate::manifest::{read_checked, read_sidecar};
use crate::model::CpuRuntime;

unsafe extern "C" {
    fn plenum_aoti_load(path: *const c_char, error: *mut *mut c_char) -> *mut c_void;
    fn plenum_aoti_free(package: *mut c_void);
    fn plenum_aoti_run(
        package: *mut c_void,
        input: *const c_void,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn plenum_aoti_free_error(error: *mut c_char);
}

/// Which model file the engine runs on the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelFormat {
    /// The fastest provisioned for this TorchScript file on this CPU: ONNX Runtime where
    /// provisioning timed it faster than the package ([`crate::onnx`]), else the
    /// AOTInductor package, else TorchScript.
    #[default]
    Auto,
    /// Always TorchScript (the portable format; for comparisons and as an escape hatch).
    Torchscript,
    /// The AOTInductor package where one was provisioned, else TorchScript.
    Package,
    /// ONNX Runtime where it was provisioned, else TorchScript.
    Onnx,
}

/// The sidecar manifest provisioning writes beside a model's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct PackageManifest {
    /// The package, relative to the sidecar.
    pub file: PathBuf,
    pub sha256: String,
    /// Where the package runs: "cpu" (the only kind provisioned so far).
    pub device: String,
    /// The TorchScript file the package was checked against.
    pub source_sha256: String,
    /// The intra-op threads its kernels were compiled for.
    #[serde(default)]
    pub threads: i32,
    /// The input sizes the kernels were compiled for, per axis (-1: unbounded).
    #[serde(default)]
    pub min_input: Vec<i64>,
    #[serde(default)]
    pub max_input: Vec<i64>,
    /// The vector ISA Inductor compiled the kernels for (empty in packages from before
    /// it was recorded, which may be scalar builds).
    #[serde(default)]
    pub cpu_isa: String,
    /// The instruction-set flags (`/proc/cpuinfo`) of the CPU the package was compiled on
    /// with `-march=native`: a CPU without one of them could fault on its kernels.
    #[serde(default)]
    pub cpu_flags: Vec<String>,
    #[serde(skip)]
    dir: PathBuf,
}

impl PackageManifest {
    /// The sidecar of `manifest` (`<name>.aoti.toml` in its folder), if provisioning
    /// wrote one.
    pub fn beside(manifest: &ModelManifest) -> Result<Option<Self>, String> {
        let sidecar: Option<Self> = read_sidecar(manifest, "aoti")?;
        Ok(sidecar.map(|package| Self {
            dir: manifest.dir.clone(),
            ..package
        }))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Why this package cannot stand in for `manifest`'s model, if it cannot.
    pub(crate) fn unusable(&self, manifest: &ModelManifest) -> Option<String> {
        if self.device != "cpu" {
            return Some(format!("it is for {}, not the CPU", self.device));
        }
        if self.source_sha256 != manifest.sha256 {
            return Some("it was built from another TorchScript file; re-provision".into());
        }
        if self.cpu_isa.is_empty() || self.cpu_isa == "INVALID_VEC_ISA" {
            return Some(
                "it records no vector ISA (an older, possibly scalar build); re-provision".into(),
            );
        }
        let here = cpu_flags();
        let missing: Vec<&str> = self
            .cpu_flags
            .iter()
            .map(String::as_str)
            .filter(|flag| !here.contains(*flag))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "it was compiled for a CPU with {}, which this one lacks; re-provision here",
                missing.join(" ")
            ));
        }
        None
    }
}

/// This CPU's feature flags, from `/proc/cpuinfo` (empty where it cannot be read, so
/// every package that names a flag is refused).
fn cpu_flags() -> std::collections::HashSet<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags")?.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A loaded AOTInductor package; runs on the CPU only.
pub struct AotiPackage {
    raw: *mut c_void,
}

// SAFETY: the loader owns its runner and buffers and has no thread affinity; the engine
// calls it from one thread at a time (`&mut self`).
unsafe impl Send for AotiPackage {}

impl AotiPackage {
    pub fn load(path: &Path) -> Result<Self, String> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // libtorch's AOTIModelPackageLoader is not safe to construct from two threads at
        // once: two engines loading packages together crashed in its metadata parsing
        // (std::map inserts racing, SIGSEGV in about 1 run in 40 of the offload tests).
        static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = LOADING.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut error = std::ptr::null_mut();
        // SAFETY: c_path lives across the call; the shim sets either the result or error.
        let raw = unsafe { plenum_aoti_load(c_path.as_ptr(), &mut error) };
        if raw.is_null() {
            return Err(format!("{}: {}", path.display(), take_error(error)));
        }
        Ok(Self { raw })
    }

    /// Runs the package on `input` (on the CPU); returns its one output.
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor, String> {
        // The kernels were compiled for contiguous float inputs.
        let input = input.f_contiguous().map_err(|error| error.to_string())?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `input` outlives the call and is an at::Tensor* as the shim expects; a
        // non-null result is a new at::Tensor* whose ownership passes to tch.
        unsafe {
            let output = plenum_aoti_run(self.raw, input.as_ptr().cast(), &mut error);
            if output.is_null() {
                return Err(take_error(error));
            }
            Ok(Tensor::from_ptr(output.cast()))
        }
    }
}

impl Drop for AotiPackage {
    fn drop(&mut self) {
        // SAFETY: raw came from plenum_aoti_load and is freed once.
        unsafe { plenum_aoti_free(self.raw) }
    }
}

pub(crate) fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "the AOTInductor shim failed without a message".into();
    }
    // SAFETY: the shim hands over a NUL-terminated malloc'd string; freed here once.
    unsafe {
        let message = CStr::from_ptr(error).to_string_lossy().into_owned();
        plenum_aoti_free_error(error);
        message
    }
}

/// The package with the sizes it was compiled for: it runs the CPU batches of those
/// sizes ([`OnCpu`](crate::model::OnCpu) gives the rest, and every batch off the CPU,
/// to TorchScript: a CUDA package would have to be compiled on the GPU host, and the
/// compiled code does not check sizes itself).
pub struct Compiled {
    package: AotiPackage,
    min_input: Vec<i64>,
    max_input: Vec<i64>,
}

impl Compiled {
    pub(crate) fn new(package: AotiPackage, sidecar: PackageManifest) -> Self {
        Self {
            package,
            min_input: sidecar.min_input,
            max_input: sidecar.max_input,
        }
    }
}

impl CpuRuntime for Compiled {
    /// Whether the package was compiled for this input's sizes, batch aside.
    fn accepts(&self, size: &[i64]) -> bool {
        if !self.min_input.is_empty() && size.len() != self.min_input.len() {
            return false;
        }
        size.iter().enumerate().skip(1).all(|(axis, &dim)| {
            let low = self.min_input.get(axis).copied().unwrap_or(-1);
            let high = self.max_input.get(axis).copied().unwrap_or(-1);
            dim >= low && (high < 0 || dim <= high)
        })
    }

    /// Runs the package, in chunks of its largest batch.
    fn run(&mut self, input: &Tensor) -> Result<Tensor, String> {
        let max_batch = self.max_input.first().copied().unwrap_or(-1);
        let rows = input.size().first().copied().unwrap_or(0);
        tch::no_grad(|| {
            if max_batch < 1 || rows <= max_batch {
                return self.package.run(input);
            }
            let chunks = input
                .f_split(max_batch, 0)
                .map_err(|error| error.to_string())?;
            let outputs = chunks
                .iter()
                .map(|chunk| self.package.run(chunk))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_cat(&outputs, 0).map_err(|error| error.to_string())
        })
    }
}

/// The package provisioned for `manifest`'s TorchScript file: `None` when none was,
/// `Err` (why) when the one beside it is stale, changed or does not load.
pub fn load_package(
    manifest: &ModelManifest,
) -> Result<Option<(AotiPackage, PackageManifest)>, String> {
    let Some(sidecar) = PackageManifest::beside(manifest)? else {
        return Ok(None);
    };
    if let Some(why) = sidecar.unusable(manifest) {
        return Err(why);
    }
    let path = sidecar.path();
    read_checked(&path, &sidecar.sha256)?;
    let threads = tch::get_num_threads();
    if sidecar.threads > 0 && sidecar.threads != threads {
        tracing::warn!(
            model = %manifest.name,
            "the AOTInductor package was compiled for {} threads; this process runs {threads} (re-provision with --threads {threads} to use them all)",
            sidecar.threads
        );
    }
    let package = AotiPackage::load(&path)?;
    tracing::info!(model = %manifest.name, package = %path.display(), "running the AOTInductor package on the CPU");
    Ok(Some((package, sidecar)))
}
