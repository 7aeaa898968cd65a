// A static file server for the built site (web/dist), bound to 127.0.0.1. The browser tests
// start it; run it alone to use the app: `node tests/e2e/serve.mjs web/dist 8080`.
import { createServer } from "node:http";
import { open, readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** Serves `root` on 127.0.0.1:`port` (0: any free port); resolves to { server, url, sent }
 * (`sent.bytes`: body bytes sent so far). With `cors`, any page may fetch the files (as from
 * huggingface.co). HEAD and single byte ranges (`Range: bytes=a-b`, 206) are served too. */
export function serve(root, port = 0, { cors = false } = {}) {
  const base = resolve(root);
  const sent = { bytes: 0 };
  const allow = cors
    ? {
        "access-control-allow-origin": "*",
        "access-control-allow-headers": "range",
        "access-control-expose-headers": "content-length, content-range",
      }
    : {};
  const server = createServer(async (req, res) => {
    try {
      if (req.method === "OPTIONS") {
        res.writeHead(204, { ...allow, "access-control-allow-methods": "GET, HEAD" }).end();
        return;
      }
      const path = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
      let file = normalize(join(base, path));
      if (file !== base && !file.startsWith(base + sep)) {
        res.writeHead(403).end("forbidden");
        return;
      }
      if ((await stat(file).catch(() => null))?.isDirectory()) file = join(file, "index.html");
      const type = TYPES[extname(file)] ?? "application/octet-stream";
      const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
      if (range) {
        const size = (await stat(file)).size;
        const start = Number(range[1]);
        const end = Math.min(Number(range[2]), size - 1);
        if (start > end) {
          res.writeHead(416, { ...allow, "content-range": `bytes */${size}` }).end();
          return;
        }
        const handle = await open(file);
        const body = Buffer.alloc(end - start + 1);
        await handle.read(body, 0, body.length, start);
        await handle.close();
        res.writeHead(206, {
          "content-type": type,
          "content-length": body.length,
          "content-range": `bytes ${start}-${end}/${size}`,
          ...allow,
        });
        sent.bytes += body.length;
        res.end(body);
        return;
      }
      if (req.method === "HEAD") {
        res.writeHead(200, { "content-type": type, "content-length": (await stat(file)).size, ...allow });
        res.end();
        return;
      }
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": type,
        "content-length": body.length,
        "cache-control": "no-cache",
        ...allow,
      });
      sent.bytes += body.length;
      res.end(body);
    } catch {
      res.writeHead(404, allow).end("not found");
    }
  });
  return new Promise((done, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", () => done({ server, url: `http://127.0.0.1:${server.address().port}/`, sent }));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [root = "web/dist", port = "8080"] = process.argv.slice(2);
  const { url } = await serve(root, Number(port));
  console.log(`serving ${root} at ${url} (Ctrl-C stops)`);
}
