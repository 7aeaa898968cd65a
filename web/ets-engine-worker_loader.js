// The engine's web worker (app/src/ui/engine.rs starts it): wasm-bindgen's `no-modules` glue,
// then the worker's wasm, whose main() sets the message handler (web/src/worker/main.rs).
// Messages the page sends while the wasm loads wait here and go to that handler in order; a
// wasm that does not start is reported to the page as the engine's failure. The wasm's memory
// is kept as `self.etsWasmMemory` (its size is the engine's heap; the tests read it).
const waiting = [];
self.onmessage = (event) => waiting.push(event);
importScripts("./ets-engine-worker.js");
wasm_bindgen("./ets-engine-worker_bg.wasm").then(
  (wasm) => {
    self.etsWasmMemory = wasm.memory;
    for (const event of waiting) self.onmessage(event);
  },
  (e) => self.postMessage(JSON.stringify({ Failed: { run: null, message: `the engine did not start: ${e}` } })),
);
