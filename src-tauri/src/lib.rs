//! The desktop app's engine side, apart from its window: the engine thread ([`engine`]) and the
//! model store on disk ([`storage`]). `main.rs` puts them in a Tauri window; integration tests
//! (`tests/`) drive them without one.

pub mod engine;
pub mod storage;
