// The engine's web worker (app/src/ui/engine.rs starts it): wasm-bindgen's `no-modules` glue,
// then the worker's wasm, whose main() registers the worker.
importScripts("./ets-engine-worker.js");
wasm_bindgen("./ets-engine-worker_bg.wasm");
