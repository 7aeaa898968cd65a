//! Hugging Face checkpoints: config, safetensors weights, and the transformer that runs them.

pub mod checkpoint;
pub mod config;
pub mod cpu_matmul;
pub mod files;
pub mod random;
pub mod rope;
pub mod safetensors;
pub mod transformer;

use std::path::Path;

use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::tokenize::TextTokenizer;
use checkpoint::Checkpoint;
use config::ModelConfig;
use files::ModelFiles;
use transformer::Transformer;

/// The float type a model's weights and activations take on the device. Whatever it is,
/// RMSNorm and the attention softmax compute in f32 (as Hugging Face's f16 models do) and the
/// logits come back in f32; bf16 and f16 checkpoints are converted on load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    /// Half the memory and bandwidth; needs a device with f16 arithmetic (WebGPU/Vulkan
    /// `shader-f16`).
    F16,
}

impl Precision {
    /// Burn's dtype for it.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }

    /// The name `FromStr` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Fails with a clear message when `device` cannot compute in this precision.
    pub fn check(self, device: &Device) -> Result<()> {
        if device.supports_dtype(self.dtype()) {
            Ok(())
        } else {
            Err(Error::Backend(format!(
                "this device has no {} arithmetic (for f16 a GPU adapter needs shader-f16); use f32",
                self.name()
            )))
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(Error::Backend(format!(
                "unknown precision {other:?}: use f32 or f16"
            ))),
        }
    }
}

/// A loaded model: the transformer on its device and, when the directory has one, its tokenizer.
pub struct Model {
    pub transformer: Transformer,
    pub tokenizer: Option<TextTokenizer>,
}

impl Model {
    /// Loads a Hugging Face model directory onto `device` in f32.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_files(ModelFiles::from_dir(dir)?, device)
    }

    /// Loads a model from its files held in memory (as a browser hands them over), in f32.
    pub fn from_files(files: ModelFiles, device: &Device) -> Result<Self> {
        Self::from_files_in(files, device, Precision::F32)
    }

    /// Loads a model from its files in `precision`.
    pub fn from_files_in(
        mut files: ModelFiles,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        precision.check(device)?;
        let config = ModelConfig::from_json(files.required_text("config.json")?)?;
        let tokenizer = files
            .get("tokenizer.json")
            .is_some()
            .then(|| TextTokenizer::from_files(&files, &config.eos_token_ids))
            .transpose()?;
        let checkpoint = Checkpoint::from_files(&mut files)?;
        let transformer = Transformer::load(config, &checkpoint, device, precision)?;
        Ok(Self {
            transformer,
            tokenizer,
        })
    }

    /// The tokenizer, or an error saying the model directory has none.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| crate::error::Error::MissingFile("tokenizer.json".into()))
    }

    /// Ids that end generation: the tokenizer's if present, else config.json's.
    pub fn stop_ids(&self) -> Vec<u32> {
        match &self.tokenizer {
            Some(t) => t.eos_ids().to_vec(),
            None => self.transformer.config().eos_token_ids.clone(),
        }
    }
}
