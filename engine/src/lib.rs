//! ETS engine: runs Hugging Face language models on Burn (CPU via flex, GPU via wgpu) with a
//! batched, forkable KV cache and seeded sampling, and decodes with energy-guided test-time
//! scaling (ETS, ETS-IS) and its baselines behind one entry point, [`Model::solve`].

pub mod backend;
pub mod bench;
pub mod bundle;
pub mod decode;
pub mod error;
pub mod eval;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod remote;
pub mod reward;
pub mod rng;
pub mod sampling;
pub mod solve;
pub mod strategy;
pub mod task;
pub mod tokenize;
pub use ets_spec::trace;
#[cfg(feature = "train")]
pub mod train;

pub use backend::BackendKind;
pub use bundle::{LoadOptions, Model};
pub use decode::generate::{GenerateOptions, generate};
pub use error::{Error, Result};
pub use model::transformer::LogitsFor;
pub use sampling::SamplingParams;
