//! Linear layers with block-quantized weights on the CPU: y = x · Wᵀ for activations x
//! [rows, k] and a weight W [n, k] kept as GGUF stores it (each of its n rows whole blocks of
//! Q8_0, Q4_0, Q4_1, Q4_K or Q6_K, 4.5–8.5 bits a weight). Each block is dequantized once into
//! registers-sized scratch (by the reference dequantizer, [`crate::quant::dequantize`], so the
//! weights are exactly the file's) and multiplied into every row of x, accumulating in f32;
//! output rows split over the cores. The portable loops are written so the compiler vectorises
//! them.

use crate::error::{Error, Result};
use crate::quant::{TensorType, block, block_dequantizer, dequantize};

/// Output features one task computes (its outputs for every row of x stay in a small buffer).
const OUT_CHUNK: usize = 16;

/// Below this many multiply-adds a product runs on the calling thread.
#[cfg(not(target_family = "wasm"))]
const PARALLEL_MIN_FMAS: usize = 1 << 16;

/// A weight [n, k] in one of ggml's block formats: n rows of k values, each row whole blocks.
#[derive(Clone, PartialEq)]
pub struct QuantMatrix {
    tensor_type: TensorType,
    n: usize,
    k: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix([{}, {}], {})",
            self.n, self.k, self.tensor_type
        )
    }
}

impl QuantMatrix {
    /// The matrix of `n` rows of `k` values of `tensor_type` held by `bytes` (row after row).
    pub fn new(tensor_type: TensorType, n: usize, k: usize, bytes: Vec<u8>) -> Result<Self> {
        let expected = n.checked_mul(k).and_then(|e| tensor_type.bytes_of(e));
        if !k.is_multiple_of(tensor_type.block_len()) || expected != Some(bytes.len()) {
            return Err(Error::QuantizedLength {
                tensor_type: tensor_type.name(),
                elements: n.saturating_mul(k),
                bytes: bytes.len(),
            });
        }
        Ok(Self {
            tensor_type,
            n,
            k,
            bytes,
        })
    }

    /// [n, k]: output features by input features.
    pub fn dims(&self) -> [usize; 2] {
        [self.n, self.k]
    }

    /// The block format.
    pub fn tensor_type(&self) -> TensorType {
        self.tensor_type
    }

    /// Bytes the weight takes in memory.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The weight dequantized, row-major [n, k].
    pub fn to_row_major(&self) -> Vec<f32> {
        let mut values = vec![0.0; self.n * self.k];
        // The sizes were checked in `new`.
        let _ = dequantize(self.tensor_type, &self.bytes, &mut values);
        values
    }

    /// y = x · Wᵀ for row-major x [rows, k]: row-major [rows, n].
    pub fn left_mul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), rows * k, "x is [{rows}, {k}]");
        let row_bytes = self.bytes.len() / n.max(1);
        // Outputs by chunk of output features: [OUT_CHUNK, rows] per chunk.
        let mut by_chunk = vec![0.0f32; n.div_ceil(OUT_CHUNK) * OUT_CHUNK * rows];
        let chunk_product = |(c, out): (usize, &mut [f32])| {
            let first = c * OUT_CHUNK;
            let weights = &self.bytes[first * row_bytes..(first + OUT_CHUNK).min(n) * row_bytes];
            self.rows_product(weights, x, rows, out);
        };
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            if rows * n * k >= PARALLEL_MIN_FMAS {
                by_chunk
                    .par_chunks_mut(OUT_CHUNK * rows)
                    .enumerate()
                    .for_each(chunk_product);
            } else {
                by_chunk
                    .chunks_mut(OUT_CHUNK * rows)
                    .enumerate()
                    .for_each(chunk_product);
            }
        }
        #[cfg(target_family = "wasm")]
        by_chunk
            .chunks_mut(OUT_CHUNK * rows)
            .enumerate()
            .for_each(chunk_product);
        let mut y = vec![0.0f32; rows * n];
        for (c, out) in by_chunk.chunks_exact(OUT_CHUNK * rows).enumerate() {
            for (j, column) in out.chunks_exact(rows).enumerate() {
                let feature = c * OUT_CHUNK + j;
                if feature >= n {
                    break;
                }
                for (r, v) in column.iter().enumerate() {
                    y[r * n + feature] = *v;
                }
            }
        }
        y
    }

    /// The products of a few weight rows (`weights`, whole rows) with every row of x, into
    /// `out` [weight row, x row]: the block dequantizer of the matrix's type, inlined.
    fn rows_product(&self, weights: &[u8], x: &[f32], rows: usize, out: &mut [f32]) {
        let t = self.tensor_type;
        match t {
            TensorType::Q8_0 => self.rows_product_with(block::q8_0, weights, x, rows, out),
            TensorType::Q4_0 => self.rows_product_with(block::q4_0, weights, x, rows, out),
            TensorType::Q4_1 => self.rows_product_with(block::q4_1, weights, x, rows, out),
            TensorType::Q4_K => self.rows_product_with(block::q4_k, weights, x, rows, out),
            TensorType::Q6_K => self.rows_product_with(block::q6_k, weights, x, rows, out),
            _ => self.rows_product_with(block_dequantizer(t), weights, x, rows, out),
        }
    }

    #[inline(always)]
    fn rows_product_with(
        &self,
        block: impl Fn(&[u8], &mut [f32]),
        weights: &[u8],
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) {
        let (k, t) = (self.k, self.tensor_type);
        let (block_len, block_bytes) = (t.block_len(), t.block_bytes());
        let row_bytes = k / block_len * block_bytes;
        let count = weights.len() / row_bytes.max(1);
        // The few weight rows dequantized once (at most OUT_CHUNK · k values: a core's cache),
        // then each row of x read once against all of them.
        let mut tile = vec![0.0f32; count * k];
        for (row, values) in weights
            .chunks_exact(row_bytes)
            .zip(tile.chunks_exact_mut(k))
        {
            for (bytes, v) in row
                .chunks_exact(block_bytes)
                .zip(values.chunks_exact_mut(block_len))
            {
                block(bytes, v);
            }
        }
        for r in 0..rows {
            let x = &x[r * k..][..k];
            for (j, w) in tile.chunks_exact(k).enumerate() {
                out[j * rows + r] = dot(w, x);
            }
        }
    }
}

/// Σ aᵢ·bᵢ in eight interleaved partial sums (vectorisable), then the remainder.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += a[i] * b[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::SUPPORTED;
    use crate::rng::CounterRng;

    /// Random blocks of `t` with small finite scales, n rows of k.
    fn random(t: TensorType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let rng = CounterRng { seed };
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

    /// x · Wᵀ in f64 from the dequantized weights: the reference.
    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                    .sum();
                y[r * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn every_type_matches_the_dequantized_product() {
        for t in SUPPORTED {
            let k = 2 * t.block_len().max(32);
            for (n, rows) in [(1, 1), (17, 3), (40, 9)] {
                let m = QuantMatrix::new(t, n, k, random(t, n, k, 5)).unwrap();
                let rng = CounterRng { seed: 9 };
                let x: Vec<f32> = (0..(rows * k) as u64)
                    .map(|i| rng.uniform(3, i) as f32 - 0.5)
                    .collect();
                let want = reference(&m.to_row_major(), n, k, &x, rows);
                let got = m.left_mul(&x, rows);
                let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * scale,
                        "{t} n={n} rows={rows} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(QuantMatrix::new(TensorType::Q4_0, 2, 32, vec![0; 36]).is_ok());
        assert!(QuantMatrix::new(TensorType::Q4_0, 2, 32, vec![0; 35]).is_err());
        assert!(QuantMatrix::new(TensorType::Q4_K, 1, 128, vec![0; 72]).is_err());
    }
}
