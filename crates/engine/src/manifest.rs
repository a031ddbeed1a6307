//! A model's manifest (TOML beside the model file): what the file is, how to feed
//! it, what its outputs mean, and how much VRAM to ask for.

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
    /// detect, text-detect, text-angle or text-recognize.
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
    /// Where the manifest was read from; files resolve relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
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
        Ok(manifest)
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
