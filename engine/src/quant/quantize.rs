//! Quantizers: f32 values into whole blocks of Q8_0, Q4_0 or Q4_K, so a checkpoint stored in
//! floats (a Hugging Face safetensors model) can run on the block kernels (`--quantize`), and
//! test models can be written as GGUF files.
//!
//! Q4_0: per 32 values the signed value of largest magnitude m gives d = m / −8, so that it
//! lands on level 0 (q − 8 = −8); every value rounds to the nearest of the 16 levels d · (q − 8).
//! Q8_0 follows ggml's reference (and the `gguf` package's numpy code) exactly: per 32 values
//! d = max|x| / 127, q = round(x / d) halves away from zero, d stored as f16. Q4_K uses a plain
//! min/max fit per sub-block of 32 (llama.cpp searches for better scales iteratively): each
//! sub-block's scale and minimum are 6-bit multiples of the super-block's f16 d and dmin, and
//! every value rounds to the nearest of its 16 levels.

use half::f16;

use super::TensorType;
use crate::error::{Error, Result};

/// The blocks of `tensor_type` holding `values` (a whole number of blocks); Q8_0, Q4_0 and
/// Q4_K only.
pub fn quantize(tensor_type: TensorType, values: &[f32]) -> Result<Vec<u8>> {
    let refuse = |reason: &str| Error::Quantize {
        tensor_type: tensor_type.name(),
        reason: reason.to_string(),
    };
    let len = tensor_type.block_len();
    if !values.len().is_multiple_of(len) {
        return Err(refuse(&format!(
            "{} values are not whole blocks of {len}",
            values.len()
        )));
    }
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(refuse(&format!("a value is not finite ({bad})")));
    }
    let block: fn(&[f32], &mut Vec<u8>) = match tensor_type {
        TensorType::Q8_0 => q8_0,
        TensorType::Q4_0 => q4_0,
        TensorType::Q4_K => q4_k,
        _ => return Err(refuse("the engine quantizes to q8_0, q4_0 and q4_k only")),
    };
    let mut out = Vec::with_capacity(values.len() / len * tensor_type.block_bytes());
    for values in values.chunks_exact(len) {
        block(values, &mut out);
    }
    Ok(out)
}

/// One Q8_0 block (34 bytes) of 32 values.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// One Q4_0 block (18 bytes) of 32 values.
fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let m = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = f16::from_f32(m / -8.0);
    let df = d.to_f32();
    let id = if df == 0.0 { 0.0 } else { 1.0 / df };
    let q = |v: f32| ((v * id).round() + 8.0).clamp(0.0, 15.0) as u8;
    out.extend(d.to_le_bytes());
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

/// One Q4_K super-block (144 bytes) of 256 values.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    // Each sub-block of 32 as scale · q − min with q in 0..=15 and min ≥ 0.
    let mut scale = [0.0f32; 8];
    let mut min = [0.0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(0.0f32, |m, v| m.min(*v));
        let hi = sub.iter().fold(lo, |m, v| m.max(*v));
        scale[j] = (hi - lo) / 15.0;
        min[j] = -lo;
    }
    let d = f16::from_f32(scale.iter().fold(0.0f32, |m, v| m.max(*v)) / 63.0);
    let dmin = f16::from_f32(min.iter().fold(0.0f32, |m, v| m.max(*v)) / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let six_bits = |v: f32, unit: f32, up: bool| {
        if unit > 0.0 {
            let r = v / unit;
            (if up { r.ceil() } else { r.round() }).clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    // Scales round up, so that a sub-block's top value stays within its 16 levels.
    let ls: [u8; 8] = std::array::from_fn(|j| six_bits(scale[j], df, true));
    let lm: [u8; 8] = std::array::from_fn(|j| six_bits(min[j], dminf, false));
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    // Scales and mins 0–3 in the low 6 bits of bytes 0–7, the high 2 bits of 4–7 above them,
    // the low 4 bits of 4–7 in bytes 8–11.
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        packed[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        packed[j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4);
    }
    out.extend(packed);
    let mut q = [0u8; 256];
    for (j, (sub, q)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let (step, offset) = (df * f32::from(ls[j]), dminf * f32::from(lm[j]));
        for (q, v) in q.iter_mut().zip(sub) {
            *q = if step > 0.0 {
                ((v + offset) / step).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
        }
    }
    // Byte l of chunk c: value 64c + l (low nibble) and 64c + 32 + l (high nibble).
    for c in 0..4 {
        out.extend((0..32).map(|l| q[64 * c + l] | (q[64 * c + 32 + l] << 4)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;
    use crate::rng::CounterRng;

    /// Values spread like a layer's weights: a normal-ish mix with an outlier now and then.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let rng = CounterRng { seed };
        (0..n as u64)
            .map(|i| {
                let s: f64 = (0..4).map(|j| rng.uniform(j, i) - 0.5).sum();
                let outlier = if rng.uniform(9, i) < 0.01 { 8.0 } else { 1.0 };
                (s * 0.05 * outlier) as f32
            })
            .collect()
    }

    fn round_trip(t: TensorType, x: &[f32]) -> Vec<f32> {
        let bytes = quantize(t, x).unwrap();
        assert_eq!(Some(bytes.len()), t.bytes_of(x.len()));
        let mut y = vec![0.0; x.len()];
        dequantize(t, &bytes, &mut y).unwrap();
        y
    }

    #[test]
    fn q8_0_rounds_each_value_to_the_nearest_level() {
        let x = weights(32 * 64, 1);
        let y = round_trip(TensorType::Q8_0, &x);
        for (b, (x, y)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a level, plus the f16 rounding of the scale over 127 levels.
            let bound = amax / 127.0 * 0.5 + amax * 1e-3;
            for (x, y) in x.iter().zip(y) {
                assert!(
                    (x - y).abs() <= bound,
                    "block {b}: {x} -> {y} (bound {bound})"
                );
            }
        }
        // An all-zero block stays zero.
        assert!(
            round_trip(TensorType::Q8_0, &[0.0; 32])
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    #[test]
    fn q4_0_rounds_each_value_to_the_nearest_of_its_16_levels() {
        let x = weights(32 * 64, 3);
        let y = round_trip(TensorType::Q4_0, &x);
        for (b, (x, y)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a level (amax / 8) for most values, plus the f16 rounding of the scale over
            // 8 levels; the levels reach −8 · d on the largest value's side and only 7 · d on
            // the other, where a value may lie a whole level beyond the last one.
            let level = amax / 8.0;
            let bound = |x: f32| {
                let beyond = x.abs() > 7.5 * level;
                (if beyond { level } else { level * 0.5 }) + amax * 8e-3
            };
            for (x, y) in x.iter().zip(y) {
                let bound = bound(*x);
                assert!(
                    (x - y).abs() <= bound,
                    "block {b}: {x} -> {y} (bound {bound})"
                );
            }
        }
        assert!(
            round_trip(TensorType::Q4_0, &[0.0; 32])
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    #[test]
    fn q4_k_stays_within_its_levels() {
        let x = weights(256 * 32, 2);
        let y = round_trip(TensorType::Q4_K, &x);
        let (mut err2, mut sig2) = (0.0f64, 0.0f64);
        for (x, y) in x.chunks(256).zip(y.chunks(256)) {
            // A sub-block's level is a 6-bit multiple of the super-block's largest level / 63,
            // its minimum one of the largest minimum / 63: half a level (rounded up) and half
            // a minimum's unit away at most.
            let (mut level, mut minimum) = (0.0f32, 0.0f32);
            for sub in x.chunks(32) {
                let lo = sub.iter().fold(0.0f32, |m, v| m.min(*v));
                let hi = sub.iter().fold(lo, |m, v| m.max(*v));
                level = level.max((hi - lo) / 15.0);
                minimum = minimum.max(-lo);
            }
            let bound = 0.5 * level * (1.0 + 2.0 / 63.0) + 0.5 * minimum / 63.0 + 1e-6;
            for (x, y) in x.iter().zip(y) {
                assert!((x - y).abs() <= bound, "{x} -> {y} (bound {bound})");
                err2 += f64::from(x - y).powi(2);
                sig2 += f64::from(*x).powi(2);
            }
        }
        let snr = 10.0 * (sig2 / err2).log10();
        assert!(snr > 20.0, "signal to quantization noise {snr:.1} dB");
    }

    #[test]
    fn what_cannot_be_quantized_is_refused() {
        assert!(quantize(TensorType::Q8_0, &[0.0; 31]).is_err());
        assert!(quantize(TensorType::Q4_K, &[0.0; 32]).is_err());
        assert!(quantize(TensorType::Q4_1, &[0.0; 32]).is_err());
        let mut x = vec![0.0; 32];
        x[3] = f32::NAN;
        assert!(quantize(TensorType::Q8_0, &x).is_err());
    }
}
