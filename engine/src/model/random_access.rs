//! Weights files read a byte range at a time, so that a model loads tensor by tensor without
//! the whole file in memory: a file on disk ([`DiskFile`]), a browser Blob (in the web worker),
//! or bytes already in memory.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file whose bytes are read a range at a time.
pub trait RandomAccessFile {
    /// Its length in bytes.
    fn len(&self) -> u64;

    /// Whether it holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of `range` (inside `0..len()`), or why they could not be read.
    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, String>;
}

/// A weights file as a model's files hold it: its bytes in memory (the weights read from it
/// share them), or a file read a range at a time (each tensor's bytes read as it loads).
#[derive(Clone)]
pub enum WeightsFile {
    InMemory(Arc<Vec<u8>>),
    Ranges(Arc<dyn RandomAccessFile>),
}

impl WeightsFile {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::InMemory(bytes) => bytes.len() as u64,
            Self::Ranges(file) => file.len(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of `range`: borrowed when in memory, read otherwise.
    pub fn read(&self, range: Range<usize>) -> Result<Cow<'_, [u8]>, String> {
        match self {
            Self::InMemory(bytes) => bytes.get(range.clone()).map(Cow::Borrowed).ok_or_else(|| {
                format!(
                    "bytes {}..{} lie beyond its {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                )
            }),
            Self::Ranges(file) => file
                .read_range(range.start as u64..range.end as u64)
                .map(Cow::Owned),
        }
    }

    /// All of its bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::InMemory(bytes) => Ok(bytes.to_vec()),
            Self::Ranges(file) => file.read_range(0..file.len()),
        }
    }
}

impl std::fmt::Debug for WeightsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InMemory(bytes) => write!(f, "InMemory({} bytes)", bytes.len()),
            Self::Ranges(file) => write!(f, "Ranges({} bytes)", file.len()),
        }
    }
}

/// Bytes already in memory, read as a file.
impl RandomAccessFile for Vec<u8> {
    fn len(&self) -> u64 {
        self.len() as u64
    }

    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, String> {
        let (start, end) = (to_usize(range.start)?, to_usize(range.end)?);
        self.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("bytes {start}..{end} lie beyond its {} bytes", self.len()))
    }
}

/// A file on disk, opened once and read a range at a time.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
    len: u64,
    file: Mutex<File>,
}

impl DiskFile {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            len,
            file: Mutex::new(file),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RandomAccessFile for DiskFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, String> {
        if range.start > range.end || range.end > self.len {
            return Err(format!(
                "bytes {}..{} lie beyond its {} bytes",
                range.start, range.end, self.len
            ));
        }
        let mut bytes = vec![0; to_usize(range.end - range.start)?];
        let mut file = self
            .file
            .lock()
            .map_err(|_| "an earlier read of it failed midway".to_string())?;
        file.seek(SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    }
}

/// A byte offset as an index into memory, where it fits.
fn to_usize(offset: u64) -> Result<usize, String> {
    usize::try_from(offset).map_err(|_| format!("offset {offset} does not fit in memory here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_and_memory_files_read_the_same_ranges() {
        let bytes: Vec<u8> = (0..=255).collect();
        let path = std::env::temp_dir().join(format!("ets-random-access-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let disk = DiskFile::open(&path).unwrap();
        assert_eq!(RandomAccessFile::len(&disk), 256);
        for range in [0..0, 0..1, 10..20, 200..256] {
            assert_eq!(
                disk.read_range(range.clone()).unwrap(),
                bytes.read_range(range).unwrap()
            );
        }
        assert!(disk.read_range(250..257).is_err());
        assert!(bytes.read_range(250..257).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
