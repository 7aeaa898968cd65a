//! The block kernels' x86-64 vector widths: AVX2 (with FMA and F16C) and AVX-512F, chosen at
//! run time ([`super::DotKernel::available`]).

use std::arch::x86_64::*;

use super::TensorType;
use super::simd::{Simd, broadcast_4, broadcast_12, dequantize_with, rows_with};

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
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: as the caller promised (F16C is enabled with AVX2).
        unsafe { half_f16c(p) }
    }
    #[inline(always)]
    fn prefetch(block: *const u8) {
        prefetch_ahead(block)
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
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: as the caller promised (F16C is enabled with AVX-512).
        unsafe { half_f16c(p) }
    }
    #[inline(always)]
    fn prefetch(block: *const u8) {
        prefetch_ahead(block)
    }
}

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
unsafe fn half_f16c(p: *const u8) -> f32 {
    // SAFETY: as the caller promised.
    unsafe {
        let bits = i32::from(u16::from_le_bytes([*p, *p.add(1)]));
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }
}
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
