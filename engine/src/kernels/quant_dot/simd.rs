//! The block-quantized kernels written once for every vector width ([`Simd`]: AVX2, AVX-512,
//! wasm's simd128): a block's values built in registers from its bytes, then dotted with rows
//! of activations ([`rows_with`]) or written out ([`dequantize_with`]); and the broadcast block
//! ([`broadcast_4`]) that multiplies dequantized rows into vectors of activation rows.

use super::TensorType;
use crate::quant::block::q4_k_scale_min;

/// A vector width: AVX2's 8 f32 lanes, AVX-512's 16, wasm simd128's 4. The block code below is
/// written once for all; every method is a single instruction or a few.
///
/// # Safety
/// Each method needs the CPU features of its width (the entry points enable them).
pub(super) trait Simd: Copy {
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
    /// a · b + c, fused where the target has a fused multiply-add (x86), else a product and a
    /// sum (wasm).
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sum(v: Self::F) -> f32;
    /// The little-endian f16 at `p` as f32 (p points at 2 readable bytes).
    unsafe fn half(p: *const u8) -> f32;
    /// A hint to fetch the weight bytes some way past the block at `block` (or nothing): never
    /// a fault, whatever the address.
    fn prefetch(block: *const u8);
}

/// Up to four accumulators a row (see [`add_q`]).
type Acc<S, const R: usize> = [[<S as Simd>::F; 4]; R];

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
            let f = affine::<S>(S::half(p), 0.0);
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
            let d = S::half(p);
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
            let f = affine::<S>(S::half(p), S::half(p.add(2)));
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
            let (d, dmin) = (S::half(p), S::half(p.add(2)));
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
            let d = S::half(p.add(208));
            let (low, high, scales) = (p, p.add(128), p.add(192));
            // 6-bit value: 4 low bits | 2 high bits << 4.
            let value =
                |low4: S::I, high2: S::I| S::or(S::and(low4, 0xF), S::shl::<4>(S::and(high2, 3)));
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
            S::prefetch(block.as_ptr());
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
pub(super) unsafe fn rows_with<'a, S: Simd, const R: usize>(
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
pub(super) unsafe fn dequantize_with<S: Simd>(t: TensorType, w: &[u8], out: *mut f32) {
    #[inline(always)]
    unsafe fn each<B: Blocks, S: Simd>(w: &[u8], out: *mut f32) {
        for (b, block) in w.chunks_exact(B::BYTES).enumerate() {
            // SAFETY: as the caller promised: block b's values fit at b·LEN.
            unsafe {
                S::prefetch(block.as_ptr());
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
        pub(super) unsafe fn $name<S: Simd, const NV: usize>(
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
#[cfg(target_arch = "x86_64")]
broadcast_block!(broadcast_12, 0 1 2 3 4 5 6 7 8 9 10 11);
broadcast_block!(broadcast_4, 0 1 2 3);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{SUPPORTED, dequantize, random_blocks};
    use crate::rng::CounterRng;

    /// simd128's width in plain arrays, with its order of operations (a product then a sum, the
    /// same pairwise total): the block code's 4-lane paths checked on any CPU.
    #[derive(Clone, Copy)]
    struct Lanes4;
    // SAFETY (every method): plain Rust; the pointers are the callers' promises.
    impl Simd for Lanes4 {
        type F = [f32; 4];
        type I = [i32; 4];
        const LANES: usize = 4;
        unsafe fn zero() -> [f32; 4] {
            [0.0; 4]
        }
        unsafe fn splat(v: f32) -> [f32; 4] {
            [v; 4]
        }
        unsafe fn bytes(p: *const u8) -> [i32; 4] {
            std::array::from_fn(|i| i32::from(unsafe { *p.add(i) }))
        }
        unsafe fn signed_bytes(p: *const u8) -> [i32; 4] {
            std::array::from_fn(|i| i32::from(unsafe { *p.add(i) } as i8))
        }
        unsafe fn and(v: [i32; 4], mask: i32) -> [i32; 4] {
            v.map(|v| v & mask)
        }
        unsafe fn or(a: [i32; 4], b: [i32; 4]) -> [i32; 4] {
            std::array::from_fn(|i| a[i] | b[i])
        }
        unsafe fn shr<const N: i32>(v: [i32; 4]) -> [i32; 4] {
            v.map(|v| ((v as u32) >> N) as i32)
        }
        unsafe fn shl<const N: i32>(v: [i32; 4]) -> [i32; 4] {
            v.map(|v| v << N)
        }
        unsafe fn to_f32(v: [i32; 4]) -> [f32; 4] {
            v.map(|v| v as f32)
        }
        unsafe fn load(p: *const f32) -> [f32; 4] {
            std::array::from_fn(|i| unsafe { *p.add(i) })
        }
        unsafe fn store(p: *mut f32, v: [f32; 4]) {
            for (i, v) in v.into_iter().enumerate() {
                unsafe { *p.add(i) = v }
            }
        }
        unsafe fn fma(a: [f32; 4], b: [f32; 4], c: [f32; 4]) -> [f32; 4] {
            std::array::from_fn(|i| a[i] * b[i] + c[i])
        }
        unsafe fn add(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
            std::array::from_fn(|i| a[i] + b[i])
        }
        unsafe fn sum(v: [f32; 4]) -> f32 {
            (v[0] + v[2]) + (v[1] + v[3])
        }
        unsafe fn half(p: *const u8) -> f32 {
            half::f16::from_bits(u16::from_le_bytes(unsafe { [*p, *p.add(1)] })).to_f32()
        }
        fn prefetch(_block: *const u8) {}
    }

    fn activations(rows: usize, k: usize) -> Vec<Vec<f32>> {
        let rng = CounterRng { seed: 5 };
        (0..rows as u64)
            .map(|r| {
                (0..k as u64)
                    .map(|i| rng.uniform(r, i) as f32 - 0.5)
                    .collect()
            })
            .collect()
    }

    /// |got − want| within f32 rounding of the sum of the products' sizes.
    fn close(got: f32, want: f64, scale: f64) -> bool {
        (f64::from(got) - want).abs() <= 1e-6 * scale.max(1e-3)
    }

    #[test]
    fn four_lanes_dequantize_as_the_reference_does() {
        for t in SUPPORTED.into_iter().filter(|t| t.is_quantized()) {
            let k = 2 * t.block_len().max(32);
            let w = random_blocks(t, 3, k, 8);
            let mut want = vec![0.0; 3 * k];
            dequantize(t, &w, &mut want).unwrap();
            let mut got = vec![f32::NAN; 3 * k];
            // SAFETY: w is whole blocks of t for 3·k values, got has room for them.
            unsafe { dequantize_with::<Lanes4>(t, &w, got.as_mut_ptr()) };
            let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * scale, "{t} [{i}]: {g} vs {w}");
            }
        }
    }

    fn check_dots<const R: usize>(t: TensorType, k: usize) {
        let n = 3;
        let w = random_blocks(t, n, k, 9);
        let mut values = vec![0.0; n * k];
        dequantize(t, &w, &mut values).unwrap();
        let x = activations(R, k);
        let mut got = vec![0.0f32; n * R];
        let rows = w.chunks_exact(w.len() / n).zip(got.chunks_mut(R));
        // SAFETY: whole rows of t for k values, R outputs each, rows of x of k values.
        unsafe { rows_with::<Lanes4, R>(t, rows, std::array::from_fn(|r| &x[r][..])) };
        for j in 0..n {
            for (r, x) in x.iter().enumerate() {
                let products = (0..k).map(|i| f64::from(values[j * k + i]) * f64::from(x[i]));
                let want: f64 = products.clone().sum();
                let scale: f64 = products.map(f64::abs).sum();
                let got = got[j * R + r];
                assert!(
                    close(got, want, scale),
                    "{t} k={k} w{j}·x{r}/{R}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn four_lanes_match_the_dequantized_dot() {
        for t in SUPPORTED.into_iter().filter(|t| t.is_quantized()) {
            for k in [t.block_len().max(32), 4 * t.block_len().max(32)] {
                check_dots::<1>(t, k);
                check_dots::<2>(t, k);
                check_dots::<3>(t, k);
                check_dots::<5>(t, k);
                check_dots::<8>(t, k);
            }
        }
    }

    fn check_broadcast<const NV: usize>(k: usize) {
        let (outputs, width, stride) = (4, NV * 4, NV * 4 + 3);
        let w: Vec<f32> = activations(outputs, k).concat();
        let x = activations(width, k);
        let xt: Vec<f32> = (0..k).flat_map(|kk| x.iter().map(move |x| x[kk])).collect();
        let mut out = vec![f32::NAN; (outputs - 1) * stride + width];
        // SAFETY: w holds 4·k values, xt k·width, out 3·stride + width.
        unsafe { broadcast_4::<Lanes4, NV>(w.as_ptr(), k, xt.as_ptr(), out.as_mut_ptr(), stride) };
        for o in 0..outputs {
            for (r, x) in x.iter().enumerate() {
                let products = (0..k).map(|i| f64::from(w[o * k + i]) * f64::from(x[i]));
                let want: f64 = products.clone().sum();
                let scale: f64 = products.map(f64::abs).sum();
                let got = out[o * stride + r];
                assert!(
                    close(got, want, scale),
                    "k={k} NV={NV} w{o}·x{r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn four_lanes_broadcast_blocks_match_the_product() {
        for k in [1, 7, 64] {
            check_broadcast::<1>(k);
            check_broadcast::<2>(k);
        }
    }
}
