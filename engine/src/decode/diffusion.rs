//! LLaDA's sampler for masked diffusion LMs: the answer starts as `gen_length` mask tokens and
//! is revealed block by block, left to right (semi-autoregressive). At each step the model
//! predicts every masked position at once; a Gumbel-max draw at `temperature` proposes a token
//! for each, and the proposals the model is most confident of (low-confidence remasking: the
//! rest stay masked) or a random subset are kept, so that each block is fully revealed after
//! its share of the steps.

use serde::{Deserialize, Serialize};

use crate::backend::read_f32;
use crate::decode::check_prompts;
use crate::decode::sampling::CounterRng;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::transformer::{LogitsFor, Transformer};

/// Which proposals a step keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remasking {
    /// The ones with the highest model probability (LLaDA's default).
    LowConfidence,
    /// A uniformly random subset.
    Random,
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
pub fn generate_diffusion(
    model: &Transformer,
    prompts: &[Vec<u32>],
    streams: &[u64],
    options: &DiffusionOptions,
) -> Result<Vec<Vec<u32>>> {
    options.validate()?;
    let Objective::MaskedDiffusion {
        mask_token_id: mask,
    } = model.config().objective
    else {
        return Err(Error::Sampling(
            "the diffusion sampler needs a masked diffusion model (this one is causal)".into(),
        ));
    };
    check_prompts(prompts, streams)?;
    let (answer_len, vocab) = (options.gen_length, model.config().vocab_size);
    let rng = CounterRng { seed: options.seed };
    let mut answers = vec![vec![mask; answer_len]; prompts.len()];
    let blocks = answer_len / options.block_length;
    let steps_per_block = options.steps / blocks;
    let mut step_index = 0u64;
    for block in 0..blocks {
        let span = block * options.block_length..(block + 1) * options.block_length;
        let masked_at_start: Vec<usize> = answers
            .iter()
            .map(|a| a[span.clone()].iter().filter(|&&t| t == mask).count())
            .collect();
        for step in 0..steps_per_block {
            let sequences: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&answers)
                .map(|(p, a)| p.iter().chain(a).copied().collect())
                .collect();
            let chunks: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
            let mut cache = model.new_cache(chunks.len());
            // Left padding aligns every answer at the end of the chunk.
            let logits = model.forward(&chunks, &mut cache, LogitsFor::Tail(answer_len))?;
            let rows = read_f32(logits)?;
            for (b, answer) in answers.iter_mut().enumerate() {
                let mut proposals: Vec<(f64, usize, u32)> = Vec::new();
                for pos in span.clone().filter(|&p| answer[p] == mask) {
                    let row =
                        &rows[(b * answer_len + pos) * vocab..(b * answer_len + pos + 1) * vocab];
                    let counter =
                        (step_index * answer_len as u64 + pos as u64) * (vocab as u64 + 1);
                    let draw = |k: u64| rng.uniform(streams[b], counter + k);
                    let token = gumbel_max(row, options.temperature, |k| draw(k as u64));
                    let confidence = match options.remasking {
                        Remasking::LowConfidence => probability(row, token),
                        Remasking::Random => draw(vocab as u64),
                    };
                    proposals.push((confidence, pos, token));
                }
                // Highest confidence first; ties go to the earlier position.
                proposals.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let reveal = tokens_at_step(masked_at_start[b], steps_per_block, step);
                for &(_, pos, token) in proposals.iter().take(reveal) {
                    answer[pos] = token;
                }
            }
            step_index += 1;
        }
    }
    Ok(answers)
}

/// argmax over tokens of logit + temperature · Gumbel noise (Gumbel-max: a draw from
/// softmax(logits / temperature)); `uniform(k)` is the k-th uniform draw for this position.
fn gumbel_max(logits: &[f32], temperature: f64, uniform: impl Fn(usize) -> f64) -> u32 {
    let mut best = (f64::NEG_INFINITY, 0u32);
    for (k, &l) in logits.iter().enumerate() {
        let score = if temperature == 0.0 {
            l as f64
        } else {
            // u in (0, 1): g = −ln(−ln u).
            let u = uniform(k).max(f64::MIN_POSITIVE);
            l as f64 - temperature * (-u.ln()).ln()
        };
        if score > best.0 {
            best = (score, k as u32);
        }
    }
    best.1
}

/// softmax(logits)[token].
fn probability(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max).exp() / total
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
    fn gumbel_max_follows_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        assert_eq!(gumbel_max(&logits, 0.0, |_| 0.5), 2);
        let rng = CounterRng { seed: 1 };
        let n = 30_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            counts[gumbel_max(&logits, 1.0, |k| rng.uniform(i, k as u64)) as usize] += 1;
        }
        for (token, &count) in counts.iter().enumerate() {
            let expected = probability(&logits, token as u32);
            let observed = count as f64 / n as f64;
            assert!(
                (observed - expected).abs() < 0.01,
                "{token}: {observed} vs {expected}"
            );
        }
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
