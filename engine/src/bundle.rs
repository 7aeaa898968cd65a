//! A model as a front end loads it: the transformer on its device with its tokenizer (and chat
//! template), read from a Hugging Face model directory, a GGUF file, or their files in memory.
//! Above both [`crate::model`] and [`crate::tokenize`]; [`Model::solve`] (in [`crate::solve`])
//! runs a question on it.

use std::path::Path;

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::ModelConfig;
use crate::model::files::ModelFiles;
use crate::model::gguf::GgufFile;
use crate::model::gguf_model::config_from_gguf;
use crate::model::random_access::WeightsFile;
use crate::model::transformer::Transformer;
use crate::quant::TensorType;
use crate::tokenize::TextTokenizer;

/// How a model loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Float type of weights and activations.
    pub precision: Precision,
    /// Block format (Q8_0 or Q4_K) that weights stored as floats are quantized into on load,
    /// for the block kernels (CPU and wgpu); None keeps them as they are.
    pub quantize: Option<TensorType>,
}

impl From<Precision> for LoadOptions {
    /// `precision`, nothing quantized.
    fn from(precision: Precision) -> Self {
        Self {
            precision,
            quantize: None,
        }
    }
}

/// A loaded model: the transformer on its device and, when the directory has one, its tokenizer.
pub struct Model {
    pub transformer: Transformer,
    pub tokenizer: Option<TextTokenizer>,
}

impl Model {
    /// Loads a Hugging Face model directory or a GGUF file onto `device` in f32.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_files(ModelFiles::from_path(dir)?, device)
    }

    /// Loads a model from its files (held in memory, or a GGUF file read a tensor at a time),
    /// in f32.
    pub fn from_files(files: ModelFiles, device: &Device) -> Result<Self> {
        Self::from_files_in(files, device, LoadOptions::default())
    }

    /// Loads a model from its files with `options` (float type, quantization).
    pub fn from_files_in(
        mut files: ModelFiles,
        device: &Device,
        options: impl Into<LoadOptions>,
    ) -> Result<Self> {
        let LoadOptions {
            precision,
            quantize,
        } = options.into();
        precision.check(device)?;
        if let Some(t) = quantize
            && !matches!(t, TensorType::Q8_0 | TensorType::Q4_K)
        {
            return Err(Error::Quantize {
                tensor_type: t.name(),
                reason: "the engine quantizes checkpoints on load to q8_0 and q4_k only".into(),
            });
        }
        if let Some((name, file, bytes)) = gguf_header(&mut files)? {
            let config = config_from_gguf(&name, &file)?;
            let tokenizer = file
                .get("tokenizer.ggml.model")
                .is_some()
                .then(|| TextTokenizer::from_gguf(&name, &file))
                .transpose()?;
            let checkpoint =
                Checkpoint::from_gguf(&name, file, bytes, &config).quantizing(quantize);
            let transformer = Transformer::load(config, &checkpoint, device, precision)?;
            return Ok(Self {
                transformer,
                tokenizer,
            });
        }
        let config = ModelConfig::from_json(files.required_text("config.json")?)?;
        let tokenizer = files
            .get("tokenizer.json")
            .is_some()
            .then(|| TextTokenizer::from_files(&files, &config.eos_token_ids))
            .transpose()?;
        let checkpoint = Checkpoint::from_files(&mut files)?.quantizing(quantize);
        let transformer = Transformer::load(config, &checkpoint, device, precision)?;
        Ok(Self {
            transformer,
            tokenizer,
        })
    }

    /// The tokenizer and context length (tokens) of a model's files, read without its weights:
    /// for a model served elsewhere ([`crate::remote::RemoteModel`]).
    pub fn tokenizer_of(mut files: ModelFiles) -> Result<(TextTokenizer, usize)> {
        if let Some((name, file, _)) = gguf_header(&mut files)? {
            let config = config_from_gguf(&name, &file)?;
            let tokenizer = TextTokenizer::from_gguf(&name, &file)?;
            return Ok((tokenizer, config.max_position_embeddings));
        }
        let config = ModelConfig::from_json(files.required_text("config.json")?)?;
        let tokenizer = TextTokenizer::from_files(&files, &config.eos_token_ids)?;
        Ok((tokenizer, config.max_position_embeddings))
    }

    /// The tokenizer, or an error saying the model directory has none.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::MissingFile("tokenizer.json".into()))
    }

    /// Ids that end generation: the tokenizer's if present, else config.json's.
    pub fn stop_ids(&self) -> Vec<u32> {
        match &self.tokenizer {
            Some(t) => t.eos_ids().to_vec(),
            None => self.transformer.config().eos_token_ids.clone(),
        }
    }
}

/// The GGUF file among `files`, if there is one: its name, its header (only the header is read
/// here; each tensor's bytes are read as the model loads) and its bytes.
fn gguf_header(files: &mut ModelFiles) -> Result<Option<(String, GgufFile, WeightsFile)>> {
    let Some(name) = files.gguf_name()? else {
        return Ok(None);
    };
    let bytes = files
        .take_weights(&name)
        .ok_or_else(|| Error::MissingFile(name.clone()))?;
    let file = match &bytes {
        WeightsFile::InMemory(bytes) => GgufFile::parse(&name, bytes)?,
        WeightsFile::Ranges(file) => GgufFile::read_header(&name, file.as_ref())?,
    };
    Ok(Some((name, file, bytes)))
}
