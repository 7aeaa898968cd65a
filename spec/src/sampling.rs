//! How the next token is chosen: greedy, temperature, top-k, top-p (the engine draws by these,
//! `ets_engine::sampling`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p (None: all).
    pub top_p: Option<f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks the ranges: temperature ≥ 0 and finite, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SpecError::Sampling(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(SpecError::Sampling(format!(
                "top-p must lie in (0, 1], got {p}"
            )));
        }
        Ok(())
    }

    /// Whether tokens are drawn from the model's own distribution: temperature 1, no top-k or
    /// top-p cut (a token's sampling log-probability is then its log-probability).
    pub fn is_plain(&self) -> bool {
        self.temperature == 1.0 && self.cuts(usize::MAX) == (None, None)
    }

    /// The top-k and top-p cuts that remove tokens from a row of `vocab` logits (None: no cut).
    pub fn cuts(&self, vocab: usize) -> (Option<usize>, Option<f32>) {
        (
            self.top_k.filter(|&k| k > 0 && k < vocab),
            self.top_p.filter(|&p| p < 1.0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: Some(0.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: Some(1.5),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
