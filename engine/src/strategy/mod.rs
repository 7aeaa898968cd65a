//! Decoding strategies behind one entry point for any model, [`Solver::solve`] (front ends call
//! [`crate::Model::solve`] above it): ancestral sampling, greedy,
//! Best-of-N (reward-selected), majority vote (self-consistency), beam search, and energy-guided
//! test-time scaling — ETS over blocks of an autoregressive model, over the unmasking steps of a
//! masked diffusion model, and ETS-IS with rollouts from a draft model. Every run reports the
//! forward tokens it spent and emits a trace.

mod beam;
mod ets;
mod independent;
mod particle;

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::decode::diffusion::DiffusionOptions;
use crate::decode::lm::{LanguageModel, Meter};
use crate::decode::sequences::Drawing;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::reward::{Response, Reward};
use crate::rng::CounterRng;
use crate::sampling::{SamplingParams, TokenStats};
use crate::task::answer::extract_answer;
use crate::trace::{DraftTrace, FinishTrace, TraceEvent};

pub use ets_spec::strategy::{
    EtsParams, MAX_BUDGET, MAX_NEW_TOKENS, MAX_ROLLOUTS, STRATEGIES, SolveSpec, Strategy,
    ValidSpec, draw_probabilities,
};

/// The result of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// The response text (cut before the stop token).
    pub text: String,
    /// The answer read from it.
    pub answer: Option<String>,
    /// Forward tokens the target model spent.
    pub tokens: u64,
    /// Forward tokens the draft model spent.
    pub draft_tokens: u64,
    /// Forward tokens the reward model spent (a learned reward's).
    pub reward_tokens: u64,
    pub wall_ms: f64,
    pub trace: Vec<TraceEvent>,
}

/// Where a run shows the texts it is decoding ([`TraceEvent::Drafting`]), and at most how often.
#[derive(Clone, Copy)]
pub struct DraftView<'a> {
    pub show: &'a dyn Fn(DraftTrace),
    /// The least time between two showings (the first comes at once).
    pub every: Duration,
}

/// The models of a run and how to read their tokens.
pub struct Solver<'a, M: LanguageModel> {
    /// The reference model p_ref.
    pub target: &'a M,
    /// The draft model q of ETS-IS (same tokenizer).
    pub draft: Option<&'a M>,
    /// Tokens that end a response.
    pub stop_ids: &'a [u32],
    /// Token ids → text.
    pub detokenize: &'a dyn Fn(&[u32]) -> Result<String>,
    /// Once set (by whoever shares it: a Stop button), the run ends at its next forward pass
    /// with [`Error::Stopped`].
    pub stop: Option<&'a AtomicBool>,
    /// Where the texts being decoded are shown as they grow (None: nowhere).
    pub drafts: Option<DraftView<'a>>,
}

impl<M: LanguageModel> Solver<'_, M> {
    /// Runs `spec` on `prompt` (token ids); `stream` separates the random draws of different
    /// questions under one seed. `observe` sees each trace event as it happens.
    pub async fn solve(
        &self,
        prompt: &[u32],
        spec: &ValidSpec,
        stream: u64,
        reward: &mut dyn Reward,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        if prompt.is_empty() {
            return Err(Error::EmptyInput("the prompt has no tokens"));
        }
        let run = Run {
            solver: self,
            spec,
            stream,
            target_meter: Meter::with_stop(self.stop),
            draft_meter: Meter::with_stop(self.stop),
            start: Instant::now(),
            last_draft: Cell::new(None),
        };
        let mut tracer = Tracer {
            events: Vec::new(),
            observe,
        };
        tracer.emit(TraceEvent::Start {
            strategy: spec.strategy.name().into(),
            prompt_tokens: prompt.len(),
        });
        let tokens = match &spec.strategy {
            Strategy::Sample | Strategy::Greedy => {
                let mut samples = independent::samples(&run, prompt, 1).await?;
                samples.swap_remove(0).0
            }
            Strategy::BestOfN { n } => {
                independent::best_of_n(&run, prompt, *n, reward, &mut tracer).await?
            }
            Strategy::Majority { n } => {
                independent::majority(&run, prompt, *n, &mut tracer).await?
            }
            Strategy::Beam { width } => beam::beam_search(&run, prompt, *width).await?,
            Strategy::Ets(params) | Strategy::EtsIs(params) => {
                ets::solve(&run, prompt, params, reward, &mut tracer).await?
            }
            Strategy::ParticleFilter(params) => {
                particle::filter(&run, prompt, params, reward, &mut tracer).await?
            }
        };
        let response = run.response(&tokens, TokenStats::default())?;
        let finish = FinishTrace {
            text: response.text.clone(),
            answer: response.answer.clone(),
            tokens: run.target_meter.tokens(),
            draft_tokens: run.draft_meter.tokens(),
            reward_tokens: reward.forward_tokens(),
            wall_ms: run.elapsed_ms(),
        };
        tracer.emit(TraceEvent::Finish(finish.clone()));
        Ok(Solution {
            text: finish.text,
            answer: finish.answer,
            tokens: finish.tokens,
            draft_tokens: finish.draft_tokens,
            reward_tokens: finish.reward_tokens,
            wall_ms: finish.wall_ms,
            trace: tracer.events,
        })
    }
}

/// One run in progress: its inputs, meters and clock.
struct Run<'r, 'a, M: LanguageModel> {
    solver: &'r Solver<'a, M>,
    spec: &'r SolveSpec,
    stream: u64,
    target_meter: Meter<'a>,
    draft_meter: Meter<'a>,
    start: Instant,
    /// When drafts were last shown.
    last_draft: Cell<Option<Instant>>,
}

/// What random draws are for; each purpose gets its own streams.
#[derive(Clone, Copy)]
enum Purpose {
    Sample = 1,
    Candidate = 2,
    Rollout = 3,
    Selection = 4,
    /// A resampled particle's own draws.
    Particle = 5,
}

impl<M: LanguageModel> Run<'_, '_, M> {
    fn causal(&self) -> bool {
        self.solver.target.objective() == Objective::Causal
    }

    fn rng(&self) -> CounterRng {
        CounterRng {
            seed: self.spec.seed,
        }
    }

    /// The random stream of draw `index` of guidance step `step` for `purpose`.
    fn stream(&self, purpose: Purpose, step: usize, index: usize) -> u64 {
        let p = CounterRng::child_stream(self.stream, purpose as u64);
        CounterRng::child_stream(CounterRng::child_stream(p, step as u64), index as u64)
    }

    /// How the target draws tokens with `sampling`.
    fn drawing<'s>(&'s self, sampling: &'s SamplingParams) -> Drawing<'s> {
        Drawing {
            sampling,
            stop_ids: self.solver.stop_ids,
            rng: self.rng(),
            drafts: None,
        }
    }

    /// Shows the texts of `tokens` (each sequence's new tokens so far, cut at a stop token) as
    /// guidance step `step`'s drafts, unless drafts are shown nowhere or were shown too
    /// recently.
    fn show_drafts<'t>(&self, step: usize, tokens: impl IntoIterator<Item = &'t [u32]>) {
        let Some(view) = self.solver.drafts else {
            return;
        };
        let now = Instant::now();
        if self
            .last_draft
            .get()
            .is_some_and(|last| now.duration_since(last) < view.every)
        {
            return;
        }
        self.last_draft.set(Some(now));
        let texts = tokens
            .into_iter()
            .map(|t| self.text(t).map(|(_, text)| text).unwrap_or_default())
            .collect();
        (view.show)(DraftTrace {
            step,
            texts,
            tokens: self.target_meter.tokens() + self.draft_meter.tokens(),
            elapsed_ms: self.elapsed_ms(),
        });
    }

    /// The diffusion sampler's settings for this run.
    fn diffusion(&self, temperature: f32) -> DiffusionOptions {
        self.spec
            .diffusion
            .options(f64::from(temperature), self.spec.seed)
    }

    fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// A diffusion answer part way through the sampler as text, masked positions shown as
    /// `_`, ending at its first stop token.
    fn masked_text(&self, answer: &[u32], mask: u32) -> Result<String> {
        let mut text = String::new();
        for (masked, group) in answer
            .chunk_by(|a, b| (*a == mask) == (*b == mask))
            .map(|g| (g[0] == mask, g))
        {
            if masked {
                text.push_str(&"_".repeat(group.len()));
            } else {
                let end = group
                    .iter()
                    .position(|t| self.solver.stop_ids.contains(t))
                    .unwrap_or(group.len());
                text.push_str(&(self.solver.detokenize)(&group[..end])?);
                if end < group.len() {
                    break;
                }
            }
        }
        Ok(text)
    }

    /// Tokens cut before the first stop token, and their text.
    fn text<'t>(&self, tokens: &'t [u32]) -> Result<(&'t [u32], String)> {
        let end = tokens
            .iter()
            .position(|t| self.solver.stop_ids.contains(t))
            .unwrap_or(tokens.len());
        let tokens = &tokens[..end];
        Ok((tokens, (self.solver.detokenize)(tokens)?))
    }

    /// A response's tokens cut before the first stop token, its text and answer; it is
    /// complete once it holds a stop token or reaches the token limit.
    fn response(&self, tokens: &[u32], stats: TokenStats) -> Result<OwnedResponse> {
        let whole = tokens.len();
        let (tokens, text) = self.text(tokens)?;
        let complete = tokens.len() < whole || whole >= self.spec.max_tokens;
        let tokens = tokens.to_vec();
        let answer = extract_answer(&text, self.spec.extraction);
        Ok(OwnedResponse {
            tokens,
            text,
            answer,
            stats,
            complete,
        })
    }
}

/// A response with its own storage; [`OwnedResponse::view`] lends it to a reward.
#[derive(Clone, Debug)]
struct OwnedResponse {
    tokens: Vec<u32>,
    text: String,
    answer: Option<String>,
    stats: TokenStats,
    complete: bool,
}

impl OwnedResponse {
    fn view(&self) -> Response<'_> {
        Response {
            tokens: &self.tokens,
            text: &self.text,
            answer: self.answer.as_deref(),
            stats: self.stats,
            complete: self.complete,
        }
    }
}

/// Collects trace events and shows each to the observer.
struct Tracer<'o> {
    events: Vec<TraceEvent>,
    observe: &'o mut dyn FnMut(&TraceEvent),
}

impl Tracer<'_> {
    fn emit(&mut self, event: TraceEvent) {
        (self.observe)(&event);
        self.events.push(event);
    }
}

/// The denoising steps that reveal `block` answer tokens under `options`: a guidance block of
/// ETS or particle filtering on a diffusion model must divide the answer and fall on whole
/// steps.
fn stretch(options: &DiffusionOptions, block: usize) -> Result<usize> {
    options.validate()?;
    let (len, steps) = (options.gen_length, options.steps);
    if block == 0 || !len.is_multiple_of(block) || !(steps * block).is_multiple_of(len) {
        return Err(Error::Strategy(format!(
            "the guidance block ({block} tokens) must divide the answer length ({len}) and fall \
             on whole denoising steps ({steps} steps for {len} tokens)"
        )));
    }
    Ok(steps * block / len)
}

/// log((1/n) Σ exp(values)), computed stably (−∞ for no values or all −∞).
pub fn log_mean_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = values.iter().map(|v| (v - max).exp()).sum();
    max + (sum / values.len() as f64).ln()
}

/// A draw from Categorical(`probabilities`) ([`draw_probabilities`]) with the uniform `u` in
/// [0, 1).
pub fn categorical(probabilities: &[f64], u: f64) -> usize {
    let mut cumulative = 0.0;
    for (i, p) in probabilities.iter().enumerate() {
        cumulative += p;
        if u < cumulative {
            return i;
        }
    }
    probabilities.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_mean_exp_is_stable() {
        assert!((log_mean_exp(&[0.0, 0.0]) - 0.0).abs() < 1e-12);
        // The paper's Table 9: λ = 0.1, one of three rollouts agrees → (e^10 + 2) / 3.
        let e = log_mean_exp(&[10.0, 0.0, 0.0]).exp();
        assert!((e - 7342.82).abs() < 0.01, "{e}");
        assert!((log_mean_exp(&[1000.0, 1000.0]) - 1000.0).abs() < 1e-9);
        assert_eq!(log_mean_exp(&[f64::NEG_INFINITY]), f64::NEG_INFINITY);
    }

    #[test]
    fn categorical_follows_the_weights() {
        let logw = [0.0, 2f64.ln(), f64::NEG_INFINITY];
        let probabilities = draw_probabilities(&logw);
        assert!((probabilities[1] - 2.0 / 3.0).abs() < 1e-12);
        let rng = CounterRng { seed: 3 };
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[categorical(&probabilities, rng.uniform(0, i))] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = counts[1] as f64 / 30_000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.015, "{share}");
        // All zero: uniform.
        let all_zero = draw_probabilities(&[f64::NEG_INFINITY; 4]);
        assert_eq!(all_zero, vec![0.25; 4]);
        assert_eq!(categorical(&all_zero, 0.6), 2);
    }
}
