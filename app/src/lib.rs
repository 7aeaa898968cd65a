//! The ETS app: the Leptos UI (client-side rendered), share links, and the browser platform of
//! the engine host (`ets-host`). In the browser the host runs in a web worker
//! ([`browser::worker::EngineWorker`]) on WebGPU, or on the CPU where WebGPU is missing; in the
//! desktop app it runs natively in the app's process and the UI reaches it through Tauri
//! commands and events. Either way the UI never blocks on it.

pub mod browser;
pub mod share;
pub mod ui;

pub use ui::App;
