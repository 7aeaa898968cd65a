// Our engine against wllama (llama.cpp compiled to wasm, npm @wllama/wllama, its single-thread
// build, run offline from node_modules) on the same GGUF file in the same headless Chromium,
// both on the CPU in WebAssembly:
// - prefill and decode tokens/s at batch 1 (a 64-token prompt, 64 sampled tokens);
// - time to first token (the prompt's prefill and the first token drawn);
// - one ETS step's work: M = 8 candidate blocks of 16 tokens, then K = 3 rollouts of 48 more
//   tokens from each (24 rollouts). Ours: the real ETS chain's first guidance step, batched
//   (the engine worker's `Bench` request, the same code as `ets bench`); wllama: one request
//   after another (it decodes one sequence at a time), each reusing the cached prompt and block.
// Ours gets synthetic prompt token ids, wllama English words of the same token count (its
// completions take text); medians of --repeats runs after a warm-up.
//
//   scripts/web.sh build && (cd bench/browser && npm ci) && node bench/browser/run.mjs [MODEL.gguf]
//
// MODEL defaults to scripts/fetch-model.sh's file (SmolLM2-135M-Instruct Q4_1). Prints each
// engine's figures as a JSON line, then a table with the ratios. `--engines ours` (or
// `wllama`) runs one of them; `--dist DIR` measures another build of the site.
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, symlink, writeFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";
import { serve } from "../../tests/e2e/serve.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    repeats: { type: "string", default: "3" },
    "prompt-len": { type: "string", default: "64" },
    "decode-steps": { type: "string", default: "64" },
    "ets-m": { type: "string", default: "8" },
    "ets-k": { type: "string", default: "3" },
    "ets-block": { type: "string", default: "16" },
    "ets-rollout": { type: "string", default: "48" },
    dist: { type: "string", default: join(repo, "web", "dist") },
    engines: { type: "string", default: "ours,wllama" },
  },
});
const settings = {
  batch: [1],
  prompt_len: Number(opts["prompt-len"]),
  decode_steps: Number(opts["decode-steps"]),
  repeats: Number(opts.repeats),
  ets_m: Number(opts["ets-m"]),
  ets_k: Number(opts["ets-k"]),
  ets_block: Number(opts["ets-block"]),
  ets_rollout: Number(opts["ets-rollout"]),
};
const engines = new Set(opts.engines.split(","));
const model = resolve(
  positionals[0] ?? execFileSync(join(repo, "scripts", "fetch-model.sh"), { encoding: "utf8" }).trim(),
);
const wllamaEsm = join(here, "node_modules", "@wllama", "wllama", "esm");
for (const [what, path] of [["the site (scripts/web.sh build)", join(opts.dist, "index.html")], ["wllama (cd bench/browser && npm ci)", wllamaEsm], ["the model", model]]) {
  if (!(await stat(path).catch(() => null))) {
    console.error(`error: ${what} is missing: ${path}`);
    process.exit(2);
  }
}

// One origin serves our site, wllama's files, the model and a blank page to run both from.
const root = await mkdtemp(join(tmpdir(), "ets-bench-browser-"));
await symlink(resolve(opts.dist), join(root, "site"));
await symlink(wllamaEsm, join(root, "wllama"));
await symlink(dirname(model), join(root, "model"));
await writeFile(join(root, "bench.html"), "<!doctype html><title>bench</title>\n");
const site = await serve(root);
const modelUrl = `${site.url}model/${basename(model)}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-webgpu", "--no-first-run", "--disable-background-networking"],
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = {};
try {
  // Ours: the engine's web worker, spoken to in its own JSON protocol.
  if (engines.has("ours")) {
    const page = await browser.newPage();
    page.on("console", (m) => m.type() === "error" && console.error(`[ours] ${m.text()}`));
    await page.goto(`${site.url}bench.html`);
    results.ours = await page.evaluate(
      async ({ modelUrl, settings }) => {
        const worker = new Worker("/site/ets-engine-worker_loader.js");
        const waiting = [];
        worker.onmessage = (event) => {
          const response = JSON.parse(event.data);
          const i = waiting.findIndex((w) => w.accepts(response));
          if (i >= 0) waiting.splice(i, 1)[0].done(response);
        };
        const ask = (request, kind) =>
          new Promise((done, fail) => {
            waiting.push({
              accepts: (r) => kind in r || "Failed" in r,
              done: (r) => ("Failed" in r ? fail(new Error(r.Failed.message)) : done(r[kind])),
            });
            worker.postMessage(JSON.stringify(request));
          });
        const slash = modelUrl.lastIndexOf("/");
        const source = { Url: { base: modelUrl.slice(0, slash), file: modelUrl.slice(slash + 1) } };
        await ask({ Init: { prefer_gpu: false } }, "Ready");
        let started = performance.now();
        const info = await ask({ Load: { id: "bench", source } }, "Loaded");
        const load_ms = performance.now() - started;
        const { figures } = await ask({ Bench: { model: "bench", settings } }, "Bench");
        const d = figures.decode[0];
        worker.terminate();
        return {
          engine: "ets (worker, CPU wasm)",
          parameters: info.parameters,
          load_ms,
          prefill_tokens_per_s: d.prefill_tokens_per_s,
          decode_tokens_per_s: d.decode_tokens_per_s,
          first_token_ms: (1000 * settings.prompt_len) / d.prefill_tokens_per_s,
          ets_step_s: figures.ets_step?.step_s ?? null,
          sample_s: figures.ets_step?.sample_s ?? null,
        };
      },
      { modelUrl, settings },
    );
    console.log(JSON.stringify(results.ours));
    await page.close();
  }

  // wllama, single thread, CPU only.
  if (engines.has("wllama")) {
    const page = await browser.newPage();
    page.on("console", (m) => m.type() === "error" && console.error(`[wllama] ${m.text()}`));
    await page.goto(`${site.url}bench.html`);
    results.wllama = await page.evaluate(
      async ({ modelUrl, settings }) => {
        const { Wllama } = await import("/wllama/index.js");
        const wllama = new Wllama({ default: "/wllama/wasm/wllama.wasm" }, { suppressNativeLog: true });
        let started = performance.now();
        await wllama.loadModelFromUrl(modelUrl, { n_threads: 1, n_gpu_layers: 0, n_ctx: 1024, useCache: false });
        const load_ms = performance.now() - started;
        // wllama's completions take text, not token ids: the prompt is English words, as many
        // as make prompt_len tokens (the model's count, read back from the usage figures).
        const complete = (prompt, max_tokens, temperature, cache_prompt) =>
          wllama.createCompletion({ prompt, max_tokens, temperature, top_k: 0, top_p: 1, min_p: 0, ignore_eos: true, cache_prompt });
        const words = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep. ".repeat(8).split(" ");
        const tokensOf = async (n) => (await complete(words.slice(0, n).join(" "), 1, 0, false)).usage.prompt_tokens;
        let [lo, hi] = [1, words.length];
        while (lo < hi) {
          const mid = Math.ceil((lo + hi) / 2);
          if ((await tokensOf(mid)) <= settings.prompt_len) lo = mid;
          else hi = mid - 1;
        }
        const prompt = words.slice(0, lo).join(" ");
        const prompt_tokens = await tokensOf(lo);
        const runs = [];
        for (let run = 0; run <= settings.repeats; run++) {
          let t = performance.now();
          const first = await complete(prompt, 1, 1.0, false);
          const first_token_ms = performance.now() - t;
          const decode = await complete(prompt, settings.decode_steps, 1.0, false);
          let ets_step_s = null;
          if (settings.ets_m > 0) {
            t = performance.now();
            for (let c = 0; c < settings.ets_m; c++) {
              // Each rollout continues the prompt and the candidate's text, which the cache holds.
              const block = await complete(prompt, settings.ets_block, 1.0, true);
              for (let k = 0; k < settings.ets_k; k++) {
                await complete(prompt + block.choices[0].text, settings.ets_rollout, 1.0, true);
              }
            }
            ets_step_s = (performance.now() - t) / 1000;
          }
          if (run > 0) {
            runs.push({
              first_token_ms,
              prompt_ms: first.timings?.prompt_ms,
              prefill_tokens_per_s: first.timings?.prompt_per_second,
              decode_tokens_per_s: decode.timings?.predicted_per_second,
              predicted_n: decode.timings?.predicted_n,
              ets_step_s,
            });
          }
        }
        await wllama.exit();
        const med = (key) => {
          const xs = runs.map((r) => r[key]).filter((x) => typeof x === "number").sort((a, b) => a - b);
          return xs.length ? xs[Math.floor(xs.length / 2)] : null;
        };
        return {
          engine: "wllama 3.13.0 (single thread, CPU wasm)",
          load_ms,
          prefill_tokens_per_s: med("prefill_tokens_per_s"),
          decode_tokens_per_s: med("decode_tokens_per_s"),
          decoded_tokens: med("predicted_n"),
          first_token_ms: med("first_token_ms"),
          ets_step_s: med("ets_step_s"),
          prompt_tokens,
        };
      },
      { modelUrl, settings },
    );
    console.log(JSON.stringify(results.wllama));
    await page.close();
  }

  const { ours, wllama } = results;
  // The table needs both engines' figures.
  if (ours && wllama) {
    const ratio = (a, b) => (a && b ? (a / b).toFixed(2) : "n/a");
    console.log(`
${basename(model)}, Chromium headless, CPU in WebAssembly, one thread each; prompt ${settings.prompt_len} tokens, medians of ${settings.repeats} runs

| | ours | wllama | ours / wllama |
|---|---|---|---|
| decode tok/s, batch 1 | ${ours.decode_tokens_per_s.toFixed(1)} | ${wllama.decode_tokens_per_s?.toFixed(1)} | ${ratio(ours.decode_tokens_per_s, wllama.decode_tokens_per_s)} |
| prefill tok/s | ${ours.prefill_tokens_per_s.toFixed(1)} | ${wllama.prefill_tokens_per_s?.toFixed(1)} | ${ratio(ours.prefill_tokens_per_s, wllama.prefill_tokens_per_s)} |
| time to first token, ms | ${ours.first_token_ms.toFixed(0)} | ${wllama.first_token_ms?.toFixed(0)} | ${ratio(wllama.first_token_ms, ours.first_token_ms)} faster |
| ETS step (M ${settings.ets_m}, K ${settings.ets_k}, B ${settings.ets_block}, ${settings.ets_rollout}-token rollouts), s | ${ours.ets_step_s?.toFixed(2)} | ${wllama.ets_step_s?.toFixed(2)} | ${ratio(wllama.ets_step_s, ours.ets_step_s)} faster |
    `);
  }
} finally {
  await browser.close();
  site.server.close();
  await rm(root, { recursive: true, force: true });
}
