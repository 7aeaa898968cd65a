//! The reference dequantizers: whole blocks to f32, with the f32 operations of the `gguf`
//! package's numpy code in the same order (scale products first, no fused multiply-add), so the
//! results match it bit for bit. Block layouts are ggml's (ggml-common.h).

use half::{bf16, f16};

use super::TensorType;
use crate::error::{Error, Result};

/// Writes the `out.len()` values that `bytes` (whole blocks of `tensor_type`) hold into `out`.
pub fn dequantize(tensor_type: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if tensor_type.bytes_of(out.len()) != Some(bytes.len()) {
        return Err(Error::QuantizedLength {
            tensor_type: tensor_type.name(),
            elements: out.len(),
            bytes: bytes.len(),
        });
    }
    let blocks = bytes
        .chunks_exact(tensor_type.block_bytes())
        .zip(out.chunks_exact_mut(tensor_type.block_len()));
    let block = block_dequantizer(tensor_type);
    for (b, y) in blocks {
        block(b, y);
    }
    Ok(())
}

/// The function that dequantizes one whole block of `tensor_type` (its `block_bytes()` bytes
/// into its `block_len()` values); kernels call the per-type functions directly.
pub fn block_dequantizer(tensor_type: TensorType) -> fn(&[u8], &mut [f32]) {
    match tensor_type {
        TensorType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        TensorType::F16 => |b, y| y[0] = half(b, 0),
        TensorType::BF16 => |b, y| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        TensorType::Q8_0 => q8_0,
        TensorType::Q4_0 => q4_0,
        TensorType::Q4_1 => q4_1,
        TensorType::Q4_K => q4_k,
        TensorType::Q6_K => q6_k,
    }
}

/// The f16 at byte `at` of a block, as f32 (exact).
#[inline(always)]
fn half(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Q8_0, 34 bytes: d (f16), then 32 signed bytes q; x = q · d.
#[inline(always)]
pub fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// Q4_0, 18 bytes: d (f16), then 16 bytes whose low nibbles are elements 0–15 and high nibbles
/// elements 16–31; x = d · (q − 8).
#[inline(always)]
pub fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from((q & 0xF) as i8 - 8);
        y[j + 16] = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// Q4_1, 20 bytes: d and m (f16), then 16 bytes of nibbles as in Q4_0; x = d · q + m.
#[inline(always)]
pub fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * f32::from(q & 0xF) + m;
        y[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// Sub-block `k`'s 6-bit scale and min of a Q4_K super-block, from its 12 packed bytes: bytes
/// 0–3 hold scales 0–3 (and the high bits of scales 4–7), bytes 4–7 mins 0–3 (and the high bits
/// of mins 4–7), bytes 8–11 the low nibbles of scales and mins 4–7.
#[inline(always)]
pub fn q4_k_scale_min(k: usize, s: &[u8]) -> (u8, u8) {
    if k < 4 {
        (s[k] & 63, s[k + 4] & 63)
    } else {
        (
            (s[k + 4] & 0xF) | ((s[k - 4] >> 6) << 4),
            (s[k + 4] >> 4) | ((s[k] >> 6) << 4),
        )
    }
}

/// Q4_K, 144 bytes: d and dmin (f16), 12 bytes of packed scales and mins, 128 bytes of nibbles.
/// Each 32-byte group of nibbles holds 64 elements: its low nibbles (sub-block 2c), then its
/// high nibbles (sub-block 2c + 1); x = (d · scale) · q − dmin · min.
#[inline(always)]
pub fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    for (c, (q, y)) in b[16..144]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = q4_k_scale_min(2 * c, scales);
        let (sc2, m2) = q4_k_scale_min(2 * c + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for (l, &q) in q.iter().enumerate() {
            y[l] = d1 * f32::from(q & 0xF) - min1;
            y[l + 32] = d2 * f32::from(q >> 4) - min2;
        }
    }
}

/// Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed scales
/// (one per 16 elements), d (f16) last. Element e of half n = e / 128, quarter g = (e % 128) / 32,
/// lane l = e % 32 takes the low (g < 2) or high nibble of low byte 64n + l + 32·(g mod 2) and
/// bits 2g, 2g + 1 of high byte 32n + l; x = (d · scale) · (q − 32).
#[inline(always)]
pub fn q6_k(b: &[u8], y: &mut [f32]) {
    let (low, high, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (n, g, l) = (e / 128, (e % 128) / 32, e % 32);
        let byte = low[64 * n + l + 32 * (g & 1)];
        let low4 = if g < 2 { byte & 0xF } else { byte >> 4 };
        let high2 = (high[32 * n + l] >> (2 * g)) & 3;
        let q = (low4 | (high2 << 4)) as i8 - 32;
        let scale = d * f32::from(scales[e / 16] as i8);
        *y = scale * f32::from(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn run(t: TensorType, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; bytes.len() / t.block_bytes() * t.block_len()];
        dequantize(t, bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn plain_floats() {
        let mut bytes = 1.5f32.to_le_bytes().to_vec();
        bytes.extend((-2.25f32).to_le_bytes());
        assert_eq!(run(TensorType::F32, &bytes), [1.5, -2.25]);
        assert_eq!(run(TensorType::F16, &f16_bytes(0.5)), [0.5]);
        assert_eq!(
            run(TensorType::BF16, &bf16::from_f32(-3.0).to_le_bytes()),
            [-3.0]
        );
    }

    #[test]
    fn q8_0_and_q4_0_and_q4_1() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = run(TensorType::Q8_0, &b);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);

        // d = 1, first byte 0x9F: element 0 is 15 − 8, element 16 is 9 − 8.
        let mut b = f16_bytes(1.0).to_vec();
        b.extend([0x9F; 1].iter().chain(&[0x88; 15]));
        let y = run(TensorType::Q4_0, &b);
        assert_eq!((y[0], y[16], y[1], y[17]), (7.0, 1.0, 0.0, 0.0));

        let mut b = f16_bytes(2.0).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend([0x31; 16]);
        let y = run(TensorType::Q4_1, &b);
        assert_eq!((y[0], y[16]), (2.0 * 1.0 - 1.0, 2.0 * 3.0 - 1.0));
    }

    #[test]
    fn q4_k_unpacks_six_bit_scales_and_mins() {
        let mut s = [0u8; 12];
        (s[1], s[5], s[9]) = (0xC5, 0x40, 0x2A);
        assert_eq!(q4_k_scale_min(1, &s), (5, 0));
        assert_eq!(q4_k_scale_min(5, &s), (0xA | (3 << 4), 0x2 | (1 << 4)));

        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(0.5));
        b.extend(s);
        let mut qs = [0u8; 128];
        qs[0] = 0x73; // group 0, lane 0: element 0 gets 3, element 32 gets 7
        qs[64] = 0x0F; // group 2, lane 0: element 128 (sub-block 4) gets 15
        b.extend(qs);
        let y = run(TensorType::Q4_K, &b);
        // Sub-block 0: scale s[0] & 63 = 0, min s[4] & 63 = 0.
        assert_eq!(y[0], 0.0);
        // Sub-block 1: scale 5, min s[5] & 63 = 0.
        assert_eq!(y[32], 0.25 * 5.0 * 7.0);
        // Sub-block 4: scale (s[8] & 0xF) | (s[0] >> 6) << 4 = 0, min (s[8] >> 4) | … = 0.
        assert_eq!(y[128], 0.0);
        // Sub-block 5: scale 58, min 18, q = 0 at element 160.
        assert_eq!(y[160], 0.25 * 58.0 * 0.0 - 0.5 * 18.0);
    }

    #[test]
    fn q6_k_places_every_element() {
        let mut b = vec![0u8; 210];
        // Element 200: half 1, quarter 2, lane 8 → high nibble of low byte 72, bits 4–5 of
        // high byte 128 + 40, scale 12.
        b[72] = 0x50; // low 4 bits of q: 5
        b[128 + 40] = 0b10 << 4; // high 2 bits of q: 2 → q = 5 + 32 = 37
        b[192 + 12] = (-3i8) as u8;
        b[208..210].copy_from_slice(&f16_bytes(0.5));
        let y = run(TensorType::Q6_K, &b);
        assert_eq!(y[200], (0.5 * -3.0) * (37.0 - 32.0));
        // Every other element has q = 0 − 32 times its scale: 0 but for elements 192–207.
        for (e, v) in y.iter().enumerate() {
            let expected = match e {
                200 => continue,
                192..208 => (0.5 * -3.0) * -32.0,
                _ => 0.0,
            };
            assert_eq!(*v, expected, "element {e}");
        }
    }

    #[test]
    fn a_length_that_is_not_whole_blocks_is_refused() {
        let mut out = vec![0.0; 32];
        let err = dequantize(TensorType::Q4_0, &[0; 17], &mut out).unwrap_err();
        assert!(err.to_string().contains("Q4_0"), "{err}");
    }
}
