//! Batched autoregressive generation: prefill every prompt in one batch, then decode one token
//! per step for the sequences still running.

use crate::decode::check_prompts;
use crate::decode::lm::{LanguageModel, Meter};
use crate::decode::sequences::{Drawing, Sequences};
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::rng::CounterRng;
use crate::sampling::SamplingParams;

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
pub async fn generate<M: LanguageModel>(
    model: &M,
    prompts: &[Vec<u32>],
    streams: &[u64],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    options.sampling.validate()?;
    if model.objective() != Objective::Causal {
        return Err(Error::Sampling(
            "a masked diffusion model generates with the diffusion sampler, not token by token"
                .into(),
        ));
    }
    check_prompts(prompts, streams)?;
    if options.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let meter = Meter::default();
    let mut sequences = Sequences::start(model, &meter, &chunks, streams.to_vec()).await?;
    let drawing = Drawing {
        sampling: &options.sampling,
        stop_ids: &options.stop_ids,
        rng: CounterRng { seed: options.seed },
        drafts: None,
    };
    sequences
        .extend(model, &meter, options.max_new_tokens, None, drawing)
        .await?;
    Ok(sequences.tokens)
}
