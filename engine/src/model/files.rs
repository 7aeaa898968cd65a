//! The files of a model, held in memory by name, whether they came from a Hugging Face model
//! folder on disk, a GGUF file, or bytes handed over by a browser.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::random_access::{DiskFile, RandomAccessFile, WeightsFile};

/// Files a model directory may hold that the engine reads (besides `*.safetensors` shards).
const KNOWN_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// A model directory's files, by file name (no folders): held in memory, but for weights files
/// on disk (or in a browser's storage), which are read a tensor at a time as the model loads.
#[derive(Clone, Default)]
pub struct ModelFiles {
    files: HashMap<String, Vec<u8>>,
    /// Files read a range at a time, by name.
    ranges: HashMap<String, Arc<dyn RandomAccessFile>>,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.files.keys().chain(self.ranges.keys()).collect();
        names.sort();
        f.debug_struct("ModelFiles").field("names", &names).finish()
    }
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
        let mut files = Self::default();
        files.insert_ranges(&name, Arc::new(open_disk_file(path)?));
        Ok(files)
    }

    /// Reads the known files, every `*.safetensors` and every `*.gguf` file of the folder `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
        let mut files = Self::default();
        for entry in entries {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".gguf") || name.ends_with(".safetensors") {
                files.insert_ranges(&name, Arc::new(open_disk_file(&path)?));
            } else if KNOWN_FILES.contains(&name.as_str()) {
                let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
                files.insert(&name, bytes);
            }
        }
        if files.get("config.json").is_none() && !files.names().any(|n| n.ends_with(".gguf")) {
            return Err(Error::MissingFile(format!(
                "config.json (in {})",
                dir.display()
            )));
        }
        Ok(files)
    }

    /// Wraps files already in memory, given as (file name, bytes).
    pub fn from_memory(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        Self {
            files: files.into_iter().collect(),
            ranges: HashMap::new(),
        }
    }

    /// Every file's name, in no order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files
            .keys()
            .chain(self.ranges.keys())
            .map(String::as_str)
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
        for (name, file) in &self.ranges {
            let bytes = file
                .read_range(0..file.len())
                .map_err(|reason| Error::Gguf {
                    file: name.clone(),
                    problem: crate::error::GgufError::Read(reason),
                })?;
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// Adds (or replaces) the file `name`.
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.ranges.remove(name);
        self.files.insert(name.to_string(), bytes);
    }

    /// Adds (or replaces) the file `name`, read a range at a time as the model loads.
    pub fn insert_ranges(&mut self, name: &str, file: Arc<dyn RandomAccessFile>) {
        self.files.remove(name);
        self.ranges.insert(name.to_string(), file);
    }

    /// The bytes of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// The name of the model's GGUF file, if it is one (a folder with several is refused).
    pub fn gguf_name(&self) -> Result<Option<String>> {
        let mut names: Vec<&str> = self.names().filter(|n| n.ends_with(".gguf")).collect();
        names.sort();
        match names.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.to_string())),
            several => Err(Error::SeveralGgufFiles(several.join(", "))),
        }
    }

    /// Removes and returns `name`, held in memory (weights are moved out, not copied).
    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        self.files.remove(name)
    }

    /// Removes and returns the weights file `name`, in memory or read a range at a time.
    pub fn take_weights(&mut self, name: &str) -> Option<WeightsFile> {
        match self.ranges.remove(name) {
            Some(file) => Some(WeightsFile::Ranges(file)),
            None => self
                .files
                .remove(name)
                .map(|bytes| WeightsFile::InMemory(Arc::new(bytes))),
        }
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

/// Opens a weights file on disk to be read a range at a time.
fn open_disk_file(path: &Path) -> Result<DiskFile> {
    DiskFile::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
