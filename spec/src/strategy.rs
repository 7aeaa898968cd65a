//! What a run is asked: the decoding strategy and its parameters, and the whole spec (sampling,
//! token budget, diffusion schedule, reward, answer extraction, seed), range-checked into a
//! [`ValidSpec`]. The engine's strategies run it (`ets_engine::strategy`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::answer::Extraction;
use crate::diffusion::DiffusionSchedule;
use crate::error::{Result, SpecError};
use crate::reward::RewardKind;
use crate::sampling::SamplingParams;

/// A decoding strategy and its own parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Strategy {
    /// One ancestral sample at the spec's temperature.
    Sample,
    /// The most likely token at every step (diffusion: temperature 0).
    Greedy,
    /// `n` samples; the one with the highest reward (ties: the first).
    BestOfN { n: usize },
    /// `n` samples; the first whose answer is the most frequent one.
    Majority { n: usize },
    /// Beam search over `width` beams by log-probability per token (a diffusion model reveals
    /// one token per step).
    Beam { width: usize },
    /// Energy-guided test-time scaling with rollouts from the model itself.
    Ets(EtsParams),
    /// ETS with rollouts from the draft model, importance-weighted by p_ref / q.
    EtsIs(EtsParams),
    /// Particle filtering (Puri et al. 2025): M particles advance `block` tokens at a time and
    /// are resampled ∝ exp(Δr / λ), the change of their partial responses' reward (causal
    /// models). It reads M, the block and λ of its parameters.
    ParticleFilter(EtsParams),
}

/// Every strategy by name (the command line, the UI, traces and share links use these), with
/// a one-line description.
pub const STRATEGIES: [(&str, &str); 8] = [
    (
        "ets",
        "ETS: M candidate blocks per step, each scored by K rollouts' rewards; one is drawn ∝ mean exp(r/λ)",
    ),
    (
        "ets-is",
        "ETS-IS: as ETS, but the rollouts come from the draft model, importance-weighted",
    ),
    ("sample", "one sample from the model"),
    ("greedy", "the most likely token at every step"),
    (
        "majority",
        "M samples; the most frequent answer wins (self-consistency)",
    ),
    (
        "best-of-n",
        "M samples; the one with the highest reward wins",
    ),
    ("beam", "beam search with M beams"),
    (
        "particle-filter",
        "particle filtering: M particles advance B tokens at a time, resampled ∝ exp(Δr/λ)",
    ),
];

impl FromStr for Strategy {
    type Err = SpecError;

    /// The strategy called `name` with the default parameters ([`EtsParams::default`]; a budget
    /// of M = 8 samples or beams); [`Strategy::with_budget`] and [`Strategy::with_ets`] set them.
    fn from_str(name: &str) -> Result<Self> {
        let ets = EtsParams::default();
        Ok(match name {
            "ets" => Self::Ets(ets),
            "ets-is" => Self::EtsIs(ets),
            "sample" => Self::Sample,
            "greedy" => Self::Greedy,
            "majority" => Self::Majority { n: ets.m },
            "best-of-n" => Self::BestOfN { n: ets.m },
            "beam" => Self::Beam { width: ets.m },
            "particle-filter" => Self::ParticleFilter(ets),
            other => {
                let names: Vec<&str> = STRATEGIES.iter().map(|(name, _)| *name).collect();
                return Err(SpecError::Strategy(format!(
                    "unknown strategy {other:?}; use {}",
                    names.join(", ")
                )));
            }
        })
    }
}

impl Strategy {
    /// The strategy's budget: M for ETS, N for best-of-N, majority and particle filtering,
    /// beams for beam search (None for one sample or greedy decoding).
    pub fn budget(&self) -> Option<usize> {
        match self {
            Self::Sample | Self::Greedy => None,
            Self::BestOfN { n } | Self::Majority { n } => Some(*n),
            Self::Beam { width } => Some(*width),
            Self::Ets(p) | Self::EtsIs(p) | Self::ParticleFilter(p) => Some(p.m),
        }
    }

    /// The same strategy with budget `budget` (see [`Strategy::budget`]).
    pub fn with_budget(self, budget: usize) -> Self {
        match self {
            Self::Sample | Self::Greedy => self,
            Self::BestOfN { .. } => Self::BestOfN { n: budget },
            Self::Majority { .. } => Self::Majority { n: budget },
            Self::Beam { .. } => Self::Beam { width: budget },
            Self::Ets(p) => Self::Ets(EtsParams { m: budget, ..p }),
            Self::EtsIs(p) => Self::EtsIs(EtsParams { m: budget, ..p }),
            Self::ParticleFilter(p) => Self::ParticleFilter(EtsParams { m: budget, ..p }),
        }
    }

    /// The guidance parameters: ETS's and ETS-IS's (particle filtering reads M, the block and
    /// λ of them).
    pub fn ets(&self) -> Option<&EtsParams> {
        match self {
            Self::Ets(p) | Self::EtsIs(p) | Self::ParticleFilter(p) => Some(p),
            _ => None,
        }
    }

    /// The same strategy with the guidance parameters `params` (ETS, ETS-IS and particle
    /// filtering; other strategies are unchanged).
    pub fn with_ets(self, params: EtsParams) -> Self {
        match self {
            Self::Ets(_) => Self::Ets(params),
            Self::EtsIs(_) => Self::EtsIs(params),
            Self::ParticleFilter(_) => Self::ParticleFilter(params),
            other => other,
        }
    }

    /// The name used on the command line and in traces.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Greedy => "greedy",
            Self::BestOfN { .. } => "best-of-n",
            Self::Majority { .. } => "majority",
            Self::Beam { .. } => "beam",
            Self::Ets(_) => "ets",
            Self::EtsIs(_) => "ets-is",
            Self::ParticleFilter(_) => "particle-filter",
        }
    }
}

/// ETS's parameters (the paper's names).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EtsParams {
    /// M: candidates per guidance step.
    pub m: usize,
    /// K: rollouts per candidate.
    pub k: usize,
    /// B: tokens a guidance step adds (causal: new tokens; diffusion: revealed tokens), so
    /// I = ceil(max tokens / B) guidance steps.
    pub block: usize,
    /// λ: the KL regularisation; rewards weigh as exp(r / λ).
    pub lambda: f64,
    /// Reuse the chosen candidate's rollouts as candidates of the next step (causal, no draft).
    pub recycle: bool,
    /// ETS-IS: clip log p_ref/q to [−clip, clip] (None: no clipping, as in the paper).
    pub log_weight_clip: Option<f64>,
}

impl Default for EtsParams {
    fn default() -> Self {
        Self {
            m: 8,
            k: 3,
            block: 16,
            lambda: 0.1,
            recycle: false,
            log_weight_clip: Some(10.0),
        }
    }
}

/// The largest budget a spec may ask for: M candidates, N samples or beams.
pub const MAX_BUDGET: usize = 256;
/// The most rollouts per ETS candidate (K) a spec may ask for.
pub const MAX_ROLLOUTS: usize = 64;
/// The most new tokens a spec may ask for (a model's context bounds a run further).
pub const MAX_NEW_TOKENS: usize = 32_768;

impl EtsParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.m == 0 || self.k == 0 || self.block == 0 {
            return Err(SpecError::Strategy(
                "M, K and the block must be at least 1".into(),
            ));
        }
        if self.m > MAX_BUDGET {
            return Err(SpecError::Strategy(format!(
                "M must be at most {MAX_BUDGET} candidates, got {}",
                self.m
            )));
        }
        if self.k > MAX_ROLLOUTS {
            return Err(SpecError::Strategy(format!(
                "K must be at most {MAX_ROLLOUTS} rollouts per candidate, got {}",
                self.k
            )));
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(SpecError::Strategy(format!(
                "λ must be a positive number, got {}",
                self.lambda
            )));
        }
        if let Some(c) = self.log_weight_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(SpecError::Strategy(format!(
                "the log-weight clip must be positive, got {c}"
            )));
        }
        Ok(())
    }
}

/// Everything a run needs besides the models and the prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolveSpec {
    pub strategy: Strategy,
    /// How tokens are drawn (the diffusion sampler uses its temperature).
    pub sampling: SamplingParams,
    /// Causal models: at most this many new tokens.
    pub max_tokens: usize,
    /// Masked diffusion models: the sampler's schedule (its temperature is the sampling
    /// temperature, its seed the spec's).
    pub diffusion: DiffusionSchedule,
    pub reward: RewardKind,
    /// How answers are read from responses (for rewards, the vote and the result).
    pub extraction: Extraction,
    pub seed: u64,
}

impl SolveSpec {
    /// Checks every field's range: the strategy's parameters (budgets up to [`MAX_BUDGET`], K up
    /// to [`MAX_ROLLOUTS`]), sampling, the token budget (1 to [`MAX_NEW_TOKENS`]) and the
    /// diffusion schedule; the spec that passes is a [`ValidSpec`]. What depends on the models
    /// (a draft for ETS-IS, the context length:
    /// [`ValidSpec::fits`]) is checked when the run starts.
    pub fn validate(self) -> Result<ValidSpec> {
        self.check()?;
        Ok(ValidSpec(self))
    }

    fn check(&self) -> Result<()> {
        let bounded = |what: &str, value: usize| {
            if value == 0 || value > MAX_BUDGET {
                Err(SpecError::Strategy(format!(
                    "{what} must be at least 1 and at most {MAX_BUDGET}, got {value}"
                )))
            } else {
                Ok(())
            }
        };
        match &self.strategy {
            Strategy::Sample | Strategy::Greedy => {}
            Strategy::BestOfN { n } | Strategy::Majority { n } => {
                bounded("the number of samples", *n)?
            }
            Strategy::Beam { width } => bounded("the beam width", *width)?,
            Strategy::EtsIs(p) if p.recycle => {
                return Err(SpecError::Strategy(
                    "rollout recycling needs rollouts from the target model: not with ets-is"
                        .into(),
                ));
            }
            Strategy::Ets(p) | Strategy::EtsIs(p) | Strategy::ParticleFilter(p) => p.validate()?,
        }
        self.sampling.validate()?;
        if self.max_tokens == 0 || self.max_tokens > MAX_NEW_TOKENS {
            return Err(SpecError::Strategy(format!(
                "max tokens must be at least 1 and at most {MAX_NEW_TOKENS}, got {}",
                self.max_tokens
            )));
        }
        self.diffusion
            .options(f64::from(self.sampling.temperature), self.seed)
            .validate()
    }
}

/// A [`SolveSpec`] whose every field is in range: [`SolveSpec::validate`] makes one, and serde
/// checks one on the way in, so a run, a request or a share link never holds an invalid spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SolveSpec", into = "SolveSpec")]
pub struct ValidSpec(SolveSpec);

impl TryFrom<SolveSpec> for ValidSpec {
    type Error = SpecError;

    fn try_from(spec: SolveSpec) -> Result<Self> {
        spec.validate()
    }
}

impl From<ValidSpec> for SolveSpec {
    fn from(spec: ValidSpec) -> Self {
        spec.0
    }
}

impl std::ops::Deref for ValidSpec {
    type Target = SolveSpec;

    fn deref(&self) -> &SolveSpec {
        &self.0
    }
}

impl ValidSpec {
    /// The spec's fields, to change and validate again.
    pub fn into_inner(self) -> SolveSpec {
        self.0
    }

    /// The most sequences a run of this spec holds in its model's KV cache at once (an upper
    /// bound): the candidates and their K rollouts for ETS, the particles, the beams before
    /// and after a step, the N samples.
    pub fn sequences_at_once(&self) -> usize {
        match &self.strategy {
            Strategy::Sample | Strategy::Greedy => 1,
            Strategy::BestOfN { n } | Strategy::Majority { n } => *n,
            Strategy::Beam { width } => 2 * width,
            Strategy::Ets(p) | Strategy::EtsIs(p) => p.m * (p.k + 1),
            Strategy::ParticleFilter(p) => 2 * p.m,
        }
    }

    /// Checks that the answer fits a model with a context of `context` tokens: max tokens for
    /// a causal model, the answer's length for a masked `diffusion` model, at most the context.
    pub fn fits(&self, diffusion: bool, context: usize) -> Result<()> {
        let (what, tokens) = if diffusion {
            ("the answer's length", self.diffusion.gen_length)
        } else {
            ("max tokens", self.max_tokens)
        };
        if tokens > context {
            return Err(SpecError::Strategy(format!(
                "{what} ({tokens}) must be at most the model's context of {context} tokens"
            )));
        }
        Ok(())
    }
}

/// softmax(log_weights): each entry's probability of being drawn by [`categorical`] (uniform
/// over all entries when every weight is zero).
pub fn draw_probabilities(log_weights: &[f64]) -> Vec<f64> {
    let max = log_weights
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = if max == f64::NEG_INFINITY {
        vec![1.0; log_weights.len()]
    } else {
        log_weights.iter().map(|w| (w - max).exp()).collect()
    };
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_to_its_strategy() {
        for (name, help) in STRATEGIES {
            let strategy: Strategy = name.parse().unwrap();
            assert_eq!(strategy.name(), name);
            assert!(!help.is_empty());
            if let Some(budget) = strategy.budget() {
                assert_eq!(strategy.clone().with_budget(3).budget(), Some(3), "{name}");
                assert_eq!(budget, EtsParams::default().m);
            }
        }
        let err = "ets2".parse::<Strategy>().unwrap_err().to_string();
        assert!(
            err.contains("unknown strategy") && err.contains("best-of-n"),
            "{err}"
        );
        let ets = EtsParams {
            k: 5,
            ..EtsParams::default()
        };
        assert_eq!(
            "ets-is".parse::<Strategy>().unwrap().with_ets(ets),
            Strategy::EtsIs(ets)
        );
        assert_eq!(Strategy::Greedy.with_ets(ets), Strategy::Greedy);
    }

    #[test]
    fn ets_parameters_are_checked() {
        assert!(EtsParams::default().validate().is_ok());
        for bad in [
            EtsParams {
                m: 0,
                ..EtsParams::default()
            },
            EtsParams {
                lambda: 0.0,
                ..EtsParams::default()
            },
            EtsParams {
                log_weight_clip: Some(-1.0),
                ..EtsParams::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    fn spec(strategy: Strategy, max_tokens: usize) -> SolveSpec {
        SolveSpec {
            strategy,
            sampling: SamplingParams::default(),
            max_tokens,
            diffusion: DiffusionSchedule::default(),
            reward: "mean-log-prob".parse().unwrap(),
            extraction: Extraction::Strict,
            seed: 0,
        }
    }

    #[test]
    fn sequences_held_at_once_bound_each_strategy() {
        let ets = EtsParams {
            m: 8,
            k: 3,
            ..EtsParams::default()
        };
        for (strategy, sequences) in [
            (Strategy::Greedy, 1),
            (Strategy::Majority { n: 16 }, 16),
            (Strategy::Beam { width: 4 }, 8),
            (Strategy::Ets(ets), 32),
            (Strategy::EtsIs(ets), 32),
            (Strategy::ParticleFilter(ets), 16),
        ] {
            let valid = spec(strategy.clone(), 64).validate().unwrap();
            assert_eq!(valid.sequences_at_once(), sequences, "{strategy:?}");
        }
    }

    #[test]
    fn a_valid_spec_is_checked_on_every_way_in() {
        let ok = spec(Strategy::BestOfN { n: 4 }, 64);
        let valid = ok.clone().validate().unwrap();
        assert_eq!(*valid, ok);
        let json = serde_json::to_string(&valid).unwrap();
        assert_eq!(json, serde_json::to_string(&ok).unwrap());
        assert_eq!(serde_json::from_str::<ValidSpec>(&json).unwrap(), valid);
        for bad in [
            spec(Strategy::BestOfN { n: 1_000_000 }, 64),
            spec(Strategy::Beam { width: 0 }, 64),
            spec(Strategy::Greedy, 0),
            spec(Strategy::Greedy, MAX_NEW_TOKENS + 1),
        ] {
            let err = bad.clone().validate().unwrap_err().to_string();
            assert!(err.contains("at least 1"), "{err}");
            let json = serde_json::to_string(&bad).unwrap();
            let err = serde_json::from_str::<ValidSpec>(&json).unwrap_err();
            assert!(err.to_string().contains("at most"), "{err}");
        }
        // Recycled rollouts come from the target: ETS takes them, ETS-IS does not.
        let recycled = EtsParams {
            recycle: true,
            ..EtsParams::default()
        };
        assert!(spec(Strategy::Ets(recycled), 64).validate().is_ok());
        let err = spec(Strategy::EtsIs(recycled), 64).validate().unwrap_err();
        assert!(err.to_string().contains("recycling"), "{err}");
    }

    #[test]
    fn the_answer_must_fit_the_context() {
        let valid = spec(Strategy::Greedy, 600).validate().unwrap();
        assert!(valid.fits(false, 600).is_ok());
        let err = valid.fits(false, 512).unwrap_err().to_string();
        assert!(
            err.contains("max tokens (600)") && err.contains("512"),
            "{err}"
        );
        // A diffusion model answers gen_length tokens whatever max tokens says.
        assert!(valid.fits(true, 512).is_ok());
        let err = valid.fits(true, 32).unwrap_err().to_string();
        assert!(err.contains("answer's length (64)"), "{err}");
    }
}
