//! What an ETS run is asked and what it reports, as plain data: the strategy and its
//! parameters, sampling, the diffusion sampler's schedule, the reward and the answer
//! extraction, range-checked into a [`strategy::ValidSpec`]; and the [`trace`] a run emits. The
//! engine runs these; the UIs, share links and the host protocol carry them without linking the
//! engine (the browser page stays small).

pub mod answer;
pub mod bench;
pub mod diffusion;
pub mod error;
pub mod reward;
pub mod sampling;
pub mod strategy;
pub mod trace;

pub use error::{Result, SpecError};
