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
//! The weights telescope: a particle's path carries exp(r(full)/λ) over p_ref, so as N grows
//! the answer's distribution tends to π* whatever the reward says of partial responses (that
//! only steers where the particles go); the exactness test measures it on a toy model. Puri et
//! al. weigh by a process reward model's current score itself; with an outcome reward read on
//! partial responses, weighing by its change is what keeps π* the target.

use crate::decode::lm::LanguageModel;
use crate::decode::sequences::Sequences;
use crate::error::{Error, Result};
use crate::reward::Reward;
use crate::strategy::{
    EtsParams, OwnedResponse, Purpose, Run, Tracer, categorical, draw_probabilities,
};
use crate::trace::{CandidateTrace, RolloutTrace, Selection, StepTrace, TraceEvent};

/// Runs the filter on `prompt` with M = `params.m` particles advancing `params.block` tokens
/// at a time, weighed by exp(Δr / `params.lambda`), and returns the chosen particle's tokens.
pub(super) async fn filter<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    params: &EtsParams,
    reward: &mut dyn Reward,
    tracer: &mut Tracer<'_>,
) -> Result<Vec<u32>> {
    if !run.causal() {
        return Err(Error::Strategy(
            "particle filtering runs on causal models; for a masked diffusion model use ets".into(),
        ));
    }
    let n = params.m;
    let model = run.solver.target;
    let sampling = run.spec.sampling;
    let root = Sequences::start(model, &run.target_meter, &[prompt], vec![0]).await?;
    let starts: Vec<(usize, u64)> = (0..n)
        .map(|i| (0, run.stream(Purpose::Sample, 0, i)))
        .collect();
    let mut particles = root.fork(model, &starts)?;
    // Each particle's reward when it was last resampled.
    let mut previous = vec![0.0; n];
    let mut decoded = 0;
    let mut step = 0;
    loop {
        let budget = params.block.min(run.spec.max_tokens - decoded);
        let show = |tokens: &[Vec<u32>]| run.show_drafts(step, tokens.iter().map(Vec::as_slice));
        particles
            .extend(
                model,
                &run.target_meter,
                budget,
                None,
                run.drawing(&sampling).showing(&show),
            )
            .await?;
        decoded += budget;
        let responses = particles
            .tokens
            .iter()
            .zip(&particles.stats)
            .map(|(tokens, stats)| run.response(tokens, *stats))
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = responses.iter().map(OwnedResponse::view).collect();
        let rewards = reward.score(&views).await?;
        let log_weights: Vec<f64> = rewards
            .iter()
            .zip(&previous)
            .map(|(r, before)| (r - before) / params.lambda)
            .collect();
        let probabilities = draw_probabilities(&log_weights);
        let last = decoded >= run.spec.max_tokens || particles.ended.iter().all(|&e| e);
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
        let candidates = responses
            .iter()
            .zip(&particles.ended)
            .zip(rewards.iter().zip(&log_weights))
            .map(
                |((response, &ended), (&reward, &log_weight))| CandidateTrace {
                    text: response.text.clone(),
                    complete: ended,
                    recycled: false,
                    log_energy: Some(log_weight),
                    rollouts: vec![RolloutTrace {
                        answer: response.answer.clone(),
                        reward,
                        log_weight: 0.0,
                    }],
                },
            )
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
            return Ok(particles.tokens.swap_remove(chosen));
        }
        previous = picks.iter().map(|&i| rewards[i]).collect();
        let resampled: Vec<(usize, u64)> = picks
            .iter()
            .enumerate()
            .map(|(j, &i)| (i, run.stream(Purpose::Particle, step, j)))
            .collect();
        particles = particles.resample(model, &resampled)?;
        step += 1;
    }
}
