//! Particle filtering (Puri et al., arXiv 2502.01618; the method its_hub ships) as sequential
//! Monte Carlo towards π* ∝ p_ref·exp(r/λ). N particles start from the prompt and advance B
//! tokens at a time as one batch (sharing the prompt's KV cache). After each block every
//! particle's response so far is scored by the reward; its weight is exp((r_t − r_{t−1})/λ),
//! the change of its reward since it was last resampled (r_0 = 0), and N particles are drawn
//! with replacement in proportion (multinomial resampling), each copy continuing on a random
//! stream of its own and with its source's KV cache rows. Once every particle is complete (or
//! the token budget is spent) the answer is one particle drawn in proportion to its last
//! weight.
//!
//! On a masked diffusion model a block is the denoising steps that reveal B more answer tokens
//! (the sampler's semi-autoregressive blocks go left to right, so a particle's response so far is
//! its revealed prefix), and a resampled copy takes its source's answer.
//!
//! The weights telescope: a particle's path carries exp(r(full)/λ) over p_ref, so as N grows
//! the answer's distribution tends to π* whatever the reward says of partial responses (that
//! only steers where the particles go); the exactness test measures it on a toy model. Puri et
//! al. weigh by a process reward model's current score itself; with an outcome reward read on
//! partial responses, weighing by its change is what keeps π* the target.

use crate::decode::diffusion::Denoising;
use crate::decode::lm::LanguageModel;
use crate::decode::sequences::Sequences;
use crate::error::Result;
use crate::reward::Reward;
use crate::strategy::{
    EtsParams, OwnedResponse, Purpose, Run, Tracer, categorical, draw_probabilities, stretch,
};
use crate::trace::{CandidateTrace, RolloutTrace, Selection, StepTrace, TraceEvent};

/// The particles: sequences of a causal model, or answers part way through a masked diffusion
/// model's sampler.
enum Particles<'p, M: LanguageModel> {
    Causal {
        batch: Sequences<M::Cache, M::Logits>,
        /// Tokens decoded so far.
        decoded: usize,
    },
    Diffusion {
        batch: Denoising<'p>,
        /// Denoising steps per block.
        stretch: usize,
    },
}

/// A particle's response so far, with its text for the trace and whether it has ended.
struct Particle {
    response: OwnedResponse,
    shown: String,
    ended: bool,
}

impl<'p, M: LanguageModel> Particles<'p, M> {
    /// `n` particles at the start of the answer after `prompt`, each on a stream of its own.
    async fn start(run: &Run<'_, '_, M>, prompt: &'p [u32], params: &EtsParams) -> Result<Self> {
        let model = run.solver.target;
        let streams: Vec<u64> = (0..params.m)
            .map(|i| run.stream(Purpose::Sample, 0, i))
            .collect();
        if run.causal() {
            let root = Sequences::start(model, &run.target_meter, &[prompt], vec![0]).await?;
            let starts: Vec<(usize, u64)> = streams.into_iter().map(|s| (0, s)).collect();
            return Ok(Self::Causal {
                batch: root.fork(model, &starts)?,
                decoded: 0,
            });
        }
        let options = run.diffusion(run.spec.sampling.temperature);
        let stretch = stretch(&options, params.block)?;
        let prompts = vec![prompt; params.m];
        let batch = Denoising::start(model, &prompts, streams, &options, run.solver.stop_ids)?;
        Ok(Self::Diffusion { batch, stretch })
    }

    /// Advances every particle by one block (guidance step `step`, for the live view).
    async fn advance(
        &mut self,
        run: &Run<'_, '_, M>,
        params: &EtsParams,
        step: usize,
    ) -> Result<()> {
        let model = run.solver.target;
        match self {
            Self::Causal { batch, decoded } => {
                let budget = params.block.min(run.spec.max_tokens - *decoded);
                let sampling = run.spec.sampling;
                let show =
                    |tokens: &[Vec<u32>]| run.show_drafts(step, tokens.iter().map(Vec::as_slice));
                batch
                    .extend(
                        model,
                        &run.target_meter,
                        budget,
                        None,
                        run.drawing(&sampling).showing(&show),
                    )
                    .await?;
                *decoded += budget;
            }
            Self::Diffusion { batch, stretch } => {
                let until = batch.step + *stretch;
                batch.run(model, &run.target_meter, until).await?;
            }
        }
        Ok(())
    }

    /// Whether every particle is final: the last step draws the answer among them.
    fn finished(&self, run: &Run<'_, '_, M>) -> bool {
        match self {
            Self::Causal { batch, decoded } => {
                *decoded >= run.spec.max_tokens || batch.ended.iter().all(|&e| e)
            }
            Self::Diffusion { batch, .. } => (0..batch.len()).all(|b| batch.finished(b)),
        }
    }

    /// Each particle's response so far: a diffusion answer's is its revealed prefix.
    fn particles(&self, run: &Run<'_, '_, M>) -> Result<Vec<Particle>> {
        match self {
            Self::Causal { batch, .. } => batch
                .tokens
                .iter()
                .zip(&batch.stats)
                .zip(&batch.ended)
                .map(|((tokens, stats), &ended)| {
                    let response = run.response(tokens, *stats)?;
                    let shown = response.text.clone();
                    Ok(Particle {
                        response,
                        shown,
                        ended,
                    })
                })
                .collect(),
            Self::Diffusion { batch, .. } => (0..batch.len())
                .map(|b| {
                    let answer = &batch.answers[b];
                    let mask = batch.mask();
                    let revealed = answer
                        .iter()
                        .position(|&t| t == mask)
                        .unwrap_or(answer.len());
                    let mut response = run.response(&answer[..revealed], batch.stats(b))?;
                    // An answer is whole once settled or fully revealed, however long.
                    response.complete = batch.finished(b);
                    Ok(Particle {
                        shown: run.masked_text(answer, mask)?,
                        ended: response.complete,
                        response,
                    })
                })
                .collect(),
        }
    }

    /// The next particles: particle j is a copy of `picks[j].0` on stream `picks[j].1`.
    fn resample(self, run: &Run<'_, '_, M>, picks: &[(usize, u64)]) -> Result<Self> {
        Ok(match self {
            Self::Causal { batch, decoded } => Self::Causal {
                batch: batch.resample(run.solver.target, picks)?,
                decoded,
            },
            Self::Diffusion { batch, stretch } => Self::Diffusion {
                batch: batch.fork(picks),
                stretch,
            },
        })
    }

    /// Particle `i`'s tokens (a diffusion answer with masks after a stop token it settled at).
    fn into_tokens(self, i: usize) -> Vec<u32> {
        match self {
            Self::Causal { mut batch, .. } => batch.tokens.swap_remove(i),
            Self::Diffusion { mut batch, .. } => batch.answers.swap_remove(i),
        }
    }
}

/// Runs the filter on `prompt` with M = `params.m` particles advancing `params.block` tokens
/// at a time, weighed by exp(Δr / `params.lambda`), and returns the chosen particle's tokens.
pub(super) async fn filter<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    params: &EtsParams,
    reward: &mut dyn Reward,
    tracer: &mut Tracer<'_>,
) -> Result<Vec<u32>> {
    let n = params.m;
    let mut particles = Particles::start(run, prompt, params).await?;
    // Each particle's reward when it was last resampled.
    let mut previous = vec![0.0; n];
    let mut step = 0;
    loop {
        particles.advance(run, params, step).await?;
        let current = particles.particles(run)?;
        let views: Vec<_> = current.iter().map(|p| p.response.view()).collect();
        let rewards = reward.score(&views).await?;
        let log_weights: Vec<f64> = rewards
            .iter()
            .zip(&previous)
            .map(|(r, before)| (r - before) / params.lambda)
            .collect();
        let probabilities = draw_probabilities(&log_weights);
        let last = particles.finished(run);
        // The last step draws the answer; the others draw the next N particles.
        let stream = run.stream(Purpose::Selection, step, 0);
        let picks: Vec<usize> = (0..if last { 1 } else { n })
            .map(|j| categorical(&probabilities, run.rng().uniform(stream, j as u64)))
            .collect();
        let mut copies = vec![0; n];
        for &i in &picks {
            copies[i] += 1;
        }
        let chosen = match last {
            true => picks[0],
            // The most copied (the first of them).
            false => (0..n).fold(0, |best, i| if copies[i] > copies[best] { i } else { best }),
        };
        let candidates = current
            .iter()
            .zip(rewards.iter().zip(&log_weights))
            .map(|(particle, (&reward, &log_weight))| CandidateTrace {
                text: particle.shown.clone(),
                complete: particle.ended,
                recycled: false,
                log_energy: Some(log_weight),
                rollouts: vec![RolloutTrace {
                    answer: particle.response.answer.clone(),
                    reward,
                    log_weight: 0.0,
                }],
            })
            .collect();
        tracer.emit(TraceEvent::Step(StepTrace {
            index: step,
            candidates,
            chosen,
            selection: Selection::Resample {
                probabilities,
                copies,
            },
            tokens: run.target_meter.tokens() + run.draft_meter.tokens(),
            elapsed_ms: run.elapsed_ms(),
        }));
        if last {
            return Ok(particles.into_tokens(chosen));
        }
        previous = picks.iter().map(|&i| rewards[i]).collect();
        let resampled: Vec<(usize, u64)> = picks
            .iter()
            .enumerate()
            .map(|(j, &i)| (i, run.stream(Purpose::Particle, step, j)))
            .collect();
        particles = particles.resample(run, &resampled)?;
        step += 1;
    }
}
