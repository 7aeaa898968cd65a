// Starts the page: the service worker (offline after the first visit; not in the desktop app,
// which has everything on disk), then the page's wasm (scripts/web.sh builds ets-web.js and
// ets-web_bg.wasm, wasm-bindgen's `web` target). A file of its own, not inline: the page's
// Content-Security-Policy allows no inline script.
import init from "./ets-web.js";

if ("serviceWorker" in navigator && !window.__TAURI_INTERNALS__) {
  navigator.serviceWorker.register("./sw.js").catch((e) => console.warn("no service worker:", e));
}
await init({ module_or_path: "./ets-web_bg.wasm" });
