//! What a speed benchmark of a loaded model is asked and what it reports (`ets bench` natively,
//! the engine worker's `Bench` request in the browser; the engine measures:
//! `ets_engine::bench`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

/// The most sequences, prompt tokens or decode steps a benchmark may ask for.
pub const MAX_BENCH_SIZE: usize = 4096;

/// The measurements to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
    /// Batch sizes (sequences decoded together) to measure.
    pub batch: Vec<usize>,
    /// Prompt tokens per sequence (synthetic token ids).
    pub prompt_len: usize,
    /// Decode steps timed per sequence.
    pub decode_steps: usize,
    /// Timed repetitions of each measurement after a warm-up; the median is reported.
    pub repeats: usize,
    /// Candidates M of the ETS step measured; 0 skips it.
    pub ets_m: usize,
    /// Rollouts K per candidate.
    pub ets_k: usize,
    /// Tokens of a candidate block (B).
    pub ets_block: usize,
    /// Tokens of each rollout after its candidate's block.
    pub ets_rollout: usize,
}

impl Default for BenchSettings {
    fn default() -> Self {
        Self {
            batch: vec![1, 8, 24, 64],
            prompt_len: 64,
            decode_steps: 16,
            repeats: 3,
            ets_m: 8,
            ets_k: 3,
            ets_block: 16,
            ets_rollout: 48,
        }
    }
}

impl BenchSettings {
    /// Checks the ranges: at least one repetition and one prompt token, every size at most
    /// [`MAX_BENCH_SIZE`], an ETS step (when asked) with K and B of at least 1.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(SpecError::Strategy(format!("benchmark: {m}")));
        if self.repeats == 0 || self.prompt_len == 0 || self.batch.contains(&0) {
            return fail("repeats, batch sizes and the prompt length must be at least 1".into());
        }
        let sizes = self.batch.iter().chain([
            &self.repeats,
            &self.prompt_len,
            &self.decode_steps,
            &self.ets_m,
            &self.ets_k,
            &self.ets_block,
            &self.ets_rollout,
        ]);
        if let Some(big) = sizes.copied().find(|&n| n > MAX_BENCH_SIZE) {
            return fail(format!("{big} is more than the {MAX_BENCH_SIZE} allowed"));
        }
        if self.ets_m > 0 && (self.ets_k == 0 || self.ets_block == 0) {
            return fail("the ETS step needs K and the block to be at least 1".into());
        }
        Ok(())
    }
}

/// Prefill and decode speed at one batch size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeFigures {
    pub batch: usize,
    /// Prompt tokens per second, all sequences together (the first token drawn included).
    pub prefill_tokens_per_s: f64,
    /// Tokens per second over the timed decode steps, all sequences together.
    pub decode_tokens_per_s: f64,
    /// The KV cache's bytes after the decode steps.
    pub kv_bytes: usize,
}

/// One ETS guidance step (M candidate blocks, then K rollouts of each) against one sample of
/// the same length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EtsStepFigures {
    /// Wall time of the step, prompt prefill included (s).
    pub step_s: f64,
    /// Wall time of one sample of block + rollout tokens from the same prompt (s).
    pub sample_s: f64,
    /// The step's largest KV cache, held (bytes).
    pub kv_bytes: usize,
    /// The same without prefix sharing (bytes).
    pub kv_unshared_bytes: usize,
}

/// Everything a benchmark measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    pub decode: Vec<DecodeFigures>,
    /// None when the settings skip it (M = 0).
    pub ets_step: Option<EtsStepFigures>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_bounded() {
        assert!(BenchSettings::default().validate().is_ok());
        for bad in [
            BenchSettings {
                repeats: 0,
                ..BenchSettings::default()
            },
            BenchSettings {
                batch: vec![1, 0],
                ..BenchSettings::default()
            },
            BenchSettings {
                decode_steps: 1_000_000,
                ..BenchSettings::default()
            },
            BenchSettings {
                ets_k: 0,
                ..BenchSettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let skip_ets = BenchSettings {
            ets_m: 0,
            ets_k: 0,
            ..BenchSettings::default()
        };
        assert!(skip_ets.validate().is_ok());
    }
}
