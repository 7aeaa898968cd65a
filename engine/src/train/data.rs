//! Training batches built on the host from task problems: the tokens each sequence feeds the
//! model, and for every position of the padded logits a target id and a loss weight.
//!
//! A problem becomes a prompt (BOS and the question) and a response (a newline, the worked
//! solution, EOS); the loss covers the response only, so the models spend their capacity on
//! solving rather than on writing questions.

use crate::error::{Error, Result};
use crate::rng::CounterRng;
use crate::task::arith::Problem;
use crate::tokenize::TextTokenizer;
use crate::train::reward_data::Scored;

/// One problem as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// BOS followed by the question.
    pub prompt: Vec<u32>,
    /// A newline, the worked solution, then EOS.
    pub response: Vec<u32>,
}

/// The text a model writes after a question: a newline, then the worked solution.
pub fn response_text(solution: &str) -> String {
    format!("\n{solution}")
}

impl Example {
    /// Tokenizes `problem`; `eos` ends the response.
    pub fn new(tokenizer: &TextTokenizer, problem: &Problem, eos: u32) -> Result<Self> {
        let prompt = tokenizer.encode(&problem.question, true)?;
        let mut response = tokenizer.encode(&response_text(&problem.solution), false)?;
        response.push(eos);
        Ok(Self { prompt, response })
    }
}

/// A batch ready for the forward pass. `chunks` are left-padded to `seq` by the model, so
/// `targets` and `weights` ([batch·seq], row-major) are laid out the same way.
#[derive(Clone, Debug)]
pub struct Batch {
    pub chunks: Vec<Vec<u32>>,
    pub seq: usize,
    /// Target id per padded position (0 where the weight is 0).
    pub targets: Vec<i64>,
    /// Loss weight per padded position; the loss is Σ weight · (−log p(target)).
    pub weights: Vec<f32>,
    /// Positions that carry a loss.
    pub loss_tokens: usize,
    /// A reward model's label per padded position (1 right, 0 wrong; `weights` says which
    /// carry one); empty for language models.
    pub labels: Vec<f32>,
}

impl Batch {
    fn new(chunks: Vec<Vec<u32>>) -> Self {
        let seq = chunks.iter().map(Vec::len).max().unwrap_or(0);
        let n = chunks.len() * seq;
        Self {
            chunks,
            seq,
            targets: vec![0; n],
            weights: vec![0.0; n],
            loss_tokens: 0,
            labels: Vec::new(),
        }
    }

    /// Sets the loss at position `index` of sequence `b` (index within its unpadded chunk).
    fn set(&mut self, b: usize, index: usize, target: u32, weight: f32) {
        let pad = self.seq - self.chunks[b].len();
        let at = b * self.seq + pad + index;
        self.targets[at] = target as i64;
        self.weights[at] = weight;
        self.loss_tokens += 1;
    }

    /// Tokens the forward pass runs (padding excluded).
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

/// Next-token prediction: each sequence runs prompt + response minus its last token, and every
/// response token is a target. The loss is the mean over the batch's response tokens.
pub fn causal_batch(examples: &[Example]) -> Result<Batch> {
    if examples.is_empty() {
        return Err(Error::EmptyInput("no training examples"));
    }
    let chunks: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| {
            let mut ids = e.prompt.clone();
            ids.extend_from_slice(&e.response[..e.response.len().saturating_sub(1)]);
            ids
        })
        .collect();
    let mut batch = Batch::new(chunks);
    let total: usize = examples.iter().map(|e| e.response.len()).sum();
    let weight = 1.0 / total.max(1) as f32;
    for (b, e) in examples.iter().enumerate() {
        // The token at input index i predicts the full sequence's token i + 1.
        for (j, &target) in e.response.iter().enumerate() {
            batch.set(b, e.prompt.len() - 1 + j, target, weight);
        }
    }
    Ok(batch)
}

/// A reward model's batch: each sequence whole, its labelled positions weighted so that every
/// sequence counts equally (the loss is the mean over sequences of each one's mean).
pub fn reward_batch(scored: &[&Scored]) -> Result<Batch> {
    if scored.is_empty() {
        return Err(Error::EmptyInput("no training examples"));
    }
    let mut batch = Batch::new(scored.iter().map(|s| s.ids.clone()).collect());
    batch.labels = vec![0.0; batch.weights.len()];
    for (b, s) in scored.iter().enumerate() {
        let weight = 1.0 / (s.labels.len().max(1) * scored.len()) as f32;
        let pad = batch.seq - s.ids.len();
        for &(position, label) in &s.labels {
            let at = b * batch.seq + pad + position;
            batch.labels[at] = label;
            batch.weights[at] = weight;
            batch.loss_tokens += 1;
        }
    }
    Ok(batch)
}

/// Smallest masking rate, so no sample has t = 0 (LLaDA's ε).
const MIN_MASK_RATE: f64 = 1e-3;

/// LLaDA's supervised objective: each response is padded with EOS to `response_len`, a rate
/// t ~ U(ε, 1] is drawn per sequence, each response token is replaced by `mask_id` with
/// probability t, and the loss is Σ over masked tokens of −log p / t, divided by
/// `response_len` and the batch size (an upper bound on the negative log-likelihood).
/// Draws come from `rng` on `stream` (one stream per step).
///
/// With `block_len` > 0 the masks follow the semi-autoregressive sampler's view instead
/// (block diffusion, as BD3-LM trains): the response is cut into blocks of `block_len`, one
/// block k is drawn per sequence, blocks before it are clean, block k is masked at rate t, and
/// every later block is all masks without a loss; the loss is then divided by `block_len`.
pub fn masked_diffusion_batch(
    examples: &[Example],
    response_len: usize,
    block_len: usize,
    mask_id: u32,
    eos: u32,
    rng: CounterRng,
    stream: u64,
) -> Result<Batch> {
    if examples.is_empty() {
        return Err(Error::EmptyInput("no training examples"));
    }
    if let Some(long) = examples.iter().find(|e| e.response.len() > response_len) {
        return Err(Error::Train(format!(
            "a response of {} tokens is longer than the response length {response_len}; raise it",
            long.response.len()
        )));
    }
    let mut counter = 0u64;
    let mut draw = || {
        counter += 1;
        rng.uniform(stream, counter)
    };
    let block_len = match block_len {
        0 => response_len,
        len if len <= response_len && response_len.is_multiple_of(len) => len,
        len => {
            return Err(Error::Train(format!(
                "the mask block length {len} must divide the response length {response_len}"
            )));
        }
    };
    let blocks = response_len / block_len;
    let mut plans = Vec::with_capacity(examples.len());
    let mut chunks = Vec::with_capacity(examples.len());
    for e in examples {
        let rate = MIN_MASK_RATE + (1.0 - MIN_MASK_RATE) * (1.0 - draw());
        let block = match blocks {
            1 => 0,
            _ => ((draw() * blocks as f64) as usize).min(blocks - 1),
        };
        let mut ids = e.prompt.clone();
        let mut masked = Vec::new();
        for j in 0..response_len {
            let token = e.response.get(j).copied().unwrap_or(eos);
            match (j / block_len).cmp(&block) {
                std::cmp::Ordering::Less => ids.push(token),
                std::cmp::Ordering::Greater => ids.push(mask_id),
                std::cmp::Ordering::Equal if draw() < rate => {
                    masked.push((ids.len(), token));
                    ids.push(mask_id);
                }
                std::cmp::Ordering::Equal => ids.push(token),
            }
        }
        plans.push((rate, masked));
        chunks.push(ids);
    }
    let mut batch = Batch::new(chunks);
    let scale = 1.0 / (block_len * examples.len()) as f64;
    for (b, (rate, masked)) in plans.into_iter().enumerate() {
        for (index, token) in masked {
            batch.set(b, index, token, (scale / rate) as f32);
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(prompt: &[u32], response: &[u32]) -> Example {
        Example {
            prompt: prompt.to_vec(),
            response: response.to_vec(),
        }
    }

    #[test]
    fn causal_targets_are_the_next_response_tokens() {
        let batch =
            causal_batch(&[example(&[1, 10, 11], &[20, 2]), example(&[1, 10], &[2])]).unwrap();
        assert_eq!(batch.chunks, vec![vec![1, 10, 11, 20], vec![1, 10]]);
        assert_eq!(batch.seq, 4);
        // Row 0: positions 2 (after 11) → 20 and 3 (after 20) → EOS. Row 1 is left-padded by 2:
        // its position 1 (after 10) sits at padded index 3 and predicts EOS.
        assert_eq!(batch.targets, vec![0, 0, 20, 2, 0, 0, 0, 2]);
        let w = 1.0 / 3.0;
        assert_eq!(batch.weights, vec![0.0, 0.0, w, w, 0.0, 0.0, 0.0, w]);
        assert_eq!((batch.loss_tokens, batch.tokens()), (3, 6));
    }

    #[test]
    fn masked_diffusion_masks_only_the_padded_response() {
        let rng = CounterRng { seed: 3 };
        let examples = [example(&[1, 10, 11], &[20, 21, 2]), example(&[1], &[2])];
        let batch = masked_diffusion_batch(&examples, 5, 0, 3, 2, rng, 0).unwrap();
        assert_eq!(batch.chunks[0].len(), 8);
        assert_eq!(batch.chunks[1].len(), 6);
        assert_eq!(&batch.chunks[0][..3], &[1, 10, 11]);
        assert_eq!(batch.chunks[1][0], 1);
        for (b, e) in examples.iter().enumerate() {
            let chunk = &batch.chunks[b];
            let pad = batch.seq - chunk.len();
            for (j, &id) in chunk.iter().enumerate().skip(e.prompt.len()) {
                let truth = e.response.get(j - e.prompt.len()).copied().unwrap_or(2);
                let at = b * batch.seq + pad + j;
                if id == 3 {
                    assert_eq!(batch.targets[at], truth as i64);
                    assert!(batch.weights[at] > 0.0);
                } else {
                    assert_eq!(id, truth);
                    assert_eq!(batch.weights[at], 0.0);
                }
            }
        }
        // Same draws, same batch.
        let again = masked_diffusion_batch(&examples, 5, 0, 3, 2, rng, 0).unwrap();
        assert_eq!(again.chunks, batch.chunks);
        assert!(masked_diffusion_batch(&examples, 2, 0, 3, 2, rng, 0).is_err());
    }

    #[test]
    fn masked_diffusion_weights_average_to_the_token_count() {
        // E[Σ mask/t] over t and the masks is response_len per sequence, so the mean weight sum
        // over many batches is close to 1.
        let examples = vec![example(&[1], &[20, 21, 22, 2]); 4];
        let rng = CounterRng { seed: 9 };
        for block_len in [0, 2, 3] {
            let mean: f64 = (0..2000)
                .map(|s| {
                    let b = masked_diffusion_batch(&examples, 6, block_len, 3, 2, rng, s).unwrap();
                    b.weights.iter().map(|&w| w as f64).sum::<f64>()
                })
                .sum::<f64>()
                / 2000.0;
            assert!((mean - 1.0).abs() < 0.1, "blocks of {block_len}: {mean}");
        }
    }

    #[test]
    fn block_masks_are_what_the_semi_autoregressive_sampler_sees() {
        let examples = vec![example(&[1, 10], &[20, 21, 22, 23, 2]); 8];
        let rng = CounterRng { seed: 4 };
        let mut blocks_seen = [false; 3];
        for step in 0..20 {
            let batch = masked_diffusion_batch(&examples, 6, 2, 3, 2, rng, step).unwrap();
            for (b, chunk) in batch.chunks.iter().enumerate() {
                let response = &chunk[2..];
                let weights = &batch.weights[b * batch.seq + 2..(b + 1) * batch.seq];
                // The block being denoised: the one whose masks carry a loss.
                let Some(first) = weights.iter().position(|&w| w > 0.0) else {
                    continue; // block k drew no mask at this rate
                };
                let block = first / 2;
                blocks_seen[block] = true;
                for (j, &id) in response.iter().enumerate() {
                    let truth = examples[b].response.get(j).copied().unwrap_or(2);
                    let weight = weights[j];
                    match (j / 2).cmp(&block) {
                        std::cmp::Ordering::Less => assert_eq!(id, truth),
                        std::cmp::Ordering::Greater => assert_eq!((id, weight), (3, 0.0)),
                        std::cmp::Ordering::Equal => assert_eq!(id == 3, weight > 0.0),
                    }
                }
            }
        }
        assert_eq!(blocks_seen, [true; 3]);
        let err = masked_diffusion_batch(&examples, 6, 4, 3, 2, rng, 0).unwrap_err();
        assert!(err.to_string().contains("divide"), "{err}");
    }
}
