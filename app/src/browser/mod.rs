//! What the page and the engine's web worker share in the browser: the model store in Cache
//! Storage ([`cache`]). The worker itself (the engine host on WebGPU or the CPU) is `ets-web`'s
//! `ets-engine-worker` binary; the page reaches it with JSON messages (`ui::engine`).

pub mod cache;
