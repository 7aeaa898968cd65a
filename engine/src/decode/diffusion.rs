//! LLaDA's sampler for masked diffusion LMs: the answer starts as `gen_length` mask tokens and
//! is revealed block by block, left to right (semi-autoregressive). At each step the model
//! predicts every masked position at once; a draw at `temperature` (on the device, the same
//! sampler as autoregressive decoding) proposes a token for each, and the proposals the model is most confident of (low-confidence remasking: the
//! rest stay masked) or a random subset are kept, so that each block is fully revealed after
//! its share of the steps.

use serde::{Deserialize, Serialize};

use crate::decode::check_prompts;
use crate::decode::lm::{LanguageModel, Meter, metered_forward};
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::transformer::LogitsFor;
use crate::rng::CounterRng;
use crate::sampling::{RowPick, SamplingParams, TokenStats};

/// Which proposals a step keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remasking {
    /// The ones with the highest model probability (LLaDA's default).
    LowConfidence,
    /// A uniformly random subset.
    Random,
}

impl Remasking {
    /// Its name, as [`Remasking::from_str`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LowConfidence => "low-confidence",
            Self::Random => "random",
        }
    }
}

impl std::str::FromStr for Remasking {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "low-confidence" => Ok(Self::LowConfidence),
            "random" => Ok(Self::Random),
            other => Err(Error::Sampling(format!(
                "unknown remasking {other:?}; use low-confidence or random"
            ))),
        }
    }
}

/// The sampler's schedule (LLaDA's names): how long the answer is and how it is revealed. A run
/// spec holds this; its temperature and seed come from the run ([`DiffusionSchedule::options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffusionSchedule {
    /// Answer length in tokens (the model pads short answers with EOS).
    pub gen_length: usize,
    /// Tokens per semi-autoregressive block; divides `gen_length`.
    pub block_length: usize,
    /// Denoising steps in all; a multiple of the number of blocks.
    pub steps: usize,
    pub remasking: Remasking,
}

impl Default for DiffusionSchedule {
    /// 64 tokens in two blocks of 32, one token per step, low-confidence remasking.
    fn default() -> Self {
        Self {
            gen_length: 64,
            block_length: 32,
            steps: 64,
            remasking: Remasking::LowConfidence,
        }
    }
}

impl DiffusionSchedule {
    /// The sampler's settings: this schedule at `temperature` (the Gumbel noise scale) with
    /// draws seeded by `seed`.
    pub fn options(&self, temperature: f64, seed: u64) -> DiffusionOptions {
        DiffusionOptions {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps,
            temperature,
            remasking: self.remasking,
            seed,
        }
    }
}

/// The sampler's settings (LLaDA's names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionOptions {
    /// Answer length in tokens (the model pads short answers with EOS).
    pub gen_length: usize,
    /// Tokens per semi-autoregressive block; divides `gen_length`.
    pub block_length: usize,
    /// Denoising steps in all; a multiple of the number of blocks.
    pub steps: usize,
    /// Gumbel noise scale: 0 takes the most likely token.
    pub temperature: f64,
    pub remasking: Remasking,
    /// Seed of the counter-based generator.
    pub seed: u64,
}

impl DiffusionOptions {
    /// Checks that blocks tile the answer and steps split evenly over the blocks.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Sampling(m));
        if self.gen_length == 0 || self.block_length == 0 || self.steps == 0 {
            return fail("gen length, block length and steps must be positive".into());
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return fail(format!(
                "block length {} must divide gen length {}",
                self.block_length, self.gen_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if !self.steps.is_multiple_of(blocks) {
            return fail(format!(
                "steps ({}) must be a multiple of the number of blocks ({blocks})",
                self.steps
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return fail(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// How many tokens step `step` of `steps` reveals out of `masked`: as even as possible, the
/// first steps taking the remainder (as LLaDA does).
fn tokens_at_step(masked: usize, steps: usize, step: usize) -> usize {
    masked / steps + usize::from(step < masked % steps)
}

/// Generates an answer of `options.gen_length` tokens after each prompt with a masked
/// diffusion `model`; sequence i draws from stream `streams[i]`. Returns the answer tokens
/// (EOS and whatever follows it included: the caller cuts at the first stop id).
pub async fn generate_diffusion<M: LanguageModel>(
    model: &M,
    prompts: &[Vec<u32>],
    streams: &[u64],
    options: &DiffusionOptions,
) -> Result<Vec<Vec<u32>>> {
    check_prompts(prompts, streams)?;
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut batch = Denoising::start(model, &prompts, streams.to_vec(), options)?;
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
    /// Per sequence: statistics of the revealed tokens, each read when it was revealed.
    pub stats: Vec<TokenStats>,
    streams: Vec<u64>,
    /// Denoising steps taken.
    pub step: usize,
    options: DiffusionOptions,
    mask: u32,
}

impl<'p> Denoising<'p> {
    /// Fully masked answers after `prompts`; sequence i draws from `streams[i]`.
    pub fn start<M: LanguageModel>(
        model: &M,
        prompts: &[&'p [u32]],
        streams: Vec<u64>,
        options: &DiffusionOptions,
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
            stats: vec![TokenStats::default(); n],
            streams,
            step: 0,
            options: options.clone(),
            mask,
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

    /// Sequences continuing these: new sequence j is a copy of `picks[j].0` that draws from
    /// stream `picks[j].1` from now on (its statistics start empty).
    pub fn fork(&self, picks: &[(usize, u64)]) -> Self {
        Self {
            prompts: picks.iter().map(|&(s, _)| self.prompts[s]).collect(),
            answers: picks
                .iter()
                .map(|&(s, _)| self.answers[s].clone())
                .collect(),
            stats: vec![TokenStats::default(); picks.len()],
            streams: picks.iter().map(|&(_, stream)| stream).collect(),
            step: self.step,
            options: self.options.clone(),
            mask: self.mask,
        }
    }

    /// Takes denoising steps until `until` (capped at the schedule's end), each one forward
    /// pass over the whole batch.
    pub async fn run<M: LanguageModel>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        until: usize,
    ) -> Result<()> {
        let o = &self.options;
        let answer_len = o.gen_length;
        let rng = CounterRng { seed: o.seed };
        let steps_per_block = o.steps / (answer_len / o.block_length);
        let sampling = SamplingParams {
            temperature: o.temperature as f32,
            ..SamplingParams::default()
        };
        while self.step < until.min(o.steps) {
            let (block, step) = (self.step / steps_per_block, self.step % steps_per_block);
            let span = block * o.block_length..(block + 1) * o.block_length;
            let sequences: Vec<Vec<u32>> = self
                .prompts
                .iter()
                .zip(&self.answers)
                .map(|(p, a)| p.iter().chain(a).copied().collect())
                .collect();
            let chunks: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
            let mut cache = model.new_cache(chunks.len());
            // Left padding aligns every answer at the end of the chunk.
            let rows = metered_forward(
                model,
                meter,
                &chunks,
                &mut cache,
                LogitsFor::Tail(answer_len),
            )
            .await?;
            // Each block starts fully masked, so a step's share depends on the step alone.
            let reveal = tokens_at_step(o.block_length, steps_per_block, step);
            // One proposal per masked position of the block; row b · answer_len + pos.
            let (mut index, mut picks, mut owners) = (Vec::new(), Vec::new(), Vec::new());
            for (b, answer) in self.answers.iter().enumerate() {
                for pos in span.clone().filter(|&p| answer[p] == self.mask) {
                    let counter = 2 * (self.step as u64 * answer_len as u64 + pos as u64);
                    index.push(b * answer_len + pos);
                    picks.push(RowPick::Draw(rng.uniform(self.streams[b], counter)));
                    owners.push((b, pos, counter));
                }
            }
            if index.is_empty() {
                self.step += 1;
                continue;
            }
            let proposals = rows.select(&index)?.take(&picks, &sampling).await?;
            for (b, answer) in self.answers.iter_mut().enumerate() {
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
                    answer[pos] = token;
                    self.stats[b] = self.stats[b].plus(stats);
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

    #[test]
    fn options_must_tile() {
        let ok = DiffusionOptions {
            gen_length: 64,
            block_length: 16,
            steps: 32,
            temperature: 0.0,
            remasking: Remasking::LowConfidence,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            DiffusionOptions {
                block_length: 24,
                ..ok.clone()
            },
            DiffusionOptions {
                steps: 30,
                ..ok.clone()
            },
            DiffusionOptions {
                temperature: -1.0,
                ..ok.clone()
            },
            DiffusionOptions {
                gen_length: 0,
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Sampling(_))), "{bad:?}");
        }
    }
}
