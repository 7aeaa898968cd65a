//! Running sequences through a model: the KV cache, sampling, batched autoregressive generation
//! and the masked-diffusion sampler.

pub mod diffusion;
pub mod generate;
pub mod kv_cache;
pub mod sampling;
