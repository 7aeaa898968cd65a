//! Linear layers with block-quantized weights on the CPU: y = x · Wᵀ for activations x
//! [rows, k] and a weight W [n, k] kept as GGUF stores it (each of its n rows whole blocks of
//! Q8_0, Q4_0, Q4_1, Q4_K or Q6_K, 4.5–8.5 bits a weight), in f32 arithmetic on f32
//! activations: the exact math of the dequantized weights up to the order of the sums. Two
//! routes, by the number of rows:
//! - few rows (decoding a few sequences): each weight row is dequantized in registers and dotted
//!   with up to eight rows of x at once ([`super::quant_dot`]); nothing but the outputs is
//!   written;
//! - many rows (prefill, batched rollouts): the rows of x transposed into passes of up to 32
//!   (vectors of rows); a block of 12 weight rows dequantized once into a per-thread f32 buffer,
//!   and each of its values broadcast and multiplied into every vector of rows, the sums in
//!   registers ([`DotKernel::broadcast`]). A weight then costs one multiply-add per 16 rows
//!   (AVX-512) instead of being dequantized again for every group of eight.
//!
//! Output features split over the cores in both.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use super::quant_dot::{DotKernel, MAX_ROWS};
use super::threads::{Columns, for_each_chunk_mut, for_each_column_block};
use crate::error::{Error, Result};
use crate::quant::{TensorType, dequantize};

/// From this many rows of x on, a product broadcasts dequantized weights into vectors of rows
/// (below, it dots each weight row with the rows in registers): 16 rows fill one AVX-512
/// vector (SmolLM2's 576 → 1536 Q4_1 product, release build: 336 µs broadcast against 383
/// dotted at 16 rows, 368 against 299 at 12).
const BROADCAST_MIN_ROWS: usize = 16;

/// The numbers of activation rows the dot kernels are compiled for, largest first.
const GROUPS: [usize; 5] = [MAX_ROWS, 4, 3, 2, 1];

/// Weight rows one decoding task dots (its share of the outputs).
const ROWS_PER_TASK: usize = 16;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 16;

/// One group of activation rows against a run of weight rows, for [`DotKernel::rows_dots`].
struct Dots<'a> {
    kernel: DotKernel,
    t: TensorType,
    /// Whole weight rows.
    w: &'a [u8],
    /// The group's first row of x onwards, rows of k values.
    x: &'a [f32],
    k: usize,
}

impl Dots<'_> {
    /// The dots of R rows of x into `out` (stride `stride` per weight row).
    fn write<const R: usize>(&self, out: &mut [f32], stride: usize) {
        let x: [&[f32]; R] = std::array::from_fn(|r| &self.x[r * self.k..(r + 1) * self.k]);
        self.kernel.rows_dots::<R>(self.t, self.w, x, out, stride);
    }
}

/// A weight's bytes: a range of a file's bytes that every tensor read from that file shares
/// (so a GGUF model's weights take its file's memory once), or bytes of its own.
#[derive(Clone)]
pub struct BlockBytes {
    file: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl BlockBytes {
    /// `range` of the `file`'s bytes; None when it is not inside them.
    pub fn shared(file: &Arc<Vec<u8>>, range: Range<usize>) -> Option<Self> {
        file.get(range.clone())?;
        Some(Self {
            file: Arc::clone(file),
            range,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.file[self.range.clone()]
    }
}

impl From<Vec<u8>> for BlockBytes {
    fn from(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        Self {
            file: Arc::new(bytes),
            range,
        }
    }
}

/// A weight [n, k] in one of ggml's block formats: n rows of k values, each row whole blocks.
#[derive(Clone)]
pub struct QuantMatrix {
    tensor_type: TensorType,
    n: usize,
    k: usize,
    bytes: BlockBytes,
}

impl PartialEq for QuantMatrix {
    fn eq(&self, other: &Self) -> bool {
        (self.tensor_type, self.n, self.k) == (other.tensor_type, other.n, other.k)
            && self.bytes.as_slice() == other.bytes.as_slice()
    }
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
    pub fn new(
        tensor_type: TensorType,
        n: usize,
        k: usize,
        bytes: impl Into<BlockBytes>,
    ) -> Result<Self> {
        let bytes = bytes.into();
        let len = bytes.range.len();
        let expected = n.checked_mul(k).and_then(|e| tensor_type.bytes_of(e));
        if !k.is_multiple_of(tensor_type.block_len()) || expected != Some(len) {
            return Err(Error::QuantizedLength {
                tensor_type: tensor_type.name(),
                elements: n.saturating_mul(k),
                bytes: len,
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

    /// Bytes the weight's blocks take.
    pub fn bytes(&self) -> usize {
        self.bytes.range.len()
    }

    /// The blocks' bytes, row after row.
    pub fn block_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The weight dequantized, row-major [n, k].
    pub fn to_row_major(&self) -> Vec<f32> {
        let mut values = vec![0.0; self.n * self.k];
        // The sizes were checked in `new`.
        let _ = dequantize(self.tensor_type, self.bytes.as_slice(), &mut values);
        values
    }

    /// Rows `rows` dequantized one after the other into `out` (k values each): an embedding
    /// lookup. None when a row is past n.
    pub fn rows_into(
        &self,
        rows: impl IntoIterator<Item = usize>,
        out: &mut Vec<f32>,
    ) -> Option<()> {
        let row_bytes = self.row_bytes();
        for row in rows {
            if row >= self.n {
                return None;
            }
            let start = out.len();
            out.resize(start + self.k, 0.0);
            let w = &self.bytes.as_slice()[row * row_bytes..][..row_bytes];
            // The sizes were checked in `new`.
            let _ = dequantize(self.tensor_type, w, &mut out[start..]);
        }
        Some(())
    }

    /// y = x · Wᵀ for row-major x [rows, k]: row-major [rows, n].
    pub fn left_mul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.k, "x is [{rows}, {}]", self.k);
        if rows == 0 || self.n == 0 {
            return vec![0.0; rows * self.n];
        }
        if rows >= BROADCAST_MIN_ROWS {
            self.left_mul_broadcast(DotKernel::best(), x, rows)
        } else {
            self.left_mul_dots(DotKernel::best(), x, rows)
        }
    }

    /// Bytes of one weight row.
    fn row_bytes(&self) -> usize {
        self.bytes.range.len() / self.n.max(1)
    }

    /// The few-rows route: every weight row dotted with a group of rows of x at once.
    fn left_mul_dots(&self, kernel: DotKernel, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k, t) = (self.n, self.k, self.tensor_type);
        let row_bytes = self.row_bytes();
        // Outputs by weight row, [n, rows], transposed at the end.
        let mut by_feature = vec![0.0f32; n * rows];
        let task = |task: usize, out: &mut [f32]| {
            let first = task * ROWS_PER_TASK;
            let count = out.len() / rows;
            let w = &self.bytes.as_slice()[first * row_bytes..(first + count) * row_bytes];
            // Groups of up to MAX_ROWS rows, each dotted with every weight row: a weight block
            // is dequantized once a group.
            let mut first_row = 0;
            while first_row < rows {
                let group = GROUPS
                    .into_iter()
                    .find(|g| *g <= rows - first_row)
                    .unwrap_or(1);
                let x = &x[first_row * k..];
                let out = &mut out[first_row..];
                let dots = Dots { kernel, t, w, x, k };
                match group {
                    MAX_ROWS => dots.write::<MAX_ROWS>(out, rows),
                    4 => dots.write::<4>(out, rows),
                    3 => dots.write::<3>(out, rows),
                    2 => dots.write::<2>(out, rows),
                    _ => dots.write::<1>(out, rows),
                }
                first_row += group;
            }
        };
        split(
            &mut by_feature,
            ROWS_PER_TASK * rows,
            ROWS_PER_TASK * rows * k,
            task,
        );
        let mut y = vec![0.0f32; rows * n];
        for (j, outs) in by_feature.chunks_exact(rows.max(1)).enumerate() {
            for (r, v) in outs.iter().enumerate() {
                y[r * n + j] = *v;
            }
        }
        y
    }

    /// The many-rows route: the rows of x transposed into passes of a few vectors of rows
    /// ([k, width] each); a block of weight rows dequantized into a per-thread f32 buffer, then
    /// each of its values broadcast and multiplied into every vector of rows
    /// ([`DotKernel::broadcast`]), the sums staying in registers for the whole of k.
    fn left_mul_broadcast(&self, kernel: DotKernel, x: &[f32], rows: usize) -> Vec<f32> {
        thread_local! {
            /// A block of weight rows, dequantized, and one pass's outputs [outputs, width].
            static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
        }
        let (n, k, t) = (self.n, self.k, self.tensor_type);
        let row_bytes = self.row_bytes();
        let (lanes, outputs) = (kernel.lanes(), kernel.block_outputs());
        let pass_rows = kernel.pass_vectors() * lanes;
        // (first row, rows, width) of each pass: whole passes, then the rest in whole vectors.
        let passes: Vec<(usize, usize, usize)> = (0..rows)
            .step_by(pass_rows)
            .map(|first| {
                let count = (rows - first).min(pass_rows);
                (first, count, count.div_ceil(lanes) * lanes)
            })
            .collect();
        // Each pass's rows of x transposed, [k, width], zeros in the padding; pass p's start at
        // value first·k (every pass but the last is exactly pass_rows wide).
        let mut xt = vec![0.0f32; passes.last().map_or(0, |(f, _, w)| (f + w) * k)];
        for &(first, count, width) in &passes {
            let x_rows: Vec<&[f32]> = x.chunks_exact(k).skip(first).take(count).collect();
            for (kk, values) in xt[first * k..][..k * width]
                .chunks_exact_mut(width)
                .enumerate()
            {
                for (v, row) in values.iter_mut().zip(&x_rows) {
                    *v = row[kk];
                }
            }
        }
        let mut y = vec![0.0f32; rows * n];
        let task = |block: usize, mut columns: Columns<'_>| {
            SCRATCH.with_borrow_mut(|(w, tile)| {
                let first = block * outputs;
                let count = outputs.min(n - first);
                w.resize(outputs * k, 0.0);
                let blocks = &self.bytes.as_slice()[first * row_bytes..(first + count) * row_bytes];
                kernel.dequantize_rows(t, blocks, &mut w[..count * k]);
                // A last, partial block's missing rows multiply as zeros (dropped below).
                w[count * k..].fill(0.0);
                for &(first_row, rows, width) in &passes {
                    let xt = &xt[first_row * k..][..k * width];
                    tile.resize(outputs * width, 0.0);
                    kernel.broadcast(w, k, xt, width / lanes, tile, width);
                    for r in 0..rows {
                        let out = columns.row(first_row + r);
                        for (o, out) in out.iter_mut().enumerate() {
                            *out = tile[o * width + r];
                        }
                    }
                }
            });
        };
        let parallel = rows * n * k >= PARALLEL_MIN_FMAS;
        for_each_column_block(&mut y, n, outputs, parallel, task);
        y
    }
}

/// Runs `task` on each `chunk`-long piece of `out` (with its index), over every kernel thread
/// when the product is large enough (`fmas` multiply-adds a piece).
fn split(out: &mut [f32], chunk: usize, fmas: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
    let pieces = out.len().div_ceil(chunk.max(1));
    let parallel = fmas.saturating_mul(pieces) >= PARALLEL_MIN_FMAS;
    for_each_chunk_mut(out, chunk, parallel, task);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{SUPPORTED, random_blocks};
    use crate::rng::CounterRng;

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
    fn every_route_and_type_matches_the_dequantized_product() {
        for t in SUPPORTED {
            let k = 2 * t.block_len().max(32);
            for (n, rows) in [
                (1, 1),
                (17, 3),
                (40, 5),
                (33, 9),
                (70, 13),
                (20, 31),
                (13, 40),
                (25, 75),
            ] {
                let m = QuantMatrix::new(t, n, k, random_blocks(t, n, k, 5)).unwrap();
                let rng = CounterRng { seed: 9 };
                let x: Vec<f32> = (0..(rows * k) as u64)
                    .map(|i| rng.uniform(3, i) as f32 - 0.5)
                    .collect();
                let want = reference(&m.to_row_major(), n, k, &x, rows);
                let mut routes: Vec<(String, Vec<f32>)> = DotKernel::available()
                    .into_iter()
                    .map(|kernel| (format!("{kernel:?}"), m.left_mul_dots(kernel, &x, rows)))
                    .collect();
                for kernel in DotKernel::available() {
                    let route = format!("broadcast {kernel:?}");
                    routes.push((route, m.left_mul_broadcast(kernel, &x, rows)));
                }
                routes.push(("chosen".into(), m.left_mul(&x, rows)));
                let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
                for (route, got) in routes {
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * scale,
                            "{route} {t} n={n} rows={rows} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products() {
        let m = QuantMatrix::new(TensorType::Q4_0, 2, 32, vec![0; 36]).unwrap();
        assert!(m.left_mul(&[], 0).is_empty());
    }

    #[test]
    fn sizes_are_checked() {
        assert!(QuantMatrix::new(TensorType::Q4_0, 2, 32, vec![0; 36]).is_ok());
        assert!(QuantMatrix::new(TensorType::Q4_0, 2, 32, vec![0; 35]).is_err());
        assert!(QuantMatrix::new(TensorType::Q4_K, 1, 128, vec![0; 72]).is_err());
    }
}
