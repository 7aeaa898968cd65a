//! ETS on a masked diffusion model: the sampler's denoising steps are split into I equal
//! stretches, each revealing B tokens of the answer. A guidance step runs M copies of the
//! current state through the next stretch (the candidates), then K copies of each candidate
//! through all remaining steps (the rollouts). A bidirectional model rereads the whole
//! sequence at every step, so there is no cache to share; each stretch is one batch.

use super::{Candidate, Candidates, Chain, Rollout, Rollouts};
use crate::decode::diffusion::Denoising;
use crate::decode::lm::LanguageModel;
use crate::error::{Error, Result};
use crate::strategy::{EtsParams, Purpose, Run, stretch};

/// The state of ETS on a masked diffusion model.
pub(super) struct DlmChain<'p> {
    current: Denoising<'p>,
    /// Denoising steps per guidance step.
    stretch: usize,
    /// Denoising steps in all.
    total: usize,
}

impl<'p> DlmChain<'p> {
    /// The fully masked answer after `prompt`.
    pub fn start<M: LanguageModel>(
        run: &Run<'_, '_, M>,
        prompt: &'p [u32],
        params: &EtsParams,
    ) -> Result<Self> {
        if params.recycle {
            return Err(Error::Strategy(
                "rollout recycling is for causal models (a diffusion rollout has no next block)"
                    .into(),
            ));
        }
        let options = run.diffusion(run.spec.sampling.temperature);
        Ok(Self {
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
                complete: until >= self.total,
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
            batch
                .run(run.solver.target, &run.target_meter, self.total)
                .await?;
            let stats: Vec<_> = (0..picks.len()).map(|j| batch.stats(j)).collect();
            for ((&(i, _), tokens), stats) in picks.iter().zip(batch.answers).zip(stats) {
                per_candidate[i].push(Rollout {
                    tokens,
                    stats,
                    log_weight: 0.0,
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
