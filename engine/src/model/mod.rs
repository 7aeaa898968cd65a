//! Hugging Face checkpoints: config, safetensors weights, and the transformer that runs them with
//! its attention over the forkable KV cache (the tokenizer and the loaded bundle of both live above, in [`crate::tokenize`] and
//! [`crate::bundle`]).

pub mod checkpoint;
pub mod config;
pub mod files;
pub mod gguf;
pub mod gguf_model;
pub mod kv_cache;
pub mod random;
pub mod random_access;
pub mod rope;
pub mod safetensors;
mod split;
pub mod transformer;

use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};

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
