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
//! The AVX2 and AVX-512 paths are chosen at run time; the portable one dequantizes a block with
//! the reference dequantizer ([`crate::quant::block`]) and lets the compiler vectorise the
//! products.

use crate::quant::{TensorType, block};

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
    // Off x86-64 (wasm32) nothing is pushed before the portable kernel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(clippy::vec_init_then_push))]
    pub(crate) fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
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
            _ => {
                for (w, out) in rows {
                    out[..R].copy_from_slice(&portable::<R>(t, w, x));
                }
            }
        }
    }
}

impl DotKernel {
    /// Rows of x one vector holds in the broadcast block: 16 with AVX-512, 8 otherwise.
    pub(crate) fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => 16,
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
        // SAFETY (each x86 arm): the CPU has the features (`available`); the sizes were
        // checked above.
        #[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TensorType;
    use crate::quant::block::q4_k_scale_min;

    /// A vector width: AVX2's 8 f32 lanes or AVX-512's 16. The block code below is written once
    /// for both; every method is a single instruction or two.
    ///
    /// # Safety
    /// Each method needs the CPU features of its width (the entry points enable them).
    trait Simd: Copy {
        /// f32 lanes.
        type F: Copy;
        /// i32 lanes.
        type I: Copy;
        const LANES: usize;
        unsafe fn zero() -> Self::F;
        unsafe fn splat(v: f32) -> Self::F;
        /// LANES unsigned bytes at p, one a lane.
        unsafe fn bytes(p: *const u8) -> Self::I;
        /// LANES signed bytes at p, one a lane.
        unsafe fn signed_bytes(p: *const u8) -> Self::I;
        unsafe fn and(v: Self::I, mask: i32) -> Self::I;
        unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
        unsafe fn shr<const N: i32>(v: Self::I) -> Self::I;
        unsafe fn shl<const N: i32>(v: Self::I) -> Self::I;
        unsafe fn to_f32(v: Self::I) -> Self::F;
        unsafe fn load(p: *const f32) -> Self::F;
        unsafe fn store(p: *mut f32, v: Self::F);
        /// a · b + c, fused.
        unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
        unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
        unsafe fn sum(v: Self::F) -> f32;
    }

    #[derive(Clone, Copy)]
    struct Avx2;
    // SAFETY (every method): the caller runs with AVX2, FMA and F16C (`rows_dots_avx2`).
    impl Simd for Avx2 {
        type F = __m256;
        type I = __m256i;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn bytes(p: *const u8) -> __m256i {
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn signed_bytes(p: *const u8) -> __m256i {
            unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn and(v: __m256i, mask: i32) -> __m256i {
            unsafe { _mm256_and_si256(v, _mm256_set1_epi32(mask)) }
        }
        #[inline(always)]
        unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
            unsafe { _mm256_or_si256(a, b) }
        }
        #[inline(always)]
        unsafe fn shr<const N: i32>(v: __m256i) -> __m256i {
            unsafe { _mm256_srli_epi32::<N>(v) }
        }
        #[inline(always)]
        unsafe fn shl<const N: i32>(v: __m256i) -> __m256i {
            unsafe { _mm256_slli_epi32::<N>(v) }
        }
        #[inline(always)]
        unsafe fn to_f32(v: __m256i) -> __m256 {
            unsafe { _mm256_cvtepi32_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Avx512;
    // SAFETY (every method): the caller runs with AVX-512F and F16C (`rows_dots_avx512`).
    impl Simd for Avx512 {
        type F = __m512;
        type I = __m512i;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn bytes(p: *const u8) -> __m512i {
            unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn signed_bytes(p: *const u8) -> __m512i {
            unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn and(v: __m512i, mask: i32) -> __m512i {
            unsafe { _mm512_and_si512(v, _mm512_set1_epi32(mask)) }
        }
        #[inline(always)]
        unsafe fn or(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_or_si512(a, b) }
        }
        #[inline(always)]
        unsafe fn shr<const N: i32>(v: __m512i) -> __m512i {
            // A shift by a vector of counts: the immediate form's count is a u32 parameter.
            unsafe { _mm512_srlv_epi32(v, _mm512_set1_epi32(N)) }
        }
        #[inline(always)]
        unsafe fn shl<const N: i32>(v: __m512i) -> __m512i {
            unsafe { _mm512_sllv_epi32(v, _mm512_set1_epi32(N)) }
        }
        #[inline(always)]
        unsafe fn to_f32(v: __m512i) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
    }

    /// Up to four accumulators a row (see [`add_q`]).
    type Acc<S, const R: usize> = [[<S as Simd>::F; 4]; R];

    /// Bytes ahead of the block being decoded that the kernels ask the memory for: weights
    /// stream from memory once per product, and batch-1 decoding waited on them (8 KiB: 1.7×
    /// the tokens/s of none on SmolLM2 Q4_1, docs/performance.md).
    const PREFETCH_AHEAD: usize = 8192;

    /// Asks for the weight bytes [`PREFETCH_AHEAD`] past the block at `block`: a hint, never a
    /// fault, whatever the address.
    #[inline(always)]
    fn prefetch_ahead(block: *const u8) {
        // SAFETY: SSE is part of every x86_64 CPU; a prefetch reads nothing the program sees.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD) as *const i8) }
    }

    /// The f16 at `p` as f32.
    ///
    /// # Safety
    /// The CPU supports F16C; p points at 2 readable bytes.
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: as the caller promised.
        unsafe {
            let bits = i32::from(u16::from_le_bytes([*p, *p.add(1)]));
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
        }
    }

    /// Where a block's dequantized values go, LANES at a time: into dot products with rows of
    /// activations ([`Dots`]) or into memory ([`Store`]).
    trait Sink<S: Simd> {
        /// Takes the weights `w`, values `at..at + LANES` of the current block; `slot` numbers
        /// the vectors of a block so that consecutive ones can go to independent chains.
        ///
        /// # Safety
        /// The CPU has S's features; the sink's memory has room at `at..at + LANES`.
        unsafe fn take(&mut self, w: S::F, at: usize, slot: usize);
    }

    /// R rows of activations (each pointing at the current block's first value) and their
    /// running sums.
    struct Dots<S: Simd, const R: usize> {
        x: [*const f32; R],
        acc: Acc<S, R>,
    }

    impl<S: Simd, const R: usize> Sink<S> for Dots<S, R> {
        #[inline(always)]
        unsafe fn take(&mut self, w: S::F, at: usize, slot: usize) {
            // Four chains of sums for one row, two for two to four rows; from five rows on the
            // rows' own accumulators are enough independent chains (and all AVX2 has registers
            // for).
            let slot = match R {
                1 => slot % 4,
                2..=4 => slot % 2,
                _ => 0,
            };
            for (x, acc) in self.x.iter().zip(self.acc.iter_mut()) {
                // SAFETY: as the caller promised.
                acc[slot] = unsafe { S::fma(w, S::load(x.add(at)), acc[slot]) };
            }
        }
    }

    /// The current block's values written out at `out`.
    struct Store {
        out: *mut f32,
    }

    impl<S: Simd> Sink<S> for Store {
        #[inline(always)]
        unsafe fn take(&mut self, w: S::F, at: usize, _slot: usize) {
            // SAFETY: as the caller promised.
            unsafe { S::store(self.out.add(at), w) }
        }
    }

    /// LANES integer values dequantized as scale · q + offset into the sink (values
    /// `at..at + LANES` of the block).
    ///
    /// # Safety
    /// As [`Sink::take`].
    #[inline(always)]
    unsafe fn add_q<S: Simd, K: Sink<S>>(
        q: S::I,
        (scale, offset): (S::F, S::F),
        sink: &mut K,
        at: usize,
        slot: usize,
    ) {
        // SAFETY: as the caller promised.
        unsafe { sink.take(S::fma(S::to_f32(q), scale, offset), at, slot) }
    }

    /// Scale and offset broadcast for [`add_q`].
    ///
    /// # Safety
    /// The CPU has S's features.
    #[inline(always)]
    unsafe fn affine<S: Simd>(scale: f32, offset: f32) -> (S::F, S::F) {
        // SAFETY: as the caller promised.
        unsafe { (S::splat(scale), S::splat(offset)) }
    }

    /// A block format: its size and how one block adds into the rows' sums.
    trait Blocks {
        /// Bytes of a block.
        const BYTES: usize;
        /// Values of a block.
        const LEN: usize;
        /// Puts the values of the block at `p` into the sink, LANES at a time.
        ///
        /// # Safety
        /// The CPU has S's features and F16C; p points at a whole block; the sink takes values
        /// 0..LEN.
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K);
    }

    struct Q8_0;
    impl Blocks for Q8_0 {
        const BYTES: usize = 34;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K) {
            // SAFETY: as the caller promised; bytes 2–33 are the quants.
            unsafe {
                let f = affine::<S>(half(p), 0.0);
                for s in 0..32 / S::LANES {
                    let q = S::signed_bytes(p.add(2 + S::LANES * s));
                    add_q::<S, K>(q, f, sink, S::LANES * s, s);
                }
            }
        }
    }

    /// A block of 32 nibbles (Q4_0, Q4_1) at `qs`: byte j holds element j (low nibble) and
    /// element j + 16 (high nibble).
    ///
    /// # Safety
    /// As [`Blocks::add`], with 16 readable bytes at qs.
    #[inline(always)]
    unsafe fn add_nibbles32<S: Simd, K: Sink<S>>(qs: *const u8, f: (S::F, S::F), sink: &mut K) {
        // SAFETY: as the caller promised.
        unsafe {
            for s in 0..16 / S::LANES {
                let v = S::bytes(qs.add(S::LANES * s));
                let at = S::LANES * s;
                add_q::<S, K>(S::and(v, 0xF), f, sink, at, 2 * s);
                add_q::<S, K>(S::shr::<4>(v), f, sink, 16 + at, 2 * s + 1);
            }
        }
    }

    struct Q4_0;
    impl Blocks for Q4_0 {
        const BYTES: usize = 18;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K) {
            // SAFETY: as the caller promised; bytes 2–17 are the nibbles.
            unsafe {
                let d = half(p);
                add_nibbles32::<S, K>(p.add(2), affine::<S>(d, -8.0 * d), sink)
            }
        }
    }

    struct Q4_1;
    impl Blocks for Q4_1 {
        const BYTES: usize = 20;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K) {
            // SAFETY: as the caller promised; bytes 4–19 are the nibbles.
            unsafe {
                let f = affine::<S>(half(p), half(p.add(2)));
                add_nibbles32::<S, K>(p.add(4), f, sink)
            }
        }
    }

    struct Q4K;
    impl Blocks for Q4K {
        const BYTES: usize = 144;
        const LEN: usize = 256;
        #[inline(always)]
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K) {
            // SAFETY: as the caller promised; bytes 4–15 are the scales, 16–143 the nibbles.
            unsafe {
                let (d, dmin) = (half(p), half(p.add(2)));
                let scales = std::slice::from_raw_parts(p.add(4), 12);
                for c in 0..4 {
                    let (sc1, m1) = q4_k_scale_min(2 * c, scales);
                    let (sc2, m2) = q4_k_scale_min(2 * c + 1, scales);
                    let f1 = affine::<S>(d * f32::from(sc1), -dmin * f32::from(m1));
                    let f2 = affine::<S>(d * f32::from(sc2), -dmin * f32::from(m2));
                    // Byte l of the chunk: element 64c + l (low), 64c + 32 + l (high).
                    for s in 0..32 / S::LANES {
                        let v = S::bytes(p.add(16 + 32 * c + S::LANES * s));
                        let at = 64 * c + S::LANES * s;
                        add_q::<S, K>(S::and(v, 0xF), f1, sink, at, 2 * s);
                        add_q::<S, K>(S::shr::<4>(v), f2, sink, at + 32, 2 * s + 1);
                    }
                }
            }
        }
    }

    struct Q6K;
    impl Blocks for Q6K {
        const BYTES: usize = 210;
        const LEN: usize = 256;
        #[inline(always)]
        unsafe fn add<S: Simd, K: Sink<S>>(p: *const u8, sink: &mut K) {
            // SAFETY: as the caller promised; bytes 0–127 are the low nibbles, 128–191 the
            // high bit pairs, 192–207 the scales, 208–209 d.
            unsafe {
                let d = half(p.add(208));
                let (low, high, scales) = (p, p.add(128), p.add(192));
                // 6-bit value: 4 low bits | 2 high bits << 4.
                let value = |low4: S::I, high2: S::I| {
                    S::or(S::and(low4, 0xF), S::shl::<4>(S::and(high2, 3)))
                };
                let f = |e: usize| {
                    let scale = d * f32::from(*scales.add(e / 16) as i8);
                    affine::<S>(scale, -32.0 * scale)
                };
                for n in 0..2 {
                    for s in 0..32 / S::LANES {
                        let l = S::LANES * s;
                        let a = S::bytes(low.add(64 * n + l));
                        let b = S::bytes(low.add(64 * n + 32 + l));
                        let h = S::bytes(high.add(32 * n + l));
                        // Quarter g of this half: elements 128n + 32g + l + 0..LANES.
                        let e = 128 * n + l;
                        add_q::<S, K>(value(a, h), f(e), sink, e, 2 * s);
                        let q1 = value(b, S::shr::<2>(h));
                        add_q::<S, K>(q1, f(e + 32), sink, e + 32, 2 * s + 1);
                        let q2 = value(S::shr::<4>(a), S::shr::<4>(h));
                        add_q::<S, K>(q2, f(e + 64), sink, e + 64, 2 * s);
                        let q3 = value(S::shr::<4>(b), S::shr::<6>(h));
                        add_q::<S, K>(q3, f(e + 96), sink, e + 96, 2 * s + 1);
                    }
                }
            }
        }
    }

    /// Every block of `w` added into the rows' sums, the row pointers advancing a block's
    /// values at a time; the rows' dots.
    ///
    /// # Safety
    /// As [`Blocks::add`], for every block of `w` (whole blocks of B) and rows of as many
    /// values.
    #[inline(always)]
    unsafe fn row_of<B: Blocks, S: Simd, const R: usize>(w: &[u8], x: [*const f32; R]) -> [f32; R] {
        // SAFETY: as the caller promised.
        unsafe {
            let mut dots = Dots::<S, R> {
                x,
                acc: [[S::zero(); 4]; R],
            };
            for block in w.chunks_exact(B::BYTES) {
                prefetch_ahead(block.as_ptr());
                B::add::<S, _>(block.as_ptr(), &mut dots);
                for x in &mut dots.x {
                    *x = x.add(B::LEN);
                }
            }
            let acc = dots.acc;
            // Summed here, in each type's own code: a phi of the accumulator arrays after a
            // `match` on the type made LLVM keep some of them on the stack inside the loops.
            let mut sums = [0.0f32; R];
            for (sum, [a, b, c, d]) in sums.iter_mut().zip(acc) {
                *sum = S::sum(S::add(S::add(a, b), S::add(c, d)));
            }
            sums
        }
    }

    /// Every row of one type: the loop inside each type's code.
    ///
    /// # Safety
    /// As [`super::DotKernel::rows_dots`]'s kernels.
    #[inline(always)]
    unsafe fn rows_with<'a, S: Simd, const R: usize>(
        t: TensorType,
        rows: impl Iterator<Item = (&'a [u8], &'a mut [f32])>,
        x: [&[f32]; R],
    ) {
        #[inline(always)]
        unsafe fn each<'a, B: Blocks, S: Simd, const R: usize>(
            rows: impl Iterator<Item = (&'a [u8], &'a mut [f32])>,
            x: [*const f32; R],
        ) {
            for (w, out) in rows {
                // SAFETY: as the caller of `rows_dots` promised.
                out[..R].copy_from_slice(&unsafe { row_of::<B, S, R>(w, x) });
            }
        }
        let x: [*const f32; R] = x.map(|x| x.as_ptr());
        // SAFETY: as the caller promised.
        unsafe {
            match t {
                TensorType::Q8_0 => each::<Q8_0, S, R>(rows, x),
                TensorType::Q4_0 => each::<Q4_0, S, R>(rows, x),
                TensorType::Q4_1 => each::<Q4_1, S, R>(rows, x),
                TensorType::Q4_K => each::<Q4K, S, R>(rows, x),
                TensorType::Q6_K => each::<Q6K, S, R>(rows, x),
                _ => unreachable!("{t} is not a block-quantized type"),
            }
        }
    }

    /// Whole rows of `t` in `w` dequantized into `out`, their values one after another.
    ///
    /// # Safety
    /// The CPU has S's features and F16C; `t` is a quantized type; `w` is whole blocks of it;
    /// out has room for their values.
    #[inline(always)]
    unsafe fn dequantize_with<S: Simd>(t: TensorType, w: &[u8], out: *mut f32) {
        #[inline(always)]
        unsafe fn each<B: Blocks, S: Simd>(w: &[u8], out: *mut f32) {
            for (b, block) in w.chunks_exact(B::BYTES).enumerate() {
                // SAFETY: as the caller promised: block b's values fit at b·LEN.
                unsafe {
                    prefetch_ahead(block.as_ptr());
                    let mut sink = Store {
                        out: out.add(b * B::LEN),
                    };
                    B::add::<S, _>(block.as_ptr(), &mut sink);
                }
            }
        }
        // SAFETY: as the caller promised.
        unsafe {
            match t {
                TensorType::Q8_0 => each::<Q8_0, S>(w, out),
                TensorType::Q4_0 => each::<Q4_0, S>(w, out),
                TensorType::Q4_1 => each::<Q4_1, S>(w, out),
                TensorType::Q4_K => each::<Q4K, S>(w, out),
                TensorType::Q6_K => each::<Q6K, S>(w, out),
                _ => unreachable!("{t} is not a block-quantized type"),
            }
        }
    }

    /// A broadcast block for as many weight rows as indices are listed: out[o·stride + r] =
    /// Σ_kk w[o·k + kk] · xt[kk·NV·LANES + r] for the weight rows o (f32, row-major) and the
    /// r < NV·LANES rows of x (transposed), the sums in registers for the whole of k; each
    /// weight is broadcast once and multiplied into NV vectors of rows. The weight rows are
    /// written out one by one, not as a loop: the dev profile's opt-level 2 does not unroll a
    /// loop of twelve, and the sums then live on the stack (half the speed).
    macro_rules! broadcast_block {
        ($name:ident, $($o:literal)+) => {
            /// # Safety
            /// The CPU has S's features; w holds (weight rows)·k values, xt k·NV·LANES, out
            /// (weight rows − 1)·stride + NV·LANES.
            #[inline(always)]
            unsafe fn $name<S: Simd, const NV: usize>(
                w: *const f32,
                k: usize,
                xt: *const f32,
                out: *mut f32,
                stride: usize,
            ) {
                let width = NV * S::LANES;
                // SAFETY: as the caller promised.
                unsafe {
                    let mut acc = [[S::zero(); NV]; [$($o),+].len()];
                    // Pointers advanced a value (a row of xt) at a time: the dev profile keeps
                    // overflow checks, which index arithmetic in the loop would pay for.
                    let mut rows = [$(w.add($o * k)),+];
                    let mut xt = xt;
                    for _ in 0..k {
                        let mut x = [S::zero(); NV];
                        for v in 0..NV {
                            x[v] = S::load(xt.add(v * S::LANES));
                        }
                        $(
                            let b = S::splat(*rows[$o]);
                            for v in 0..NV {
                                acc[$o][v] = S::fma(b, x[v], acc[$o][v]);
                            }
                            rows[$o] = rows[$o].add(1);
                        )+
                        xt = xt.add(width);
                    }
                    $(
                        for v in 0..NV {
                            S::store(out.add($o * stride + v * S::LANES), acc[$o][v]);
                        }
                    )+
                }
            }
        };
    }
    broadcast_block!(broadcast_12, 0 1 2 3 4 5 6 7 8 9 10 11);
    broadcast_block!(broadcast_4, 0 1 2 3);

    /// [`dequantize_with`] with AVX2.
    ///
    /// # Safety
    /// As [`dequantize_with`], with AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_avx2(t: TensorType, w: &[u8], out: *mut f32) {
        // SAFETY: as the caller promised.
        unsafe { dequantize_with::<Avx2>(t, w, out) }
    }

    /// [`dequantize_with`] with AVX-512.
    ///
    /// # Safety
    /// As [`dequantize_with`], with AVX-512F and F16C.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn dequantize_avx512(t: TensorType, w: &[u8], out: *mut f32) {
        // SAFETY: as the caller promised.
        unsafe { dequantize_with::<Avx512>(t, w, out) }
    }

    /// [`broadcast_4`] with AVX2 (8 rows a vector).
    ///
    /// # Safety
    /// As [`broadcast_4`], with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn broadcast_avx2<const NV: usize>(
        w: *const f32,
        k: usize,
        xt: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: as the caller promised.
        unsafe { broadcast_4::<Avx2, NV>(w, k, xt, out, stride) }
    }

    /// [`broadcast_12`] with AVX-512 (16 rows a vector).
    ///
    /// # Safety
    /// As [`broadcast_12`], with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn broadcast_avx512<const NV: usize>(
        w: *const f32,
        k: usize,
        xt: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: as the caller promised.
        unsafe { broadcast_12::<Avx512, NV>(w, k, xt, out, stride) }
    }

    /// [`super::DotKernel::rows_dots`] with AVX2: each block's values built in registers.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `t` is a quantized type; each pair is a weight row
    /// (whole blocks of `t` for k values) and its outputs (at least R); each row of x holds k
    /// values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_dots_avx2<'a, const R: usize>(
        t: TensorType,
        rows: impl Iterator<Item = (&'a [u8], &'a mut [f32])>,
        x: [&[f32]; R],
    ) {
        // SAFETY: as the caller promised.
        unsafe { rows_with::<Avx2, R>(t, rows, x) }
    }

    /// [`rows_dots_avx2`] 16 lanes wide.
    ///
    /// # Safety
    /// As [`rows_dots_avx2`], with AVX-512F and F16C.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn rows_dots_avx512<'a, const R: usize>(
        t: TensorType,
        rows: impl Iterator<Item = (&'a [u8], &'a mut [f32])>,
        x: [&[f32]; R],
    ) {
        // SAFETY: as the caller promised.
        unsafe { rows_with::<Avx512, R>(t, rows, x) }
    }
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
