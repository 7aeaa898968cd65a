// The service worker: the app and the bundled models work offline after the first visit.
// Its cache holds the app's files (stable names, as scripts/web.sh writes them); it serves
// them from the cache and refreshes them in the background when the network answers.
const CACHE = "ets-app-v2";
const APP_FILES = [
  "./",
  "./index.html",
  "./boot.js",
  "./style.css",
  "./ets-web.js",
  "./ets-web_bg.wasm",
  "./ets-engine-worker.js",
  "./ets-engine-worker_bg.wasm",
  "./ets-engine-worker_loader.js",
];
const MODEL_FILES = ["config.json", "generation_config.json", "tokenizer.json", "model.safetensors"];
const BUNDLED = ["ref-ar", "ref-ar-draft", "ref-dlm", "ref-dlm-draft", "ref-judge"];

self.addEventListener("install", (event) => {
  const files = APP_FILES.concat(BUNDLED.flatMap((m) => MODEL_FILES.map((f) => `./models/${m}/${f}`)));
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(files)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("ets-app-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => {
      const hit = await cache.match(request, { ignoreSearch: true });
      const refresh = fetch(request)
        .then((response) => {
          if (response.ok) cache.put(request, response.clone());
          return response;
        })
        .catch(() => undefined);
      if (hit) {
        event.waitUntil(refresh);
        return hit;
      }
      const response = await refresh;
      if (response) return response;
      // Offline: the bundled models were cached whole, so a model file not in the cache does
      // not exist (the loader skips optional files that answer 404).
      const missing = url.pathname.includes("/models/");
      return new Response("offline, and not cached", { status: missing ? 404 : 503 });
    }),
  );
});
