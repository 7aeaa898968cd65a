//! Rewards r(y, x) of complete responses, as ETS weighs them by exp(r / λ): self-consistency
//! (agreement with the majority answer over every answer seen so far for the question, the
//! paper's reward), a verifier against a known answer (evaluation only), self-certainty,
//! negative entropy, mean log-probability, a regular-expression format check, a learned
//! reward model and a judging language model ([`model`]: a transformer with a score head, or a
//! causal LM's lowest token log-probability, reading the question and each response).

pub mod model;

use std::future::{Future, ready};
use std::pin::Pin;

use crate::bundle::Model;
use crate::error::{Error, Result};
use crate::sampling::TokenStats;
use crate::task::answer::{majority_vote, normalize_number};

pub use ets_spec::reward::RewardKind;

/// A complete response, as a reward sees it.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// The response's tokens after the prompt (stop token excluded).
    pub tokens: &'a [u32],
    /// The decoded text.
    pub text: &'a str,
    /// The answer extracted from the text, normalised.
    pub answer: Option<&'a str>,
    /// Statistics of the response's tokens under the reference model.
    pub stats: TokenStats,
    /// Whether the response is whole (it ended with a stop token or at the token limit), not a
    /// prefix still being written (a particle's between resamplings).
    pub complete: bool,
}

/// The scores of one [`Reward::score`] call, once computed (a reward model runs forward
/// passes; the others are ready at once).
pub type Scores<'a> = Pin<Box<dyn Future<Output = Result<Vec<f64>>> + 'a>>;

impl<'a> Response<'a> {
    /// A whole response known by its text alone (no tokens, answer or statistics): what a
    /// reward model reads.
    pub fn of_text(text: &'a str) -> Self {
        Self {
            tokens: &[],
            text,
            answer: None,
            stats: TokenStats::default(),
            complete: true,
        }
    }
}

/// Scores the responses of one question; may remember what it has seen (self-consistency).
pub trait Reward {
    /// The reward of each response, in order.
    fn score<'a>(&'a mut self, responses: &'a [Response<'a>]) -> Scores<'a>;

    /// Tokens the reward's own forward passes have taken (a reward model's; 0 for others).
    fn forward_tokens(&self) -> u64 {
        0
    }
}

/// A reward computed from the responses alone, at once (every built-in but the reward model).
pub trait PlainReward {
    /// The reward of each response, in order.
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64>;
}

impl<T: PlainReward> Reward for T {
    fn score<'a>(&'a mut self, responses: &'a [Response<'a>]) -> Scores<'a> {
        Box::pin(ready(Ok(self.plain_score(responses))))
    }
}

/// What a reward may read besides the responses.
#[derive(Clone, Copy, Default)]
pub struct RewardContext<'a> {
    /// The true answer (the verifier needs it).
    pub truth: Option<&'a str>,
    /// The question's text and the system message it was asked under (a reward model reads
    /// them ahead of each response).
    pub question: Option<&'a str>,
    pub system: Option<&'a str>,
    /// The loaded reward model, for [`RewardKind::Model`] and [`RewardKind::Likelihood`].
    pub reward_model: Option<&'a Model>,
}

/// A fresh reward of kind `kind` for one question.
pub fn build<'a>(kind: &RewardKind, context: RewardContext<'a>) -> Result<Box<dyn Reward + 'a>> {
    Ok(match kind {
        RewardKind::SelfConsistency => Box::new(SelfConsistency::default()),
        RewardKind::Verifier => {
            let truth = context.truth.and_then(normalize_number).ok_or_else(|| {
                Error::Sampling("the verifier reward needs the true answer (a number)".into())
            })?;
            Box::new(Verifier { truth })
        }
        RewardKind::Model { name } | RewardKind::Likelihood { name } => {
            let model = context
                .reward_model
                .ok_or_else(|| Error::Reward(format!("the reward model {name:?} is not loaded")))?;
            let question = context
                .question
                .ok_or_else(|| Error::Reward("a reward model needs the question's text".into()))?;
            let reading = match kind {
                RewardKind::Model { .. } => model::Reading::Score,
                _ => model::Reading::Likelihood,
            };
            Box::new(model::ModelReward::new(
                model,
                reading,
                question,
                context.system,
            )?)
        }
        RewardKind::SelfCertainty => Box::new(PerToken(|s: &TokenStats| s.self_certainty)),
        RewardKind::NegEntropy => Box::new(PerToken(|s: &TokenStats| -s.entropy)),
        RewardKind::MeanLogProb => Box::new(PerToken(|s: &TokenStats| s.log_prob)),
        RewardKind::Format { pattern } => Box::new(Format {
            regex: regex::Regex::new(pattern).map_err(|e| {
                // The parser's message spans lines; its last line says what is wrong.
                let message = e.to_string();
                let reason = message
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                Error::Sampling(format!("format reward {pattern:?}: {reason}"))
            })?,
        }),
    })
}

/// Agreement with the running majority answer of the question.
#[derive(Default)]
pub struct SelfConsistency {
    /// Every answer seen so far, in order.
    seen: Vec<Option<String>>,
}

impl PlainReward for SelfConsistency {
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64> {
        self.seen
            .extend(responses.iter().map(|r| r.answer.map(str::to_string)));
        let majority = majority_vote(&self.seen);
        responses
            .iter()
            .map(|r| {
                f64::from(u8::from(
                    r.answer.is_some() && r.answer == majority.as_deref(),
                ))
            })
            .collect()
    }
}

struct Verifier {
    truth: String,
}

impl PlainReward for Verifier {
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64> {
        responses
            .iter()
            .map(|r| f64::from(u8::from(r.answer == Some(self.truth.as_str()))))
            .collect()
    }
}

/// A per-token mean of one statistic (0 for an empty response).
struct PerToken<F>(F);

impl<F: Fn(&TokenStats) -> f64> PlainReward for PerToken<F> {
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64> {
        responses
            .iter()
            .map(|r| (self.0)(&r.stats) / r.stats.tokens.max(1) as f64)
            .collect()
    }
}

struct Format {
    regex: regex::Regex,
}

impl PlainReward for Format {
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64> {
        responses
            .iter()
            .map(|r| f64::from(u8::from(self.regex.is_match(r.text))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scores of a plain reward (ready at once).
    fn scores(reward: &mut dyn Reward, responses: &[Response<'_>]) -> Vec<f64> {
        pollster::block_on(reward.score(responses)).unwrap()
    }

    fn truth(answer: &str) -> RewardContext<'_> {
        RewardContext {
            truth: Some(answer),
            ..RewardContext::default()
        }
    }

    fn response<'a>(answer: Option<&'a str>, text: &'a str, stats: TokenStats) -> Response<'a> {
        Response {
            tokens: &[],
            text,
            answer,
            stats,
            complete: true,
        }
    }

    #[test]
    fn self_consistency_remembers_answers_across_calls() {
        let mut r = build(&RewardKind::SelfConsistency, RewardContext::default()).unwrap();
        let none = TokenStats::default();
        // First batch: "3" twice, "4" once → majority "3".
        let first = scores(
            r.as_mut(),
            &[
                response(Some("3"), "", none),
                response(Some("4"), "", none),
                response(Some("3"), "", none),
                response(None, "", none),
            ],
        );
        assert_eq!(first, vec![1.0, 0.0, 1.0, 0.0]);
        // Second batch: three more "4" → 4 beats 3 over everything seen.
        let second = scores(
            r.as_mut(),
            &[
                response(Some("4"), "", none),
                response(Some("4"), "", none),
                response(Some("4"), "", none),
                response(Some("3"), "", none),
            ],
        );
        assert_eq!(second, vec![1.0, 1.0, 1.0, 0.0]);
        // Nobody answered yet: all zero.
        let mut fresh = build(&RewardKind::SelfConsistency, RewardContext::default()).unwrap();
        assert_eq!(
            scores(fresh.as_mut(), &[response(None, "", none)]),
            vec![0.0]
        );
    }

    #[test]
    fn verifier_needs_and_checks_the_truth() {
        assert!(build(&RewardKind::Verifier, RewardContext::default()).is_err());
        let mut r = build(&RewardKind::Verifier, truth("18.0")).unwrap();
        let none = TokenStats::default();
        let s = scores(
            r.as_mut(),
            &[
                response(Some("18"), "", none),
                response(Some("17"), "", none),
            ],
        );
        assert_eq!(s, vec![1.0, 0.0]);
    }

    #[test]
    fn per_token_rewards_and_format() {
        let stats = TokenStats {
            tokens: 4,
            log_prob: -2.0,
            sampling_log_prob: -1.0,
            entropy: 4.0,
            self_certainty: 8.0,
        };
        let one = [response(None, "#### 5", stats)];
        let score = |kind: RewardKind| {
            scores(
                build(&kind, RewardContext::default()).unwrap().as_mut(),
                &one,
            )[0]
        };
        assert_eq!(score(RewardKind::MeanLogProb), -0.5);
        assert_eq!(score(RewardKind::NegEntropy), -1.0);
        assert_eq!(score(RewardKind::SelfCertainty), 2.0);
        assert_eq!(score("format:^#### \\d+$".parse().unwrap()), 1.0);
        assert_eq!(score("format:^x".parse().unwrap()), 0.0);
        assert!(
            build(
                &"format:(".parse::<RewardKind>().unwrap(),
                RewardContext::default()
            )
            .is_err()
        );
        assert!("nope".parse::<RewardKind>().is_err());
    }
}
