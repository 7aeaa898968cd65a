//! The engine host: owns the device and the loaded models and answers the UI's requests
//! (`ets-protocol`) by calling the engine. The same code runs in both homes; what differs is its
//! [`Platform`]: a web worker in the browser (`ets-web`'s worker), a thread of the desktop app's
//! process (`src-tauri`). No UI and no browser APIs live here.

mod host;
mod stop;

pub use host::{Host, Platform, shard_names};
pub use stop::{StopMark, StopSignal};
