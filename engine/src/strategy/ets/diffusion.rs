//! ETS on a masked diffusion model: the sampler's denoising steps are split into I equal
//! stretches, each revealing B tokens of the answer. A guidance step runs M copies of the
//! current state through the next stretch (the candidates), then K copies of each candidate
//! through all remaining steps (the rollouts). A bidirectional model rereads the whole
//! sequence at every step, so there is no cache to share; each stretch is one batch.
//!
//! ETS-IS: the rollouts run on the draft (a masked diffusion model with the same vocabulary
//! and mask token), and each is weighed by log p_ref − log q of the tokens it revealed, each
//! model's log-probabilities read in one forward pass over the candidate the rollout started
//! from (a factorised likelihood: one pass per candidate whatever K). That is exact when a
//! model's predictions do not depend on the other answer tokens, and otherwise an
//! approximation: the probability of a denoising path depends on the order the tokens came
//! in. The paper's code reads them from the finished answer instead (clean-sequence
//! pseudo-likelihoods), which the exactness test's toy measured further from π*
//! (docs/strategies.md).

use super::{
    Candidate, Candidates, Chain, Rollout, Rollouts, check_draft_vocabulary, clipped_log_weight,
};
use crate::decode::diffusion::Denoising;
use crate::decode::lm::LanguageModel;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::sampling::TokenStats;
use crate::strategy::{EtsParams, Purpose, Run, stretch};

/// The state of ETS on a masked diffusion model.
pub(super) struct DlmChain<'p> {
    current: Denoising<'p>,
    /// Denoising steps per guidance step.
    stretch: usize,
    /// Denoising steps in all.
    total: usize,
    /// ETS-IS: rollouts on the draft, log-weights clipped to ± this (nats; `Some(None)`: no
    /// clipping).
    importance: Option<Option<f64>>,
}

impl<'p> DlmChain<'p> {
    /// The fully masked answer after `prompt`; with `importance`, rollouts run on the draft.
    pub fn start<M: LanguageModel>(
        run: &Run<'_, '_, M>,
        prompt: &'p [u32],
        params: &EtsParams,
        importance: bool,
    ) -> Result<Self> {
        if params.recycle {
            return Err(Error::Strategy(
                "rollout recycling is for causal models (a diffusion rollout has no next block)"
                    .into(),
            ));
        }
        if importance {
            let (target, draft) = match run.solver.draft {
                Some(draft) => (run.solver.target, draft),
                // `ets::solve` refuses ets-is without a draft before a chain starts.
                None => return Err(Error::Internal("an ETS-IS chain without a draft model")),
            };
            if draft.objective() != target.objective() {
                return Err(Error::Strategy(match draft.objective() {
                    Objective::Causal => "the draft of a masked diffusion model must be a masked \
                                          diffusion model too (this one is causal)"
                        .into(),
                    Objective::MaskedDiffusion { mask_token_id } => format!(
                        "the draft's mask token ({mask_token_id}) differs from the target's: \
                         they must share the tokenizer"
                    ),
                }));
            }
            check_draft_vocabulary(target, draft)?;
        }
        let options = run.diffusion(run.spec.sampling.temperature);
        Ok(Self {
            importance: importance.then_some(params.log_weight_clip),
            stretch: stretch(&options, params.block)?,
            current: Denoising::start(
                run.solver.target,
                &[prompt],
                vec![0],
                &options,
                run.solver.stop_ids,
            )?,
            total: options.steps,
        })
    }
}

impl<'p, M: LanguageModel> Chain<M> for DlmChain<'p> {
    /// The candidates' denoising states.
    type Proposed = Denoising<'p>;
    type RolledOut = ();

    fn steps(&self) -> usize {
        self.total / self.stretch
    }

    /// Every step taken, or the answer settled (later steps cannot change its text).
    fn complete(&self) -> bool {
        self.current.finished(0)
    }

    async fn candidates(
        &mut self,
        run: &Run<'_, '_, M>,
        step: usize,
        m: usize,
    ) -> Result<Candidates<Denoising<'p>>> {
        let picks: Vec<(usize, u64)> = (0..m)
            .map(|i| (0, run.stream(Purpose::Candidate, step, i)))
            .collect();
        let mut batch = self.current.fork(&picks);
        let until = self.current.step + self.stretch;
        batch
            .run(run.solver.target, &run.target_meter, until)
            .await?;
        let mut list = Vec::with_capacity(m);
        for i in 0..m {
            list.push(Candidate {
                tokens: batch.answers[i].clone(),
                stats: batch.stats(i),
                complete: until >= self.total || batch.settled(i),
                recycled: false,
                text: run.masked_text(&batch.answers[i], batch.mask())?,
            });
        }
        Ok(Candidates { list, state: batch })
    }

    async fn rollouts(
        &self,
        run: &Run<'_, '_, M>,
        step: usize,
        candidates: &Candidates<Denoising<'p>>,
        k: usize,
    ) -> Result<Rollouts<()>> {
        let list = &candidates.list;
        let mut per_candidate: Vec<Vec<Rollout>> = list.iter().map(|_| Vec::new()).collect();
        let picks: Vec<(usize, u64)> = (0..list.len())
            .filter(|&i| !list[i].complete)
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| (i, run.stream(Purpose::Rollout, step, i * k + j)))
            .collect();
        if !picks.is_empty() {
            let mut batch = candidates.state.fork(&picks);
            let log_weights = match (self.importance, run.solver.draft) {
                (Some(clip), Some(draft)) => {
                    batch.run(draft, &run.draft_meter, self.total).await?;
                    // Each rollout's new tokens, read where its candidate stood.
                    let mut entries = Vec::with_capacity(picks.len());
                    for (j, &(i, _)) in picks.iter().enumerate() {
                        let earlier = &candidates.state.answers[i];
                        entries.push((i, batch.revealed_since(j, earlier)?));
                    }
                    let state = &candidates.state;
                    let p = state
                        .score_tokens(run.solver.target, &run.target_meter, &entries)
                        .await?;
                    let q = state
                        .score_tokens(draft, &run.draft_meter, &entries)
                        .await?;
                    let mut log_weights = Vec::with_capacity(picks.len());
                    for (j, ((p, q), (_, tokens))) in p.iter().zip(&q).zip(&entries).enumerate() {
                        let sum =
                            |s: &[TokenStats]| s.iter().map(|t| t.sampling_log_prob).sum::<f64>();
                        log_weights.push(clipped_log_weight(sum(p), sum(q), clip));
                        // The rollout's statistics are the target's, as on causal models.
                        let scored: Vec<(usize, TokenStats)> = tokens
                            .iter()
                            .map(|&(pos, _)| pos)
                            .zip(p.iter().copied())
                            .collect();
                        batch.set_revealed_stats(j, &scored)?;
                    }
                    log_weights
                }
                (Some(_), None) => {
                    return Err(Error::Internal("an ETS-IS chain without its draft model"));
                }
                (None, _) => {
                    batch
                        .run(run.solver.target, &run.target_meter, self.total)
                        .await?;
                    vec![0.0; picks.len()]
                }
            };
            let stats: Vec<_> = (0..picks.len()).map(|j| batch.stats(j)).collect();
            for (((&(i, _), tokens), stats), log_weight) in
                picks.iter().zip(batch.answers).zip(stats).zip(log_weights)
            {
                per_candidate[i].push(Rollout {
                    tokens,
                    stats,
                    log_weight,
                });
            }
        }
        Ok(Rollouts {
            per_candidate,
            state: (),
        })
    }

    async fn choose(
        &mut self,
        _run: &Run<'_, '_, M>,
        candidates: Candidates<Denoising<'p>>,
        _rollouts: Rollouts<()>,
        chosen: usize,
    ) -> Result<()> {
        self.current = candidates.state.fork(&[(chosen, 0)]);
        Ok(())
    }

    fn tokens(&self) -> &[u32] {
        &self.current.answers[0]
    }
}
