//! The rewards r(y, x) a run can weigh responses by, by name (the engine scores them:
//! `ets_engine::reward`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

/// The built-in rewards, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RewardKind {
    /// 1 if the answer equals the majority answer over all answers seen for the question so
    /// far (ties: the earliest), else 0; 0 for everyone while no answer has been seen.
    SelfConsistency,
    /// 1 if the answer equals the known true answer, else 0 (evaluation only).
    Verifier,
    /// Mean self-certainty KL(U ‖ p) per token (nats, ≥ 0).
    SelfCertainty,
    /// Minus the mean entropy of p per token (nats, ≤ 0).
    NegEntropy,
    /// Mean log p per token (nats, ≤ 0).
    MeanLogProb,
    /// 1 if the text matches the regular expression, else 0.
    Format { pattern: String },
    /// A reward model's score of the question and the response (a transformer with a scalar
    /// head, HF's `*ForSequenceClassification` with one label), read at the last token. `name`
    /// is what the front end loads: a directory on the command line.
    Model { name: String },
    /// A language model's judgement of the response: the lowest log-probability (nats, ≤ 0)
    /// it gives any of the response's tokens, its end token included, after the question (a
    /// causal LM reading the question as the policy's prompt). `name` as for `Model`.
    Likelihood { name: String },
}

impl RewardKind {
    /// The command-line names.
    pub const NAMES: &'static str = "self-consistency, verifier, self-certainty, neg-entropy, mean-log-prob, format:REGEX, model:DIR, lm:DIR";

    /// Its name, as [`RewardKind::from_str`] reads it (`format:REGEX` for a format check).
    pub fn name(&self) -> String {
        match self {
            Self::SelfConsistency => "self-consistency".into(),
            Self::Verifier => "verifier".into(),
            Self::SelfCertainty => "self-certainty".into(),
            Self::NegEntropy => "neg-entropy".into(),
            Self::MeanLogProb => "mean-log-prob".into(),
            Self::Format { pattern } => format!("format:{pattern}"),
            Self::Model { name } => format!("model:{name}"),
            Self::Likelihood { name } => format!("lm:{name}"),
        }
    }

    /// The model the reward reads, which the front end loads (a reward model or a judging
    /// language model); None for the built-ins.
    pub fn model_name(&self) -> Option<&str> {
        match self {
            Self::Model { name } | Self::Likelihood { name } => Some(name),
            _ => None,
        }
    }
}

impl std::str::FromStr for RewardKind {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "self-consistency" => Self::SelfConsistency,
            "verifier" => Self::Verifier,
            "self-certainty" => Self::SelfCertainty,
            "neg-entropy" => Self::NegEntropy,
            "mean-log-prob" => Self::MeanLogProb,
            other => {
                if let Some(pattern) = other.strip_prefix("format:") {
                    return Ok(Self::Format {
                        pattern: pattern.to_string(),
                    });
                }
                let named = |prefix: &str| {
                    other.strip_prefix(prefix).map(|name| {
                        if name.trim().is_empty() {
                            Err(SpecError::Strategy(format!(
                                "{prefix} names no model (use {prefix}DIR)"
                            )))
                        } else {
                            Ok(name.to_string())
                        }
                    })
                };
                if let Some(name) = named("model:") {
                    return Ok(Self::Model { name: name? });
                }
                if let Some(name) = named("lm:") {
                    return Ok(Self::Likelihood { name: name? });
                }
                return Err(SpecError::Strategy(format!(
                    "unknown reward {other:?}; use one of {}",
                    Self::NAMES
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_the_same_reward() {
        for kind in [
            RewardKind::SelfConsistency,
            RewardKind::Verifier,
            RewardKind::SelfCertainty,
            RewardKind::NegEntropy,
            RewardKind::MeanLogProb,
            RewardKind::Format {
                pattern: "^#### \\d+$".into(),
            },
            RewardKind::Model {
                name: "models/ref-orm".into(),
            },
            RewardKind::Likelihood {
                name: "models/ref-verifier".into(),
            },
        ] {
            assert_eq!(kind.name().parse::<RewardKind>().unwrap(), kind);
        }
        for bad in ["model:", "model:  ", "lm:", "nope", "models/ref-orm"] {
            assert!(bad.parse::<RewardKind>().is_err(), "{bad}");
        }
    }
}
