//! A strict reader of GGUF files (versions 2 and 3), llama.cpp's single-file model format: a
//! header, typed metadata (hyperparameters, tokenizer, chat template), tensor infos, then the
//! tensors' data at aligned offsets. All little-endian.
//!
//! Every count, length and offset is checked against the bytes that remain before it is used,
//! and nothing is allocated in proportion to a claimed count until the file is known to hold
//! that much, so a damaged or lying file ends in a [`GgufError`] naming the problem — never a
//! panic, a huge allocation or a long loop (each element read consumes bytes of the file).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, GgufError, Result};
use crate::model::random_access::RandomAccessFile;
use crate::quant::TensorType;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent, in bytes.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The most dimensions a tensor may have (ggml's limit).
pub const MAX_DIMS: usize = 4;
/// The longest tensor name, in bytes (ggml's limit, 64 with its NUL).
pub const MAX_TENSOR_NAME: usize = 63;
/// The most bytes a GGUF header (metadata, vocabulary, tensor infos) may take when the file is
/// read a range at a time: large vocabularies take 5–20 MB.
pub const MAX_HEADER_BYTES: usize = 256 << 20;
/// How much of a file is read first for its header (more is read when it goes on).
const FIRST_HEADER_READ: usize = 4 << 20;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: elements of one type (arrays of arrays are refused, as llama.cpp does).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    /// The GGUF name of the value's type (arrays: `array`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// An integer of any width that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float (f32 or f64).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml's order, innermost first: [row length, rows, …] (a PyTorch weight of
    /// shape [out, in] is stored as [in, out]).
    pub dims: Vec<usize>,
    pub tensor_type: TensorType,
    /// Where its data lies in the file, in bytes.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// The shape in PyTorch's order, outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file: its metadata and where each tensor lies (the bytes stay with the caller).
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// 2 or 3 (a little-endian version 3 file is laid out as version 2).
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In the file's order.
    pub tensors: Vec<TensorInfo>,
    /// Tensor data alignment in bytes.
    pub alignment: usize,
}

impl GgufFile {
    /// Parses the file `bytes`; `name` labels errors.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self> {
        parse(bytes, bytes.len()).map_err(|problem| Error::Gguf {
            file: name.to_string(),
            problem,
        })
    }

    /// Parses the header (metadata and tensor infos) of `file`, reading only its first bytes
    /// (at most [`MAX_HEADER_BYTES`]); `name` labels errors. The tensors' data stays unread.
    pub fn read_header(name: &str, file: &dyn RandomAccessFile) -> Result<Self> {
        Self::read_header_from(name, file, FIRST_HEADER_READ)
    }

    /// [`GgufFile::read_header`], reading `first_read` bytes first.
    fn read_header_from(
        name: &str,
        file: &dyn RandomAccessFile,
        first_read: usize,
    ) -> Result<Self> {
        let error = |problem| Error::Gguf {
            file: name.to_string(),
            problem,
        };
        let file_len = usize::try_from(file.len()).unwrap_or(usize::MAX);
        let mut prefix_len = file_len.min(first_read.max(1));
        loop {
            let prefix = file
                .read_range(0..prefix_len as u64)
                .map_err(|reason| error(GgufError::Read(reason)))?;
            match parse(&prefix, file_len) {
                // The header goes on past the bytes read: read more of the file.
                Err(GgufError::Truncated { .. } | GgufError::TooLarge { .. })
                    if prefix_len < file_len.min(MAX_HEADER_BYTES) =>
                {
                    prefix_len = file_len.min(MAX_HEADER_BYTES).min(prefix_len * 4);
                }
                Err(problem @ (GgufError::Truncated { .. } | GgufError::TooLarge { .. }))
                    if prefix_len < file_len =>
                {
                    return Err(error(GgufError::HeaderTooLarge {
                        limit: MAX_HEADER_BYTES,
                        problem: Box::new(problem),
                    }));
                }
                parsed => return parsed.map_err(error),
            }
        }
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The parse itself, with errors that do not yet name the file: `bytes` are the file's first
/// bytes (all of them, or enough for its header) and `file_len` its length.
fn parse(bytes: &[u8], file_len: usize) -> std::result::Result<GgufFile, GgufError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(GgufError::NotGguf(magic.to_vec()));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        // Version 1 used 32-bit counts; a big-endian file reads as a version ≥ 2^16.
        return Err(GgufError::Version(version));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey);
        }
        let value_type = r.u32("a metadata value type")?;
        let value = r.value(&key, value_type)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(Value::U32(a)) => return Err(GgufError::Alignment((*a).into())),
        Some(other) => {
            return Err(GgufError::Metadata {
                key: "general.alignment".into(),
                problem: format!("must be a u32, found {}", other.type_name()),
            });
        }
    };
    let mut infos = Vec::new();
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let info = r.tensor_info()?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        infos.push(info);
    }
    let data_start =
        r.pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::Truncated {
                what: "the padding before the tensor data".into(),
                at: r.pos,
            })?;
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        tensors.push(place(info, data_start, alignment, file_len)?);
    }
    check_no_overlap(&tensors)?;
    Ok(GgufFile {
        version,
        metadata,
        tensors,
        alignment,
    })
}

/// A tensor info as the file states it, before its offset is checked.
struct RawTensorInfo {
    name: String,
    dims: Vec<usize>,
    tensor_type: TensorType,
    bytes: usize,
    offset: u64,
}

/// The tensor's byte range in the file, checked: aligned, inside the file.
fn place(
    info: RawTensorInfo,
    data_start: usize,
    alignment: usize,
    file_len: usize,
) -> std::result::Result<TensorInfo, GgufError> {
    let bad = |problem: String| GgufError::Tensor {
        tensor: info.name.clone(),
        problem,
    };
    if !info.offset.is_multiple_of(alignment as u64) {
        return Err(bad(format!(
            "its offset {} is not a multiple of the alignment {alignment}",
            info.offset
        )));
    }
    let start = usize::try_from(info.offset)
        .ok()
        .and_then(|o| o.checked_add(data_start));
    let end = start.and_then(|s| s.checked_add(info.bytes));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(TensorInfo {
            name: info.name,
            dims: info.dims,
            tensor_type: info.tensor_type,
            range: start..end,
        }),
        _ => Err(bad(format!(
            "its {} bytes at offset {} lie beyond the end of the file ({file_len} bytes): \
             truncated or corrupt",
            info.bytes, info.offset
        ))),
    }
}

/// Refuses tensors whose bytes overlap (names were checked to be unique already).
fn check_no_overlap(tensors: &[TensorInfo]) -> std::result::Result<(), GgufError> {
    let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
    by_start.sort_by_key(|t| t.range.start);
    for pair in by_start.windows(2) {
        if pair[1].range.start < pair[0].range.end {
            return Err(GgufError::Overlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}

/// Reads the file front to back; every read checks that the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The fewest bytes one array element of GGUF value type `id` takes (strings: their length).
fn element_size(id: u32) -> Option<u64> {
    Some(match id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                at: self.pos,
            });
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], GgufError> {
        let bytes = self.take(N, what)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> std::result::Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count that must fit in the bytes left, each element taking at least
    /// `element` bytes.
    fn count(&mut self, what: &str, element: u64) -> std::result::Result<usize, GgufError> {
        let claimed = self.u64(what)?;
        let limit = self.remaining() as u64 / element.max(1);
        if claimed > limit {
            return Err(GgufError::TooLarge {
                what: what.to_string(),
                claimed,
                limit,
            });
        }
        // claimed ≤ the bytes left, so it fits in usize.
        Ok(claimed as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, GgufError> {
        let len = self.count(&format!("the length of {what}"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::NotUtf8 {
            what: what.to_string(),
        })
    }

    fn bool(&mut self, key: &str) -> std::result::Result<bool, GgufError> {
        match self.u8(key)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::Bool {
                key: key.to_string(),
                value,
            }),
        }
    }

    /// A value of GGUF type `id` for metadata key `key`.
    fn value(&mut self, key: &str, id: u32) -> std::result::Result<Value, GgufError> {
        let what = format!("the value of `{key}`");
        Ok(match id {
            0 => Value::U8(self.u8(&what)?),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.bool(key)?),
            8 => Value::String(self.string(&what)?),
            9 => Value::Array(self.array_value(key)?),
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(GgufError::ValueType {
                    key: key.to_string(),
                    id,
                });
            }
        })
    }

    /// An array value: its element type, count, then the elements.
    fn array_value(&mut self, key: &str) -> std::result::Result<Array, GgufError> {
        let id = self.u32(&format!("the element type of `{key}`"))?;
        if id == 9 {
            return Err(GgufError::NestedArray {
                key: key.to_string(),
            });
        }
        let size = element_size(id).ok_or_else(|| GgufError::ValueType {
            key: key.to_string(),
            id,
        })?;
        let n = self.count(&format!("the array `{key}`"), size)?;
        let what = format!("the array `{key}`");
        // `n` elements fit in the bytes left, so these vectors are at most the file's size.
        macro_rules! numbers {
            ($variant:ident, $t:ty) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(<$t>::from_le_bytes(self.array(&what)?));
                }
                Array::$variant(v)
            }};
        }
        Ok(match id {
            0 => Array::U8(self.take(n, &what)?.to_vec()),
            1 => numbers!(I8, i8),
            2 => numbers!(U16, u16),
            3 => numbers!(I16, i16),
            4 => numbers!(U32, u32),
            5 => numbers!(I32, i32),
            6 => numbers!(F32, f32),
            7 => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(key)?);
                }
                Array::Bool(v)
            }
            8 => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format!("element {i} of `{key}`"))?);
                }
                Array::String(v)
            }
            10 => numbers!(U64, u64),
            11 => numbers!(I64, i64),
            _ => numbers!(F64, f64),
        })
    }

    /// One tensor info: name, dimensions, type, offset.
    fn tensor_info(&mut self) -> std::result::Result<RawTensorInfo, GgufError> {
        let name = self.string("a tensor name")?;
        let bad = |problem: String| GgufError::Tensor {
            tensor: name.clone(),
            problem,
        };
        if name.len() > MAX_TENSOR_NAME {
            return Err(bad(format!(
                "its name is longer than {MAX_TENSOR_NAME} bytes"
            )));
        }
        let what = format!("the info of tensor `{name}`");
        let n_dims = self.u32(&what)? as usize;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(bad(format!(
                "it has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = self.u64(&what)?;
            match usize::try_from(d) {
                Ok(d) if d > 0 => dims.push(d),
                _ => return Err(bad(format!("it has a dimension of {d}"))),
            }
        }
        let id = self.u32(&what)?;
        let tensor_type =
            TensorType::from_ggml_id(id).map_err(|refusal| bad(refusal.to_string()))?;
        let offset = self.u64(&what)?;
        let elements = dims
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .ok_or_else(|| bad(format!("its dimensions {dims:?} overflow")))?;
        if !dims[0].is_multiple_of(tensor_type.block_len()) {
            return Err(bad(format!(
                "its rows of {} elements are not whole {tensor_type} blocks of {}",
                dims[0],
                tensor_type.block_len()
            )));
        }
        let bytes = tensor_type
            .bytes_of(elements)
            .ok_or_else(|| bad(format!("its dimensions {dims:?} overflow")))?;
        Ok(RawTensorInfo {
            name,
            dims,
            tensor_type,
            bytes,
            offset,
        })
    }
}

/// Writes a GGUF file (version 3): `metadata` in order, then `tensors` as (name, dimensions in
/// ggml's order, type, data), each at the next multiple of `alignment`. Tests and fixtures build
/// files with it; its output is what [`GgufFile::parse`] reads.
pub fn write(
    metadata: &[(&str, Value)],
    tensors: &[(&str, &[usize], TensorType, &[u8])],
    alignment: usize,
) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    for (key, value) in metadata {
        string(&mut out, key);
        write_value(&mut out, value);
    }
    let mut offset = 0usize;
    for (name, dims, tensor_type, data) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(tensor_type.ggml_id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len()).next_multiple_of(alignment);
    }
    for (_, _, _, data) in tensors {
        out.resize(out.len().next_multiple_of(alignment), 0);
        out.extend(*data);
    }
    out
}

/// GGUF's type id of a value.
fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    out.extend(type_id(value).to_le_bytes());
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend(v.to_le_bytes()),
        Value::U16(v) => out.extend(v.to_le_bytes()),
        Value::I16(v) => out.extend(v.to_le_bytes()),
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Value::U64(v) => out.extend(v.to_le_bytes()),
        Value::I64(v) => out.extend(v.to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
        Value::Array(a) => {
            macro_rules! elements {
                ($id:expr, $v:expr, $bytes:expr) => {{
                    out.extend(($id as u32).to_le_bytes());
                    out.extend(($v.len() as u64).to_le_bytes());
                    for x in $v {
                        out.extend($bytes(x));
                    }
                }};
            }
            match a {
                Array::U8(v) => elements!(0, v, |x: &u8| [*x]),
                Array::I8(v) => elements!(1, v, |x: &i8| x.to_le_bytes()),
                Array::U16(v) => elements!(2, v, |x: &u16| x.to_le_bytes()),
                Array::I16(v) => elements!(3, v, |x: &i16| x.to_le_bytes()),
                Array::U32(v) => elements!(4, v, |x: &u32| x.to_le_bytes()),
                Array::I32(v) => elements!(5, v, |x: &i32| x.to_le_bytes()),
                Array::F32(v) => elements!(6, v, |x: &f32| x.to_le_bytes()),
                Array::Bool(v) => elements!(7, v, |x: &bool| [u8::from(*x)]),
                Array::String(v) => elements!(8, v, |x: &String| {
                    let mut b = (x.len() as u64).to_le_bytes().to_vec();
                    b.extend(x.as_bytes());
                    b
                }),
                Array::U64(v) => elements!(10, v, |x: &u64| x.to_le_bytes()),
                Array::I64(v) => elements!(11, v, |x: &i64| x.to_le_bytes()),
                Array::F64(v) => elements!(12, v, |x: &f64| x.to_le_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file with every value type and two tensors.
    fn sample() -> Vec<u8> {
        let q8: Vec<u8> = (0..34 * 2).map(|i| i as u8).collect();
        let f32s: Vec<u8> = [1.0f32, -2.0, 3.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("a.u8", Value::U8(7)),
                ("a.i8", Value::I8(-7)),
                ("a.u16", Value::U16(700)),
                ("a.i16", Value::I16(-700)),
                ("a.u32", Value::U32(70_000)),
                ("a.i32", Value::I32(-70_000)),
                ("a.f32", Value::F32(0.5)),
                ("a.bool", Value::Bool(true)),
                ("a.u64", Value::U64(1 << 40)),
                ("a.i64", Value::I64(-(1 << 40))),
                ("a.f64", Value::F64(-0.25)),
                (
                    "a.strings",
                    Value::Array(Array::String(vec!["Ġthe".into(), "".into(), "é".into()])),
                ),
                ("a.scores", Value::Array(Array::F32(vec![0.0, -1.5]))),
                ("a.types", Value::Array(Array::I32(vec![1, 3, 6]))),
                ("a.empty", Value::Array(Array::U8(vec![]))),
            ],
            &[
                ("blk.0.attn_q.weight", &[32, 2], TensorType::Q8_0, &q8),
                ("output_norm.weight", &[3], TensorType::F32, &f32s),
            ],
            32,
        )
    }

    #[test]
    fn every_value_type_and_tensor_reads_back() {
        let bytes = sample();
        let file = GgufFile::parse("sample.gguf", &bytes).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.get("a.i16"), Some(&Value::I16(-700)));
        assert_eq!(file.get("a.u64").and_then(Value::as_u64), Some(1 << 40));
        assert_eq!(file.get("a.i64").and_then(Value::as_u64), None);
        assert_eq!(file.get("a.f32").and_then(Value::as_f64), Some(0.5));
        assert_eq!(file.get("a.bool").and_then(Value::as_bool), Some(true));
        assert_eq!(
            file.get("a.strings"),
            Some(&Value::Array(Array::String(vec![
                "Ġthe".into(),
                "".into(),
                "é".into()
            ])))
        );
        assert_eq!(file.get("a.empty"), Some(&Value::Array(Array::U8(vec![]))));
        let q = file.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!((q.dims.as_slice(), q.shape()), (&[32, 2][..], vec![2, 32]));
        assert_eq!(q.range.len(), 68);
        assert_eq!(q.range.start % 32, 0);
        assert_eq!(bytes[q.range.start + 5], 5);
        let norm = file.tensor("output_norm.weight").unwrap();
        let first = f32::from_le_bytes(bytes[norm.range.start..][..4].try_into().unwrap());
        assert_eq!((norm.elements(), first), (3, 1.0));
    }

    /// A file that records the furthest byte read from it.
    struct Watched {
        bytes: Vec<u8>,
        furthest: std::cell::Cell<u64>,
    }

    impl RandomAccessFile for Watched {
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn read_range(&self, range: Range<u64>) -> std::result::Result<Vec<u8>, String> {
            self.furthest.set(self.furthest.get().max(range.end));
            self.bytes.read_range(range)
        }
    }

    #[test]
    fn a_header_read_a_range_at_a_time_is_the_whole_files_and_leaves_the_data_unread() {
        // A vocabulary of 2,000 tokens makes a header of some 30 kB, read 64 bytes first.
        let tokens = (0..2000).map(|i| format!("token-{i}")).collect();
        let data = vec![7u8; 1 << 20];
        let bytes = write(
            &[("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))],
            &[("w", &[1 << 18], TensorType::F32, &data)],
            32,
        );
        let whole = GgufFile::parse("big.gguf", &bytes).unwrap();
        let data_start = whole.tensors[0].range.start as u64;
        for first_read in [64, 1 << 20] {
            let file = Watched {
                bytes: bytes.clone(),
                furthest: Default::default(),
            };
            let header = GgufFile::read_header_from("big.gguf", &file, first_read).unwrap();
            assert_eq!(header.metadata, whole.metadata);
            assert_eq!(header.tensors, whole.tensors);
            // The prefix grows 4 times a read: never past 4 times the header, nor into most of
            // the data.
            if (first_read as u64) < data_start {
                let furthest = file.furthest.get();
                assert!(furthest <= 4 * data_start, "{furthest} of {data_start}");
            }
        }
        // Truncated inside the header, and inside the data: the whole-file parse's errors.
        for cut in [1000, bytes.len() - 1] {
            let file = bytes[..cut].to_vec();
            let read = GgufFile::read_header_from("big.gguf", &file, 64).unwrap_err();
            let parsed = GgufFile::parse("big.gguf", &bytes[..cut]).unwrap_err();
            assert_eq!(read.to_string(), parsed.to_string());
        }
    }

    fn problem(bytes: &[u8]) -> GgufError {
        match GgufFile::parse("bad.gguf", bytes) {
            Err(Error::Gguf { file, problem }) => {
                assert_eq!(file, "bad.gguf");
                problem
            }
            other => panic!("expected a GGUF error, got {other:?}"),
        }
    }

    #[test]
    fn headers_that_lie_are_refused_by_kind() {
        let good = sample();
        assert!(matches!(problem(b"GGML\x03\0\0\0"), GgufError::NotGguf(_)));
        let mut v1 = good.clone();
        v1[4] = 1;
        assert_eq!(problem(&v1), GgufError::Version(1));
        // A tensor count of 2^64 − 1: refused when the infos run out, not allocated.
        let mut many = good.clone();
        many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        problem(&many);
        // The first key's length set to 2^63.
        let mut long_key = good.clone();
        long_key[24..32].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(matches!(problem(&long_key), GgufError::TooLarge { .. }));
        // Cut inside the tensor data.
        let cut = &good[..good.len() - 1];
        let err = problem(cut);
        assert!(
            err.to_string().contains("beyond the end of the file"),
            "{err}"
        );
    }

    #[test]
    fn tensors_must_be_whole_blocks_of_a_known_type() {
        let data = [0u8; 64];
        let bytes = write(&[], &[("w", &[16, 2], TensorType::Q8_0, &data)], 32);
        let err = problem(&bytes);
        assert!(err.to_string().contains("not whole Q8_0 blocks"), "{err}");
        let mut q5k = write(&[], &[("w", &[256], TensorType::Q4_K, &[0; 144])], 32);
        // The type id sits after the name, n_dims and one dimension.
        let at = 24 + 8 + 1 + 4 + 8;
        q5k[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
        let err = problem(&q5k);
        assert!(err.to_string().contains("Q5_K is not supported"), "{err}");
    }

    #[test]
    fn alignment_duplicates_and_overlaps_are_checked() {
        let bad_alignment = write(&[("general.alignment", Value::U32(24))], &[], 32);
        assert_eq!(problem(&bad_alignment), GgufError::Alignment(24));
        let wrong_type = write(&[("general.alignment", Value::U64(32))], &[], 32);
        assert!(matches!(problem(&wrong_type), GgufError::Metadata { .. }));
        let twice = write(&[("k", Value::U8(1)), ("k", Value::U8(2))], &[], 32);
        assert_eq!(problem(&twice), GgufError::DuplicateKey("k".into()));
        let data = [0u8; 4];
        let mut overlap = write(
            &[],
            &[
                ("a", &[1], TensorType::F32, &data),
                ("b", &[1], TensorType::F32, &data),
            ],
            32,
        );
        // b's offset (32) set to a's (0).
        let b_offset = 24 + (8 + 1 + 4 + 8 + 4 + 8) + (8 + 1 + 4 + 8 + 4);
        overlap[b_offset..b_offset + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(problem(&overlap), GgufError::Overlap { .. }));
    }
}
