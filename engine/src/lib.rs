//! ETS engine: runs Hugging Face language models on Burn (CPU via flex, GPU via wgpu)
//! with a batched KV cache, forking and seeded sampling — the ground energy-guided test-time
//! scaling stands on.

pub mod backend;
pub mod decode;
pub mod error;
pub mod eval;
pub mod model;
pub mod reward;
pub mod strategy;
pub mod task;
pub mod tokenize;
pub mod trace;
#[cfg(feature = "train")]
pub mod train;

pub use backend::BackendKind;
pub use decode::generate::{GenerateOptions, generate};
pub use decode::sampling::SamplingParams;
pub use error::{Error, Result};
pub use model::Model;
pub use model::transformer::LogitsFor;
