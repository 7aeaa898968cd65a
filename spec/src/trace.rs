//! What a run emits as it goes: one event per guidance step (candidates, their rollouts'
//! answers, rewards and log-weights, the log-energies, the chosen candidate and how it was
//! chosen, tokens and time so far), framed by a start and a finish event, and, live only, the
//! texts as they decode. Serialisable: the UI draws from it, share links carry it, `--trace FILE`
//! writes it.

use serde::{Deserialize, Serialize};

/// One event of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceEvent {
    /// The run begins.
    Start {
        /// The strategy's name, e.g. `ets`.
        strategy: String,
        /// Tokens in the prompt.
        prompt_tokens: usize,
    },
    /// One selection among candidates (a guidance step; best-of-N and majority make one).
    Step(StepTrace),
    /// Texts as they are being decoded, before anything chooses among them: the response of a
    /// one-sequence strategy, the samples of best-of-N and majority, a guidance step's fresh
    /// candidates, the beams. Shown live, never recorded in the trace (share links, `--trace`).
    Drafting(DraftTrace),
    /// The run's result.
    Finish(FinishTrace),
}

/// One guidance step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// 0-based step number.
    pub index: usize,
    pub candidates: Vec<CandidateTrace>,
    /// Index of the candidate kept.
    pub chosen: usize,
    /// How it was chosen.
    pub selection: Selection,
    /// Forward tokens spent so far (target and draft models together).
    pub tokens: u64,
    /// Time since the start (ms).
    pub elapsed_ms: f64,
}

/// The texts being decoded at one moment of a run ([`TraceEvent::Drafting`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftTrace {
    /// The guidance step they belong to (0 for strategies without steps).
    pub step: usize,
    /// Each sequence's new text so far (its block, for a guidance step's candidates).
    pub texts: Vec<String>,
    /// Forward tokens spent so far (target and draft models together).
    pub tokens: u64,
    /// Time since the start (ms).
    pub elapsed_ms: f64,
}

/// A candidate of a guidance step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateTrace {
    /// The candidate's new text (its block; masked positions shown as `_` for diffusion).
    pub text: String,
    /// Whether the candidate is a complete response already.
    pub complete: bool,
    /// Whether it was recycled from a rollout of the previous step.
    pub recycled: bool,
    /// ETS: log Ê, logsumexp over rollouts of (r/λ + log w) − log K (None for strategies that
    /// choose by reward or vote: their scores are in the step's [`Selection`]).
    pub log_energy: Option<f64>,
    pub rollouts: Vec<RolloutTrace>,
}

/// How a step chose its candidate: what was really sampled, and what was not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Selection {
    /// A draw from softmax(log Ê) (ETS): `probabilities[m]` is candidate m's chance of being
    /// drawn.
    EnergyDraw { probabilities: Vec<f64> },
    /// The candidate with the highest reward (Best-of-N; ties: the first), no draw:
    /// `rewards[m]` is candidate m's reward.
    RewardArgmax { rewards: Vec<f64> },
    /// The first candidate whose answer is the most frequent (majority vote), no draw:
    /// `votes[m]` counts the candidates whose answer agrees with candidate m's (0 without an
    /// answer).
    Vote { votes: Vec<usize> },
    /// Particle filtering's resampling: `probabilities[m]` is particle m's chance at each of
    /// the N draws (softmax of Δr/λ), `copies[m]` how many of the next step's particles are
    /// its copies; the step's `chosen` is the most copied (at the last step, the particle
    /// drawn as the answer: one draw).
    Resample {
        probabilities: Vec<f64>,
        copies: Vec<usize>,
    },
}

/// A rollout of a candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutTrace {
    /// The extracted answer, if any.
    pub answer: Option<String>,
    pub reward: f64,
    /// log importance weight log p_ref/q (0 without a draft model).
    pub log_weight: f64,
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishTrace {
    /// The response text.
    pub text: String,
    pub answer: Option<String>,
    /// Forward tokens spent by the target model.
    pub tokens: u64,
    /// Forward tokens spent by the draft model (ETS-IS).
    pub draft_tokens: u64,
    /// Forward tokens spent by the reward model (a learned reward's; absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reward_tokens: u64,
    pub wall_ms: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
