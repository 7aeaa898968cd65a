// End-to-end test of the desktop app: the binary built by `scripts/desktop.sh build` (or the
// one ETS_DESKTOP_BIN names) in a real window under Xvfb, driven over WebDriver through
// tauri-driver and WebKitGTK's WebKitWebDriver. Run it with `scripts/desktop.sh test`, which
// builds the app and starts Xvfb. Writes the README's screenshot (docs/images/desktop.png) and
// the measured time to first answer (tests/desktop/timing.json).
//
// The WebDriver client is the W3C protocol over fetch: a few calls, no npm packages.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
const application = process.env.ETS_DESKTOP_BIN ?? join(targetDir, "debug", "ets-desktop");
const PORT = Number(process.env.TAURI_DRIVER_PORT ?? 4444);
const driverUrl = `http://127.0.0.1:${PORT}`;
// Generous: lavapipe runs wgpu on the CPU, and CI machines may have 2 cores.
const RUN_TIMEOUT = 5 * 60_000;
const timing = {};

async function call(method, path, body) {
  const response = await fetch(driverUrl + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) {
    throw new Error(`WebDriver ${method} ${path}: ${json.value?.message ?? JSON.stringify(json)}`);
  }
  return json.value;
}

/** A WebDriver session on a new instance of the app, started with `args`. */
class App {
  static async launch(args = []) {
    const started = Date.now();
    const value = await call("POST", "/session", {
      capabilities: { alwaysMatch: { "tauri:options": { application, args } } },
    });
    const app = new App(value.sessionId);
    app.started = started;
    return app;
  }

  constructor(id) {
    this.path = `/session/${id}`;
  }

  /** Runs `script` (a function body) in the page and returns its result. */
  run(script, ...args) {
    return call("POST", `${this.path}/execute/sync`, { script, args });
  }

  /** The text of the first element matching `selector`, or null. */
  text(selector) {
    return this.run("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector);
  }

  count(selector) {
    return this.run("return document.querySelectorAll(arguments[0]).length;", selector);
  }

  /** Waits until `selector`'s text matches `pattern`; returns the text. */
  async waitFor(selector, pattern = /./, timeout = RUN_TIMEOUT) {
    const deadline = Date.now() + timeout;
    let last = null;
    while (Date.now() < deadline) {
      last = await this.text(selector);
      if (last !== null && pattern.test(last)) return last;
      // The app's error line, if it shows one, says why the wait will fail.
      const error = await this.text('[data-testid="error"]');
      if (error && !selector.includes("error")) throw new Error(`the app shows an error: ${error}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`${selector} never matched ${pattern} (last: ${JSON.stringify(last)})`);
  }

  async click(selector) {
    const element = await call("POST", `${this.path}/element`, { using: "css selector", value: selector });
    // A W3C element reference: an object with one key (the protocol's element identifier).
    const [reference] = Object.values(element);
    await call("POST", `${this.path}/element/${reference}/click`, {});
  }

  /** Sets an input's value as typing would (the UI listens to input events). */
  fill(selector, value) {
    return this.run(
      "const e = document.querySelector(arguments[0]); e.value = arguments[1];" +
        "e.dispatchEvent(new Event('input', { bubbles: true })); e.dispatchEvent(new Event('change', { bubbles: true }));",
      selector,
      value,
    );
  }

  async screenshot(path) {
    const png = await call("GET", `${this.path}/screenshot`);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, Buffer.from(png, "base64"));
  }

  close() {
    return call("DELETE", this.path);
  }
}

let driver;
let home;
let ownHome = false;
before(async () => {
  // tauri-driver starts WebKitWebDriver, which starts the app. Fresh data and cache folders:
  // every run starts with the default settings (the webview's storage) and no cached model.
  // scripts/desktop.sh makes them (ETS_DESKTOP_HOME) and removes them once the app's processes
  // are gone (WebKit may still write there as it exits); otherwise a temporary folder.
  home = process.env.ETS_DESKTOP_HOME;
  if (!home) {
    home = await mkdtemp(join(tmpdir(), "ets-desktop-home-"));
    ownHome = true;
  }
  driver = spawn("tauri-driver", ["--port", String(PORT), "--native-port", String(PORT + 1)], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, XDG_DATA_HOME: join(home, "data"), XDG_CACHE_HOME: join(home, "cache") },
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await call("GET", "/status");
      break;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`tauri-driver did not start: ${e.message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
});
after(async () => {
  if (driver && driver.exitCode === null) {
    const exited = new Promise((resolve) => driver.once("exit", resolve));
    driver.kill();
    await exited;
  }
  await writeFile(join(here, "timing.json"), JSON.stringify(timing, null, 2) + "\n");
  if (ownHome) await rm(home, { recursive: true, force: true, maxRetries: 5 });
});

describe("the desktop app", () => {
  let app;
  let shared;
  let firstAnswer;
  after(async () => {
    await app?.close().catch(() => {});
  });

  test("starts the native engine and loads the bundled model", async () => {
    app = await App.launch();
    const backend = await app.waitFor('[data-testid="backend"]', /^(wgpu|cpu): /);
    await app.waitFor('[data-testid="model-status"]', /parameters/);
    timing.backend = backend;
    timing.launch_to_model_ms = Date.now() - app.started;
    // The desktop app reads model folders with the native dialog instead of browser uploads.
    assert.equal(await app.count('[data-testid="open-folder"]'), 1);
    assert.equal(await app.count('[data-testid="model-files"]'), 0);
    assert.match(await app.text("footer"), /runs in this app/);
  });

  test("ETS on the bundled model answers, and the live view shows M candidates", async () => {
    const clicked = Date.now();
    await app.click('[data-testid="run"]');
    firstAnswer = await app.waitFor('[data-testid="answer"]', /^\d+$/);
    timing.first_answer_ms = Date.now() - clicked;
    timing.launch_to_answer_ms = timing.launch_to_model_ms + timing.first_answer_ms;
    await app.waitFor('[data-testid="run-status"]', /done/);
    assert.ok((await app.count('[data-testid="step"]')) >= 1, "guidance steps shown");
    const [candidates, chosen] = await app.run(
      "const steps = document.querySelectorAll('[data-testid=\"step\"]'); const last = steps[steps.length - 1];" +
        "return [last.querySelectorAll('[data-testid=\"candidate\"]').length, last.querySelectorAll('.candidate.chosen').length];",
    );
    assert.equal(candidates, 8, "M = 8 candidates");
    assert.equal(chosen, 1);
    // The run's own figures (forward tokens, the engine's wall time), beside the page's.
    timing.run_stats = await app.text('[data-testid="run-stats"]');
    assert.match(timing.run_stats, /tokens\/s/);
    // And the memory the engine held when the run ended: the process's, and on wgpu its pools.
    assert.match(timing.run_stats, /memory \d+(\.\d)? MB/);
    if (timing.backend.startsWith("wgpu")) assert.match(timing.run_stats, /GPU \d+(\.\d)? MB/);
    await app.screenshot(join(repo, "docs", "images", "desktop.png"));
  });

  test("its share link points at the browser app and opens pasted in the desktop app", async () => {
    await app.click('[data-testid="share"]');
    shared = await app.run("return document.querySelector('[data-testid=\"share-url\"]').value;");
    const webApp = await app.run("return document.querySelector('[data-testid=\"web-app-url\"]').value;");
    assert.ok(shared.startsWith(`${webApp}#run=`), `${shared.slice(0, 60)}… starts with ${webApp}`);
    await app.fill('[data-testid="link-input"]', shared);
    await app.click('[data-testid="open-link"]');
    await app.waitFor('[data-testid="run-status"]', /recorded/);
    assert.equal(await app.text('[data-testid="answer"]'), firstAnswer);
  });

  test("a damaged pasted link shows an error and runs nothing", async () => {
    await app.fill('[data-testid="link-input"]', shared.slice(0, 60));
    await app.click('[data-testid="open-link"]');
    assert.match(await app.waitFor('[data-testid="error"]', /link/), /damaged|holds no run/);
  });

  test("the window's Content-Security-Policy runs no inline script", async () => {
    const ran = await app.run(
      "const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.head.append(s); return window.__inline === 1;",
    );
    assert.equal(ran, false, "an inline script ran: tauri.conf.json's CSP is not applied");
  });

  test("an ets:// deep link opens the recorded run at start", async () => {
    // One instance at a time: a second launch would hand its link to the first.
    await app.close();
    app = await App.launch([`ets://open#${shared.split("#")[1]}`]);
    await app.waitFor('[data-testid="run-status"]', /recorded/);
    assert.equal(await app.text('[data-testid="answer"]'), firstAnswer);
  });

  test("a real GGUF model named on the command line opens in place and answers a chat turn", async () => {
    // SmolLM2-135M-Instruct Q4_1, the file scripts/fetch-model.sh keeps outside the repository
    // (98 MB), read where it is by the engine thread; greedy through its chat template names
    // Berlin, as llama.cpp's answer with the same file does.
    const file = execFileSync(join(repo, "scripts", "fetch-model.sh"), { encoding: "utf8" }).trim();
    await app.close();
    app = await App.launch(["--model", file]);
    await app.waitFor('[data-testid="model-status"]', /13\d\.\dM parameters/);
    timing.real_launch_to_model_ms = Date.now() - app.started;
    await app.fill('[data-testid="strategy"]', "greedy");
    await app.run(
      "const label = [...document.querySelectorAll('label.param')].find((l) => l.querySelector('span')?.textContent === 'max tokens');" +
        "const input = label.querySelector('input'); input.value = '24';" +
        "input.dispatchEvent(new Event('input', { bubbles: true })); input.dispatchEvent(new Event('change', { bubbles: true }));" +
        "input.dispatchEvent(new Event('blur'));",
    );
    await app.fill('[data-testid="question"]', "What is the capital of Germany?");
    const clicked = Date.now();
    await app.click('[data-testid="run"]');
    await app.waitFor('[data-testid="run-status"]', /done/);
    timing.real_greedy_ms = Date.now() - clicked;
    const response = await app.text('[data-testid="response"]');
    assert.match(response, /Berlin/, response);
  });

  test("the same model on an inference server (llama-cpp-python, started here) answers the same chat turn through it", async () => {
    // scripts/llama-server.sh keeps llama-cpp-python[server] in a cache outside the repository
    // (it compiles llama.cpp once); the server serves the file the last test opened, and the
    // app sends it completion requests, tokenized with that model's tokenizer.
    const python = execFileSync(join(repo, "scripts", "llama-server.sh"), { encoding: "utf8" }).trim().split("\n").pop();
    const file = execFileSync(join(repo, "scripts", "fetch-model.sh"), { encoding: "utf8" }).trim();
    const server = await startLlamaServer(python, file);
    try {
      await app.run("document.querySelectorAll('details').forEach((d) => (d.open = true));");
      await app.fill('[data-testid="server-url"]', server.url);
      const tokenizer = basename(file).replace(/\.gguf$/i, "");
      await app.fill('[data-testid="server-tokenizer"]', tokenizer);
      await app.click('[data-testid="server-connect"]');
      const status = await app.waitFor('[data-testid="model-status"]', /on an OpenAI-compatible server/);
      assert.ok(status.includes(`at ${server.url} (tokenizer of ${tokenizer})`), status);
      // Still greedy, 24 tokens at most, the same question.
      const clicked = Date.now();
      await app.click('[data-testid="run"]');
      await app.waitFor('[data-testid="run-status"]', /done/);
      timing.served_greedy_ms = Date.now() - clicked;
      const response = await app.text('[data-testid="response"]');
      assert.match(response, /Berlin/, response);
    } finally {
      server.stop();
    }
  });
});

/** llama-cpp-python's OpenAI-compatible server of `model` on a free port of 127.0.0.1, once it
 * lists its model (at most 120 s): { url, stop }. */
async function startLlamaServer(python, model) {
  const port = await new Promise((done) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
  const child = spawn(
    python,
    ["-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", String(port)],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  // The end of its log, for the message if it never gets ready.
  let log = "";
  child.stderr.on("data", (chunk) => (log = (log + chunk).slice(-4000)));
  const url = `http://127.0.0.1:${port}/v1`;
  const stop = () => child.exitCode === null && child.kill();
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode}): ${log}`);
    const ok = await fetch(`${url}/models`).then((r) => r.ok, () => false);
    if (ok) return { url, stop };
    await new Promise((r) => setTimeout(r, 250));
  }
  stop();
  throw new Error(`the server did not answer within 120 s: ${log}`);
}
