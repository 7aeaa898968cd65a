//! Running sequences through a model: the KV cache, logits rows and sampling (on the host as
//! the reference, on the device for the transformer), batched autoregressive generation and
//! the masked-diffusion sampler.

pub mod device_sampling;
pub mod diffusion;
pub mod generate;
pub mod kv_cache;
pub mod lm;
pub mod logits;
pub mod sampling;
mod sampling_kernel;
pub mod sequences;

use crate::error::{Error, Result};

/// A batch to decode needs prompts, and one random stream per prompt.
pub(crate) fn check_prompts<P: AsRef<[u32]>>(prompts: &[P], streams: &[u64]) -> Result<()> {
    if prompts.is_empty() {
        return Err(Error::EmptyInput("no prompts"));
    }
    if streams.len() != prompts.len() {
        return Err(Error::Sampling(format!(
            "{} random streams for {} prompts",
            streams.len(),
            prompts.len()
        )));
    }
    Ok(())
}
