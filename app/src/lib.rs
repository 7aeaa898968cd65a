//! The ETS app: the Leptos UI (client-side rendered), share links, and the browser's model
//! store. It links no engine: it speaks to the engine host (`ets-protocol`'s messages) in a web
//! worker in the browser (`ets-web`'s `ets-engine-worker`, on WebGPU or the CPU), or natively in
//! the desktop app's process through Tauri commands and events. Either way the UI never blocks
//! on it.

/// Unit tests record each case's largest allocation (the share-link fuzz campaign caps it).
#[cfg(test)]
#[global_allocator]
static ALLOC: ets_fuzz::CappedAlloc = ets_fuzz::CappedAlloc;

pub mod browser;
pub mod share;
pub mod ui;

pub use ui::App;
