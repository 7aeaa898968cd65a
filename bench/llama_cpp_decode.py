"""llama.cpp on a GGUF file through llama-cpp-python, with the same thread count as our engine's
CPU backend on this machine (2 cores):

- prefill and greedy decode tokens/s at batch 1 (one sequence: the binding's high-level API has
  no batch of sequences);
- the work of one ETS guidance step: M candidate blocks of B sampled tokens after the prompt,
  each completed K times with R more tokens (M·K continuations), two ways:
  - one sequence after another through the high-level API, each reusing the cached prompt (and
    candidate block) through the binding's prefix cache (`ets_step_s`);
  - batched through the binding's low-level API (`ets_step_batched_s`): the prompt decoded
    once, its cache shared by M sequences (llama_memory_seq_cp) that decode their blocks
    together, each candidate's cache shared by its K rollouts, which then decode all M·K
    together; temperature-1 sampling on the host (numpy, inverse CDF, all rows at once).
  Both decode exactly the M·B + M·K·R tokens our batched step decodes; the prompt's prefill is
  outside the timed part.

    ~/.cache/ets/venv/bin/python bench/llama_cpp_decode.py "$(scripts/fetch-model.sh)"

Prints one JSON line: medians of --repeats runs after a warm-up.
"""

import argparse
import json
import statistics
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def sampled(llm, tokens, count):
    """`count` tokens sampled (temperature 1) after `tokens`, reusing the cached prefix."""
    out = []
    for token in llm.generate(tokens, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, reset=True):
        out.append(token)
        if len(out) == count:
            break
    return out


class Batched:
    """A low-level llama.cpp context holding up to `seqs` sequences in one unified KV cache."""

    def __init__(self, path, threads, seqs, n_ctx=4096, n_batch=512):
        self.model = llama_cpp.llama_model_load_from_file(
            path.encode(), llama_cpp.llama_model_default_params())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max, params.kv_unified = seqs, True
        params.n_threads, params.n_threads_batch = threads, threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, seqs)
        self.n_batch = n_batch
        self.rng = np.random.default_rng(1)

    def decode(self, entries):
        """Decodes (token, position, seq) entries (at most n_batch), with logits for every one:
        returns them, [entries, vocab]."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, 1
            b.seq_id[i][0] = seq
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        rows = [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))
                for i in range(len(entries))]
        return np.stack(rows)

    def sample(self, logits):
        """One token per row, drawn at temperature 1."""
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        u = self.rng.random(len(logits)) * cdf[:, -1]
        return [int(np.searchsorted(row, x, side="right")) for row, x in zip(cdf, u)]

    def reset(self):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def copy(self, src, dst):
        llama_cpp.llama_memory_seq_cp(llama_cpp.llama_get_memory(self.ctx), src, dst, -1, -1)

    def prefill(self, prompt):
        """The prompt in sequence 0 (chunks of the batch size); the last position's logits."""
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start:start + self.n_batch]
            logits = self.decode([(t, start + i, 0) for i, t in enumerate(chunk)])
        return logits[-1:]

    def ets_step(self, last_logits, prompt_len, m, k, block, rollout):
        """M blocks of `block` tokens from the prompt's last logits, then K rollouts of each."""
        for s in range(1, m):
            self.copy(0, s)
        tokens = self.sample(np.repeat(last_logits, m, axis=0))
        for t in range(block):
            logits = self.decode([(tokens[s], prompt_len + t, s) for s in range(m)])
            tokens = self.sample(logits)
        # Rollout (c, j) in sequence m + c·k + j, from candidate c's cache and last logits.
        for c in range(m):
            for j in range(k):
                self.copy(c, m + c * k + j)
        tokens = self.sample(np.repeat(logits, k, axis=0))
        for t in range(rollout):
            logits = self.decode([(tokens[r], prompt_len + block + t, m + r) for r in range(m * k)])
            tokens = self.sample(logits)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ets-m", type=int, default=8, help="candidates; 0 skips the ETS step")
    p.add_argument("--ets-k", type=int, default=3)
    p.add_argument("--ets-block", type=int, default=16)
    p.add_argument("--ets-rollout", type=int, default=48)
    a = p.parse_args()
    llm = Llama(model_path=a.model, n_ctx=1024, n_threads=a.threads, n_threads_batch=a.threads,
                seed=1, verbose=False)
    prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 16, add_bos=False)[: a.prompt_len]
    prefills, decodes, steps = [], [], []
    for run in range(a.repeats + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        count = 0
        for token in llm.generate(prompt, temp=0.0, reset=False):
            count += 1
            if count == a.decode_steps:
                break
        decode = time.perf_counter() - start
        if a.ets_m > 0:
            llm.reset()
            llm.eval(prompt)
            start = time.perf_counter()
            for _ in range(a.ets_m):
                block = sampled(llm, prompt, a.ets_block)
                for _ in range(a.ets_k):
                    sampled(llm, prompt + block, a.ets_rollout)
            step = time.perf_counter() - start
        if run > 0:
            prefills.append(a.prompt_len / prefill)
            decodes.append(count / decode)
            if a.ets_m > 0:
                steps.append(step)
    batched = []
    if a.ets_m > 0:
        del llm
        ctx = Batched(a.model, a.threads, a.ets_m + a.ets_m * a.ets_k)
        for run in range(a.repeats + 1):
            ctx.reset()
            last = ctx.prefill(prompt)
            start = time.perf_counter()
            ctx.ets_step(last, len(prompt), a.ets_m, a.ets_k, a.ets_block, a.ets_rollout)
            if run > 0:
                batched.append(time.perf_counter() - start)
    result = {"engine": "llama.cpp", "threads": a.threads, "prompt_len": a.prompt_len,
              "decode_steps": a.decode_steps, "prefill_tokens_per_s": statistics.median(prefills),
              "decode_tokens_per_s": statistics.median(decodes)}
    if steps:
        result.update({"ets_m": a.ets_m, "ets_k": a.ets_k, "block": a.ets_block, "rollout": a.ets_rollout,
                       "ets_step_s": statistics.median(steps),
                       "ets_step_batched_s": statistics.median(batched),
                       "ets_step_tokens": a.ets_m * a.ets_block + a.ets_m * a.ets_k * a.ets_rollout})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
