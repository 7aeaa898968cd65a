//! Dot products of one weight row kept in ggml blocks with one to four rows of f32
//! activations: each block is dequantized in registers (8 values at a time, the scale and
//! offset applied with one fused multiply-add) and multiplied into every activation row, the
//! sums in f32. This is the decoding kernel: at batch 1 the weights stream once per token and
//! nothing is written back but the outputs. The AVX2 path is chosen at run time; the portable
//! one dequantizes a block with the reference dequantizer ([`crate::quant::block`]) and lets the
//! compiler vectorise the products.

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

    /// LANES integer values dequantized as scale · q + offset and multiplied into values
    /// `at..at + LANES` of every row (accumulator `slot`).
    ///
    /// # Safety
    /// The CPU has S's features; every row has at + LANES readable values.
    #[inline(always)]
    unsafe fn add_q<S: Simd, const R: usize>(
        q: S::I,
        (scale, offset): (S::F, S::F),
        x: &[*const f32; R],
        at: usize,
        mut acc: Acc<S, R>,
        slot: usize,
    ) -> Acc<S, R> {
        // Four chains of sums for one row, two for two to four rows; from five rows on the
        // rows' own accumulators are enough independent chains (and all AVX2 has registers for).
        let slot = match R {
            1 => slot % 4,
            2..=4 => slot % 2,
            _ => 0,
        };
        // SAFETY: as the caller promised.
        unsafe {
            let w = S::fma(S::to_f32(q), scale, offset);
            for (x, acc) in x.iter().zip(acc.iter_mut()) {
                acc[slot] = S::fma(w, S::load(x.add(at)), acc[slot]);
            }
        }
        acc
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
        /// Adds the products of the block at `p` with values 0..LEN of each row of `x`.
        ///
        /// # Safety
        /// The CPU has S's features and F16C; p points at a whole block, each row at LEN
        /// readable values.
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            acc: Acc<S, R>,
        ) -> Acc<S, R>;
    }

    struct Q8_0;
    impl Blocks for Q8_0 {
        const BYTES: usize = 34;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            mut acc: Acc<S, R>,
        ) -> Acc<S, R> {
            // SAFETY: as the caller promised; bytes 2–33 are the quants.
            unsafe {
                let f = affine::<S>(half(p), 0.0);
                for s in 0..32 / S::LANES {
                    let q = S::signed_bytes(p.add(2 + S::LANES * s));
                    acc = add_q::<S, R>(q, f, x, S::LANES * s, acc, s);
                }
                acc
            }
        }
    }

    /// A block of 32 nibbles (Q4_0, Q4_1) at `qs`: byte j holds element j (low nibble) and
    /// element j + 16 (high nibble).
    ///
    /// # Safety
    /// As [`Blocks::add`], with 16 readable bytes at qs.
    #[inline(always)]
    unsafe fn add_nibbles32<S: Simd, const R: usize>(
        qs: *const u8,
        f: (S::F, S::F),
        x: &[*const f32; R],
        mut acc: Acc<S, R>,
    ) -> Acc<S, R> {
        // SAFETY: as the caller promised.
        unsafe {
            for s in 0..16 / S::LANES {
                let v = S::bytes(qs.add(S::LANES * s));
                let at = S::LANES * s;
                acc = add_q::<S, R>(S::and(v, 0xF), f, x, at, acc, 2 * s);
                acc = add_q::<S, R>(S::shr::<4>(v), f, x, 16 + at, acc, 2 * s + 1);
            }
            acc
        }
    }

    struct Q4_0;
    impl Blocks for Q4_0 {
        const BYTES: usize = 18;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            acc: Acc<S, R>,
        ) -> Acc<S, R> {
            // SAFETY: as the caller promised; bytes 2–17 are the nibbles.
            unsafe {
                let d = half(p);
                add_nibbles32::<S, R>(p.add(2), affine::<S>(d, -8.0 * d), x, acc)
            }
        }
    }

    struct Q4_1;
    impl Blocks for Q4_1 {
        const BYTES: usize = 20;
        const LEN: usize = 32;
        #[inline(always)]
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            acc: Acc<S, R>,
        ) -> Acc<S, R> {
            // SAFETY: as the caller promised; bytes 4–19 are the nibbles.
            unsafe {
                let f = affine::<S>(half(p), half(p.add(2)));
                add_nibbles32::<S, R>(p.add(4), f, x, acc)
            }
        }
    }

    struct Q4K;
    impl Blocks for Q4K {
        const BYTES: usize = 144;
        const LEN: usize = 256;
        #[inline(always)]
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            mut acc: Acc<S, R>,
        ) -> Acc<S, R> {
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
                        acc = add_q::<S, R>(S::and(v, 0xF), f1, x, at, acc, 2 * s);
                        acc = add_q::<S, R>(S::shr::<4>(v), f2, x, at + 32, acc, 2 * s + 1);
                    }
                }
                acc
            }
        }
    }

    struct Q6K;
    impl Blocks for Q6K {
        const BYTES: usize = 210;
        const LEN: usize = 256;
        #[inline(always)]
        unsafe fn add<S: Simd, const R: usize>(
            p: *const u8,
            x: &[*const f32; R],
            mut acc: Acc<S, R>,
        ) -> Acc<S, R> {
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
                        acc = add_q::<S, R>(value(a, h), f(e), x, e, acc, 2 * s);
                        let q1 = value(b, S::shr::<2>(h));
                        acc = add_q::<S, R>(q1, f(e + 32), x, e + 32, acc, 2 * s + 1);
                        let q2 = value(S::shr::<4>(a), S::shr::<4>(h));
                        acc = add_q::<S, R>(q2, f(e + 64), x, e + 64, acc, 2 * s);
                        let q3 = value(S::shr::<4>(b), S::shr::<6>(h));
                        acc = add_q::<S, R>(q3, f(e + 96), x, e + 96, acc, 2 * s + 1);
                    }
                }
                acc
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
    unsafe fn row_of<B: Blocks, S: Simd, const R: usize>(
        w: &[u8],
        mut x: [*const f32; R],
    ) -> [f32; R] {
        // SAFETY: as the caller promised.
        unsafe {
            let mut acc: Acc<S, R> = [[S::zero(); 4]; R];
            for block in w.chunks_exact(B::BYTES) {
                acc = B::add::<S, R>(block.as_ptr(), &x, acc);
                for x in &mut x {
                    *x = x.add(B::LEN);
                }
            }
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
