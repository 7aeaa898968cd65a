//! LLaDA's sampler for masked diffusion LMs: the answer starts as `gen_length` mask tokens and
//! is revealed block by block, left to right (semi-autoregressive). At each step the model
//! predicts every masked position at once; a draw at `temperature` (on the device, the same
//! sampler as autoregressive decoding) proposes a token for each, and the proposals the model is most confident of (low-confidence remasking: the
//! rest stay masked) or a random subset are kept, so that each block is fully revealed after
//! its share of the steps. Revealed tokens are never masked again, so an answer is settled once
//! a stop token is revealed with every position before it: later steps cannot change its text,
//! and the sampler stops running it (a settled answer keeps masks after its stop token).

use crate::decode::check_prompts;
use crate::decode::lm::{LanguageModel, Meter, metered_forward};
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::transformer::LogitsFor;
use crate::rng::CounterRng;
use crate::sampling::{RowPick, SamplingParams, TokenStats};

pub use ets_spec::diffusion::{DiffusionOptions, DiffusionSchedule, Remasking};

/// How many tokens step `step` of `steps` reveals out of `masked`: as even as possible, the
/// first steps taking the remainder (as LLaDA does).
fn tokens_at_step(masked: usize, steps: usize, step: usize) -> usize {
    masked / steps + usize::from(step < masked % steps)
}

/// Generates an answer of `options.gen_length` tokens after each prompt with a masked
/// diffusion `model`; sequence i draws from stream `streams[i]`, and an answer stops denoising
/// once it is settled at one of `stop_ids`. Returns the answer tokens (the first stop token
/// and whatever follows it included, masks where a settled answer was not run further: the
/// caller cuts at the first stop id).
pub async fn generate_diffusion<M: LanguageModel>(
    model: &M,
    prompts: &[Vec<u32>],
    streams: &[u64],
    options: &DiffusionOptions,
    stop_ids: &[u32],
) -> Result<Vec<Vec<u32>>> {
    check_prompts(prompts, streams)?;
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut batch = Denoising::start(model, &prompts, streams.to_vec(), options, stop_ids)?;
    batch.run(model, &Meter::default(), options.steps).await?;
    Ok(batch.answers)
}

/// A batch of answers part way through the sampler: each answer holds revealed tokens and
/// mask tokens, and the batch knows how many denoising steps it has taken.
#[derive(Clone, Debug)]
pub struct Denoising<'p> {
    prompts: Vec<&'p [u32]>,
    /// Per sequence: the answer, `gen_length` tokens, masks where nothing is revealed yet.
    pub answers: Vec<Vec<u32>>,
    /// Per sequence and answer position: the statistics of its token, read when it was
    /// revealed (empty while masked).
    revealed_stats: Vec<Vec<TokenStats>>,
    streams: Vec<u64>,
    /// Denoising steps taken.
    pub step: usize,
    options: DiffusionOptions,
    mask: u32,
    /// Tokens that end an answer.
    stop_ids: Vec<u32>,
}

impl<'p> Denoising<'p> {
    /// Fully masked answers after `prompts`; sequence i draws from `streams[i]`; an answer
    /// settles at the first of `stop_ids` (none: answers run every step).
    pub fn start<M: LanguageModel>(
        model: &M,
        prompts: &[&'p [u32]],
        streams: Vec<u64>,
        options: &DiffusionOptions,
        stop_ids: &[u32],
    ) -> Result<Self> {
        options.validate()?;
        let Objective::MaskedDiffusion {
            mask_token_id: mask,
        } = model.objective()
        else {
            return Err(Error::Sampling(
                "the diffusion sampler needs a masked diffusion model (this one is causal)".into(),
            ));
        };
        let n = prompts.len();
        Ok(Self {
            prompts: prompts.to_vec(),
            answers: vec![vec![mask; options.gen_length]; n],
            revealed_stats: vec![vec![TokenStats::default(); options.gen_length]; n],
            streams,
            step: 0,
            options: options.clone(),
            mask,
            stop_ids: stop_ids.to_vec(),
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The mask token.
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// Whether answer `b` is settled: a stop token is revealed with every position before it
    /// revealed, so no later step can change its text.
    pub fn settled(&self, b: usize) -> bool {
        self.answers[b]
            .iter()
            .find(|&&t| t == self.mask || self.stop_ids.contains(&t))
            .is_some_and(|&t| t != self.mask)
    }

    /// Whether answer `b` is final: settled, or every step of the schedule taken.
    pub fn finished(&self, b: usize) -> bool {
        self.step >= self.options.steps || self.settled(b)
    }

    /// The statistics of answer `b`'s revealed tokens up to its first stop token (included),
    /// as autoregressive decoding counts a response.
    pub fn stats(&self, b: usize) -> TokenStats {
        self.revealed_stats[b][..self.response_end(b)]
            .iter()
            .fold(TokenStats::default(), |sum, &s| sum.plus(s))
    }

    /// How many of answer `b`'s positions its response holds: up to its first stop token
    /// (included), or all.
    fn response_end(&self, b: usize) -> usize {
        let answer = &self.answers[b];
        answer
            .iter()
            .position(|t| self.stop_ids.contains(t))
            .map_or(answer.len(), |p| p + 1)
    }

    /// Sequences continuing these: new sequence j is a copy of `picks[j].0` (its answer and
    /// statistics) that draws from stream `picks[j].1` from now on.
    pub fn fork(&self, picks: &[(usize, u64)]) -> Self {
        Self {
            prompts: picks.iter().map(|&(s, _)| self.prompts[s]).collect(),
            answers: picks
                .iter()
                .map(|&(s, _)| self.answers[s].clone())
                .collect(),
            revealed_stats: picks
                .iter()
                .map(|&(s, _)| self.revealed_stats[s].clone())
                .collect(),
            streams: picks.iter().map(|&(_, stream)| stream).collect(),
            step: self.step,
            options: self.options.clone(),
            mask: self.mask,
            stop_ids: self.stop_ids.clone(),
        }
    }

    /// The draw of each proposal: the schedule's temperature, no top-k or top-p.
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.options.temperature as f32,
            ..SamplingParams::default()
        }
    }

    /// One forward pass over sequences `live`: row r · gen_length + p holds the logits of
    /// answer position p of `live[r]`.
    async fn forward<M: LanguageModel>(
        &self,
        model: &M,
        meter: &Meter<'_>,
        live: &[usize],
    ) -> Result<M::Logits> {
        let sequences: Vec<Vec<u32>> = live
            .iter()
            .map(|&b| {
                self.prompts[b]
                    .iter()
                    .chain(&self.answers[b])
                    .copied()
                    .collect()
            })
            .collect();
        let chunks: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let mut cache = model.new_cache(chunks.len());
        // Left padding aligns every answer at the end of the chunk.
        metered_forward(
            model,
            meter,
            &chunks,
            &mut cache,
            LogitsFor::Tail(self.options.gen_length),
        )
        .await
    }

    /// One forward pass over the answers not settled: per answer, each masked position of its
    /// current block (the first block holding a mask) with its `n` most likely tokens and their
    /// log-probabilities (nats, temperature 1), most likely first; nothing for a settled or
    /// fully revealed answer. Beam search on a diffusion model expands these.
    pub async fn block_top_log_probs<M: LanguageModel>(
        &self,
        model: &M,
        meter: &Meter<'_>,
        n: usize,
    ) -> Result<Vec<Vec<(usize, Vec<(u32, f64)>)>>> {
        let (answer_len, block_length) = (self.options.gen_length, self.options.block_length);
        let mut out = vec![Vec::new(); self.len()];
        let (mut index, mut owners, mut live) = (Vec::new(), Vec::new(), Vec::new());
        for b in (0..self.len()).filter(|&b| !self.settled(b)) {
            let Some(first) = self.answers[b].iter().position(|&t| t == self.mask) else {
                continue;
            };
            let start = first / block_length * block_length;
            let row = live.len();
            for pos in (start..start + block_length).filter(|&p| self.answers[b][p] == self.mask) {
                index.push(row * answer_len + pos);
                owners.push((b, pos));
            }
            live.push(b);
        }
        if live.is_empty() {
            return Ok(out);
        }
        let rows = self.forward(model, meter, &live).await?;
        let tops = rows.select(&index)?.top_log_probs(n).await?;
        for ((b, pos), top) in owners.into_iter().zip(tops) {
            out[b].push((pos, top));
        }
        Ok(out)
    }

    /// The tokens answer `b` revealed since `earlier` (its answer when it was forked), up to its
    /// first stop token: (answer position, token), in position order.
    pub fn revealed_since(&self, b: usize, earlier: &[u32]) -> Result<Vec<(usize, u32)>> {
        let answer = self.answers.get(b).ok_or_else(|| {
            Error::Sampling(format!("no sequence {b} in a batch of {}", self.len()))
        })?;
        if earlier.len() != answer.len() {
            return Err(Error::Sampling(format!(
                "an earlier answer of {} tokens for answers of {}",
                earlier.len(),
                answer.len()
            )));
        }
        Ok((0..self.response_end(b))
            .filter(|&p| earlier[p] == self.mask && answer[p] != self.mask)
            .map(|p| (p, answer[p]))
            .collect())
    }

    /// Scores given tokens at answer positions of these sequences as they stand, in one forward
    /// pass of `model` over the sequences named: per entry (sequence, [(position, token)]), each
    /// token's statistics at its position (`sampling_log_prob` at the sampler's temperature,
    /// nats). At a masked position this is the model's prediction from what is revealed.
    pub async fn score_tokens<M: LanguageModel>(
        &self,
        model: &M,
        meter: &Meter<'_>,
        entries: &[(usize, Vec<(usize, u32)>)],
    ) -> Result<Vec<Vec<TokenStats>>> {
        let answer_len = self.options.gen_length;
        let mut live: Vec<usize> = Vec::new();
        let (mut index, mut picks) = (Vec::new(), Vec::new());
        for (b, tokens) in entries {
            if *b >= self.len() {
                return Err(Error::Sampling(format!(
                    "no sequence {b} in a batch of {}",
                    self.len()
                )));
            }
            let row = match live.iter().position(|l| l == b) {
                Some(row) => row,
                None => {
                    live.push(*b);
                    live.len() - 1
                }
            };
            for &(pos, token) in tokens {
                if pos >= answer_len {
                    return Err(Error::Sampling(format!(
                        "no answer position {pos} in answers of {answer_len}"
                    )));
                }
                index.push(row * answer_len + pos);
                picks.push(RowPick::Forced(token));
            }
        }
        if index.is_empty() {
            return Ok(entries.iter().map(|_| Vec::new()).collect());
        }
        let rows = self.forward(model, meter, &live).await?;
        let mut scored = rows
            .select(&index)?
            .take(&picks, &self.sampling())
            .await?
            .into_iter();
        Ok(entries
            .iter()
            .map(|(_, tokens)| {
                scored
                    .by_ref()
                    .take(tokens.len())
                    .map(|p| p.stats)
                    .collect()
            })
            .collect())
    }

    /// Replaces the statistics of answer `b`'s tokens at these positions (the tokens scored by
    /// another model, [`Denoising::score_tokens`]).
    pub fn set_revealed_stats(&mut self, b: usize, scored: &[(usize, TokenStats)]) -> Result<()> {
        let n = self.len();
        let Some(slots) = self.revealed_stats.get_mut(b) else {
            return Err(Error::Sampling(format!(
                "no sequence {b} in a batch of {n}"
            )));
        };
        let answer_len = slots.len();
        for &(pos, stats) in scored {
            let Some(slot) = slots.get_mut(pos) else {
                return Err(Error::Sampling(format!(
                    "no answer position {pos} in answers of {answer_len}"
                )));
            };
            *slot = stats;
        }
        Ok(())
    }

    /// Reveals `token` at answer position `pos` of sequence `b` (a masked position), as a
    /// search chooses it; its statistics are not read (they stay zero).
    pub fn reveal(&mut self, b: usize, pos: usize, token: u32) -> Result<()> {
        match self.answers.get_mut(b).and_then(|a| a.get_mut(pos)) {
            Some(slot) if *slot == self.mask => {
                *slot = token;
                Ok(())
            }
            Some(_) => Err(Error::Sampling(format!(
                "answer position {pos} of sequence {b} is already revealed"
            ))),
            None => Err(Error::Sampling(format!(
                "no answer position {pos} in sequence {b} of {}",
                self.len()
            ))),
        }
    }

    /// Takes denoising steps until `until` (capped at the schedule's end), each one forward
    /// pass over the answers not settled yet (none once all are).
    pub async fn run<M: LanguageModel>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        until: usize,
    ) -> Result<()> {
        let o = self.options.clone();
        let answer_len = o.gen_length;
        let rng = CounterRng { seed: o.seed };
        let steps_per_block = o.steps / (answer_len / o.block_length);
        let sampling = self.sampling();
        let until = until.min(o.steps);
        while self.step < until {
            // Settled answers are not run again: no later step can change their texts.
            let live: Vec<usize> = (0..self.len()).filter(|&b| !self.settled(b)).collect();
            if live.is_empty() {
                self.step = until;
                break;
            }
            let (block, step) = (self.step / steps_per_block, self.step % steps_per_block);
            let span = block * o.block_length..(block + 1) * o.block_length;
            // Each block starts fully masked, so a step's share depends on the step alone.
            let reveal = tokens_at_step(o.block_length, steps_per_block, step);
            // One proposal per masked position of the block; row r · answer_len + pos for the
            // r-th live answer.
            let (mut index, mut picks, mut owners) = (Vec::new(), Vec::new(), Vec::new());
            for (row, &b) in live.iter().enumerate() {
                for pos in span.clone().filter(|&p| self.answers[b][p] == self.mask) {
                    let counter = 2 * (self.step as u64 * answer_len as u64 + pos as u64);
                    index.push(row * answer_len + pos);
                    picks.push(RowPick::Draw(rng.uniform(self.streams[b], counter)));
                    owners.push((b, pos, counter));
                }
            }
            if index.is_empty() || reveal == 0 {
                self.step += 1;
                continue;
            }
            let rows = self.forward(model, meter, &live).await?;
            let proposals = rows.select(&index)?.take(&picks, &sampling).await?;
            for &b in &live {
                let mut mine: Vec<(f64, usize, u32, TokenStats)> = owners
                    .iter()
                    .zip(&proposals)
                    .filter(|((owner, _, _), _)| *owner == b)
                    .map(|(&(_, pos, counter), p)| {
                        let confidence = match o.remasking {
                            Remasking::LowConfidence => p.stats.log_prob.exp(),
                            Remasking::Random => rng.uniform(self.streams[b], counter + 1),
                        };
                        (confidence, pos, p.token, p.stats)
                    })
                    .collect();
                // Highest confidence first; ties go to the earlier position.
                mine.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(_, pos, token, stats) in mine.iter().take(reveal) {
                    self.answers[b][pos] = token;
                    self.revealed_stats[b][pos] = stats;
                }
            }
            self.step += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_share_the_tokens_evenly() {
        let per_step = |masked, steps| {
            (0..steps)
                .map(|step| tokens_at_step(masked, steps, step))
                .collect::<Vec<_>>()
        };
        assert_eq!(per_step(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(per_step(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(per_step(8, 8).iter().sum::<usize>(), 8);
    }
}
