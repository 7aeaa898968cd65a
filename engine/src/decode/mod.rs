//! Running sequences through a model: logits rows kept where the model computed them and
//! sampled there ([`crate::sampling`] on the host, [`crate::kernels::sampling`] on a device),
//! forkable batches of sequences, batched autoregressive generation and the masked-diffusion
//! sampler.

pub mod device_sampling;
pub mod diffusion;
pub mod generate;
pub mod lm;
pub mod logits;
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
