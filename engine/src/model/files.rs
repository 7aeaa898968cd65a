//! The files of a model, held in memory by name, whether they came from a Hugging Face model
//! folder on disk, a GGUF file, or bytes handed over by a browser.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Files a model directory may hold that the engine reads (besides `*.safetensors` shards).
const KNOWN_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// A model directory's files, by file name (no folders).
#[derive(Clone, Debug, Default)]
pub struct ModelFiles {
    files: HashMap<String, Vec<u8>>,
}

impl ModelFiles {
    /// Reads a model from `path`: a Hugging Face model folder ([`ModelFiles::from_dir`]) or one
    /// GGUF file.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            return Err(Error::NotAModel(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_memory([(name, bytes)]))
    }

    /// Reads the known files, every `*.safetensors` and every `*.gguf` file of the folder `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
        let mut files = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if KNOWN_FILES.contains(&name.as_str())
                || name.ends_with(".safetensors")
                || name.ends_with(".gguf")
            {
                let path = entry.path();
                let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
                files.insert(name, bytes);
            }
        }
        if !files.contains_key("config.json") && !files.keys().any(|n| n.ends_with(".gguf")) {
            return Err(Error::MissingFile(format!(
                "config.json (in {})",
                dir.display()
            )));
        }
        Ok(Self { files })
    }

    /// Wraps files already in memory, given as (file name, bytes).
    pub fn from_memory(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        Self {
            files: files.into_iter().collect(),
        }
    }

    /// Writes every file into the folder `dir`, creating it if missing.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// Adds (or replaces) the file `name`.
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(name.to_string(), bytes);
    }

    /// The bytes of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// The name of the model's GGUF file, if it is one (a folder with several is refused).
    pub fn gguf_name(&self) -> Result<Option<String>> {
        let mut names: Vec<&String> = self.files.keys().filter(|n| n.ends_with(".gguf")).collect();
        names.sort();
        match names.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.to_string())),
            several => Err(Error::SeveralGgufFiles(
                several
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Removes and returns `name` (weights are moved out, not copied).
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        self.files.remove(name)
    }

    /// `name` as UTF-8 text, if present.
    pub fn text(&self, name: &str) -> Result<Option<&str>> {
        self.get(name)
            .map(|bytes| {
                std::str::from_utf8(bytes).map_err(|e| Error::Json {
                    file: name.to_string(),
                    reason: format!("not UTF-8: {e}"),
                })
            })
            .transpose()
    }

    /// `name` as UTF-8 text; an error if the file is absent.
    pub fn required_text(&self, name: &str) -> Result<&str> {
        self.text(name)?
            .ok_or_else(|| Error::MissingFile(name.to_string()))
    }

    /// `name` parsed as JSON, if present.
    pub fn json(&self, name: &str) -> Result<Option<serde_json::Value>> {
        self.text(name)?
            .map(|text| {
                serde_json::from_str(text).map_err(|e| Error::Json {
                    file: name.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }
}
