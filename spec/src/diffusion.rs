//! The masked diffusion sampler's settings (LLaDA's names): how long the answer is, how it is
//! revealed, and which proposals a step keeps (the engine's sampler: `ets_engine::decode::diffusion`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

/// Which proposals a step keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remasking {
    /// The ones with the highest model probability (LLaDA's default).
    LowConfidence,
    /// A uniformly random subset.
    Random,
}

impl Remasking {
    /// Its name, as [`Remasking::from_str`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LowConfidence => "low-confidence",
            Self::Random => "random",
        }
    }
}

impl std::str::FromStr for Remasking {
    type Err = SpecError;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "low-confidence" => Ok(Self::LowConfidence),
            "random" => Ok(Self::Random),
            other => Err(SpecError::Sampling(format!(
                "unknown remasking {other:?}; use low-confidence or random"
            ))),
        }
    }
}

/// The sampler's schedule (LLaDA's names): how long the answer is and how it is revealed. A run
/// spec holds this; its temperature and seed come from the run ([`DiffusionSchedule::options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffusionSchedule {
    /// Answer length in tokens (the model pads short answers with EOS).
    pub gen_length: usize,
    /// Tokens per semi-autoregressive block; divides `gen_length`.
    pub block_length: usize,
    /// Denoising steps in all; a multiple of the number of blocks.
    pub steps: usize,
    pub remasking: Remasking,
}

impl Default for DiffusionSchedule {
    /// 64 tokens in eight blocks of 8 (the bundled ref-dlm was trained on block masks of 8), one
    /// token per step, low-confidence remasking.
    fn default() -> Self {
        Self {
            gen_length: 64,
            block_length: 8,
            steps: 64,
            remasking: Remasking::LowConfidence,
        }
    }
}

impl DiffusionSchedule {
    /// The sampler's settings: this schedule at `temperature` (the Gumbel noise scale) with
    /// draws seeded by `seed`.
    pub fn options(&self, temperature: f64, seed: u64) -> DiffusionOptions {
        DiffusionOptions {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps,
            temperature,
            remasking: self.remasking,
            seed,
        }
    }
}

/// The sampler's settings (LLaDA's names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionOptions {
    /// Answer length in tokens (the model pads short answers with EOS).
    pub gen_length: usize,
    /// Tokens per semi-autoregressive block; divides `gen_length`.
    pub block_length: usize,
    /// Denoising steps in all; a multiple of the number of blocks.
    pub steps: usize,
    /// Gumbel noise scale: 0 takes the most likely token.
    pub temperature: f64,
    pub remasking: Remasking,
    /// Seed of the counter-based generator.
    pub seed: u64,
}

impl DiffusionOptions {
    /// Checks that blocks tile the answer and steps split evenly over the blocks.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(SpecError::Sampling(m));
        if self.gen_length == 0 || self.block_length == 0 || self.steps == 0 {
            return fail("gen length, block length and steps must be positive".into());
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return fail(format!(
                "block length {} must divide gen length {}",
                self.block_length, self.gen_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if !self.steps.is_multiple_of(blocks) {
            return fail(format!(
                "steps ({}) must be a multiple of the number of blocks ({blocks})",
                self.steps
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return fail(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_must_tile() {
        let ok = DiffusionOptions {
            gen_length: 64,
            block_length: 16,
            steps: 32,
            temperature: 0.0,
            remasking: Remasking::LowConfidence,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            DiffusionOptions {
                block_length: 24,
                ..ok.clone()
            },
            DiffusionOptions {
                steps: 30,
                ..ok.clone()
            },
            DiffusionOptions {
                temperature: -1.0,
                ..ok.clone()
            },
            DiffusionOptions {
                gen_length: 0,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(SpecError::Sampling(_))),
                "{bad:?}"
            );
        }
    }
}
