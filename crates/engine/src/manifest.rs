//! A model's manifest (TOML beside the model file): what the file is, how to feed
//! it, what its outputs mean, and how much VRAM to ask for.
//!
//! A model may come in other precisions (fp16 for GPUs, int8), each a file of its
//! own with its own checksum and VRAM estimate. They are listed under `[[variants]]`
//! in the manifest or, when provisioned on this machine
//! (`models/provision_variants.py`), in a `<manifest>.variants.toml` beside it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "{model} has no {precision} variant (listed: {listed}); run `make setup` to provision it"
    )]
    NoVariant {
        model: String,
        precision: Precision,
        listed: String,
    },
    #[error("{path}: sha256 is {actual}, the manifest says {expected}; re-provision the models")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// One model, as its manifest describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelManifest {
    pub name: String,
    /// detect, verify, text-detect, text-angle or text-recognize.
    pub task: String,
    /// The TorchScript file, relative to the manifest.
    pub file: PathBuf,
    pub sha256: String,
    pub vram_estimate_bytes: u64,
    #[serde(default)]
    pub source: String,
    pub input: InputSpec,
    #[serde(default)]
    pub labels: Labels,
    /// Detectors: the manifest of a second-look classifier for this model's boxes
    /// (`task = "verify"`, labels = this model's classes and `none`), relative to
    /// this manifest.
    #[serde(default)]
    pub verifier: Option<PathBuf>,
    /// The same model in other precisions.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// The precision of `file`: fp32 unless this manifest was made for a variant.
    #[serde(default)]
    pub precision: Precision,
    /// Where the manifest was read from; files resolve relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// A weight precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// Half-precision weights and activations: half the VRAM; for GPUs.
    Fp16,
    /// 8-bit integer weights and activations (static post-training quantization,
    /// models/quantize_ocr.py); inputs and outputs stay f32. CPU only: libtorch has
    /// no CUDA kernels for quantized convolutions.
    Int8,
}

impl Precision {
    /// Whether a model in this precision can run on a GPU at all.
    pub fn runs_on_gpu(self) -> bool {
        self != Self::Int8
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
        })
    }
}

/// One other-precision file of a model.
#[derive(Debug, Clone, Deserialize)]
pub struct Variant {
    pub precision: Precision,
    /// Relative to the manifest.
    pub file: PathBuf,
    pub sha256: String,
    /// What a lease for this variant asks for.
    pub vram_estimate_bytes: u64,
    /// The largest difference from the fp32 model's outputs measured when it was
    /// provisioned, relative to their largest magnitude (informational).
    #[serde(default)]
    pub verified_max_rel_diff: Option<f64>,
}

/// A `<manifest>.variants.toml` written by provisioning.
#[derive(Debug, Deserialize)]
struct VariantsFile {
    #[serde(default)]
    variants: Vec<Variant>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    /// NCHW, -1 where dynamic.
    pub shape: Vec<i64>,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// RGB or BGR.
    #[serde(default = "default_color")]
    pub color: String,
    #[serde(default)]
    pub mean: Vec<f32>,
    #[serde(default)]
    pub std: Vec<f32>,
    pub stride: Option<i64>,
    /// Native square input size (detectors).
    pub size: Option<i64>,
    /// Fixed input height (text recognition and angle models).
    pub height: Option<i64>,
}

fn default_dtype() -> String {
    "float32".into()
}

fn default_color() -> String {
    "RGB".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Labels {
    #[serde(default)]
    pub classes: Vec<String>,
    /// A file with one entry per line, relative to the manifest.
    pub dictionary: Option<PathBuf>,
    /// Detectors: per class, a regular expression its tags match as a whole
    /// (`vav_box = 'VAV-\d+'`). Sent with each Detect reply; the gateway ranks
    /// candidate text lines by it.
    #[serde(default)]
    pub tag_patterns: std::collections::BTreeMap<String, String>,
}

impl ModelManifest {
    /// Reads a manifest; checks nothing about the model file yet.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut manifest: Self = toml::from_str(&text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })?;
        manifest.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let provisioned = path.with_extension("variants.toml");
        if provisioned.exists() {
            let text =
                std::fs::read_to_string(&provisioned).map_err(|source| ManifestError::Read {
                    path: provisioned.clone(),
                    source,
                })?;
            let file: VariantsFile =
                toml::from_str(&text).map_err(|source| ManifestError::Parse {
                    path: provisioned.clone(),
                    source,
                })?;
            manifest.variants.extend(file.variants);
        }
        Ok(manifest)
    }

    /// This model in `precision`: the variant's file, checksum and VRAM estimate
    /// (fp16 takes half-precision input). Fp32 is the manifest itself.
    pub fn with_precision(&self, precision: Precision) -> Result<Self, ManifestError> {
        if precision == self.precision {
            return Ok(self.clone());
        }
        let variant = self
            .variants
            .iter()
            .find(|variant| variant.precision == precision)
            .ok_or_else(|| ManifestError::NoVariant {
                model: self.name.clone(),
                precision,
                listed: self
                    .variants
                    .iter()
                    .map(|variant| variant.precision.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut chosen = self.clone();
        chosen.file = variant.file.clone();
        chosen.sha256 = variant.sha256.clone();
        chosen.vram_estimate_bytes = variant.vram_estimate_bytes;
        chosen.precision = precision;
        if precision == Precision::Fp16 {
            chosen.input.dtype = "float16".into();
        }
        Ok(chosen)
    }

    /// The precision this model runs at in a service asked for `asked`: `asked` when
    /// the manifest lists that variant, else fp32. One `--precision` covers every model
    /// of a service, and not every model has every variant (the OCR detector has no
    /// int8 one: quantized, it lost text regions).
    pub fn runs_at(&self, asked: Precision) -> Precision {
        let listed = asked == self.precision
            || self
                .variants
                .iter()
                .any(|variant| variant.precision == asked);
        if listed { asked } else { Precision::Fp32 }
    }

    /// The model file's path.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Checks the model file against the manifest's sha256.
    pub fn verify(&self) -> Result<(), ManifestError> {
        let path = self.model_path();
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let actual = format!("{:x}", Sha256::digest(&bytes));
        if actual != self.sha256 {
            return Err(ManifestError::Checksum {
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// A small input of the right shape for warmup: batch 1, dynamic sides at the
    /// native size (or 320, a multiple of every stride in use).
    pub fn warmup_shape(&self) -> Vec<i64> {
        let side = self.input.size.unwrap_or(320);
        self.input
            .shape
            .iter()
            .enumerate()
            .map(|(axis, &dim)| match (axis, dim) {
                (0, _) => 1,
                (_, -1) => side,
                (_, dim) => dim,
            })
            .collect()
    }

    /// A key the broker remembers the measured size by: name and content.
    pub fn model_key(&self) -> String {
        format!(
            "{}@sha256:{}",
            self.name,
            &self.sha256[..self.sha256.len().min(12)]
        )
    }

    /// Where the verifier's manifest is, if this model has one.
    pub fn verifier_manifest(&self) -> Option<PathBuf> {
        self.verifier.as_ref().map(|file| self.dir.join(file))
    }

    /// The dictionary's entries, one per line.
    pub fn dictionary(&self) -> Result<Vec<String>, ManifestError> {
        let Some(file) = &self.labels.dictionary else {
            return Ok(Vec::new());
        };
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ManifestError::Read { path, source })?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

/// The checkout's `models/` folder, for services started from the checkout: found from
/// the working directory, else from the binary's location (`target/release/x` →
/// `models/`). `kind` is the subfolder that must exist (`detector`, `ocr`).
pub fn default_models_dir(kind: &str) -> PathBuf {
    let here = PathBuf::from("models");
    if here.join(kind).exists() {
        return here;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()?
                .parent()?
                .parent()
                .map(|root| root.join("models"))
        })
        .filter(|dir| dir.join(kind).exists())
        .unwrap_or(here)
}

/// The sidecar provisioning wrote beside `manifest` for another runtime
/// (`<name>.<kind>.toml`: an AOTInductor package, an ONNX file), parsed; `None` when
/// there is none.
pub(crate) fn read_sidecar<T: serde::de::DeserializeOwned>(
    manifest: &ModelManifest,
    kind: &str,
) -> Result<Option<T>, String> {
    let path = manifest.dir.join(format!("{}.{kind}.toml", manifest.name));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|error| format!("{} is not a valid manifest: {error}", path.display()))
}

/// The bytes of a file a sidecar names, if they still have the sha256 it recorded.
pub(crate) fn read_checked(path: &Path, sha256: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let actual = format!("{:x}", Sha256::digest(&bytes));
    if actual != sha256 {
        return Err(format!(
            "{}: sha256 is {actual}, its manifest says {sha256}; re-provision",
            path.display()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
        name = "det"
        task = "text-detect"
        file = "det.pt"
        sha256 = "aaaa"
        vram_estimate_bytes = 1000
        [input]
        shape = [-1, 3, -1, -1]
        [[variants]]
        precision = "fp16"
        file = "det.fp16.pt"
        sha256 = "bbbb"
        vram_estimate_bytes = 500
        [[variants]]
        precision = "int8"
        file = "det.int8.pt"
        sha256 = "cccc"
        vram_estimate_bytes = 0
    "#;

    #[test]
    fn a_variant_brings_its_own_file_checksum_estimate_and_input_type() {
        let manifest: ModelManifest = toml::from_str(MANIFEST).unwrap();
        assert_eq!(manifest.precision, Precision::Fp32);
        let half = manifest.with_precision(Precision::Fp16).unwrap();
        assert_eq!(half.file, PathBuf::from("det.fp16.pt"));
        assert_eq!(half.sha256, "bbbb");
        assert_eq!(
            half.vram_estimate_bytes, 500,
            "the lease asks for the variant's size"
        );
        assert_eq!(half.input.dtype, "float16");
        assert_ne!(half.model_key(), manifest.model_key());
        let same = manifest.with_precision(Precision::Fp32).unwrap();
        assert_eq!(same.file, manifest.file);
    }

    #[test]
    fn an_int8_variant_takes_f32_input_and_runs_on_the_cpu_only() {
        let manifest: ModelManifest = toml::from_str(MANIFEST).unwrap();
        let int8 = manifest.with_precision(Precision::Int8).unwrap();
        assert_eq!(int8.file, PathBuf::from("det.int8.pt"));
        // Quantized models quantize their f32 input themselves; half input would fail.
        assert_eq!(int8.input.dtype, "float32");
        assert!(!int8.precision.runs_on_gpu());
        assert!(Precision::Fp16.runs_on_gpu() && Precision::Fp32.runs_on_gpu());
    }

    #[test]
    fn a_missing_variant_says_which_exist() {
        let mut manifest: ModelManifest = toml::from_str(MANIFEST).unwrap();
        manifest
            .variants
            .retain(|variant| variant.precision == Precision::Fp16);
        let error = manifest.with_precision(Precision::Int8).unwrap_err();
        assert!(
            error.to_string().contains("no int8 variant (listed: fp16)"),
            "{error}"
        );
    }
}
