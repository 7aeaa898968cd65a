"""Runs the same model and prompts in our engine (`ets bench`), in candle (CPU) and in PyTorch
eager, and prints decode and prefill tokens/s side by side with their ratios, in one run.

The model is a random Llama of SmolLM2-135M's shape written by `ets bench --save-model` (or
`--model DIR`, any Llama folder with model.safetensors), so all three load the very same
weights. Each engine prefills `batch` prompts of `--prompt-len` tokens, then decodes
`--decode-steps` tokens per sequence, reading each step's tokens back to the host.

    python3 bench/compare.py                        # CPU: ets cpu, candle, PyTorch CPU
    python3 bench/compare.py --ets-backend wgpu --torch-device cuda --no-candle   # a GPU
    ~/.cache/ets/venv/bin/python bench/compare.py --gguf "$(scripts/fetch-model.sh)"   # llama.cpp

With `--gguf FILE` the peer is llama.cpp (llama-cpp-python, the same file, the same 2 threads,
bench/llama_cpp_decode.py): batch-1 prefill and decode, and one ETS step (M 8, K 3, B 16, R 48)
against llama.cpp producing the same continuations one after another.

Needs python3 with torch and transformers; our engine and candle are built on first use (release;
candle in its own workspace under bench/candle). ETS_BIN / CANDLE_BIN point at prebuilt binaries instead.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def json_lines(command, env=None):
    """Runs a command (its stderr shown) and returns the JSON objects it printed."""
    print("$", " ".join(str(c) for c in command), file=sys.stderr, flush=True)
    out = subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def command(variable, default):
    return [os.environ[variable]] if os.environ.get(variable) else default


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="1,8,24,64")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--model", help="a Llama folder; default: random SmolLM2-135M shape")
    p.add_argument("--ets-backend", default="cpu", choices=["cpu", "wgpu"])
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--no-candle", action="store_true", help="skip candle (CPU only)")
    p.add_argument("--gguf", help="a GGUF file: compare with llama.cpp on it instead")
    a = p.parse_args()
    if a.gguf:
        return against_llama_cpp(a)
    shape = ["--batch", a.batch, "--prompt-len", str(a.prompt_len), "--decode-steps", str(a.decode_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or str(Path(tmp) / "model")
        # Release, as candle: the dev profile leaves wgpu and CubeCL unoptimised (fast builds).
        ets = command("ETS_BIN", ["cargo", "run", "-q", "--release", "--bin", "ets", "--"])
        ets_args = ["bench", "--backends", a.ets_backend, "--json", "--ets-m", "0", *shape]
        ets_args += ["--model", a.model] if a.model else ["--save-model", model]
        results = {"ets": json_lines(ets + ets_args)}
        results["pytorch"] = json_lines(
            [sys.executable, "bench/torch_decode.py", "--device", a.torch_device, "--model", model, *shape]
        )
        if not a.no_candle:
            candle = command(
                "CANDLE_BIN",
                ["cargo", "run", "-q", "--release", "--manifest-path", "bench/candle/Cargo.toml",
                 "--target-dir", "bench/candle/target", "--"],
            )
            results["candle"] = json_lines(candle + ["--model", model, *shape])
    engines = list(results)
    by_batch = {e: {r["batch"]: r for r in rows} for e, rows in results.items()}
    names = {"ets": f"ets {a.ets_backend}", "pytorch": f"PyTorch {a.torch_device}", "candle": "candle cpu"}
    threads = {e: rows[0].get("threads") for e, rows in results.items() if rows}
    print(f"\nthreads: {json.dumps(threads)}; prompt {a.prompt_len} tokens, {a.decode_steps} decode steps")
    for metric in ["decode_tokens_per_s", "prefill_tokens_per_s"]:
        peers = [e for e in engines if e != "ets"]
        header = ["batch"] + [names[e] + " tok/s" for e in engines] + [f"ets / {names[e]}" for e in peers]
        print(f"\n{metric.replace('_', ' ')}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for batch in [int(b) for b in a.batch.split(",")]:
            values = [by_batch[e].get(batch, {}).get(metric) for e in engines]
            ours = values[0]
            ratios = [
                f"{ours / v:.2f}" if ours and v else "–" for v in values[1:]
            ]
            cells = [str(batch)] + [f"{v:.1f}" if v else "–" for v in values] + ratios
            print("| " + " | ".join(cells) + " |")


def against_llama_cpp(a):
    """Our engine and llama.cpp on the same GGUF file: batch 1 and one ETS step."""
    ets = command("ETS_BIN", ["cargo", "run", "-q", "--release", "--bin", "ets", "--"])
    shape = ["--prompt-len", str(a.prompt_len), "--decode-steps", "64"]
    ours = json_lines(ets + ["bench", "--model", a.gguf, "--backends", a.ets_backend, "--batch", "1",
                             "--json", *shape])
    peer = json_lines([sys.executable, "bench/llama_cpp_decode.py", a.gguf, "--repeats", "2", *shape])[0]
    decode = next(r for r in ours if "decode_tokens_per_s" in r)
    step = next((r for r in ours if "ets_step_s" in r), None)
    print(f"\n{a.gguf}: ets {a.ets_backend} against llama.cpp ({peer['threads']} threads)\n")
    print("| measure | ets | llama.cpp | ratio |")
    print("|---|---|---|---|")
    for name, key in [("prefill tok/s, batch 1", "prefill_tokens_per_s"), ("decode tok/s, batch 1", "decode_tokens_per_s")]:
        print(f"| {name} | {decode[key]:.1f} | {peer[key]:.1f} | {decode[key] / peer[key]:.2f}x |")
    if step and "ets_step_s" in peer:
        print(f"| ETS step (M 8, K 3, 64 + 64 tokens), s | {step['ets_step_s']:.2f} | {peer['ets_step_s']:.2f} "
              f"(one sequence after another) | {peer['ets_step_s'] / step['ets_step_s']:.2f}x faster |")
    if step and "ets_step_batched_s" in peer:
        print(f"| ETS step, llama.cpp batched | {step['ets_step_s']:.2f} | {peer['ets_step_batched_s']:.2f} "
              f"(its batch API, shared prompt cache) | {peer['ets_step_batched_s'] / step['ets_step_s']:.2f}x faster |")


if __name__ == "__main__":
    main()
