//! ETS on a causal model: a guidance step adds a block of B tokens. Candidates fork the chosen
//! prefix's KV cache; rollouts fork their candidate's, so no prefix is computed twice, and all
//! M·K rollouts of a step decode as one batch.
//!
//! ETS-IS: the draft model keeps its own cache of the chosen prefix, reads each candidate's
//! block in one batched pass, and decodes the rollouts; the target then scores each rollout in
//! one teacher-forced pass, and log w = log p_ref − log q over the rollout's own tokens, both
//! under the same sampling transform (temperature, top-k, top-p).
//!
//! Rollout recycling: the chosen candidate's K rollouts continue it, so their next B tokens are
//! draws from p_ref given the new state, and serve as K of the next step's M candidates
//! (saving their decoding). The draws are not fully independent of the choice — the selection
//! favoured a candidate whose rollouts scored well, so a recycled block comes from the mixture
//! (1/K)·π* + (1 − 1/K)·p_ref — but across the M candidates that shifts the proposal by only
//! (π* − p_ref)/M, below the O(1/√M) error ETS already has; the M → ∞ target is unchanged. The
//! exactness test measures it.

use super::{
    Candidate, Candidates, Chain, Rollout, Rollouts, check_draft_vocabulary, clipped_log_weight,
};
use crate::decode::lm::LanguageModel;
use crate::decode::sequences::{Batch, Sequences};
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::sampling::TokenStats;
use crate::strategy::{EtsParams, Purpose, Run};

/// The state of ETS on a causal model.
pub(super) struct ArChain<M: LanguageModel> {
    params: EtsParams,
    /// The chosen response so far and its statistics.
    prefix: Vec<u32>,
    stats: TokenStats,
    complete: bool,
    /// The target's sequence at the chosen prefix (one running row).
    current: Batch<M>,
    /// Where the rollouts come from.
    source: RolloutSource<M>,
    /// Recycling: the chosen candidate's rollouts one block on: the next step's first
    /// candidates, caches and all.
    recycled: Option<Batch<M>>,
}

/// Where a causal chain's rollouts come from: the target itself (p_ref), or the draft model with
/// importance weights (ETS-IS).
enum RolloutSource<M: LanguageModel> {
    Target,
    /// The draft's sequence at the chosen prefix (one running row).
    Draft {
        current: Batch<M>,
    },
}

/// What a step's rollouts leave for the choice.
pub(super) struct RolledOut<M: LanguageModel> {
    /// ETS-IS: the draft's copies of the open candidates, and the candidate each row holds.
    draft_candidates: Option<(Batch<M>, Vec<usize>)>,
    /// Recycling: the rollouts as they stood one block past their candidate, and the candidate
    /// each continues.
    at_block: Option<(Batch<M>, Vec<usize>)>,
}

/// The rollouts of one step as rows (row o·K + j is rollout j of open candidate `open[o]`):
/// their own tokens, statistics under p_ref and log-weights.
struct RolloutRows<M: LanguageModel> {
    tokens: Vec<Vec<u32>>,
    stats: Vec<TokenStats>,
    log_weights: Vec<f64>,
    rolled_out: RolledOut<M>,
}

impl<M: LanguageModel> ArChain<M> {
    /// Runs the prompt through the target (and the draft).
    pub async fn start(
        run: &Run<'_, '_, M>,
        prompt: &[u32],
        params: &EtsParams,
        importance: bool,
    ) -> Result<Self> {
        let current =
            Sequences::start(run.solver.target, &run.target_meter, &[prompt], vec![0]).await?;
        let source = match (importance, run.solver.draft) {
            (true, Some(draft)) => {
                if draft.objective() != Objective::Causal {
                    return Err(Error::Strategy(
                        "the draft model must be causal (this one is a masked diffusion model)"
                            .into(),
                    ));
                }
                check_draft_vocabulary(run.solver.target, draft)?;
                RolloutSource::Draft {
                    current: Sequences::start(draft, &run.draft_meter, &[prompt], vec![0]).await?,
                }
            }
            // `ets::solve` refuses ets-is without a draft before a chain starts.
            (true, None) => return Err(Error::Internal("an ETS-IS chain without a draft model")),
            (false, _) => RolloutSource::Target,
        };
        Ok(Self {
            params: *params,
            prefix: Vec::new(),
            stats: TokenStats::default(),
            complete: run.spec.max_tokens == 0,
            current,
            source,
            recycled: None,
        })
    }

    /// Tokens the next block may add.
    fn next_block(&self, run: &Run<'_, '_, M>) -> usize {
        self.params
            .block
            .min(run.spec.max_tokens.saturating_sub(self.prefix.len()))
    }

    /// Decodes the rollouts `picks` ((candidate, stream) per row) of the open candidates `open`
    /// for up to `budget` tokens each, from the target or from the draft.
    async fn roll_out(
        &self,
        run: &Run<'_, '_, M>,
        candidates: &Candidates<Batch<M>>,
        open: &[usize],
        picks: &[(usize, u64)],
        budget: usize,
    ) -> Result<RolloutRows<M>> {
        let (target, sampling) = (run.solver.target, &run.spec.sampling);
        let cands = &candidates.state;
        let k = self.params.k;
        match (&self.source, run.solver.draft) {
            (RolloutSource::Draft { current }, Some(draft)) => {
                let at_prefix: Vec<(usize, u64)> = open.iter().map(|_| (0, 0)).collect();
                let mut draft_cands = current.fork(draft, &at_prefix)?;
                let blocks: Vec<&[u32]> = open
                    .iter()
                    .map(|&i| &candidates.list[i].tokens[self.prefix.len()..])
                    .collect();
                draft_cands
                    .feed_unscored(draft, &run.draft_meter, &blocks, run.drawing(sampling))
                    .await?;
                let draft_picks: Vec<(usize, u64)> = picks
                    .iter()
                    .enumerate()
                    .map(|(row, &(_, stream))| (row / k, stream))
                    .collect();
                let mut drafts = draft_cands.fork(draft, &draft_picks)?;
                drafts
                    .extend(draft, &run.draft_meter, budget, None, run.drawing(sampling))
                    .await?;
                // The target reads each rollout in one teacher-forced pass.
                let mut scored = cands.fork(target, picks)?;
                let chunks: Vec<&[u32]> = drafts.tokens.iter().map(Vec::as_slice).collect();
                scored
                    .feed(target, &run.target_meter, &chunks, run.drawing(sampling))
                    .await?;
                let clip = self.params.log_weight_clip;
                let log_weights = scored
                    .stats
                    .iter()
                    .zip(&drafts.stats)
                    .map(|(p, q)| {
                        clipped_log_weight(p.sampling_log_prob, q.sampling_log_prob, clip)
                    })
                    .collect();
                Ok(RolloutRows {
                    tokens: drafts.tokens,
                    stats: scored.stats,
                    log_weights,
                    rolled_out: RolledOut {
                        draft_candidates: Some((draft_cands, open.to_vec())),
                        at_block: None,
                    },
                })
            }
            (RolloutSource::Draft { .. }, None) => {
                Err(Error::Internal("an ETS-IS chain without its draft model"))
            }
            (RolloutSource::Target, _) => {
                let recycle = self.params.recycle;
                let mut batch = cands.fork(target, picks)?;
                if recycle {
                    batch.mark = Some(budget.min(self.params.block));
                }
                batch
                    .extend(
                        target,
                        &run.target_meter,
                        budget,
                        None,
                        run.drawing(sampling),
                    )
                    .await?;
                let at_block = recycle.then(|| {
                    let owners = picks.iter().map(|&(i, _)| i).collect();
                    (batch.at_mark(), owners)
                });
                let log_weights = vec![0.0; picks.len()];
                Ok(RolloutRows {
                    tokens: batch.tokens,
                    stats: batch.stats,
                    log_weights,
                    rolled_out: RolledOut {
                        draft_candidates: None,
                        at_block,
                    },
                })
            }
        }
    }
}

impl<M: LanguageModel> Chain<M> for ArChain<M> {
    /// The candidates' sequences on the target.
    type Proposed = Batch<M>;
    type RolledOut = RolledOut<M>;

    fn steps(&self) -> usize {
        usize::MAX // the loop ends when the response is complete: ceil(max tokens / B) steps
    }

    fn complete(&self) -> bool {
        self.complete
    }

    async fn candidates(
        &mut self,
        run: &Run<'_, '_, M>,
        step: usize,
        m: usize,
    ) -> Result<Candidates<Batch<M>>> {
        let model = run.solver.target;
        let block = self.next_block(run);
        // Recycled rollouts come first; fresh candidates fill the rest.
        let mut parts = Vec::new();
        let mut recycled = 0;
        if let Some(rollouts) = self.recycled.take() {
            recycled = rollouts.len().min(m);
            let keep: Vec<usize> = (0..recycled).collect();
            parts.push(rollouts.select_sequences(model, &keep)?);
        }
        if recycled < m {
            let picks: Vec<(usize, u64)> = (recycled..m)
                .map(|i| (0, run.stream(Purpose::Candidate, step, i)))
                .collect();
            let mut fresh = self.current.fork(model, &picks)?;
            let show =
                |tokens: &[Vec<u32>]| run.show_drafts(step, tokens.iter().map(Vec::as_slice));
            fresh
                .extend(
                    model,
                    &run.target_meter,
                    block,
                    None,
                    run.drawing(&run.spec.sampling).showing(&show),
                )
                .await?;
            parts.push(fresh);
        }
        let batch = Sequences::concat(model, parts)?;
        let mut list = Vec::with_capacity(m);
        for i in 0..m {
            let new = &batch.tokens[i];
            let mut tokens = self.prefix.clone();
            tokens.extend_from_slice(new);
            let response = run.response(new, TokenStats::default())?;
            list.push(Candidate {
                complete: batch.ended[i] || tokens.len() >= run.spec.max_tokens,
                tokens,
                stats: self.stats.plus(batch.stats[i]),
                recycled: i < recycled,
                text: response.text,
            });
        }
        Ok(Candidates { list, state: batch })
    }

    async fn rollouts(
        &self,
        run: &Run<'_, '_, M>,
        step: usize,
        candidates: &Candidates<Batch<M>>,
        k: usize,
    ) -> Result<Rollouts<RolledOut<M>>> {
        let list = &candidates.list;
        let mut per_candidate: Vec<Vec<Rollout>> = list.iter().map(|_| Vec::new()).collect();
        let open: Vec<usize> = (0..list.len()).filter(|&i| !list[i].complete).collect();
        let Some(first) = open.first() else {
            return Ok(Rollouts {
                per_candidate,
                state: RolledOut {
                    draft_candidates: None,
                    at_block: None,
                },
            });
        };
        // Open candidates did not stop, so they all hold prefix + B tokens.
        let budget = run.spec.max_tokens - list[*first].tokens.len();
        // Rollout j of open candidate `open[o]` is row o·K + j.
        let picks: Vec<(usize, u64)> = open
            .iter()
            .flat_map(|&i| (0..k).map(move |j| (i, j)))
            .map(|(i, j)| (i, run.stream(Purpose::Rollout, step, i * k + j)))
            .collect();
        let rows = self
            .roll_out(run, candidates, &open, &picks, budget)
            .await?;
        for (((&(i, _), own), stats), log_weight) in picks
            .iter()
            .zip(rows.tokens)
            .zip(rows.stats)
            .zip(rows.log_weights)
        {
            let c = &list[i];
            let mut all = c.tokens.clone();
            all.extend_from_slice(&own);
            per_candidate[i].push(Rollout {
                tokens: all,
                stats: c.stats.plus(stats),
                log_weight,
            });
        }
        Ok(Rollouts {
            per_candidate,
            state: rows.rolled_out,
        })
    }

    async fn choose(
        &mut self,
        run: &Run<'_, '_, M>,
        candidates: Candidates<Batch<M>>,
        rollouts: Rollouts<RolledOut<M>>,
        chosen: usize,
    ) -> Result<()> {
        let c = &candidates.list[chosen];
        self.prefix = c.tokens.clone();
        self.stats = c.stats;
        self.complete = c.complete;
        self.recycled = None;
        if c.complete {
            return Ok(());
        }
        self.current = candidates.state.fork(run.solver.target, &[(chosen, 0)])?;
        let RolledOut {
            draft_candidates,
            at_block,
        } = rollouts.state;
        if let (Some((draft_cands, open)), Some(draft)) = (draft_candidates, run.solver.draft) {
            let row = open
                .iter()
                .position(|&i| i == chosen)
                .ok_or(Error::Internal("the chosen candidate has no draft state"))?;
            self.source = RolloutSource::Draft {
                current: draft_cands.fork(draft, &[(row, 0)])?,
            };
        }
        if let Some((at_block, owners)) = at_block {
            let rows: Vec<usize> = (0..owners.len()).filter(|&j| owners[j] == chosen).collect();
            if !rows.is_empty() {
                self.recycled = Some(at_block.select_sequences(run.solver.target, &rows)?);
            }
        }
        Ok(())
    }

    fn tokens(&self) -> &[u32] {
        &self.prefix
    }
}
