//! The guidance loop of ETS, shared by causal and masked diffusion models. At each of the I
//! guidance steps: draw M candidates from p_ref, complete each K times (from p_ref, or from the
//! draft q with log-weights log p_ref/q), reward every completion, estimate each candidate's
//! log-energy log Ê_m = logsumexp_k(r/λ + log w) − log K, and keep one candidate drawn from
//! softmax(log Ê) — a draw, never an argmax. A candidate that is already a complete response
//! stands for its own K completions.

mod causal;
mod diffusion;

use crate::decode::lm::LanguageModel;
use crate::error::{Error, Result};
use crate::reward::Reward;
use crate::sampling::TokenStats;
use crate::strategy::{
    EtsParams, OwnedResponse, Purpose, Run, Strategy, Tracer, categorical, draw_probabilities,
    log_mean_exp,
};
use crate::trace::{CandidateTrace, RolloutTrace, Selection, StepTrace, TraceEvent};
use causal::ArChain;
use diffusion::DlmChain;

/// A candidate state of a guidance step.
pub(super) struct Candidate {
    /// The whole response so far (the chosen prefix and this candidate's block).
    pub tokens: Vec<u32>,
    /// Statistics of those tokens.
    pub stats: TokenStats,
    /// Whether it is a complete response (no rollouts needed).
    pub complete: bool,
    /// Whether it came from a rollout of the previous step.
    pub recycled: bool,
    /// Its new text, for the trace.
    pub text: String,
}

/// A completion of a candidate.
pub(super) struct Rollout {
    /// The whole response.
    pub tokens: Vec<u32>,
    pub stats: TokenStats,
    /// log p_ref / q over the rollout's own tokens (0 when drawn from p_ref).
    pub log_weight: f64,
}

/// A guidance step's M candidates with the decoding state they continue from (their KV caches,
/// or their denoising states). Only [`Chain::candidates`] makes one, and [`Chain::choose`]
/// consumes it, so a step's calls cannot come in another order.
pub(super) struct Candidates<S> {
    pub list: Vec<Candidate>,
    state: S,
}

/// The K rollouts of each candidate of a step (an empty list for a complete candidate) with
/// what the choice keeps of them (ETS-IS: the draft's states of the candidates; recycling: the
/// rollouts one block on). Only [`Chain::rollouts`] makes one; [`Chain::choose`] consumes it.
pub(super) struct Rollouts<S> {
    pub per_candidate: Vec<Vec<Rollout>>,
    state: S,
}

/// A chain of partially decoded states that ETS steers: causal blocks or diffusion steps. A
/// guidance step is `candidates` → `rollouts` → `choose`, each taking what the one before made.
pub(super) trait Chain<M: LanguageModel> {
    /// The decoding state of a step's candidates.
    type Proposed;
    /// What a step's rollouts leave for the choice.
    type RolledOut;
    /// I: the number of guidance steps.
    fn steps(&self) -> usize;
    /// Whether the current state is a complete response.
    fn complete(&self) -> bool;
    /// M candidates for guidance step `step`, drawn from p_ref given the current state.
    async fn candidates(
        &mut self,
        run: &Run<'_, '_, M>,
        step: usize,
        m: usize,
    ) -> Result<Candidates<Self::Proposed>>;
    /// K completions of each candidate that is not complete.
    async fn rollouts(
        &self,
        run: &Run<'_, '_, M>,
        step: usize,
        candidates: &Candidates<Self::Proposed>,
        k: usize,
    ) -> Result<Rollouts<Self::RolledOut>>;
    /// Makes candidate `chosen` the current state.
    async fn choose(
        &mut self,
        run: &Run<'_, '_, M>,
        candidates: Candidates<Self::Proposed>,
        rollouts: Rollouts<Self::RolledOut>,
        chosen: usize,
    ) -> Result<()>;
    /// The current state's tokens.
    fn tokens(&self) -> &[u32];
}

/// An ETS-IS rollout's log-weight log p_ref − log q (nats), clipped to ±`clip` (none: no
/// clipping); a NaN (both densities zero) counts as −clip.
fn clipped_log_weight(log_p: f64, log_q: f64, clip: Option<f64>) -> f64 {
    let clip = clip.unwrap_or(f64::INFINITY);
    let w = log_p - log_q;
    if w.is_nan() {
        -clip
    } else {
        w.clamp(-clip, clip)
    }
}

/// Refuses a draft whose vocabulary differs from the target's (they must share the tokenizer).
fn check_draft_vocabulary<M: LanguageModel>(target: &M, draft: &M) -> Result<()> {
    if draft.vocab_size() != target.vocab_size() {
        return Err(Error::Strategy(format!(
            "the draft's vocabulary ({}) differs from the target's ({}): they must share the \
             tokenizer",
            draft.vocab_size(),
            target.vocab_size()
        )));
    }
    Ok(())
}

/// Runs ETS (or ETS-IS) and returns the response's tokens.
pub(super) async fn solve<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    params: &EtsParams,
    reward: &mut dyn Reward,
    tracer: &mut Tracer<'_>,
) -> Result<Vec<u32>> {
    let importance = matches!(run.spec.strategy, Strategy::EtsIs(_));
    if importance && run.solver.draft.is_none() {
        return Err(Error::Strategy("ets-is needs a draft model".into()));
    }
    if importance && run.spec.sampling.temperature == 0.0 {
        return Err(Error::Strategy(
            "ets-is needs a temperature above 0: greedy rollouts have no importance weights".into(),
        ));
    }
    if run.causal() {
        let mut chain = ArChain::start(run, prompt, params, importance).await?;
        guide(run, &mut chain, params, reward, tracer).await?;
        Ok(chain.tokens().to_vec())
    } else {
        let mut chain = DlmChain::start(run, prompt, params, importance)?;
        guide(run, &mut chain, params, reward, tracer).await?;
        Ok(Chain::<M>::tokens(&chain).to_vec())
    }
}

/// The guidance loop.
async fn guide<M: LanguageModel, C: Chain<M>>(
    run: &Run<'_, '_, M>,
    chain: &mut C,
    params: &EtsParams,
    reward: &mut dyn Reward,
    tracer: &mut Tracer<'_>,
) -> Result<()> {
    for step in 0..chain.steps() {
        if chain.complete() {
            break;
        }
        let candidates = chain.candidates(run, step, params.m).await?;
        let rollouts = chain.rollouts(run, step, &candidates, params.k).await?;
        // Every completion in order, with its candidate and log-weight.
        let mut completions: Vec<(usize, OwnedResponse, f64)> = Vec::new();
        for (i, (candidate, rollouts)) in candidates
            .list
            .iter()
            .zip(&rollouts.per_candidate)
            .enumerate()
        {
            if rollouts.is_empty() {
                let response = run.response(&candidate.tokens, candidate.stats)?;
                completions.extend((0..params.k).map(|_| (i, response.clone(), 0.0)));
            }
            for r in rollouts {
                completions.push((i, run.response(&r.tokens, r.stats)?, r.log_weight));
            }
        }
        let views: Vec<_> = completions.iter().map(|(_, r, _)| r.view()).collect();
        let rewards = reward.score(&views).await?;
        let mut terms = vec![Vec::with_capacity(params.k); candidates.list.len()];
        let mut traces = vec![Vec::with_capacity(params.k); candidates.list.len()];
        for ((i, response, log_weight), r) in completions.iter().zip(&rewards) {
            terms[*i].push(r / params.lambda + log_weight);
            traces[*i].push(RolloutTrace {
                answer: response.answer.clone(),
                reward: *r,
                log_weight: *log_weight,
            });
        }
        let log_energies: Vec<f64> = terms.iter().map(|t| log_mean_exp(t)).collect();
        let probabilities = draw_probabilities(&log_energies);
        let u = run
            .rng()
            .uniform(run.stream(Purpose::Selection, step, 0), 0);
        let chosen = categorical(&probabilities, u);
        let candidate_traces = candidates
            .list
            .iter()
            .zip(traces)
            .zip(&log_energies)
            .map(|((c, rollouts), &log_energy)| CandidateTrace {
                text: c.text.clone(),
                complete: c.complete,
                recycled: c.recycled,
                log_energy: Some(log_energy),
                rollouts,
            })
            .collect();
        tracer.emit(TraceEvent::Step(StepTrace {
            index: step,
            candidates: candidate_traces,
            chosen,
            selection: Selection::EnergyDraw { probabilities },
            tokens: run.target_meter.tokens() + run.draft_meter.tokens(),
            elapsed_ms: run.elapsed_ms(),
        }));
        chain.choose(run, candidates, rollouts, chosen).await?;
    }
    Ok(())
}
