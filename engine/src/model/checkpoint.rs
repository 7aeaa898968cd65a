//! Weights of a checkpoint: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::files::ModelFiles;
use crate::model::safetensors::SafetensorsFile;

/// All weight files of a checkpoint, searchable by tensor name.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<SafetensorsFile>,
    /// Tensor name → index into `shards`.
    location: HashMap<String, usize>,
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
    /// Moves the weight files out of `files` and parses their headers.
    pub fn from_files(files: &mut ModelFiles) -> Result<Self> {
        let shard_names: Vec<String> = match files.json("model.safetensors.index.json")? {
            Some(index) => shard_names(&index)?,
            None => vec!["model.safetensors".to_string()],
        };
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut location = HashMap::new();
        for name in shard_names {
            let bytes = files
                .take(&name)
                .ok_or_else(|| Error::MissingFile(name.clone()))?;
            let shard = SafetensorsFile::parse(&name, bytes)?;
            for tensor in shard.tensor_names() {
                location.insert(tensor.to_string(), shards.len());
            }
            shards.push(shard);
        }
        Ok(Self { shards, location })
    }

    /// Whether the checkpoint holds `tensor`.
    pub fn contains(&self, tensor: &str) -> bool {
        self.location.contains_key(tensor)
    }

    /// `tensor` as f32 values (row-major), checked against the `expected` shape.
    pub fn read(&self, tensor: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let shard = self
            .location
            .get(tensor)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::MissingTensor(tensor.to_string()))?;
        let (values, shape) = shard.read_f32(tensor)?;
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
