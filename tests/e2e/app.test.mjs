// End-to-end tests of the browser app: Debian's Chromium, headless, WebGPU on SwiftShader
// (--enable-unsafe-webgpu), driven by playwright-core, against the site built into web/dist
// (scripts/web.sh build) and served on 127.0.0.1. Writes the README's screenshot
// (docs/images/app.png) and the measured times to first answer (tests/e2e/timing.json).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile, mkdir, rename, rm, stat } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { homedir, tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { createServer } from "node:http";
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";
import { openaiServer } from "./openai-server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const dist = process.env.ETS_DIST ?? join(repo, "web", "dist");
// Generous: SwiftShader runs WebGPU on the CPU, and CI machines may have 2 cores.
const RUN_TIMEOUT = 10 * 60_000;
const timing = {};
// Chromium's profile folders (~100 MB each), removed when the tests end.
const profiles = [];

async function launch(webgpu) {
  const flags = [
    "--headless",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
  ];
  if (webgpu) flags.push("--enable-unsafe-webgpu");
  else flags.push("--disable-webgpu");
  const profile = await mkdtemp(join(tmpdir(), "ets-chromium-"));
  profiles.push(profile);
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: flags,
    viewport: { width: 1280, height: 900 },
  });
}

/**
 * Opens the app and waits until the engine is up and the default model is loaded. With `key`,
 * records the time from opening the page to a usable UI (the question field on screen: the
 * page's wasm is running) as timing[`${key}_ui_ms`].
 */
async function openApp(context, url, key) {
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`[browser] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  const started = Date.now();
  await page.goto(url);
  await page.getByTestId("question").waitFor({ timeout: RUN_TIMEOUT });
  if (key) timing[`${key}_ui_ms`] = Date.now() - started;
  await page.getByTestId("model-status").filter({ hasText: "parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  return page;
}

/** The input of the parameter field labelled exactly `label`. */
function param(page, label) {
  return page
    .locator("label.param")
    .filter({ has: page.locator("span", { hasText: new RegExp(`^${label}$`) }) })
    .locator("input");
}

/** Opens the <details> section whose summary reads `summary`, unless it is open. */
async function openSection(page, summary) {
  const section = page.locator("details", { has: page.locator("summary", { hasText: summary }) });
  if (!(await section.evaluate((d) => d.open))) await section.locator("summary").click();
}

async function answerOf(page) {
  const answer = page.getByTestId("answer").first();
  await answer.waitFor({ timeout: RUN_TIMEOUT });
  return answer.textContent();
}

let site;
before(async () => {
  site = await serve(dist);
});
after(async () => {
  site.server.close();
  await writeFile(join(here, "timing.json"), JSON.stringify(timing, null, 2) + "\n");
  await Promise.all(profiles.map((profile) => rm(profile, { recursive: true, force: true, maxRetries: 5 })));
});

test("the site is light: at most 15 MB of wasm, the page's without the engine", async (t) => {
  const build = JSON.parse(await readFile(join(dist, "build.json"), "utf8"));
  const page = (await stat(join(dist, "ets-web_bg.wasm"))).size;
  const worker = (await stat(join(dist, "ets-engine-worker_bg.wasm"))).size;
  Object.assign(timing, { wasm_page_bytes: page, wasm_worker_bytes: worker, wasm_profile: build.profile });
  console.log(`wasm: page ${page} bytes + engine worker ${worker} bytes = ${page + worker} (profile ${build.profile})`);
  if (build.profile !== "web") {
    t.skip(`the site was built with profile ${build.profile}; the target is for the \`web\` profile`);
    return;
  }
  assert.ok(page + worker <= 15_000_000, `${page + worker} bytes of wasm`);
  // The UI alone: a page that links the engine (its GPU stack) is several times larger.
  assert.ok(page <= 3_000_000, `the page's wasm is ${page} bytes`);
});

describe("with WebGPU", () => {
  let context;
  let page;
  let shared;
  let firstAnswer;
  before(async () => {
    context = await launch(true);
  });
  after(async () => {
    await context?.close();
  });

  test("the page loads and reports a WebGPU adapter", async () => {
    const started = Date.now();
    page = await openApp(context, site.url, "webgpu");
    timing.webgpu_load_ms = Date.now() - started;
    const backend = await page.getByTestId("backend").textContent();
    assert.match(backend, /^webgpu: /, backend);
    assert.equal(await page.getByTestId("notice").count(), 0);
  });

  test("ETS on the bundled model answers, and the live view shows M candidates", async () => {
    // Blocks of 16 tokens (the app's default): a quarter of the guidance steps of blocks of 4,
    // so the test spends less time on SwiftShader.
    const block = param(page, "block");
    await block.fill("16");
    await block.blur();
    const clicked = Date.now();
    await page.getByTestId("run").click();
    // While a step decodes, its M fresh candidates show as they grow.
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid="drafting"] li').length === 8,
      null,
      { timeout: RUN_TIMEOUT, polling: 50 },
    );
    firstAnswer = await answerOf(page);
    timing.webgpu_first_answer_ms = Date.now() - clicked;
    assert.equal(await page.getByTestId("drafting").count(), 0, "no drafts once the run is done");
    timing.webgpu_page_to_answer_ms = timing.webgpu_load_ms + timing.webgpu_first_answer_ms;
    assert.match(firstAnswer, /^\d+$/, `answer: ${firstAnswer}`);
    const steps = page.getByTestId("step");
    assert.ok((await steps.count()) >= 1);
    assert.equal(await steps.last().getByTestId("candidate").count(), 8, "M = 8 candidates");
    // The default reward is the bundled judge: each candidate lists its rollouts' scores
    // (lowest token log-probabilities, ≤ 0).
    const rewards = steps.first().getByTestId("rollout-rewards");
    assert.equal(await rewards.count(), 8, "every candidate's rollouts are scored");
    assert.match(await rewards.first().textContent(), /^r -?\d+\.\d\d( · -?\d+\.\d\d)*$/);
    assert.equal(await steps.last().locator(".candidate.chosen").count(), 1);
    assert.match(await page.getByTestId("run-stats").textContent(), /tokens\/s/);
    await mkdir(join(repo, "docs", "images"), { recursive: true });
    await page.screenshot({ path: join(repo, "docs", "images", "app.png"), fullPage: false });
  });

  test("a share link opens the recorded run and re-runs to the same answer", async () => {
    await page.getByTestId("share").click();
    shared = await page.getByTestId("share-url").inputValue();
    assert.match(shared, /#run=[A-Za-z0-9_-]+$/);
    const opened = await context.newPage();
    await opened.goto(shared);
    // The recorded run shows at once, before any model has loaded.
    assert.equal(await opened.getByTestId("answer").textContent({ timeout: 30_000 }), firstAnswer);
    assert.match(await opened.getByTestId("run-status").textContent(), /recorded/);
    await opened.getByTestId("model-status").filter({ hasText: "parameters" }).waitFor({ timeout: RUN_TIMEOUT });
    await opened.getByTestId("rerun").click();
    await opened.getByTestId("run-status").filter({ hasText: "done" }).waitFor({ timeout: RUN_TIMEOUT });
    assert.equal(await answerOf(opened), firstAnswer, "the re-run gives the recorded answer");
    await opened.close();
  });

  test("a damaged, oversized or immoderate link shows an error and runs nothing", async () => {
    // The shared run asking for M = 10^6 candidates: well-formed, but no one's run.
    const run = JSON.parse(inflateRawSync(Buffer.from(shared.split("#run=")[1], "base64url")).toString());
    const pack = (run) => "#run=" + deflateRawSync(Buffer.from(JSON.stringify(run))).toString("base64url");
    const immoderate = pack({ ...run, spec: { ...run.spec, budget: 1_000_000 } });
    // 4096 new tokens: within what any spec may ask, beyond the bundled model's context.
    const beyondContext = pack({ ...run, spec: { ...run.spec, max_tokens: 4096 } });
    const cases = [
      ["#run=AAAA", /link/],
      [shared.split("#")[1].slice(0, 40), /link/],
      ["#run=" + "A".repeat(600_000), /link/],
      [immoderate, /link.*at most 256/],
      [beyondContext, /link.*max tokens \(4096\).*context of 512 tokens/],
    ];
    for (const [fragment, message] of cases) {
      const opened = await context.newPage();
      await opened.goto(site.url + (fragment.startsWith("#") ? fragment : "#" + fragment));
      const error = await opened.getByTestId("error").textContent({ timeout: 30_000 });
      assert.match(error, message, error);
      assert.equal(await opened.getByTestId("run-view").count(), 0);
      await opened.close();
    }
  });

  test("a link's texts render as text: HTML and script in the question and the trace run nothing", async () => {
    const run = JSON.parse(inflateRawSync(Buffer.from(shared.split("#run=")[1], "base64url")).toString());
    const evil = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b id="injected">b</b>`;
    let replaced = 0;
    const poison = (value, key) => {
      if (typeof value === "string" && ["text", "answer"].includes(key)) return replaced++, value + evil;
      if (Array.isArray(value)) return value.map((v) => (key === "texts" && typeof v === "string" ? (replaced++, v + evil) : poison(v)));
      if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, poison(v, k)]));
      return value;
    };
    const hostile = { ...poison(run), question: run.question + evil };
    assert.ok(replaced > 3, `${replaced} trace texts carry the payload`);
    const pack = (run) => "#run=" + deflateRawSync(Buffer.from(JSON.stringify(run))).toString("base64url");
    const opened = await context.newPage();
    const dialogs = [];
    opened.on("dialog", (d) => (dialogs.push(d.message()), d.dismiss()));
    await opened.goto(site.url + pack(hostile));
    const answer = await opened.getByTestId("answer").textContent({ timeout: 30_000 });
    assert.ok(answer.includes('<b id="injected">'), `the answer shows the markup as text: ${answer}`);
    assert.ok((await opened.getByTestId("question").inputValue()).includes("<script>"));
    await opened.waitForTimeout(500);
    assert.equal(await opened.evaluate(() => window.__pwned), undefined, "no script ran");
    assert.equal(await opened.locator("#injected, img[src='x']").count(), 0, "no element was made from the texts");
    assert.deepEqual(dialogs, []);
    // And were markup ever to reach the DOM, the page's Content-Security-Policy runs no inline script.
    await opened.evaluate(() => {
      const s = document.createElement("script");
      s.textContent = "window.__inline = 1";
      document.head.append(s);
    });
    assert.equal(await opened.evaluate(() => window.__inline), undefined, "the CSP blocks inline script");
    // Nor could it send anything anywhere: the page connects only to its own origin (models
    // download in the engine worker, from the URLs a user enters).
    const refused = await opened.evaluate(async () => {
      const violations = [];
      document.addEventListener("securitypolicyviolation", (e) => violations.push(e.effectiveDirective));
      const outcome = await fetch("https://huggingface.co/").then(() => "sent", (e) => e.name);
      await new Promise((done) => setTimeout(done, 100));
      return { outcome, violations };
    });
    assert.deepEqual(refused, { outcome: "TypeError", violations: ["connect-src"] }, JSON.stringify(refused));
    await opened.close();
  });

  test("a version-1 link (made before links had a format of their own) opens", async () => {
    const fixtures = await readFile(join(repo, "tests", "fixtures", "share-links-v1.txt"), "utf8");
    const link = fixtures.split("\n").find((line) => line.startsWith("ets ")).slice(4).trim();
    const opened = await context.newPage();
    await opened.goto(site.url + link);
    assert.equal(await opened.getByTestId("answer").textContent({ timeout: 30_000 }), "18");
    assert.match(await opened.getByTestId("run-status").textContent(), /recorded/);
    assert.equal(await opened.getByTestId("candidate").count(), 2, "its step's M = 2 candidates");
    await opened.close();
  });

  test("a link with a system message (format 3) opens with it in the system prompt field", async () => {
    const run = JSON.parse(inflateRawSync(Buffer.from(shared.split("#run=")[1], "base64url")).toString());
    assert.equal(run.version, 2, "a run without a system message is shared in format 2");
    const link = "#run=" + deflateRawSync(Buffer.from(JSON.stringify({ ...run, version: 3, system: "Answer in one word." }))).toString("base64url");
    const opened = await context.newPage();
    await opened.goto(site.url + link);
    assert.equal(await opened.getByTestId("answer").textContent({ timeout: 30_000 }), firstAnswer);
    assert.equal(await opened.getByTestId("system").inputValue(), "Answer in one word.");
    await opened.close();
  });

  test("a corrupt model file gives an error message", async () => {
    const model = join(repo, "models", "ref-ar");
    await page.getByText("Add a model").click();
    await page.getByTestId("model-files").setInputFiles([
      { name: "config.json", mimeType: "application/json", buffer: await readFile(join(model, "config.json")) },
      { name: "tokenizer.json", mimeType: "application/json", buffer: await readFile(join(model, "tokenizer.json")) },
      { name: "model.safetensors", mimeType: "application/octet-stream", buffer: Buffer.from("this is not a safetensors file") },
    ]);
    const error = await page.getByTestId("error").textContent({ timeout: RUN_TIMEOUT });
    assert.match(error, /safetensors/, error);
    // The app keeps working: the bundled model is still there.
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  });

  test("a model downloads from a URL, is cached, listed and deleted", async () => {
    // Any folder URL serving a model's files works like a Hugging Face repository.
    await page.getByTestId("model-url").fill(site.url + "models/ref-ar-draft");
    await page.getByRole("button", { name: "Download" }).click();
    await page.getByTestId("model-status").filter({ hasText: "0.2M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
    await page.getByText("Cached models").click();
    const entry = page.getByTestId("cache-list").locator("li", { hasText: "models/ref-ar-draft" });
    assert.match(await entry.textContent({ timeout: 30_000 }), /kB/);
    await entry.getByRole("button", { name: "Delete" }).click();
    await entry.waitFor({ state: "detached", timeout: 30_000 });
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  });

  test("a GGUF file downloads from a URL of another origin, is cached and loads", async () => {
    // A random Llama in one GGUF file (tests/fixtures/make_gguf_fixtures.py), served with CORS
    // from a second origin as huggingface.co serves files.
    const models = await serve(join(repo, "tests", "fixtures", "gguf", "models"), 0, { cors: true });
    try {
      await openSection(page, "Add a model");
      // A file the server does not have (404): a message naming it, nothing cached.
      await page.getByTestId("model-url").fill(models.url + "absent.gguf");
      await page.getByRole("button", { name: "Download" }).click();
      const error = await page.getByTestId("error").filter({ hasText: "absent.gguf" }).textContent({ timeout: 60_000 });
      assert.match(error, /has no absent\.gguf/, error);
      // A storage quota too small for the file (the engine worker's storage estimate, as a
      // full disk reports it): refused before the download, with the figures; then the
      // browser's own estimate again.
      const engine = page.workers().find((w) => /engine-worker/.test(w.url()));
      assert.ok(engine, `the engine worker among ${page.workers().map((w) => w.url())}`);
      await engine.evaluate(() => {
        navigator.storage.estimate = async () => ({ usage: 1000, quota: 2000 });
      });
      await page.getByTestId("model-url").fill(models.url + "llama-gqa.gguf");
      await page.getByRole("button", { name: "Download" }).click();
      const full = await page.getByTestId("error").filter({ hasText: "of storage" }).textContent({ timeout: 60_000 });
      assert.match(full, /needs [\d.]+ kB of storage .* 1000 B more .*delete a cached model/, full);
      await engine.evaluate(() => delete navigator.storage.estimate);
      await page.getByRole("button", { name: "Download" }).click();
      await page.getByTestId("model-status").filter({ hasText: "parameters" }).waitFor({ timeout: RUN_TIMEOUT });
      await openSection(page, "Cached models");
      const entry = page.getByTestId("cache-list").locator("li", { hasText: "llama-gqa" });
      assert.match(await entry.textContent({ timeout: 30_000 }), /kB/);
      assert.equal(await page.getByTestId("cache-list").locator("li", { hasText: "absent" }).count(), 0);
      await entry.getByRole("button", { name: "Delete" }).click();
      await entry.waitFor({ state: "detached", timeout: 30_000 });
    } finally {
      models.server.close();
    }
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  });

  test("a download that breaks off, a host that refuses CORS, a file too large, the storage filling up: a message each, nothing cached", async () => {
    // A host that breaks the connection after 100 kB of a 1 MB file, one whose file says it
    // is 3 GB (more than the browser's engine can hold), and one that sends 4 MB in 64 kB
    // chunks (counting what it sent): all let other sites read (CORS).
    let fullSent = 0;
    const host = createServer((req, res) => {
      const cors = { "access-control-allow-origin": "*", "content-type": "application/octet-stream" };
      if (req.url.endsWith("/full.gguf")) {
        res.writeHead(200, { ...cors, "content-length": 4 << 20 });
        const chunk = Buffer.alloc(64 << 10, 7);
        let closed = false;
        res.on("close", () => (closed = true));
        const send = () => {
          if (closed) return;
          if (fullSent >= 4 << 20) return res.end();
          fullSent += chunk.length;
          res.write(chunk, () => setTimeout(send, 20));
        };
        send();
      } else if (req.url.endsWith("/cut.gguf")) {
        res.writeHead(200, { ...cors, "content-length": 1_000_000 });
        res.write(Buffer.alloc(100_000, 7), () => res.socket.destroy());
      } else if (req.url.endsWith("/huge.gguf")) {
        res.writeHead(200, { ...cors, "content-length": 3_000_000_000 });
        res.write(Buffer.alloc(1000, 7));
      } else {
        res.writeHead(404, cors).end();
      }
    });
    await new Promise((done) => host.listen(0, "127.0.0.1", done));
    const hostUrl = `http://127.0.0.1:${host.address().port}/`;
    // A host that serves the file but not to other sites (no CORS header).
    const closed = await serve(join(repo, "tests", "fixtures", "gguf", "models"));
    try {
      await openSection(page, "Add a model");
      for (const [url, message] of [
        [hostUrl + "cut.gguf", /download of cut\.gguf broke off after [\d.]+ k?B of 1000 kB/],
        [hostUrl + "huge.gguf", /huge\.gguf is 3\.0 GB: the browser's engine holds a file of at most 2\.1 GB/],
        [closed.url + "llama-gqa.gguf", /could not download .*llama-gqa\.gguf.*\(CORS\)/],
      ]) {
        await page.getByTestId("model-url").fill(url);
        await page.getByRole("button", { name: "Download" }).click();
        const error = page.getByTestId("error").filter({ hasText: basename(url) });
        const text = await error.textContent({ timeout: 60_000 });
        assert.match(text, message, text);
      }
      // The storage fills up during a download: the browser's cache refuses the file after
      // 256 kB (QuotaExceededError, as Cache Storage rejects a put over the quota).
      const engine = page.workers().find((w) => /engine-worker/.test(w.url()));
      await engine.evaluate(() => {
        const put = Cache.prototype.put;
        self.__etsPut = put;
        Cache.prototype.put = async function (request, response) {
          if (!String(request.url ?? request).endsWith("full.gguf")) return put.call(this, request, response);
          const reader = response.body.getReader();
          for (let stored = 0; ; ) {
            const { done, value } = await reader.read();
            if (done) return;
            stored += value.length;
            if (stored >= 256 << 10) {
              // Not awaited: a tee's branch finishes cancelling only once the other branch does.
              reader.cancel();
              throw new DOMException("the storage quota is exhausted", "QuotaExceededError");
            }
          }
        };
      });
      try {
        await page.getByTestId("model-url").fill(hostUrl + "full.gguf");
        await page.getByRole("button", { name: "Download" }).click();
        const full = await page.getByTestId("error").filter({ hasText: "storage" }).textContent({ timeout: 60_000 });
        assert.match(full, /storing a model file \(is the browser's storage full\? delete a model\).*quota/, full);
        // The download stopped when the storage refused it, not at its end.
        assert.ok(fullSent < 4 << 20, `the server sent ${fullSent} of ${4 << 20} bytes`);
        timing.quota_full_download_sent_bytes = fullSent;
      } finally {
        await engine.evaluate(() => {
          Cache.prototype.put = self.__etsPut;
        });
      }
      await openSection(page, "Cached models");
      for (const name of ["cut", "huge", "llama-gqa", "full"]) {
        assert.equal(await page.getByTestId("cache-list").locator("li", { hasText: name }).count(), 0, name);
      }
    } finally {
      host.closeAllConnections();
      host.close();
      closed.server.close();
    }
    // The app keeps working.
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  });

  test("a model on an inference server answers through it (ETS-IS too, its draft served); Stop closes its requests; a server refusing CORS gets a message", async () => {
    // A scripted OpenAI-compatible server on another origin, allowing it (CORS), whose every
    // completion is the same short answer (fewer tokens than a block); prompts in ref-ar's
    // tokenizer.
    const served = await openaiServer({ text: " #### 18" });
    const refusing = await openaiServer({ text: "#### 1", cors: false, model: "no-cors" });
    try {
      await openSection(page, "Add a model");
      assert.match(await page.getByTestId("cors-hint").textContent(), /CORS/);
      await page.getByTestId("server-url").fill(served.url);
      await page.getByTestId("server-tokenizer").selectOption("ref-ar");
      await page.getByTestId("server-connect").click();
      const status = await page
        .getByTestId("model-status")
        .filter({ hasText: "scripted on llama.cpp" })
        .textContent({ timeout: 60_000 });
      assert.ok(status.includes(`llama.cpp at ${served.url} (tokenizer of ref-ar)`), status);
      const block = param(page, "block");
      await block.fill("16");
      await block.blur();
      await page.getByTestId("run").click();
      assert.equal(await answerOf(page), "18");
      await page.getByTestId("run-status").filter({ hasText: "done" }).waitFor({ timeout: RUN_TIMEOUT });
      // ETS's M = 8 candidates were requests; each prompt went as ref-ar's token ids, the block
      // as max_tokens, the server's own samplers off.
      assert.ok(served.requests.length >= 8, `${served.requests.length} requests`);
      for (const body of served.requests) {
        assert.equal(body.model, "scripted");
        assert.ok(Array.isArray(body.prompt) && body.prompt.every(Number.isInteger), JSON.stringify(body.prompt));
        assert.equal(body.max_tokens, 16);
        assert.equal(body.top_k, 0);
        assert.equal(body.min_p, 0);
      }
      // ETS-IS with its draft on a server too (here a vLLM-shaped one serving as both): the
      // draft's rollouts are scored by the target's echo of their log-probabilities.
      // Its first answer (the first step's candidates) does not end, so they are rolled out.
      const scoring = await openaiServer({ text: " #### 18", first: " 14 + 9 = 23", owner: "vllm", model: "scoring" });
      try {
        await page.getByTestId("server-url").fill(scoring.url);
        await page.getByTestId("server-model").fill("scoring");
        await page.getByTestId("server-connect").click();
        await page.getByTestId("model-status").filter({ hasText: "scoring on vLLM" }).waitFor({ timeout: 60_000 });
        // A model with a name typed is listed under that name.
        const id = "scoring";
        await page.getByTestId("strategy").selectOption("ets-is");
        const draft = param(page, "draft model");
        await draft.fill(id);
        await draft.blur();
        await page.getByTestId("run").click();
        assert.equal(await answerOf(page), "18");
        await page.getByTestId("run-status").filter({ hasText: "done" }).waitFor({ timeout: RUN_TIMEOUT });
        const echoed = scoring.requests.filter((b) => b.echo === true);
        assert.ok(echoed.length > 0, `the target scored no rollout: ${JSON.stringify(scoring.requests.map((b) => [b.n, b.max_tokens, b.echo, b.logprobs, b.prompt.length]))}`);
        for (const body of echoed) assert.equal(body.logprobs, 1);
        assert.ok(scoring.requests.some((b) => !b.echo && b.logprobs === 1), "the draft was not asked for log-probabilities");
        await draft.fill("ref-ar-draft");
        await draft.blur();
        await page.getByTestId("strategy").selectOption("ets");
        await page.getByTestId("model-select").selectOption(`server ${new URL(served.url).host}`);
        await page.getByTestId("model-status").filter({ hasText: "scripted on llama.cpp" }).waitFor({ timeout: 60_000 });
      } finally {
        scoring.close();
      }
      // Stop while the server holds its answers: the run stops at once and every request in
      // flight is abandoned (its connection closed: how a server learns to stop generating).
      served.setHold(true);
      const before = served.requests.length;
      await page.getByTestId("run").click();
      for (let i = 0; i < 200 && served.requests.length === before; i++) await page.waitForTimeout(50);
      assert.ok(served.requests.length > before, "the run's requests reached the server");
      const clicked = Date.now();
      await page.getByTestId("stop").click();
      await page.getByTestId("run-status").filter({ hasText: "stopped" }).waitFor({ timeout: 30_000 });
      timing.server_stop_ms = Date.now() - clicked;
      assert.ok(timing.server_stop_ms < 5_000, `stopped after ${timing.server_stop_ms} ms`);
      for (let i = 0; i < 100 && served.closed < served.requests.length - before; i++) await page.waitForTimeout(50);
      assert.equal(served.closed, served.requests.length - before, "every held request was abandoned");
      // A server that does not allow this origin: the browser cannot tell it from one that is
      // down; the message says both, after the retries.
      await page.getByTestId("server-url").fill(refusing.url);
      await page.getByTestId("server-connect").click();
      const error = await page.getByTestId("error").filter({ hasText: "CORS" }).textContent({ timeout: 60_000 });
      assert.match(error, /connecting to http:\/\/127\.0\.0\.1:\d+\/v1: .*failed 4 times/, error);
      // The server is remembered in the list (without a key) and forgotten from it.
      await openSection(page, "Cached models");
      // No model name was typed: the server is listed by its address; the refusing one is not.
      const host = new URL(served.url).host;
      const entry = page.getByTestId("cache-list").locator("li", { hasText: `server ${host}` });
      assert.equal(await page.getByTestId("cache-list").locator("li", { hasText: new URL(refusing.url).host }).count(), 0);
      await entry.getByRole("button", { name: "Forget" }).click();
      await entry.waitFor({ state: "detached", timeout: 30_000 });
      const scoringEntry = page.getByTestId("cache-list").locator("li", { hasText: /^scoring · / });
      await scoringEntry.getByRole("button", { name: "Forget" }).click();
      await scoringEntry.waitFor({ state: "detached", timeout: 30_000 });
    } finally {
      served.close();
      refusing.close();
    }
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
  });

  test("under a forced small buffer limit the matrices split and the answer stays the same", async () => {
    // 65,536 bytes: every one of ref-ar's matrices (the embedding table is 192,512 bytes) is
    // larger, as a real model's table is larger than a 128 MiB WebGPU binding. Greedy decoding
    // (one sequence: its KV cache fits that limit; ETS's 24 would not) with and without it.
    const context = await launch(true);
    try {
      const responses = [];
      for (const query of ["?max-buffer-bytes=65536", ""]) {
        const tab = await openApp(context, site.url + query);
        const status = await tab.getByTestId("model-status").textContent();
        assert.equal(/matrices split for the device/.test(status), query !== "", status);
        await tab.getByTestId("strategy").selectOption("greedy");
        await tab.getByTestId("run").click();
        await answerOf(tab);
        responses.push(await tab.getByTestId("response").first().textContent());
        await tab.close();
      }
      assert.ok(responses[0].length > 20, responses[0]);
      assert.equal(responses[0], responses[1], "the unsplit model's response, token for token");
    } finally {
      await context.close();
    }
  });

  test("Stop ends a run at once", async () => {
    const block = param(page, "block");
    await block.fill("4");
    await block.blur();
    await page.getByTestId("run").click();
    // Stop a second into the run, in the middle of its first guidance step on SwiftShader (whose
    // M·K rollouts decode for tens of seconds there): the run ends at its next forward pass.
    await page.getByTestId("run-status").filter({ hasText: "running" }).waitFor({ timeout: RUN_TIMEOUT });
    await page.waitForTimeout(1_000);
    const clicked = Date.now();
    await page.getByTestId("stop").click();
    await page.getByTestId("run-status").filter({ hasText: "stopped" }).waitFor({ timeout: 60_000 });
    timing.webgpu_stop_ms = Date.now() - clicked;
    assert.ok(timing.webgpu_stop_ms < 10_000, `stopped after ${timing.webgpu_stop_ms} ms`);
    assert.equal(await page.getByTestId("answer").count(), 0);
    assert.ok(await page.getByTestId("run").isEnabled());
  });

  test("a GPU lost during a run (GPUDevice.destroy): the run ends with a message, the engine goes on on the CPU", async () => {
    // A page of its own: its engine ends up on the CPU.
    const lost = await openApp(context, site.url);
    try {
      assert.match(await lost.getByTestId("backend").textContent(), /^webgpu: /);
      const engine = lost.workers().find((w) => /engine-worker/.test(w.url()));
      assert.ok(engine, `the engine worker among ${lost.workers().map((w) => w.url())}`);
      engine.on("console", (m) => console.log(`[engine worker] ${m.text()}`));
      // Catch the engine's GPUDevice as it records its next commands.
      await engine.evaluate(() => {
        const record = GPUDevice.prototype.createCommandEncoder;
        GPUDevice.prototype.createCommandEncoder = function (...args) {
          self.__etsDevice = this;
          return record.apply(this, args);
        };
      });
      const block = param(lost, "block");
      await block.fill("4");
      await block.blur();
      await lost.getByTestId("run").click();
      await lost.getByTestId("run-status").filter({ hasText: "running" }).waitFor({ timeout: RUN_TIMEOUT });
      await lost.waitForTimeout(1_000);
      // What a driver reset or the browser reclaiming the GPU does to the device.
      assert.ok(await engine.evaluate(() => (self.__etsDevice ? (self.__etsDevice.destroy(), true) : false)));
      const destroyed = Date.now();
      const status = lost.getByTestId("run-status").filter({ hasText: "GPU was lost" });
      try {
        await status.waitFor({ timeout: 60_000 });
      } catch (e) {
        const now = await lost.getByTestId("run-status").textContent().catch(() => "(none)");
        throw new Error(`the run did not end with the loss: its status reads ${JSON.stringify(now)}`, { cause: e });
      }
      timing.webgpu_lost_run_ended_ms = Date.now() - destroyed;
      await lost.getByTestId("backend").filter({ hasText: /^cpu: / }).waitFor({ timeout: 60_000 });
      assert.match(await lost.getByTestId("notice").textContent(), /GPU was lost/);
      await lost.getByTestId("model-status").filter({ hasText: "parameters" }).waitFor({ timeout: RUN_TIMEOUT });
      timing.webgpu_lost_reloaded_on_cpu_ms = Date.now() - destroyed;
      assert.equal(await lost.getByTestId("answer").count(), 0);
      // The next run answers, on the CPU.
      await block.fill("16");
      await block.blur();
      await lost.getByTestId("run").click();
      assert.match(await answerOf(lost), /^\d+$/);
      console.log(
        `GPU lost: the run ended ${timing.webgpu_lost_run_ended_ms} ms after GPUDevice.destroy(), ` +
          `the model was back on the CPU after ${timing.webgpu_lost_reloaded_on_cpu_ms} ms`,
      );
    } finally {
      await lost.close();
    }
  });

  test("the app works offline after the first visit", async () => {
    // The service worker cached the app and the bundled models on the first visit.
    await page.evaluate(() => navigator.serviceWorker.ready);
    await context.setOffline(true);
    try {
      const offline = await openApp(context, site.url);
      assert.match(await offline.getByTestId("model-status").textContent(), /0\.9M parameters/);
      await offline.close();
    } finally {
      await context.setOffline(false);
    }
  });

  test("a parameter field refuses a value no one would use or the model cannot take", async () => {
    const m = param(page, "M");
    await m.fill("1000000");
    await m.blur();
    await page.getByTestId("error").filter({ hasText: "M must be at most 256, got 1000000" }).waitFor({ timeout: 30_000 });
    assert.equal(await m.inputValue(), "8", "the setting keeps its value");
    // The answer may fill the loaded model's context (512 tokens), not more.
    const maxTokens = param(page, "max tokens");
    await maxTokens.fill("4096");
    await maxTokens.blur();
    await page.getByTestId("error").filter({ hasText: "max tokens must be at most 512, got 4096" }).waitFor({ timeout: 30_000 });
    assert.equal(await maxTokens.inputValue(), "160", "the setting keeps its value");
  });
});

describe("without WebGPU", () => {
  test("the CPU fallback answers and says so", async () => {
    const context = await launch(false);
    try {
      const started = Date.now();
      const page = await openApp(context, site.url, "cpu");
      timing.cpu_load_ms = Date.now() - started;
      const backend = await page.getByTestId("backend").textContent();
      assert.match(backend, /^cpu: /, backend);
      assert.match(await page.getByTestId("notice").textContent(), /CPU/);
      const clicked = Date.now();
      await page.getByTestId("run").click();
      const answer = await answerOf(page);
      timing.cpu_first_answer_ms = Date.now() - clicked;
      timing.cpu_page_to_answer_ms = Date.now() - started;
      assert.match(answer, /^\d+$/, `answer: ${answer}`);

      // Compare mode: plain sampling, then ETS, side by side.
      await page.getByTestId("compare").check();
      await page.getByTestId("run").click();
      const runs = page.getByTestId("run-view");
      await runs.nth(1).getByTestId("answer").waitFor({ timeout: RUN_TIMEOUT });
      assert.equal(await runs.count(), 2);
      assert.equal(await runs.nth(0).getAttribute("data-strategy"), "sample");
      assert.equal(await runs.nth(1).getAttribute("data-strategy"), "ets");
      assert.equal(await runs.nth(1).getByTestId("answer").textContent(), answer, "same seed, same ETS answer");
    } finally {
      await context.close();
    }
  });
});

describe("long use and interruptions (CPU)", () => {
  let context;
  let page;
  before(async () => {
    context = await launch(false);
    page = await openApp(context, site.url);
  });
  after(async () => {
    await context?.close();
  });

  test("50 ETS runs in a row: the worker's memory stays within 10% of the first run's", async () => {
    const RUNS = 50;
    const m = param(page, "M");
    await m.fill("4");
    await m.blur();
    const readings = [];
    let last = null;
    const started = Date.now();
    for (let i = 0; i < RUNS; i++) {
      await page.getByTestId("run").click();
      // The new run's view, once it has ended: its stats carry the memory the host held then.
      const handle = await page.waitForFunction(
        (previous) => {
          const view = document.querySelector("[data-testid=run-view]");
          if (!view || view.dataset.run === previous) return null;
          const status = view.querySelector("[data-testid=run-status]")?.textContent ?? "";
          if (status !== "done") return null;
          const bytes = view.querySelector("[data-testid=run-stats]")?.dataset.hostBytes;
          return bytes ? { run: view.dataset.run, bytes: Number(bytes) } : null;
        },
        last,
        { timeout: RUN_TIMEOUT, polling: 50 },
      );
      const { run, bytes } = await handle.jsonValue();
      last = run;
      readings.push(bytes);
    }
    const first = readings[0];
    const largest = Math.max(...readings);
    Object.assign(timing, {
      long_use_cpu_runs: RUNS,
      long_use_cpu_ms: Date.now() - started,
      long_use_cpu_wasm_memory_first_bytes: first,
      long_use_cpu_wasm_memory_largest_bytes: largest,
      long_use_cpu_wasm_memory_last_bytes: readings.at(-1),
    });
    console.log(
      `long use: ${RUNS} ETS runs (M = 4) in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
        `wasm memory ${first} bytes after the first, at most ${largest}, ${readings.at(-1)} after the last ` +
        `(${(100 * (largest / first - 1)).toFixed(1)}%)`,
    );
    assert.ok(largest <= first * 1.1, `wasm memory grew from ${first} to ${largest} bytes`);
    assert.equal(await page.getByTestId("error").count(), 0);
  });

  test("a model switched during a run: the run ends on its model, the new one loads after it and answers", async () => {
    // A longer run (M = 64: seconds on the CPU) to switch in the middle of.
    const m = param(page, "M");
    await m.fill("64");
    await m.blur();
    await page.getByTestId("run").click();
    await page.getByTestId("run-status").filter({ hasText: "running" }).waitFor({ timeout: RUN_TIMEOUT });
    await page.getByTestId("model-select").selectOption("ref-ar-draft");
    assert.match(await page.getByTestId("run-status").textContent(), /running/, "switched during the run");
    await page.getByTestId("run-status").filter({ hasText: /^done$/ }).waitFor({ timeout: RUN_TIMEOUT });
    assert.match(await answerOf(page), /^\d+$/);
    await page.getByTestId("model-status").filter({ hasText: "0.2M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
    const before = await page.getByTestId("run-view").getAttribute("data-run");
    await page.getByTestId("run").click();
    await page.locator(`[data-testid=run-view]:not([data-run="${before}"]) [data-testid=answer]`).waitFor({ timeout: RUN_TIMEOUT });
    assert.equal(await page.getByTestId("error").count(), 0);
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
    await m.fill("4");
    await m.blur();
  });

  test("Stop during a download ends it with a message, keeps nothing, and the app goes on", async () => {
    // A host that sends a 462 kB GGUF file 8 kB every 100 ms (about 6 s), to any site (CORS).
    const file = await readFile(join(repo, "tests", "fixtures", "gguf", "models", "llama-gqa.gguf"));
    const host = createServer((req, res) => {
      const cors = { "access-control-allow-origin": "*", "content-type": "application/octet-stream" };
      if (!req.url.endsWith("/slow.gguf")) return res.writeHead(404, cors).end();
      res.writeHead(200, { ...cors, "content-length": file.length });
      let sent = 0;
      const timer = setInterval(() => {
        if (sent >= file.length) {
          clearInterval(timer);
          return res.end();
        }
        res.write(file.subarray(sent, sent + 8192));
        sent += 8192;
      }, 100);
      res.on("close", () => clearInterval(timer));
    });
    await new Promise((done) => host.listen(0, "127.0.0.1", done));
    try {
      await openSection(page, "Add a model");
      await page.getByTestId("model-url").fill(`http://127.0.0.1:${host.address().port}/slow.gguf`);
      await page.getByRole("button", { name: "Download" }).click();
      await page.getByTestId("progress").waitFor({ timeout: 30_000 });
      await page.getByTestId("stop").click();
      const error = await page.getByTestId("error").filter({ hasText: "stopped" }).textContent({ timeout: 30_000 });
      assert.match(error, /loading slow.* stopped/, error);
      await openSection(page, "Cached models");
      assert.equal(await page.getByTestId("cache-list").locator("li", { hasText: "slow" }).count(), 0);
    } finally {
      host.closeAllConnections();
      host.close();
    }
    // The app goes on: the bundled model loads and answers.
    await page.getByTestId("model-select").selectOption("ref-ar");
    await page.getByTestId("model-status").filter({ hasText: "0.9M parameters" }).waitFor({ timeout: RUN_TIMEOUT });
    await page.getByTestId("run").click();
    await page.getByTestId("run-status").filter({ hasText: /^done$/ }).waitFor({ timeout: RUN_TIMEOUT });
  });
});

describe("a real model: SmolLM2-135M-Instruct, Q4_1 GGUF", () => {
  // Its largest tensor: the Q8_0 embedding, 49,152 × 576 values in blocks of 32 (34 bytes each).
  const LARGEST_TENSOR_BYTES = (49_152 * 576 / 32) * 34;
  const MiB = 1 << 20;

  /** The check's verdict on screen once it has come: [fits, text]. */
  async function checked(page) {
    const fit = page.locator('[data-testid="fit"][data-fits]');
    await fit.waitFor({ timeout: 60_000 });
    return [(await fit.getAttribute("data-fits")) === "true", await fit.textContent()];
  }

  /**
   * Checks the real file before downloading it (its size, and its header read by ranges): it
   * fits, and a few MB of it were read; with the storage quota too small, it does not; a GGUF
   * file that holds no model does not load, and says why.
   */
  async function checkBeforeDownload(page, models, file, fileBytes) {
    assert.equal(await page.getByTestId("recommended").count(), 5, "the recommended models listed");
    const before = models.sent.bytes;
    await page.getByTestId("model-url").fill(models.url + basename(file));
    await page.getByTestId("check").click();
    let [fits, text] = await checked(page);
    assert.ok(fits, text);
    assert.match(text, /98\.4 MB to download, 134\.5M parameters \(LlamaForCausalLM\)/, text);
    const read = models.sent.bytes - before;
    console.log(`check of ${basename(file)}: ${read} bytes read of ${fileBytes}`);
    timing.real_check_bytes_read = read;
    assert.ok(read <= 16 << 20, `the check read ${read} bytes`);
    const engine = page.workers().find((w) => /engine-worker/.test(w.url()));
    await engine.evaluate(() => {
      navigator.storage.estimate = async () => ({ usage: 1000, quota: 2000 });
    });
    await page.getByTestId("check").click();
    [fits, text] = await checked(page);
    assert.ok(!fits, text);
    assert.match(text, /needs 98\.4 MB of storage and 1000 B are left/, text);
    await engine.evaluate(() => delete navigator.storage.estimate);
    const notAModel = await serve(join(repo, "tests", "fixtures", "gguf"), 0, { cors: true });
    try {
      await page.getByTestId("model-url").fill(notAModel.url + "every-type.gguf");
      await page.getByTestId("check").click();
      [fits, text] = await checked(page);
      assert.ok(!fits, text);
      assert.match(text, /metadata key `[a-z._]+`: missing/, text);
    } finally {
      notAModel.server.close();
    }
    await openSection(page, "Cached models");
    assert.equal(await page.getByTestId("cache-list").locator("li", { hasText: "SmolLM2" }).count(), 0, "nothing cached");
  }

  /**
   * Downloads the real file from a second origin (served with CORS, as if from huggingface.co)
   * into a fresh browser, on WebGPU (SwiftShader) or the CPU backend in WebAssembly; checks the
   * engine worker's memory after the load and the greedy answer; returns the page.
   */
  async function downloadLoadAndAnswer(context, key, webgpu) {
    const file = execFileSync(join(repo, "scripts", "fetch-model.sh"), { encoding: "utf8" }).trim();
    const fileBytes = (await stat(file)).size;
    const models = await serve(dirname(file), 0, { cors: true });
    try {
      const page = await openApp(context, site.url);
      assert.match(await page.getByTestId("backend").textContent(), webgpu ? /^webgpu: / : /^cpu: /);
      await openSection(page, "Add a model");
      if (!webgpu) await checkBeforeDownload(page, models, file, fileBytes);
      await page.getByTestId("model-url").fill(models.url + basename(file));
      const started = Date.now();
      await page.getByRole("button", { name: "Download" }).click();
      await page.getByTestId("progress").filter({ hasText: basename(file) }).waitFor({ timeout: 60_000 });
      const status = page.getByTestId("model-status").filter({ hasText: /13\d\.\dM parameters/ });
      await status.waitFor({ timeout: RUN_TIMEOUT });
      timing[`${key}_download_and_load_ms`] = Date.now() - started;
      // The engine worker's memory (a wasm memory only grows: its size is the peak so far). The
      // download streams into Cache Storage and the model loads a tensor at a time from there.
      const engine = page.workers().find((w) => /engine-worker/.test(w.url()));
      const wasmBytes = await engine.evaluate(() => self.etsWasmMemory?.buffer.byteLength ?? 0);
      const jsHeap = await engine.evaluate(() => self.performance?.memory?.usedJSHeapSize ?? null);
      Object.assign(timing, {
        real_file_bytes: fileBytes,
        [`${key}_wasm_memory_after_load_bytes`]: wasmBytes,
        [`${key}_worker_js_heap_after_load_bytes`]: jsHeap,
      });
      console.log(`SmolLM2 Q4_1 (${key}): ${fileBytes} bytes of file, wasm memory ${wasmBytes} bytes after download and load, worker JS heap ${jsHeap ?? "not reported"}`);
      if (webgpu) {
        // The weights live on the GPU: the worker's memory never held the whole file.
        assert.ok(wasmBytes < fileBytes, `wasm memory ${wasmBytes} bytes, the file ${fileBytes}`);
        assert.ok(wasmBytes <= 256 * MiB, `wasm memory ${wasmBytes} bytes > 256 MiB`);
      } else {
        // The weights live in wasm memory: beyond them, at most the largest tensor + 64 MiB.
        assert.ok(wasmBytes > fileBytes * 0.95, `wasm memory ${wasmBytes} bytes holds the weights`);
        const beyond = wasmBytes - fileBytes;
        assert.ok(beyond <= LARGEST_TENSOR_BYTES + 64 * MiB, `${beyond} bytes beyond the file`);
      }

      // Greedy, through the model's chat template: llama.cpp's answer with the same file names Berlin.
      await page.getByTestId("strategy").selectOption("greedy");
      const maxTokens = param(page, "max tokens");
      // "The capital of Germany is Berlin." is 8 tokens; SwiftShader takes seconds a token.
      await maxTokens.fill(webgpu ? "8" : "24");
      await maxTokens.blur();
      await page.getByTestId("question").fill("What is the capital of Germany?");
      const clicked = Date.now();
      await page.getByTestId("run").click();
      if (webgpu) {
        // The response streams in token by token, before the run is done.
        await page.waitForFunction(
          () =>
            document.querySelector('[data-testid="response"]')?.textContent.length > 0 &&
            document.querySelector('[data-testid="run-status"]')?.textContent.startsWith("running"),
          null,
          { timeout: RUN_TIMEOUT, polling: 50 },
        );
        timing[`${key}_first_text_ms`] = Date.now() - clicked;
      }
      await answerOf(page);
      timing[`${key}_greedy_ms`] = Date.now() - clicked;
      const response = await page.getByTestId("response").first().textContent();
      assert.match(response, /Berlin/, response);
      return { page, engine, file };
    } finally {
      models.server.close();
    }
  }

  test("on WebGPU: streams into the cache, loads a tensor at a time onto the GPU, answers greedily", async () => {
    const context = await launch(true);
    try {
      await downloadLoadAndAnswer(context, "real_webgpu", true);
    } finally {
      await context.close();
    }
  });

  test("on the CPU: downloads with progress from a URL, is cached, answers greedily, then runs ETS", async () => {
    const context = await launch(false);
    try {
      const { page, engine, file } = await downloadLoadAndAnswer(context, "real_cpu", false);

      // ETS, small: M = 2 candidates, K = 1 rollout, blocks of 8 tokens.
      await page.getByTestId("strategy").selectOption("ets");
      for (const [label, value] of [["M", "2"], ["K", "1"], ["block", "8"], ["max tokens", "16"]]) {
        await param(page, label).fill(value);
        await param(page, label).blur();
      }
      const clicked = Date.now();
      await page.getByTestId("run").click();
      await answerOf(page);
      timing.real_cpu_ets_ms = Date.now() - clicked;
      const run = page.getByTestId("run-view").first();
      assert.equal(await run.getByTestId("run-status").textContent(), "done");
      assert.ok((await run.getByTestId("response").textContent()).length > 0);
      assert.equal(await run.getByTestId("step").first().getByTestId("candidate").count(), 2);
      timing.real_cpu_wasm_memory_after_ets_bytes = await engine.evaluate(() => self.etsWasmMemory?.buffer.byteLength ?? 0);

      // Cached: listed with its size.
      await openSection(page, "Cached models");
      const entry = page.getByTestId("cache-list").locator("li", { hasText: basename(file, ".gguf") });
      assert.match(await entry.textContent({ timeout: 30_000 }), /MB/);
    } finally {
      await context.close();
    }
  });
});

describe("a model of Qwen2.5-0.5B's shape (random weights), under WebGPU's default binding limit", () => {
  /** Runs the native CLI (`cargo run --bin ets`, built by CI's native build phase). */
  function ets(...args) {
    return execFileSync("cargo", ["run", "--quiet", "--bin", "ets", "--", ...args], {
      cwd: repo,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
      maxBuffer: 1 << 24,
    });
  }

  test("loads with its embedding split for 128 MiB buffers, in under 256 MiB of wasm memory, and decodes the CLI's greedy tokens", async () => {
    // 494 M parameters, Q4_0 matrices and a Q8_0 embedding of 151,936 × 896 (144.6 MB, more
    // than one 128 MiB buffer): a 349 MB file, written at test time (never committed) into
    // the model cache, the same bytes for the same seed.
    const cache = process.env.ETS_MODEL_CACHE ?? join(homedir(), ".cache", "ets", "models");
    const name = "random-qwen2.5-0.5b-q4_0.gguf";
    const file = join(cache, name);
    await mkdir(cache, { recursive: true });
    if (!(await stat(file).catch(() => null))) {
      ets("random-gguf", "--like", "qwen2.5-0.5b", "--matrices", "q4_0", "--embedding", "q8_0", "--seed", "0", "--out", `${file}.part`);
      await rename(`${file}.part`, file);
    }
    const fileBytes = (await stat(file)).size;
    const question = "What is 2 + 3?";
    const tokens = "3";
    const native = JSON.parse(ets("solve", "--model", file, "--backend", "cpu", "--strategy", "greedy", "--max-tokens", tokens, "--json", question));
    const models = await serve(cache, 0, { cors: true });
    const context = await launch(true);
    try {
      const page = await openApp(context, `${site.url}?max-buffer-bytes=${128 << 20}`);
      assert.match(await page.getByTestId("backend").textContent(), /^webgpu: /);
      await openSection(page, "Add a model");
      await page.getByTestId("model-url").fill(models.url + name);
      const started = Date.now();
      await page.getByRole("button", { name: "Download" }).click();
      const status = page.getByTestId("model-status").filter({ hasText: /494\.0M parameters/ });
      await status.waitFor({ timeout: RUN_TIMEOUT });
      timing.qwen_shape_download_and_load_ms = Date.now() - started;
      assert.match(await status.textContent(), /1 matrix split for the device/);
      const engine = page.workers().find((w) => /engine-worker/.test(w.url()));
      const wasmBytes = await engine.evaluate(() => self.etsWasmMemory?.buffer.byteLength ?? 0);
      Object.assign(timing, { qwen_shape_file_bytes: fileBytes, qwen_shape_wasm_memory_after_load_bytes: wasmBytes });
      console.log(`Qwen2.5-0.5B's shape: ${fileBytes} bytes of file, wasm memory ${wasmBytes} bytes after download and load`);
      assert.ok(wasmBytes <= 256 * (1 << 20), `wasm memory ${wasmBytes} bytes > 256 MiB`);

      await page.getByTestId("strategy").selectOption("greedy");
      await param(page, "max tokens").fill(tokens);
      await param(page, "max tokens").blur();
      await page.getByTestId("question").fill(question);
      const clicked = Date.now();
      await page.getByTestId("run").click();
      await answerOf(page);
      timing.qwen_shape_greedy_ms = Date.now() - clicked;
      const response = await page.getByTestId("response").first().textContent();
      assert.equal(response, native.text, "the native CLI's greedy tokens");
    } finally {
      await context.close();
      models.server.close();
    }
  });
});
