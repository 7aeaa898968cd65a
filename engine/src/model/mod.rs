//! Hugging Face checkpoints: config, safetensors weights, and the transformer that runs them.

pub mod checkpoint;
pub mod config;
pub mod files;
pub mod random;
pub mod rope;
pub mod safetensors;
pub mod transformer;

use std::path::Path;

use burn::prelude::*;

use crate::error::Result;
use crate::tokenize::TextTokenizer;
use checkpoint::Checkpoint;
use config::ModelConfig;
use files::ModelFiles;
use transformer::Transformer;

/// A loaded model: the transformer on its device and, when the directory has one, its tokenizer.
pub struct Model {
    pub transformer: Transformer,
    pub tokenizer: Option<TextTokenizer>,
}

impl Model {
    /// Loads a Hugging Face model directory onto `device`.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_files(ModelFiles::from_dir(dir)?, device)
    }

    /// Loads a model from its files held in memory (as a browser hands them over).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_json(files.required_text("config.json")?)?;
        let tokenizer = files
            .get("tokenizer.json")
            .is_some()
            .then(|| TextTokenizer::from_files(&files, &config.eos_token_ids))
            .transpose()?;
        let checkpoint = Checkpoint::from_files(&mut files)?;
        let transformer = Transformer::load(config, &checkpoint, device)?;
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
