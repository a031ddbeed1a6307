//! ONNX Runtime for the models provisioning found it fastest for on this CPU.
//!
//! Which runtime is fastest depends on the CPU: on an AVX-512 machine the AOTInductor
//! packages beat ONNX Runtime, on an AVX2 EPYC ONNX Runtime ran the angle classifier
//! 4.7× and the text detector 1.2× faster. So models/provision_onnx.py times them on
//! the serving machine and writes `<model>.onnx.toml` beside the manifest: the ONNX file,
//! the TorchScript file it was checked against, the ONNX Runtime library and each
//! runtime's median. `--model-format auto` runs ONNX Runtime only where it was fastest.
//!
//! The library is loaded at run time (the onnxruntime wheel's `libonnxruntime.so`;
//! `ORT_DYLIB_PATH` overrides the sidecar's path), so a machine without it still runs
//! the model: a missing or broken library is logged and the other runtimes serve.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::ModelManifest;
use crate::manifest::{read_checked, read_sidecar};
use crate::model::CpuRuntime;

/// The sidecar models/provision_onnx.py writes beside a model's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct OnnxManifest {
    /// The ONNX file, relative to the sidecar.
    pub file: PathBuf,
    pub sha256: String,
    /// The TorchScript file ONNX Runtime's output was checked against.
    pub source_sha256: String,
    /// The ONNX Runtime library it was timed with.
    pub runtime: PathBuf,
    /// The intra-op threads it was timed with.
    #[serde(default)]
    pub threads: i32,
    pub speed: Speed,
    #[serde(skip)]
    dir: PathBuf,
}

/// Each runtime's median on the provisioning machine, same input, interleaved.
#[derive(Debug, Clone, Deserialize)]
pub struct Speed {
    pub input: Vec<i64>,
    pub onnxruntime_ms: f64,
    pub torchscript_ms: f64,
    /// Absent when no AOTInductor package had been provisioned.
    pub package_ms: Option<f64>,
    /// The package that was timed: a re-provisioned package makes the comparison stale.
    #[serde(default)]
    pub package_sha256: String,
}

impl OnnxManifest {
    /// The sidecar of `manifest` (`<name>.onnx.toml` in its folder), if provisioning
    /// wrote one.
    pub fn beside(manifest: &ModelManifest) -> Result<Option<Self>, String> {
        let sidecar: Option<Self> = read_sidecar(manifest, "onnx")?;
        Ok(sidecar.map(|onnx| Self {
            dir: manifest.dir.clone(),
            ..onnx
        }))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Whether ONNX Runtime ran faster here than what would run instead: the package
    /// whose sha256 is given, or TorchScript when `None`. A timing of another package
    /// than the one provisioned now says nothing, so it never wins.
    pub fn fastest_against(&self, package_sha256: Option<&str>) -> bool {
        let speed = &self.speed;
        match package_sha256 {
            Some(sha256) => match speed.package_ms {
                Some(package_ms) if speed.package_sha256 == sha256 => {
                    speed.onnxruntime_ms < package_ms
                }
                _ => false,
            },
            None => speed.onnxruntime_ms < speed.torchscript_ms,
        }
    }

    /// Why this file cannot stand in for `manifest`'s model, if it cannot.
    fn unusable(&self, manifest: &ModelManifest) -> Option<String> {
        if self.source_sha256 != manifest.sha256 {
            return Some("it was checked against another TorchScript file; re-provision".into());
        }
        if manifest.input.dtype != "float32" {
            return Some(format!(
                "the model takes {}, the ONNX file float32",
                manifest.input.dtype
            ));
        }
        None
    }
}

/// The process's one ONNX Runtime environment, from the first library asked for.
fn environment(library: &Path) -> Result<&'static ort::environment::Environment, String> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let library = std::env::var_os("ORT_DYLIB_PATH")
                .filter(|path| !path.is_empty())
                .map_or_else(|| library.to_path_buf(), PathBuf::from);
            let builder = ort::init_from(&library)
                .map_err(|error| format!("ONNX Runtime ({}): {error}", library.display()))?;
            builder
                .with_name("plenum")
                .build()
                .map_err(|error| format!("ONNX Runtime: {error}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// One ONNX Runtime session on the CPU.
pub struct OnnxSession {
    session: Session,
    input_name: String,
}

impl OnnxSession {
    /// Checks the file's sha256, then opens it with `threads` intra-op threads, one
    /// inter-op thread and no spinning (idle threads sleep, like libtorch's under
    /// `OMP_WAIT_POLICY=PASSIVE`).
    pub fn load(sidecar: &OnnxManifest, threads: usize) -> Result<Self, String> {
        let path = sidecar.path();
        let bytes = read_checked(&path, &sidecar.sha256)?;
        let environment = environment(&sidecar.runtime)?;
        let describe = |error: ort::Error| format!("{}: {error}", path.display());
        let session = Session::builder(environment)
            .map_err(describe)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|error| describe(error.into()))?
            .with_intra_threads(threads)
            .map_err(|error| describe(error.into()))?
            .with_inter_threads(1)
            .map_err(|error| describe(error.into()))?
            .with_intra_op_spinning(false)
            .map_err(|error| describe(error.into()))?
            .commit_from_memory(&bytes)
            .map_err(describe)?;
        let input_name = session
            .inputs()
            .first()
            .map(|input| input.name().to_owned())
            .ok_or_else(|| format!("{}: the model has no input", path.display()))?;
        Ok(Self {
            session,
            input_name,
        })
    }

    /// Runs the model on `input`; returns its first output, on the CPU.
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor, String> {
        // ONNX Runtime reads the values in place: a contiguous f32 CPU tensor (no copy
        // when the input already is one, as the engine's CPU batches are).
        let input = input
            .f_to(Device::Cpu)
            .and_then(|input| input.f_to_kind(Kind::Float))
            .and_then(|input| input.f_contiguous())
            .map_err(|error| error.to_string())?;
        let shape = input.size();
        let values = float_slice(&input);
        let view =
            TensorRef::from_array_view((shape, values)).map_err(|error| error.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => view])
            .map_err(|error| error.to_string())?;
        let (shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|error| error.to_string())?;
        Tensor::f_from_slice(values)
            .and_then(|flat| flat.f_reshape(shape.to_vec()))
            .map_err(|error| error.to_string())
    }
}

/// The values of a contiguous float CPU tensor, borrowed.
#[allow(unsafe_code)]
fn float_slice(tensor: &Tensor) -> &[f32] {
    assert!(
        tensor.device() == Device::Cpu && tensor.is_contiguous() && tensor.kind() == Kind::Float,
        "float_slice needs a contiguous f32 CPU tensor"
    );
    let len = tensor.numel();
    if len == 0 {
        return &[];
    }
    // SAFETY: the tensor is a contiguous f32 CPU tensor of `len` elements (asserted
    // above), and the slice borrows it, so its storage outlives the slice.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr().cast::<f32>(), len) }
}

/// The ONNX Runtime session provisioned for `manifest`'s TorchScript file: `None` when
/// none was, `Err` (why) when the sidecar is stale or the file or library does not load.
pub fn load_session(
    manifest: &ModelManifest,
) -> Result<Option<(OnnxSession, OnnxManifest)>, String> {
    let Some(sidecar) = OnnxManifest::beside(manifest)? else {
        return Ok(None);
    };
    if let Some(why) = sidecar.unusable(manifest) {
        return Err(why);
    }
    let threads = tch::get_num_threads();
    if sidecar.threads > 0 && sidecar.threads != threads {
        // The session runs this process's threads either way; what may no longer hold
        // is the timing that chose ONNX Runtime over the other runtimes.
        tracing::warn!(
            model = %manifest.name,
            "ONNX Runtime was timed against the other runtimes with {} threads; this process runs {threads} (re-provision with --threads {threads} to choose for them)",
            sidecar.threads
        );
    }
    let session = OnnxSession::load(&sidecar, usize::try_from(threads).unwrap_or(1).max(1))?;
    Ok(Some((session, sidecar)))
}

/// Every CPU batch runs on ONNX Runtime (its graphs take any size);
/// [`OnCpu`](crate::model::OnCpu) gives the batches off the CPU to TorchScript.
impl CpuRuntime for OnnxSession {
    fn run(&mut self, input: &Tensor) -> Result<Tensor, String> {
        OnnxSession::run(self, input)
    }
}
