//! Version 1 of the link format, frozen: the engine's spec and trace as they were serialised
//! until version 2 (a spec whose diffusion schedule carried its own temperature and seed, steps
//! whose candidates carried a `log_energy` that was the reward for Best-of-N and the vote count
//! for the majority vote). Links made then open as the run they recorded.

use ets_spec::answer::Extraction;
use ets_spec::diffusion::{DiffusionSchedule, Remasking};
use ets_spec::reward::RewardKind;
use ets_spec::sampling::SamplingParams;
use ets_spec::strategy::{EtsParams, SolveSpec, Strategy, draw_probabilities};
use ets_spec::trace::{
    CandidateTrace, FinishTrace, RolloutTrace, Selection, StepTrace, TraceEvent,
};
use serde::Deserialize;

use super::{ShareError, SharedRun, refuse_invalid};

/// A version-1 link's content.
#[derive(Deserialize)]
pub struct Link {
    model: String,
    draft: Option<String>,
    question: String,
    spec: Spec,
    trace: Vec<Event>,
}

#[derive(Deserialize)]
struct Spec {
    strategy: V1Strategy,
    sampling: Sampling,
    max_tokens: usize,
    diffusion: Diffusion,
    reward: Reward,
    extraction: V1Extraction,
    seed: u64,
}

#[derive(Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
enum V1Strategy {
    Sample,
    Greedy,
    BestOfN { n: usize },
    Majority { n: usize },
    Beam { width: usize },
    Ets(Ets),
    EtsIs(Ets),
}

#[derive(Clone, Copy, Deserialize)]
struct Ets {
    m: usize,
    k: usize,
    block: usize,
    lambda: f64,
    recycle: bool,
    log_weight_clip: Option<f64>,
}

#[derive(Deserialize)]
struct Sampling {
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
}

/// The schedule with the temperature and seed it carried (the run replaced both by the spec's).
#[derive(Deserialize)]
struct Diffusion {
    gen_length: usize,
    block_length: usize,
    steps: usize,
    remasking: V1Remasking,
}

#[derive(Deserialize)]
enum V1Remasking {
    LowConfidence,
    Random,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Reward {
    SelfConsistency,
    Verifier,
    SelfCertainty,
    NegEntropy,
    MeanLogProb,
    Format { pattern: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum V1Extraction {
    Strict,
    Flexible,
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Start {
        strategy: String,
        prompt_tokens: usize,
    },
    Step(Step),
    Finish(Finish),
}

#[derive(Deserialize)]
struct Step {
    index: usize,
    candidates: Vec<Candidate>,
    chosen: usize,
    tokens: u64,
    elapsed_ms: f64,
}

#[derive(Deserialize)]
struct Candidate {
    text: String,
    complete: bool,
    recycled: bool,
    /// log Ê for ETS; the reward (Best-of-N) or the vote count (majority) otherwise.
    log_energy: f64,
    rollouts: Vec<Rollout>,
}

#[derive(Deserialize)]
struct Rollout {
    answer: Option<String>,
    reward: f64,
    log_weight: f64,
}

#[derive(Deserialize)]
struct Finish {
    text: String,
    answer: Option<String>,
    tokens: u64,
    draft_tokens: u64,
    wall_ms: f64,
}

impl Link {
    /// The run it recorded, in today's types.
    pub fn into_run(self) -> Result<SharedRun, ShareError> {
        let spec = refuse_invalid(self.spec.into_spec())?;
        let trace = self
            .trace
            .into_iter()
            .map(|event| event.into_event(&spec.strategy))
            .collect();
        Ok(SharedRun {
            model: self.model,
            draft: self.draft,
            question: self.question,
            system: None,
            spec,
            trace,
        })
    }
}

impl Spec {
    fn into_spec(self) -> SolveSpec {
        let ets = |p: Ets| EtsParams {
            m: p.m,
            k: p.k,
            block: p.block,
            lambda: p.lambda,
            recycle: p.recycle,
            log_weight_clip: p.log_weight_clip,
        };
        SolveSpec {
            strategy: match self.strategy {
                V1Strategy::Sample => Strategy::Sample,
                V1Strategy::Greedy => Strategy::Greedy,
                V1Strategy::BestOfN { n } => Strategy::BestOfN { n },
                V1Strategy::Majority { n } => Strategy::Majority { n },
                V1Strategy::Beam { width } => Strategy::Beam { width },
                V1Strategy::Ets(p) => Strategy::Ets(ets(p)),
                V1Strategy::EtsIs(p) => Strategy::EtsIs(ets(p)),
            },
            sampling: SamplingParams {
                temperature: self.sampling.temperature,
                top_k: self.sampling.top_k,
                top_p: self.sampling.top_p,
            },
            max_tokens: self.max_tokens,
            diffusion: DiffusionSchedule {
                gen_length: self.diffusion.gen_length,
                block_length: self.diffusion.block_length,
                steps: self.diffusion.steps,
                remasking: match self.diffusion.remasking {
                    V1Remasking::LowConfidence => Remasking::LowConfidence,
                    V1Remasking::Random => Remasking::Random,
                },
            },
            reward: match self.reward {
                Reward::SelfConsistency => RewardKind::SelfConsistency,
                Reward::Verifier => RewardKind::Verifier,
                Reward::SelfCertainty => RewardKind::SelfCertainty,
                Reward::NegEntropy => RewardKind::NegEntropy,
                Reward::MeanLogProb => RewardKind::MeanLogProb,
                Reward::Format { pattern } => RewardKind::Format { pattern },
            },
            extraction: match self.extraction {
                V1Extraction::Strict => Extraction::Strict,
                V1Extraction::Flexible => Extraction::Flexible,
            },
            seed: self.seed,
        }
    }
}

impl Event {
    /// Today's event; a step's selection follows from the strategy that made it.
    fn into_event(self, strategy: &Strategy) -> TraceEvent {
        match self {
            Event::Start {
                strategy,
                prompt_tokens,
            } => TraceEvent::Start {
                strategy,
                prompt_tokens,
            },
            Event::Step(step) => TraceEvent::Step(step.into_step(strategy)),
            Event::Finish(f) => TraceEvent::Finish(FinishTrace {
                text: f.text,
                answer: f.answer,
                tokens: f.tokens,
                draft_tokens: f.draft_tokens,
                reward_tokens: 0,
                wall_ms: f.wall_ms,
            }),
        }
    }
}

impl Step {
    fn into_step(self, strategy: &Strategy) -> StepTrace {
        let scores: Vec<f64> = self.candidates.iter().map(|c| c.log_energy).collect();
        let (selection, energies) = match strategy {
            Strategy::BestOfN { .. } => (Selection::RewardArgmax { rewards: scores }, false),
            Strategy::Majority { .. } => (
                Selection::Vote {
                    // Counts were written as floats.
                    votes: scores.iter().map(|v| v.max(0.0).round() as usize).collect(),
                },
                false,
            ),
            _ => (
                Selection::EnergyDraw {
                    probabilities: draw_probabilities(&scores),
                },
                true,
            ),
        };
        StepTrace {
            index: self.index,
            candidates: self
                .candidates
                .into_iter()
                .map(|c| CandidateTrace {
                    text: c.text,
                    complete: c.complete,
                    recycled: c.recycled,
                    log_energy: energies.then_some(c.log_energy),
                    rollouts: c
                        .rollouts
                        .into_iter()
                        .map(|r| RolloutTrace {
                            answer: r.answer,
                            reward: r.reward,
                            log_weight: r.log_weight,
                        })
                        .collect(),
                })
                .collect(),
            chosen: self.chosen,
            selection,
            tokens: self.tokens,
            elapsed_ms: self.elapsed_ms,
        }
    }
}
