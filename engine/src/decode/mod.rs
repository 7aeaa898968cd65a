//! Running sequences through a model: the KV cache, sampling, and batched generation.

pub mod generate;
pub mod kv_cache;
pub mod sampling;
