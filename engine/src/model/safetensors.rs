//! A strict reader of the safetensors format: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the raw data.
//!
//! Every inconsistency (truncation, a header longer than the file, offsets outside the data,
//! a byte length that disagrees with the shape) is a typed [`Error`], never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use half::{bf16, f16};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::random_access::WeightsFile;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
}

/// Where one tensor lives inside a [`SafetensorsFile`].
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file's data section.
    pub range: std::ops::Range<usize>,
}

/// One parsed safetensors file: its header, and its bytes in memory or read a tensor at a time.
#[derive(Debug)]
pub struct SafetensorsFile {
    name: String,
    bytes: WeightsFile,
    data_start: usize,
    tensors: HashMap<String, TensorEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Headers larger than this are refused before parsing (the format's own reference uses 100 MB).
const MAX_HEADER_BYTES: usize = 100 << 20;

impl SafetensorsFile {
    /// Parses `bytes` (the whole file); `name` is used in error messages.
    pub fn parse(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::read(name, WeightsFile::InMemory(Arc::new(bytes)))
    }

    /// Parses the header of `file` (its first 8 bytes, then the header they announce); each
    /// tensor's bytes are read when asked for. `name` is used in error messages.
    pub fn read(name: &str, file: WeightsFile) -> Result<Self> {
        let bad = |reason: String| Error::Safetensors {
            file: name.to_string(),
            reason,
        };
        let file_len = usize::try_from(file.len()).unwrap_or(usize::MAX);
        if file_len < 8 {
            return Err(bad(format!(
                "{file_len} bytes is shorter than the 8-byte header length (truncated)"
            )));
        }
        let read = |range: std::ops::Range<usize>| {
            file.read(range)
                .map(|b| b.into_owned())
                .map_err(|e| bad(format!("cannot read it: {e}")))
        };
        let len_bytes: [u8; 8] = read(0..8)?
            .try_into()
            .map_err(|_| bad("its first 8 bytes could not be read".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        let available = file_len - 8;
        if header_len > available as u64 {
            return Err(bad(format!(
                "the header claims {header_len} bytes but only {available} follow (truncated or corrupt)"
            )));
        }
        let header_len = header_len as usize;
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "header of {header_len} bytes is implausibly large"
            )));
        }
        let data_start = 8 + header_len;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&read(8..data_start)?)
                .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let data_len = file_len - data_start;
        let mut tensors = HashMap::with_capacity(header.len());
        for (tensor, value) in header {
            if tensor == "__metadata__" {
                continue;
            }
            let raw: RawEntry = serde_json::from_value(value)
                .map_err(|e| bad(format!("entry for `{tensor}` is malformed: {e}")))?;
            let dtype = match raw.dtype.as_str() {
                "F32" => Dtype::F32,
                "F16" => Dtype::F16,
                "BF16" => Dtype::BF16,
                other => {
                    return Err(Error::UnsupportedDtype {
                        tensor,
                        dtype: other.to_string(),
                    });
                }
            };
            let (start, end) = raw.data_offsets;
            if start > end || end > data_len {
                return Err(Error::TensorOutOfRange {
                    file: name.to_string(),
                    tensor,
                    start,
                    end,
                    len: data_len,
                });
            }
            let elements = raw
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("shape of `{tensor}` overflows")))?;
            if elements.checked_mul(dtype.size()) != Some(end - start) {
                return Err(bad(format!(
                    "`{tensor}` has shape {:?} ({elements} elements of {} bytes) but {} bytes",
                    raw.shape,
                    dtype.size(),
                    end - start
                )));
            }
            tensors.insert(
                tensor,
                TensorEntry {
                    dtype,
                    shape: raw.shape,
                    range: start..end,
                },
            );
        }
        Ok(Self {
            name: name.to_string(),
            bytes: file,
            data_start,
            tensors,
        })
    }

    /// The file name given to [`SafetensorsFile::parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The names of all tensors in the file.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The dtype, shape and byte range of `tensor`, if present.
    pub fn entry(&self, tensor: &str) -> Option<&TensorEntry> {
        self.tensors.get(tensor)
    }

    /// `tensor`'s values converted to f32 (row-major), with its shape.
    pub fn read_f32(&self, tensor: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let entry = self
            .tensors
            .get(tensor)
            .ok_or_else(|| Error::MissingTensor(tensor.to_string()))?;
        let raw = self
            .bytes
            .read(self.data_start + entry.range.start..self.data_start + entry.range.end)
            .map_err(|e| Error::Safetensors {
                file: self.name.clone(),
                reason: format!("cannot read `{tensor}`: {e}"),
            })?;
        let values = match entry.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok((values, entry.shape.clone()))
    }
}

/// Serialises tensors given as f32 values into safetensors bytes, stored as `dtype` (f16 and
/// bf16 round to nearest).
pub fn serialize(tensors: &[(&str, &[usize], &[f32])], dtype: Dtype) -> Vec<u8> {
    let name = match dtype {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
    };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (tensor, shape, values) in tensors {
        let end = offset + values.len() * dtype.size();
        header.insert(
            tensor.to_string(),
            serde_json::json!({"dtype": name, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).expect("a JSON map serialises");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, values) in tensors {
        for &v in *values {
            match dtype {
                Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                Dtype::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made of a raw JSON `header` followed by `data`.
    fn file(header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(data);
        bytes
    }

    fn sample() -> Vec<u8> {
        serialize(
            &[("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), ("b", &[1], &[5.0])],
            Dtype::F32,
        )
    }

    #[test]
    fn round_trip() {
        let file = SafetensorsFile::parse("x", sample()).unwrap();
        assert_eq!(
            file.read_f32("a").unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0], vec![2, 2])
        );
        assert_eq!(file.read_f32("b").unwrap().0, vec![5.0]);
    }

    #[test]
    fn truncated_file() {
        let err = SafetensorsFile::parse("x", vec![1, 2, 3]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // Cutting the data section puts the last tensor out of range.
        let mut bytes = sample();
        bytes.truncate(bytes.len() - 2);
        let err = SafetensorsFile::parse("x", bytes).unwrap_err();
        assert!(matches!(err, Error::TensorOutOfRange { .. }), "{err}");
    }

    #[test]
    fn header_length_beyond_file() {
        let mut bytes = sample();
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = SafetensorsFile::parse("x", bytes).unwrap_err();
        assert!(err.to_string().contains("header claims"), "{err}");
    }

    #[test]
    fn offsets_out_of_range() {
        let header = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,4000]}}"#;
        let bytes = file(header, &[0u8; 16]);
        let err = SafetensorsFile::parse("x", bytes).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TensorOutOfRange {
                    end: 4000,
                    len: 16,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn byte_length_disagrees_with_shape() {
        let header = br#"{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#;
        let bytes = file(header, &[0u8; 16]);
        let err = SafetensorsFile::parse("x", bytes).unwrap_err();
        assert!(err.to_string().contains("shape [5]"), "{err}");
    }

    #[test]
    fn half_precision_values() {
        let header = br#"{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[2,4]}}"#;
        let mut data = f16::from_f32(1.5).to_le_bytes().to_vec();
        data.extend_from_slice(&bf16::from_f32(-2.0).to_le_bytes());
        let parsed = SafetensorsFile::parse("x", file(header, &data)).unwrap();
        assert_eq!(parsed.read_f32("h").unwrap().0, vec![1.5]);
        assert_eq!(parsed.read_f32("b").unwrap().0, vec![-2.0]);
    }

    #[test]
    fn half_precision_round_trip() {
        let values = [1.5f32, -0.1, 3.0e-3, 60000.0];
        for dtype in [Dtype::F16, Dtype::BF16] {
            let bytes = serialize(&[("w", &[4], &values)], dtype);
            let (read, shape) = SafetensorsFile::parse("x", bytes)
                .unwrap()
                .read_f32("w")
                .unwrap();
            assert_eq!(shape, vec![4]);
            for (a, b) in values.iter().zip(&read) {
                // 11 (f16) and 8 (bf16) significant bits: relative error below 2^-8.
                assert!((a - b).abs() <= a.abs() / 256.0, "{dtype:?}: {a} vs {b}");
            }
        }
    }
}
