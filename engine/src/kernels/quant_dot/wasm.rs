//! The block kernels in wasm's 128-bit SIMD (simd128: 4 f32 lanes), for the engine in the
//! browser. Wasm has no fused multiply-add outside the relaxed-SIMD proposal, so a
//! multiply-add is a product and a sum; nor a prefetch. A module with SIMD instructions loads
//! only where the engine runs them all (every browser with WebGPU does), so the build enables
//! simd128 for the whole wasm target (.cargo/config.toml) rather than choosing at run time.

use std::arch::wasm32::*;

use super::TensorType;
use super::simd::{Simd, broadcast_4, dequantize_with, rows_with};

#[derive(Clone, Copy)]
struct Simd128;
// SAFETY (every method): the build targets simd128 (the module would not load without it).
impl Simd for Simd128 {
    type F = v128;
    type I = v128;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> v128 {
        f32x4_splat(0.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> v128 {
        f32x4_splat(v)
    }
    #[inline(always)]
    unsafe fn bytes(p: *const u8) -> v128 {
        // SAFETY: the caller gives 4 readable bytes; the load has no alignment requirement.
        let b = unsafe { v128_load32_zero(p as *const u32) };
        u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(b))
    }
    #[inline(always)]
    unsafe fn signed_bytes(p: *const u8) -> v128 {
        // SAFETY: as in `bytes`.
        let b = unsafe { v128_load32_zero(p as *const u32) };
        i32x4_extend_low_i16x8(i16x8_extend_low_i8x16(b))
    }
    #[inline(always)]
    unsafe fn and(v: v128, mask: i32) -> v128 {
        v128_and(v, i32x4_splat(mask))
    }
    #[inline(always)]
    unsafe fn or(a: v128, b: v128) -> v128 {
        v128_or(a, b)
    }
    #[inline(always)]
    unsafe fn shr<const N: i32>(v: v128) -> v128 {
        u32x4_shr(v, N as u32)
    }
    #[inline(always)]
    unsafe fn shl<const N: i32>(v: v128) -> v128 {
        i32x4_shl(v, N as u32)
    }
    #[inline(always)]
    unsafe fn to_f32(v: v128) -> v128 {
        f32x4_convert_i32x4(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> v128 {
        // SAFETY: the caller gives 4 readable values; wasm loads need no alignment.
        unsafe { v128_load(p as *const v128) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: v128) {
        // SAFETY: the caller gives room for 4 values; wasm stores need no alignment.
        unsafe { v128_store(p as *mut v128, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: v128, b: v128, c: v128) -> v128 {
        f32x4_add(f32x4_mul(a, b), c)
    }
    #[inline(always)]
    unsafe fn add(a: v128, b: v128) -> v128 {
        f32x4_add(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: v128) -> f32 {
        let pairs = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
        f32x4_extract_lane::<0>(f32x4_add(pairs, i32x4_shuffle::<1, 0, 3, 2>(pairs, pairs)))
    }
    #[inline(always)]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller gives 2 readable bytes.
        let bits = unsafe { u16::from_le_bytes([*p, *p.add(1)]) };
        half::f16::from_bits(bits).to_f32()
    }
    #[inline(always)]
    fn prefetch(_block: *const u8) {}
}

/// [`dequantize_with`] in simd128.
///
/// # Safety
/// As [`dequantize_with`].
pub(super) unsafe fn dequantize_simd128(t: TensorType, w: &[u8], out: *mut f32) {
    // SAFETY: as the caller promised.
    unsafe { dequantize_with::<Simd128>(t, w, out) }
}

/// [`broadcast_4`] in simd128 (4 rows a vector).
///
/// # Safety
/// As [`broadcast_4`].
pub(super) unsafe fn broadcast_simd128<const NV: usize>(
    w: *const f32,
    k: usize,
    xt: *const f32,
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: as the caller promised.
    unsafe { broadcast_4::<Simd128, NV>(w, k, xt, out, stride) }
}

/// [`super::DotKernel::rows_dots`] in simd128: each block's values built in registers.
///
/// # Safety
/// `t` is a quantized type; each pair is a weight row (whole blocks of `t` for k values) and
/// its outputs (at least R); each row of x holds k values.
pub(super) unsafe fn rows_dots_simd128<'a, const R: usize>(
    t: TensorType,
    rows: impl Iterator<Item = (&'a [u8], &'a mut [f32])>,
    x: [&[f32]; R],
) {
    // SAFETY: as the caller promised.
    unsafe { rows_with::<Simd128, R>(t, rows, x) }
}
