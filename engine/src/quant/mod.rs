//! Tensor element types as GGUF files store them: plain floats (F32, F16, BF16) and ggml's
//! block-quantized formats (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), what a block holds, and the plain CPU
//! reference that turns blocks back into f32 ([`dequantize`]), and the quantizers that write
//! Q8_0 and Q4_K blocks from f32 ([`quantize`]). Every quantized kernel is tested
//! against this reference, and the reference against the `gguf` Python package's dequantizer
//! (bit for bit: the same f32 operations in the same order).

mod dequantize;
mod quantize;

pub use dequantize::{block_dequantizer, dequantize};
pub use quantize::quantize;

/// Per-type block dequantizers (one whole block each), for kernels that inline them.
pub mod block {
    pub use super::dequantize::{q4_0, q4_1, q4_k, q4_k_scale_min, q6_k, q8_0};
}

use std::fmt;

/// A tensor element type the engine reads, by ggml's name.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    /// Blocks of 32: an f16 scale d and 32 signed bytes; x = d · q.
    Q8_0,
    /// Blocks of 32: an f16 scale d and 32 nibbles; x = d · (q − 8).
    Q4_0,
    /// Blocks of 32: f16 scale d and minimum m, 32 nibbles; x = d · q + m.
    Q4_1,
    /// Super-blocks of 256: f16 d and dmin, eight 6-bit scales and mins, 256 nibbles;
    /// x = d · scale · q − dmin · min per 32 elements.
    Q4_K,
    /// Super-blocks of 256: 6-bit values (4 low bits + 2 high bits), sixteen signed 8-bit
    /// scales and an f16 d; x = d · scale · (q − 32) per 16 elements.
    Q6_K,
}

/// Every type the engine reads.
pub const SUPPORTED: [TensorType; 8] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::BF16,
    TensorType::Q8_0,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q4_K,
    TensorType::Q6_K,
];

/// Why a ggml type id is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeRefusal {
    /// A type ggml defines that the engine does not read (its ggml name).
    Unsupported(&'static str),
    /// An id ggml does not define (or no longer does: its removed types).
    Unknown(u32),
}

impl fmt::Display for TypeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let supported: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
        match self {
            Self::Unsupported(name) => write!(
                f,
                "type {name} is not supported (supported: {})",
                supported.join(", ")
            ),
            Self::Unknown(id) => write!(f, "type id {id} is not a ggml tensor type"),
        }
    }
}

/// ggml's types that the engine does not read, by id.
const OTHER_GGML_TYPES: [(u32, &str); 26] = [
    (6, "Q5_0"),
    (7, "Q5_1"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (13, "Q5_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
    (41, "Q1_0"),
];

impl TensorType {
    /// The type with ggml id `id`, or why it is not read.
    pub fn from_ggml_id(id: u32) -> Result<Self, TypeRefusal> {
        if let Some(t) = SUPPORTED.iter().find(|t| t.ggml_id() == id) {
            return Ok(*t);
        }
        match OTHER_GGML_TYPES.iter().find(|(other, _)| *other == id) {
            Some((_, name)) => Err(TypeRefusal::Unsupported(name)),
            None => Err(TypeRefusal::Unknown(id)),
        }
    }

    /// ggml's id of the type (GGUF tensor infos store it).
    pub fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q4_K => "Q4_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (1 for the plain float types).
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
            Self::Q4_K | Self::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }

    /// Whether the type is block-quantized.
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of `elements` elements, or None when they are not whole blocks (or the size
    /// overflows).
    pub fn bytes_of(self, elements: usize) -> Option<usize> {
        if !elements.is_multiple_of(self.block_len()) {
            return None;
        }
        (elements / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Random blocks of `t` with small finite scales (n rows of k values), for the kernels' tests.
#[cfg(test)]
pub(crate) fn random_blocks(t: TensorType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let rng = crate::rng::CounterRng { seed };
    let bytes = t.bytes_of(n * k).unwrap();
    let mut out: Vec<u8> = (0..bytes as u64)
        .map(|i| (rng.uniform(0, i) * 256.0) as u8)
        .collect();
    // Every f16 field a block has, set to a finite scale in [−0.05, 0.05).
    let scales: &[usize] = match t {
        TensorType::Q8_0 | TensorType::Q4_0 => &[0],
        TensorType::Q4_1 | TensorType::Q4_K => &[0, 2],
        TensorType::Q6_K => &[208],
        _ => &[],
    };
    for (b, block) in out.chunks_exact_mut(t.block_bytes()).enumerate() {
        for (s, at) in scales.iter().enumerate() {
            let v = (rng.uniform(1 + s as u64, b as u64) - 0.5) * 0.1;
            block[*at..*at + 2].copy_from_slice(&half::f16::from_f64(v).to_le_bytes());
        }
        if !t.is_quantized() {
            let v = (rng.uniform(7, b as u64) - 0.5) as f32;
            match t {
                TensorType::F32 => block.copy_from_slice(&v.to_le_bytes()),
                TensorType::F16 => block.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => block.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_other_ids_are_refused_by_name() {
        for t in SUPPORTED {
            assert_eq!(TensorType::from_ggml_id(t.ggml_id()), Ok(t));
        }
        assert_eq!(
            TensorType::from_ggml_id(13),
            Err(TypeRefusal::Unsupported("Q5_K"))
        );
        // Q4_2 (id 4) was removed from ggml; 42 was never defined.
        assert_eq!(TensorType::from_ggml_id(4), Err(TypeRefusal::Unknown(4)));
        assert_eq!(TensorType::from_ggml_id(42), Err(TypeRefusal::Unknown(42)));
        let message = TypeRefusal::Unsupported("Q5_K").to_string();
        assert!(
            message.contains("Q5_K") && message.contains("Q4_K"),
            "{message}"
        );
    }

    #[test]
    fn sizes_are_whole_blocks() {
        assert_eq!(TensorType::Q4_K.bytes_of(512), Some(288));
        assert_eq!(TensorType::Q8_0.bytes_of(576), Some(18 * 34));
        assert_eq!(TensorType::Q4_0.bytes_of(33), None);
        assert_eq!(TensorType::F16.bytes_of(7), Some(14));
        assert_eq!(TensorType::F32.bytes_of(usize::MAX / 2), None);
    }
}
