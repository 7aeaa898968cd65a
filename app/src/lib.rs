//! The ETS app: the Leptos UI (client-side rendered) and the engine host it talks to. In the
//! browser the host runs in a web worker ([`worker::EngineWorker`]) on WebGPU, or on the CPU
//! where WebGPU is missing; the UI never blocks on it.

pub mod host;
pub mod models;
pub mod protocol;
pub mod share;
pub mod ui;
pub mod worker;

pub use ui::App;
