//! The block-quantized CPU kernels, each block dequantized in registers (8 values at a time
//! with AVX2, 16 with AVX-512, the scale and offset applied with one fused multiply-add), the
//! sums in f32:
//! - dot products of weight rows with one to eight rows of f32 activations
//!   ([`DotKernel::rows_dots`]): the decoding kernel; at batch 1 the weights stream once per
//!   token and nothing is written back but the outputs;
//! - the same block decoders writing rows out ([`DotKernel::dequantize_rows`]), and the
//!   broadcast block that multiplies those f32 rows into up to 32 transposed rows of
//!   activations ([`DotKernel::broadcast`]): the kernel for many rows.
//!
//! The block code is written once for every vector width ([`simd`]); the AVX2 and AVX-512
//! paths ([`x86`]) are chosen at run time, wasm's simd128 ([`wasm`], 4 values at a time) is
//! the engine's kernel in the browser. The portable one dequantizes a block with the reference
//! dequantizer ([`crate::quant::block`]) and lets the compiler vectorise the products.

use crate::quant::{TensorType, block};

// Used by the x86 and wasm kernels (and its own tests) only.
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )),
    allow(dead_code)
)]
mod simd;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

/// The most activation rows one call multiplies: one accumulator and one row pointer each
/// stay in registers up to here (24 rows spilled them and ran 2x slower).
pub(crate) const MAX_ROWS: usize = 8;

/// The dot-product kernels this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DotKernel {
    /// AVX-512F (and F16C): 16 values widened at a time, 4 accumulators a row.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA and F16C: 8 values widened at a time, 4 accumulators a row.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// wasm's simd128: 4 values widened at a time, 4 accumulators a row.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
    /// Plain Rust: a block dequantized to the stack, then vectorisable products.
    Portable,
}

impl DotKernel {
    /// The fastest kernel the running CPU supports.
    pub(crate) fn best() -> Self {
        static BEST: std::sync::OnceLock<DotKernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::available()[0])
    }

    /// Every kernel the running CPU supports, fastest first.
    // Which pushes there are depends on the target and the CPU.
    #[allow(clippy::vec_init_then_push)]
    pub(crate) fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        kernels.push(Self::Simd128);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Self::Avx2);
            }
        }
        kernels.push(Self::Portable);
        kernels
    }

    /// out[j·stride + r] = w_j · x_r for every row w_j of `w` (whole rows of k values in
    /// blocks of `t`) and r < R, each x_r k activations (1 ≤ R ≤ [`MAX_ROWS`] ≤ stride).
    pub(crate) fn rows_dots<const R: usize>(
        self,
        t: TensorType,
        w: &[u8],
        x: [&[f32]; R],
        out: &mut [f32],
        stride: usize,
    ) {
        let k = x[0].len();
        let row_bytes = t
            .bytes_of(k)
            .filter(|b| *b > 0 && w.len().is_multiple_of(*b));
        assert!(
            (1..=MAX_ROWS).contains(&R)
                && R <= stride
                && x.iter().all(|x| x.len() == k)
                && row_bytes.is_some_and(|b| out.len() >= (w.len() / b - 1) * stride + R),
            "rows of {k} {t} values against {R} rows of {k}"
        );
        let rows = w
            .chunks_exact(row_bytes.unwrap_or(1))
            .zip(out.chunks_mut(stride));
        match self {
            // SAFETY: the CPU has the features (`available`); the lengths were checked above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 if t.is_quantized() => unsafe { x86::rows_dots_avx512::<R>(t, rows, x) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if t.is_quantized() => unsafe { x86::rows_dots_avx2::<R>(t, rows, x) },
            // SAFETY: the lengths were checked above.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 if t.is_quantized() => unsafe {
                wasm::rows_dots_simd128::<R>(t, rows, x)
            },
            _ => {
                for (w, out) in rows {
                    out[..R].copy_from_slice(&portable::<R>(t, w, x));
                }
            }
        }
    }
}

impl DotKernel {
    /// Rows of x one vector holds in the broadcast block: 16 with AVX-512, 4 with simd128, 8
    /// otherwise.
    pub(crate) fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => 16,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => 4,
            _ => 8,
        }
    }

    /// Weight rows one broadcast block multiplies at once (its sums take
    /// [`Self::block_outputs`] · [`Self::pass_vectors`] registers).
    pub(crate) fn block_outputs(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => 12,
            _ => 4,
        }
    }

    /// The most vectors of rows of x one broadcast block holds.
    pub(crate) fn pass_vectors(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => 2,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => 3,
            // Four sums and a row of x a vector, and the weight: 11 of the 16 vector registers
            // a browser's x86-64 code generator has.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => 2,
            Self::Portable => 4,
        }
    }

    /// Whole rows of `t` (`w`) dequantized into `out`, which holds exactly their values.
    pub(crate) fn dequantize_rows(self, t: TensorType, w: &[u8], out: &mut [f32]) {
        let fits = t.bytes_of(out.len()) == Some(w.len());
        assert!(
            fits && out.len().is_multiple_of(t.block_len()),
            "{} bytes of {t} blocks into {} values",
            w.len(),
            out.len()
        );
        match self {
            // SAFETY: the CPU has the features (`available`); the sizes were checked above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 if t.is_quantized() => unsafe {
                x86::dequantize_avx512(t, w, out.as_mut_ptr())
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if t.is_quantized() => unsafe {
                x86::dequantize_avx2(t, w, out.as_mut_ptr())
            },
            // SAFETY: the sizes were checked above.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 if t.is_quantized() => unsafe {
                wasm::dequantize_simd128(t, w, out.as_mut_ptr())
            },
            // The sizes were checked above.
            _ => drop(crate::quant::dequantize(t, w, out)),
        }
    }

    /// The broadcast block: out[o·stride + r] = Σ_kk w[o·k + kk] · xt[kk·width + r] for the
    /// [`Self::block_outputs`] weight rows of `w` (f32 [outputs, k]) and the width = vectors ·
    /// [`Self::lanes`] rows of x in `xt` (transposed, [k, width]), 1 ≤ vectors ≤
    /// [`Self::pass_vectors`]: each weight is dequantized once and costs one multiply-add per
    /// vector of rows.
    pub(crate) fn broadcast(
        self,
        w: &[f32],
        k: usize,
        xt: &[f32],
        vectors: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let (outputs, width) = (self.block_outputs(), vectors * self.lanes());
        assert!(
            (1..=self.pass_vectors()).contains(&vectors)
                && w.len() >= outputs * k
                && xt.len() >= k * width
                && width <= stride
                && out.len() >= (outputs - 1) * stride + width,
            "a broadcast block of {outputs} weight rows and {width} rows of {k}"
        );
        // SAFETY (each x86 and wasm arm): the CPU has the features (`available`); the sizes
        // were checked above.
        #[cfg(any(
            target_arch = "x86_64",
            all(target_arch = "wasm32", target_feature = "simd128")
        ))]
        let (wp, xp, op) = (w.as_ptr(), xt.as_ptr(), out.as_mut_ptr());
        match (self, vectors) {
            #[cfg(target_arch = "x86_64")]
            (Self::Avx512, 1) => unsafe { x86::broadcast_avx512::<1>(wp, k, xp, op, stride) },
            #[cfg(target_arch = "x86_64")]
            (Self::Avx512, _) => unsafe { x86::broadcast_avx512::<2>(wp, k, xp, op, stride) },
            #[cfg(target_arch = "x86_64")]
            (Self::Avx2, 1) => unsafe { x86::broadcast_avx2::<1>(wp, k, xp, op, stride) },
            #[cfg(target_arch = "x86_64")]
            (Self::Avx2, 2) => unsafe { x86::broadcast_avx2::<2>(wp, k, xp, op, stride) },
            #[cfg(target_arch = "x86_64")]
            (Self::Avx2, _) => unsafe { x86::broadcast_avx2::<3>(wp, k, xp, op, stride) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            (Self::Simd128, 1) => unsafe { wasm::broadcast_simd128::<1>(wp, k, xp, op, stride) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            (Self::Simd128, _) => unsafe { wasm::broadcast_simd128::<2>(wp, k, xp, op, stride) },
            (_, 1) => broadcast_portable::<4, 1>(w, k, xt, out, stride),
            (_, 2) => broadcast_portable::<4, 2>(w, k, xt, out, stride),
            (_, 3) => broadcast_portable::<4, 3>(w, k, xt, out, stride),
            _ => broadcast_portable::<4, 4>(w, k, xt, out, stride),
        }
    }
}

/// The broadcast block in plain Rust, 8 rows a vector (see [`DotKernel::broadcast`], which
/// checked the sizes).
fn broadcast_portable<const NO: usize, const NV: usize>(
    w: &[f32],
    k: usize,
    xt: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    let width = NV * 8;
    let mut acc = [[[0.0f32; 8]; NV]; NO];
    for (kk, x) in xt[..k * width].chunks_exact(width).enumerate() {
        for (o, acc) in acc.iter_mut().enumerate() {
            let w = w[o * k + kk];
            for (acc, x) in acc.iter_mut().zip(x.chunks_exact(8)) {
                for (a, x) in acc.iter_mut().zip(x) {
                    *a += w * x;
                }
            }
        }
    }
    for (o, acc) in acc.iter().enumerate() {
        let out = &mut out[o * stride..][..width];
        for (out, acc) in out.chunks_exact_mut(8).zip(acc) {
            out.copy_from_slice(acc);
        }
    }
}

/// The portable kernel: each block dequantized by its reference function (inlined per type).
fn portable<const R: usize>(t: TensorType, w: &[u8], x: [&[f32]; R]) -> [f32; R] {
    match t {
        TensorType::Q8_0 => portable_with::<R>(block::q8_0, t, w, x),
        TensorType::Q4_0 => portable_with::<R>(block::q4_0, t, w, x),
        TensorType::Q4_1 => portable_with::<R>(block::q4_1, t, w, x),
        TensorType::Q4_K => portable_with::<R>(block::q4_k, t, w, x),
        TensorType::Q6_K => portable_with::<R>(block::q6_k, t, w, x),
        _ => portable_with::<R>(crate::quant::block_dequantizer(t), t, w, x),
    }
}

#[inline(always)]
fn portable_with<const R: usize>(
    dequantize: impl Fn(&[u8], &mut [f32]),
    t: TensorType,
    w: &[u8],
    x: [&[f32]; R],
) -> [f32; R] {
    let (len, bytes) = (t.block_len(), t.block_bytes());
    let mut values = [0.0f32; 256];
    let mut acc = [[0.0f32; 8]; R];
    let mut tail = [0.0f32; R];
    for (b, blk) in w.chunks_exact(bytes).enumerate() {
        let values = &mut values[..len];
        dequantize(blk, values);
        for (r, x) in x.iter().enumerate() {
            let x = &x[b * len..][..len];
            let (v8, x8) = (values.chunks_exact(8), x.chunks_exact(8));
            tail[r] += v8
                .remainder()
                .iter()
                .zip(x8.remainder())
                .map(|(v, x)| v * x)
                .sum::<f32>();
            for (v, x) in v8.zip(x8) {
                for i in 0..8 {
                    acc[r][i] += v[i] * x[i];
                }
            }
        }
    }
    std::array::from_fn(|r| acc[r].iter().sum::<f32>() + tail[r])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{SUPPORTED, dequantize, random_blocks};
    use crate::rng::CounterRng;

    fn check<const R: usize>(kernel: DotKernel, t: TensorType, k: usize) {
        let w = random_blocks(t, 1, k, 11);
        let mut values = vec![0.0; k];
        dequantize(t, &w, &mut values).unwrap();
        let rng = CounterRng { seed: 4 };
        let x: Vec<Vec<f32>> = (0..R as u64)
            .map(|r| {
                (0..k as u64)
                    .map(|i| rng.uniform(r, i) as f32 - 0.5)
                    .collect()
            })
            .collect();
        let mut got = [0.0f32; R];
        kernel.rows_dots::<R>(t, &w, std::array::from_fn(|r| &x[r][..]), &mut got, R);
        for (r, got) in got.iter().enumerate() {
            let want: f64 = (0..k)
                .map(|i| f64::from(values[i]) * f64::from(x[r][i]))
                .sum();
            let scale: f64 = (0..k)
                .map(|i| (f64::from(values[i]) * f64::from(x[r][i])).abs())
                .sum();
            assert!(
                (f64::from(*got) - want).abs() <= 1e-6 * scale.max(1e-3),
                "{kernel:?} {t} k={k} row {r}/{R}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_kernel_dequantizes_rows_as_the_reference_does() {
        for kernel in DotKernel::available() {
            for t in SUPPORTED {
                let k = 2 * t.block_len().max(32);
                let w = random_blocks(t, 3, k, 7);
                let mut want = vec![0.0; 3 * k];
                dequantize(t, &w, &mut want).unwrap();
                let mut got = vec![f32::NAN; 3 * k];
                kernel.dequantize_rows(t, &w, &mut got);
                // One rounding apart at most: a fused multiply-add against a product and a sum.
                let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6 * scale,
                        "{kernel:?} {t} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_and_type_matches_the_dequantized_dot() {
        for kernel in DotKernel::available() {
            for t in SUPPORTED {
                for k in [t.block_len().max(32), 4 * t.block_len().max(32)] {
                    check::<1>(kernel, t, k);
                    check::<2>(kernel, t, k);
                    check::<3>(kernel, t, k);
                    check::<4>(kernel, t, k);
                    check::<5>(kernel, t, k);
                    check::<8>(kernel, t, k);
                }
            }
        }
    }
}
