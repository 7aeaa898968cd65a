//! Weights of a checkpoint, read by their Hugging Face names: one `model.safetensors`, shards
//! listed by `model.safetensors.index.json`, or a GGUF file (its tensors dequantized, Llama's Q
//! and K rows put back in Hugging Face's order).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::kernels::quant_matmul::{BlockBytes, QuantMatrix};
use crate::model::config::{Architecture, ModelConfig};
use crate::model::files::ModelFiles;
use crate::model::gguf::{GgufFile, TensorInfo};
use crate::model::gguf_model::{gguf_tensor_name, permuted_heads, unpermute_rows};
use crate::model::random_access::WeightsFile;
use crate::model::safetensors::SafetensorsFile;
use crate::quant::{TensorType, dequantize, quantize};

/// All weights of a checkpoint, searchable by tensor name.
#[derive(Debug)]
pub struct Checkpoint {
    source: Source,
    /// The block format that matrices stored as floats are quantized into by
    /// [`Checkpoint::read_quantized`], if any.
    quantize: Option<TensorType>,
}

#[derive(Debug)]
enum Source {
    Safetensors {
        shards: Vec<SafetensorsFile>,
        /// Tensor name → index into `shards`.
        location: HashMap<String, usize>,
    },
    Gguf {
        name: String,
        file: GgufFile,
        /// The file's bytes: in memory (shared with the quantized weights read from it), or
        /// read a tensor at a time.
        bytes: WeightsFile,
        /// The architecture and (heads, KV heads), for Llama's permuted Q and K rows.
        architecture: Architecture,
        heads: (usize, usize),
    },
}

/// The shard files a `model.safetensors.index.json` names (sorted, each once); a name with a
/// path in it is refused.
pub fn shard_names(index: &serde_json::Value) -> Result<Vec<String>> {
    let bad = |reason: &str| Error::Json {
        file: "model.safetensors.index.json".into(),
        reason: reason.into(),
    };
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if names
        .iter()
        .any(|n| n.contains('/') || n.contains('\\') || n.contains(".."))
    {
        return Err(bad("a shard name has a path in it"));
    }
    Ok(names)
}

impl Checkpoint {
    /// Moves the weight files out of `files` and parses their headers (the tensors are read as
    /// the model loads them).
    pub fn from_files(files: &mut ModelFiles) -> Result<Self> {
        let shard_names: Vec<String> = match files.json("model.safetensors.index.json")? {
            Some(index) => shard_names(&index)?,
            None => vec!["model.safetensors".to_string()],
        };
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut location = HashMap::new();
        for name in shard_names {
            let bytes = files
                .take_weights(&name)
                .ok_or_else(|| Error::MissingFile(name.clone()))?;
            let shard = SafetensorsFile::read(&name, bytes)?;
            for tensor in shard.tensor_names() {
                location.insert(tensor.to_string(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Self {
            source: Source::Safetensors { shards, location },
            quantize: None,
        })
    }

    /// The tensors of the GGUF file `name` (its header parsed as `file` from `bytes`) of a
    /// model `config` describes.
    pub fn from_gguf(name: &str, file: GgufFile, bytes: WeightsFile, config: &ModelConfig) -> Self {
        Self {
            source: Source::Gguf {
                name: name.to_string(),
                file,
                bytes,
                architecture: config.architecture,
                heads: (config.num_heads, config.num_kv_heads),
            },
            quantize: None,
        }
    }

    /// The checkpoint with matrices stored as floats quantized into `quantize` (Q8_0 or Q4_K)
    /// as [`Checkpoint::read_quantized`] reads them.
    pub fn quantizing(self, quantize: Option<TensorType>) -> Self {
        Self { quantize, ..self }
    }

    /// Whether the checkpoint holds `tensor`.
    pub fn contains(&self, tensor: &str) -> bool {
        match &self.source {
            Source::Safetensors { location, .. } => location.contains_key(tensor),
            Source::Gguf { file, .. } => {
                gguf_tensor_name(tensor).is_some_and(|name| file.tensor(&name).is_some())
            }
        }
    }

    /// `tensor` in a block-quantized format, checked against the `expected` shape [out, in]:
    /// as a GGUF file stores it (Llama's Q and K rows put back in Hugging Face's order), or,
    /// for a matrix stored as floats when the checkpoint is quantizing, quantized now (in Q8_0
    /// when its rows are not whole blocks of the format asked for). None for any other tensor.
    pub fn read_quantized(&self, tensor: &str, expected: &[usize]) -> Result<Option<QuantMatrix>> {
        if let Some(q) = self.read_gguf_blocks(tensor, expected)? {
            return Ok(Some(q));
        }
        let Some(t) = self.quantize else {
            return Ok(None);
        };
        let [n, k] = expected else {
            return Ok(None);
        };
        // Rows that are not whole blocks of `t` (Q4_K's 256 values: SmolLM2's 576-wide rows)
        // fall back to Q8_0's 32, as llama.cpp falls back to a smaller block for them.
        let t = match t {
            _ if k.is_multiple_of(t.block_len()) => t,
            _ if k.is_multiple_of(TensorType::Q8_0.block_len()) => TensorType::Q8_0,
            _ => return Ok(None),
        };
        if !self.contains(tensor) {
            return Ok(None);
        }
        let values = self.read(tensor, expected)?;
        QuantMatrix::new(t, *n, *k, quantize(t, &values)?).map(Some)
    }

    /// A GGUF tensor of a quantized type, its rows shared with the file's bytes.
    fn read_gguf_blocks(&self, tensor: &str, expected: &[usize]) -> Result<Option<QuantMatrix>> {
        let Source::Gguf {
            name,
            file,
            bytes,
            architecture,
            heads,
        } = &self.source
        else {
            return Ok(None);
        };
        let Some(info) = gguf_tensor_name(tensor).and_then(|n| file.tensor(&n)) else {
            return Ok(None);
        };
        if !info.tensor_type.is_quantized() || info.dims.len() != 2 {
            return Ok(None);
        }
        let shape = checked_shape(info, expected)?;
        let (n, k) = (shape[0], shape[1]);
        let rows = match (
            permuted_heads(*architecture, tensor, heads.0, heads.1),
            bytes,
        ) {
            // Rows are whole blocks: un-permuting moves rows of bytes.
            (Some(h), bytes) => {
                let raw = tensor_bytes(name, bytes, info)?;
                BlockBytes::from(unpermute_rows(&raw, raw.len() / n, h))
            }
            // The file's own bytes, shared (the reader checked the range against the file).
            (None, WeightsFile::InMemory(bytes)) => BlockBytes::shared(bytes, info.range.clone())
                .ok_or_else(|| {
                Error::MissingTensor(format!("{tensor}: its bytes are outside the file"))
            })?,
            (None, bytes) => BlockBytes::from(tensor_bytes(name, bytes, info)?.into_owned()),
        };
        QuantMatrix::new(info.tensor_type, n, k, rows).map(Some)
    }

    /// Llama 3's rope scaling as a GGUF file stores it: `rope_freqs.weight`, one divisor per
    /// rotary frequency (`half` of them, all finite and positive); None when absent (and for
    /// safetensors checkpoints, whose config.json describes the scaling).
    pub fn rope_freq_divisors(&self, half: usize) -> Result<Option<Vec<f32>>> {
        let Source::Gguf {
            name, file, bytes, ..
        } = &self.source
        else {
            return Ok(None);
        };
        let Some(info) = file.tensor("rope_freqs.weight") else {
            return Ok(None);
        };
        let mut values = vec![0.0; info.elements()];
        dequantize(
            info.tensor_type,
            &tensor_bytes(name, bytes, info)?,
            &mut values,
        )?;
        if values.len() != half || values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Config(format!(
                "{name}: rope_freqs.weight must hold {half} positive factors (one per rotary \
                 frequency), found {} values",
                values.len()
            )));
        }
        Ok(Some(values))
    }

    /// `tensor` as f32 values (row-major), checked against the `expected` shape.
    pub fn read(&self, tensor: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (values, shape) = match &self.source {
            Source::Safetensors { shards, location } => {
                let shard = location
                    .get(tensor)
                    .map(|&i| &shards[i])
                    .ok_or_else(|| Error::MissingTensor(tensor.to_string()))?;
                shard.read_f32(tensor)?
            }
            Source::Gguf {
                name,
                file,
                bytes,
                architecture,
                heads,
            } => {
                let info = gguf_tensor_name(tensor)
                    .and_then(|n| file.tensor(&n))
                    .ok_or_else(|| Error::MissingTensor(format!("{tensor} (in {name})")))?;
                let shape = checked_shape(info, expected)?;
                let mut values = vec![0.0; info.elements()];
                dequantize(
                    info.tensor_type,
                    &tensor_bytes(name, bytes, info)?,
                    &mut values,
                )?;
                if let Some(h) = permuted_heads(*architecture, tensor, heads.0, heads.1) {
                    // A weight's rows hold its input dimension; a bias has one value a row.
                    let row_len = if info.dims.len() > 1 { info.dims[0] } else { 1 };
                    values = unpermute_rows(&values, row_len, h);
                }
                (values, shape)
            }
        };
        if shape != expected {
            return Err(Error::ShapeMismatch {
                tensor: tensor.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(values)
    }
}

/// The bytes of GGUF tensor `info` in the file `name` (read now unless they are in memory).
fn tensor_bytes<'b>(
    name: &str,
    bytes: &'b WeightsFile,
    info: &TensorInfo,
) -> Result<std::borrow::Cow<'b, [u8]>> {
    bytes
        .read(info.range.clone())
        .map_err(|reason| Error::Gguf {
            file: name.to_string(),
            problem: crate::error::GgufError::Read(format!("tensor `{}`: {reason}", info.name)),
        })
}

/// A GGUF tensor's shape in Hugging Face's order, if it is the `expected` one.
fn checked_shape(info: &TensorInfo, expected: &[usize]) -> Result<Vec<usize>> {
    let shape = info.shape();
    if shape != expected {
        return Err(Error::ShapeMismatch {
            tensor: info.name.clone(),
            expected: expected.to_vec(),
            found: shape,
        });
    }
    Ok(shape)
}
