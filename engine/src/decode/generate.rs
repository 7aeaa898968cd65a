//! Batched autoregressive generation: prefill every prompt in one batch, then decode one token
//! per step for the sequences still running, sampling on the host from each last-position row.

use crate::backend::read_f32;
use crate::decode::check_prompts;
use crate::decode::sampling::{CounterRng, SamplingParams};
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::transformer::{LogitsFor, Transformer};

/// How to continue a batch of prompts.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// At most this many new tokens per sequence.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Seed of the counter-based generator.
    pub seed: u64,
    /// A sequence stops after emitting one of these (it is kept in the output).
    pub stop_ids: Vec<u32>,
}

/// Generates a continuation of each prompt, until a stop id, `max_new_tokens` or the end of the
/// model's context; sequence i draws from random stream `streams[i]`
/// (so its tokens do not depend on the rest of the batch). Returns the new ids only.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    streams: &[u64],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    options.sampling.validate()?;
    if model.config().objective != Objective::Causal {
        return Err(Error::Sampling(
            "a masked diffusion model generates with the diffusion sampler, not token by token"
                .into(),
        ));
    }
    check_prompts(prompts, streams)?;
    let rng = CounterRng { seed: options.seed };
    let vocab = model.config().vocab_size;
    let mut outputs = vec![Vec::new(); prompts.len()];
    if options.max_new_tokens == 0 {
        return Ok(outputs);
    }
    // `running[i]` is the prompt index of the cache's row i.
    let mut running: Vec<usize> = (0..prompts.len()).collect();
    let mut cache = model.new_cache(prompts.len());
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut logits = model.forward(&chunks, &mut cache, LogitsFor::Last)?;
    loop {
        let rows = read_f32(logits)?;
        let mut next = Vec::with_capacity(running.len());
        let mut keep = Vec::with_capacity(running.len());
        for (row, &seq) in running.iter().enumerate() {
            let out = &mut outputs[seq];
            let u = rng.uniform(streams[seq], out.len() as u64);
            let token = options
                .sampling
                .pick(&rows[row * vocab..(row + 1) * vocab], u);
            out.push(token);
            // A sequence also stops when the model's context is full.
            let room = cache.position(row) < model.config().max_position_embeddings;
            if room && out.len() < options.max_new_tokens && !options.stop_ids.contains(&token) {
                keep.push(row);
                next.push(token);
            }
        }
        if keep.is_empty() {
            return Ok(outputs);
        }
        if keep.len() < running.len() {
            cache = cache.select(&keep)?;
            running = keep.iter().map(|&r| running[r]).collect();
        }
        let chunks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let chunks: Vec<&[u32]> = chunks.iter().map(|c| c.as_slice()).collect();
        logits = model.forward(&chunks, &mut cache, LogitsFor::Last)?;
    }
}
