//! The engine host: owns the device and the loaded models and answers the UI's requests
//! ([`protocol`]) by calling the engine. The same code runs in both homes; what differs is its
//! [`Platform`]: a web worker in the browser (the app crate's `browser` module), a thread of the
//! desktop app's process (`src-tauri`). No UI and no browser APIs live here.

mod host;
pub mod models;
pub mod protocol;

pub use host::{Host, Platform};
