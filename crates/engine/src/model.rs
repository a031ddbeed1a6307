//! What the inference thread drives: a [`Model`] (the TorchScript one here, the
//! AOTInductor one in [`crate::aoti`], ONNX Runtime in [`crate::onnx`], fakes in tests)
//! and the [`ModelLoader`] that makes it from a manifest, picking among them ([`load`]).
//!
//! A model returns errors it understands (`Err`) and the batch fails; a panic that
//! escapes it stops the model's thread for good, because its weights may be half moved
//! or half written and nothing reasoned about that state.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tch::{CModule, Device, Kind, Tensor};

use crate::aoti::{self, ModelFormat, PackageManifest};
use crate::onnx::{self, OnnxManifest};
use crate::{EngineError, ModelManifest};

/// One loaded model, called only from its engine's thread.
pub trait Model: Send + 'static {
    /// Runs one batch `[n, …]`, already on the model's device; returns its `n` rows.
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String>;
    /// Moves the weights to `device`; on `Err` they are still where they were.
    fn move_to(&mut self, device: Device) -> Result<(), String>;
}

type Load = dyn Fn(&ModelManifest) -> Result<Box<dyn Model>, EngineError> + Send + Sync;

/// Makes the model a manifest names; called once per engine, on a blocking thread.
/// The default loads the TorchScript file after checking its checksum, and on the CPU
/// runs the fastest runtime provisioned for it ([`crate::aoti`], [`crate::onnx`]).
#[derive(Clone)]
pub struct ModelLoader(Arc<Load>);

impl ModelLoader {
    pub fn new(
        load: impl Fn(&ModelManifest) -> Result<Box<dyn Model>, EngineError> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(load))
    }

    /// The product's loader: TorchScript, or on the CPU the AOTInductor package or ONNX
    /// Runtime when `format` allows and one was provisioned.
    pub fn for_format(format: ModelFormat) -> Self {
        Self::new(move |manifest| load(manifest, format))
    }

    pub(crate) fn load(&self, manifest: &ModelManifest) -> Result<Box<dyn Model>, EngineError> {
        (self.0)(manifest)
    }
}

impl Default for ModelLoader {
    fn default() -> Self {
        Self::for_format(ModelFormat::Auto)
    }
}

impl std::fmt::Debug for ModelLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelLoader")
    }
}

/// A TorchScript module run with tch.
pub struct TorchScript {
    module: CModule,
    device: Device,
    /// The weights' type (fp16 variants stay half wherever they run); inputs are
    /// cast to it and outputs come back as f32.
    kind: Kind,
}

impl TorchScript {
    /// Checks the file against the manifest's checksum, then loads it on the CPU.
    pub fn load(manifest: &ModelManifest) -> Result<Self, EngineError> {
        manifest
            .verify()
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let mut module = CModule::load_on_device(manifest.model_path(), Device::Cpu)
            .map_err(|error| EngineError::Load(error.to_string()))?;
        module
            .f_set_eval()
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let kind = match manifest.input.dtype.as_str() {
            "float16" => Kind::Half,
            _ => Kind::Float,
        };
        Ok(Self {
            module,
            device: Device::Cpu,
            kind,
        })
    }
}

impl Model for TorchScript {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        if self.kind == Kind::Float {
            return tch::no_grad(|| self.module.forward_ts(&[input]))
                .map_err(|error| error.to_string());
        }
        tch::no_grad(|| {
            let input = input.f_to_kind(self.kind)?;
            self.module.forward_ts(&[input])?.f_to_kind(Kind::Float)
        })
        .map_err(|error| error.to_string())
    }

    fn move_to(&mut self, device: Device) -> Result<(), String> {
        // `CModule::to` panics when the device runs out of memory: an expected
        // failure, so it is caught here and the weights go back where they were.
        let moved = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.module.to(device, self.kind, false);
        }));
        match moved {
            Ok(()) => {
                self.device = device;
                Ok(())
            }
            Err(panic) => {
                let back = self.device;
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.module.to(back, self.kind, false);
                }));
                Err(crate::worker::panic_message(&panic))
            }
        }
    }
}

/// A runtime faster than TorchScript on the CPU: an AOTInductor package
/// ([`crate::aoti`]) or ONNX Runtime ([`crate::onnx`]).
pub trait CpuRuntime: Send + 'static {
    /// Whether it can run an input of these sizes (else TorchScript does).
    fn accepts(&self, _size: &[i64]) -> bool {
        true
    }
    /// Runs one batch on the CPU.
    fn run(&mut self, input: &Tensor) -> Result<Tensor, String>;
}

/// A CPU runtime for the batches it accepts while the model is on the CPU; the
/// TorchScript module for the rest, and wherever else the model is placed (on a GPU,
/// under its lease).
pub struct OnCpu<R> {
    runtime: R,
    torchscript: TorchScript,
    device: Device,
}

impl<R: CpuRuntime> OnCpu<R> {
    pub fn new(runtime: R, torchscript: TorchScript) -> Self {
        Self {
            runtime,
            torchscript,
            device: Device::Cpu,
        }
    }
}

impl<R: CpuRuntime> Model for OnCpu<R> {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        if self.device == Device::Cpu && self.runtime.accepts(&input.size()) {
            self.runtime.run(input)
        } else {
            self.torchscript.forward(input)
        }
    }

    fn move_to(&mut self, device: Device) -> Result<(), String> {
        self.torchscript.move_to(device)?;
        self.device = device;
        Ok(())
    }
}

/// Loads `manifest`'s model as `format` asks: its checked TorchScript file, and on the CPU
/// the runtime provisioned beside it that `format` picks. A sidecar that is stale, or a
/// file or library that fails to load, is logged and skipped: TorchScript still serves.
pub fn load(manifest: &ModelManifest, format: ModelFormat) -> Result<Box<dyn Model>, EngineError> {
    let torchscript = TorchScript::load(manifest)?;
    let use_onnx = match format {
        ModelFormat::Torchscript => return Ok(Box::new(torchscript)),
        ModelFormat::Package => false,
        ModelFormat::Onnx => true,
        ModelFormat::Auto => onnx_was_fastest(manifest),
    };
    if use_onnx {
        match onnx::load_session(manifest) {
            Ok(Some((session, _))) => {
                tracing::info!(model = %manifest.name, "running ONNX Runtime on the CPU");
                return Ok(Box::new(OnCpu::new(session, torchscript)));
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(model = %manifest.name, "not using ONNX Runtime: {why}");
            }
        }
        if format == ModelFormat::Onnx {
            return Ok(Box::new(torchscript));
        }
    }
    match aoti::load_package(manifest) {
        Ok(Some((package, sidecar))) => Ok(Box::new(OnCpu::new(
            aoti::Compiled::new(package, sidecar),
            torchscript,
        ))),
        Ok(None) => Ok(Box::new(torchscript)),
        Err(why) => {
            tracing::warn!(model = %manifest.name, "not using the AOTInductor package: {why}; running TorchScript");
            Ok(Box::new(torchscript))
        }
    }
}

/// Whether provisioning timed ONNX Runtime faster on this machine than the runtime that
/// would run otherwise: the usable AOTInductor package, or TorchScript.
fn onnx_was_fastest(manifest: &ModelManifest) -> bool {
    let Ok(Some(sidecar)) = OnnxManifest::beside(manifest) else {
        return false;
    };
    let package = PackageManifest::beside(manifest)
        .ok()
        .flatten()
        .filter(|package| package.unusable(manifest).is_none());
    sidecar.fastest_against(package.as_ref().map(|package| package.sha256.as_str()))
}
