"""llama.cpp on a GGUF file through llama-cpp-python, with the same thread count as our engine's
CPU backend on this machine (2 cores):

- prefill and greedy decode tokens/s at batch 1 (one sequence: the binding's high-level API has
  no batch of sequences);
- the work of one ETS guidance step: M candidate blocks of B sampled tokens after the prompt,
  each completed K times with R more tokens (M·K continuations). The sequences run one after
  another, each reusing the cached prompt (and candidate block) through the binding's prefix
  cache, so llama.cpp decodes exactly the M·B + M·K·R tokens our batched step decodes.

    ~/.cache/ets/venv/bin/python bench/llama_cpp_decode.py "$(scripts/fetch-model.sh)"

Prints one JSON line: medians of --repeats runs after a warm-up.
"""

import argparse
import json
import statistics
import time

from llama_cpp import Llama


def sampled(llm, tokens, count):
    """`count` tokens sampled (temperature 1) after `tokens`, reusing the cached prefix."""
    out = []
    for token in llm.generate(tokens, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, reset=True):
        out.append(token)
        if len(out) == count:
            break
    return out


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
    result = {"engine": "llama.cpp", "threads": a.threads, "prompt_len": a.prompt_len,
              "decode_steps": a.decode_steps, "prefill_tokens_per_s": statistics.median(prefills),
              "decode_tokens_per_s": statistics.median(decodes)}
    if steps:
        result.update({"ets_m": a.ets_m, "ets_k": a.ets_k, "block": a.ets_block, "rollout": a.ets_rollout,
                       "ets_step_s": statistics.median(steps),
                       "ets_step_tokens": a.ets_m * a.ets_block + a.ets_m * a.ets_k * a.ets_rollout})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
