"""llama.cpp's prefill and greedy decode speed on a GGUF file at batch 1, through
llama-cpp-python (one sequence; the binding's high-level API has no batch of sequences), with
the same thread count as our engine's CPU backend on this machine:

    ~/.cache/ets/venv/bin/python bench/llama_cpp_decode.py "$(scripts/fetch-model.sh)"

Prints one JSON line: prefill and decode tokens/s (medians of --repeats runs after a warm-up).
"""

import argparse
import json
import statistics
import time

from llama_cpp import Llama


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    llm = Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    prompt = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 16, add_bos=False)[: a.prompt_len]
    prefills, decodes = [], []
    for run in range(a.repeats + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        steps = 0
        for token in llm.generate(prompt, temp=0.0, reset=False):
            steps += 1
            if steps == a.decode_steps:
                break
        decode = time.perf_counter() - start
        if run > 0:
            prefills.append(a.prompt_len / prefill)
            decodes.append(steps / decode)
    print(json.dumps({"engine": "llama.cpp", "threads": a.threads, "prompt_len": a.prompt_len,
                      "decode_steps": a.decode_steps, "prefill_tokens_per_s": statistics.median(prefills),
                      "decode_tokens_per_s": statistics.median(decodes)}))


if __name__ == "__main__":
    main()
