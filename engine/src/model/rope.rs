//! Rotary position embeddings as Hugging Face computes them (`rotate_half` layout), with Llama 3's
//! frequency-dependent scaling. The angles are computed on the host per step: positions differ
//! per sequence and are known there, so only a small [batch, seq, head_dim/2] table is uploaded.

use crate::model::config::{Llama3RopeScaling, ModelConfig};

/// Inverse frequencies of the rotary embedding, one per pair of head dimensions.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    /// The frequencies for `config` (`rope_theta`, `head_dim`, optional llama3 scaling).
    pub fn new(config: &ModelConfig) -> Self {
        let half = config.head_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_theta
                    .powf(2.0 * i as f64 / config.head_dim as f64)
            })
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            llama3_scale(&mut inv_freq, scaling);
        }
        Self { inv_freq }
    }

    /// The frequencies each divided by its factor in `divisors` (one per frequency): Llama 3's
    /// scaling as GGUF files store it (`rope_freqs.weight`).
    pub fn divided_by(mut self, divisors: &[f32]) -> Self {
        for (f, d) in self.inv_freq.iter_mut().zip(divisors) {
            *f /= f64::from(*d);
        }
        self
    }

    /// Number of frequencies (head_dim / 2).
    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// cos and sin of `position · inv_freq`, appended to `cos` and `sin` (head_dim/2 values each).
    pub fn push_angles(&self, position: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        for f in &self.inv_freq {
            // Computed in f32 like transformers (float32 inv_freq times float32 positions).
            let angle = (*f as f32) * position as f32;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
}

/// Llama 3's rescaling: long wavelengths are divided by `factor`, short ones kept, and the band
/// between them interpolated smoothly.
fn llama3_scale(inv_freq: &mut [f64], s: &Llama3RopeScaling) {
    let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f64::consts::PI / *f;
        if wavelen > low_freq_wavelen {
            *f /= s.factor;
        } else if wavelen >= high_freq_wavelen {
            let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                / (s.high_freq_factor - s.low_freq_factor);
            *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
        }
    }
}
