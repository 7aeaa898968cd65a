// A scripted OpenAI-compatible inference server for the apps' tests, bound to 127.0.0.1: it
// lists one model as llama.cpp's server does (`owned_by: "llamacpp"`, so prompts come as token
// ids; or as `owner` says) and answers every completion request with the same text, ended
// (`finish_reason: "stop"`), `n` times — but the first with `first`, not ended, where given —;
// a request with `echo` (ETS-IS scoring given tokens, as
// vLLM does) gets −0.5 nats for each prompt token.
// It records each request's body, and can hold its answers (`hold`) to test Stop, or send no
// CORS headers (`cors: false`) to test a server that refuses other origins.
import { createServer } from "node:http";

/**
 * Starts the server; resolves to { url, requests, closed, setHold, close }: `url` is its
 * OpenAI-compatible base (`http://127.0.0.1:PORT/v1`), `requests` the completion bodies
 * received, `closed` how many requests the client abandoned before their answer.
 */
export function openaiServer({ text, first, cors = true, model = "scripted", owner = "llamacpp" }) {
  const requests = [];
  const state = { closed: 0, hold: false };
  const allow = cors
    ? {
        "access-control-allow-origin": "*",
        "access-control-allow-headers": "content-type, authorization",
        "access-control-allow-methods": "GET, POST",
      }
    : {};
  const json = (res, status, body) => {
    res.writeHead(status, { "content-type": "application/json", ...allow }).end(JSON.stringify(body));
  };
  const server = createServer((req, res) => {
    if (req.method === "OPTIONS") {
      res.writeHead(204, allow).end();
      return;
    }
    const path = new URL(req.url, "http://localhost").pathname;
    if (req.method === "GET" && path === "/v1/models") {
      json(res, 200, { object: "list", data: [{ id: model, object: "model", owned_by: owner }] });
      return;
    }
    if (req.method !== "POST" || path !== "/v1/completions") {
      json(res, 404, { error: { message: `no ${req.method} ${path}` } });
      return;
    }
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const request = JSON.parse(body);
      requests.push(request);
      const scoring = () => {
        const tokens = Array.isArray(request.prompt) ? request.prompt.length : 1;
        const logprobs = [null, ...Array(tokens - 1).fill(-0.5), -0.1];
        return {
          object: "text_completion",
          model,
          choices: [{ index: 0, text: "", finish_reason: "length", logprobs: { token_logprobs: logprobs } }],
          usage: { prompt_tokens: tokens, completion_tokens: 1 },
        };
      };
      const opening = first !== undefined && !request.echo && !requests.some((b, i) => i < requests.length - 1 && !b.echo);
      const choices = Array.from({ length: request.n ?? 1 }, (_, index) => ({
        index,
        text: opening ? first : text,
        finish_reason: opening ? "length" : "stop",
        logprobs: request.logprobs ? { token_logprobs: [-1.0] } : null,
      }));
      const answer = () =>
        json(res, 200, request.echo ? scoring() : { object: "text_completion", model, choices });
      if (!state.hold) return answer();
      // Held: answered only if the client still waits after 60 s.
      const timer = setTimeout(answer, 60_000);
      res.on("close", () => {
        if (!res.writableEnded) {
          clearTimeout(timer);
          state.closed += 1;
        }
      });
    });
  });
  return new Promise((done, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () =>
      done({
        url: `http://127.0.0.1:${server.address().port}/v1`,
        requests,
        get closed() {
          return state.closed;
        },
        setHold(on) {
          state.hold = on;
        },
        close() {
          server.closeAllConnections();
          server.close();
        },
      }),
    );
  });
}
