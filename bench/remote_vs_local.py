"""ETS over an inference server against the local engine, same model, same strategy, one run:
rollouts per second and wall time per question.

The server is llama.cpp's, from llama-cpp-python (scripts/llama-server.sh installs it in a
cache), serving the real model (SmolLM2-135M-Instruct Q4_1, scripts/fetch-model.sh) on
127.0.0.1 with 2 threads; the local engine runs the same GGUF file on the CPU backend. Both
answer the same questions with ETS (M, K, B below; self-consistency reward) through
`ets solve --json --trace`, which reports the rollouts each guidance step drew.

    python3 bench/remote_vs_local.py                 # ETS_BIN: a prebuilt ets (default: debug build)
    python3 bench/remote_vs_local.py --m 4 --k 2 --block 16 --max-tokens 64 --questions 3
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "How many legs does a dog have?",
    "What is the capital of Germany?",
    "What is the opposite of hot?",
    "Name a fruit that is yellow.",
    "How many days are in a week?",
]


def script(name):
    return subprocess.run([str(ROOT / "scripts" / name)], check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python, gguf, port):
    server = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--seed", "0",
         "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.25)
    server.kill()
    sys.exit("the server did not start within 120 s")


def solve(ets, model, question, args, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        command = [ets, "solve", "--model", model, "--json", "--trace", trace.name,
                   "--strategy", "ets", "--m", str(args.m), "--k", str(args.k),
                   "--block", str(args.block), "--max-tokens", str(args.max_tokens),
                   "--temperature", "0.7", "--seed", "1", *extra, question]
        start = time.time()
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, cwd=ROOT).stdout
        wall = time.time() - start
        result = json.loads(out.splitlines()[-1])
        events = json.load(open(trace.name))["events"]
    # A complete candidate stands for its own K rollouts: only open candidates drew any.
    rollouts = sum(len(c["rollouts"]) for e in events if e["event"] == "step"
                   for c in e["candidates"] if not c["complete"])
    return {"rollouts": rollouts, "wall_s": wall, "run_ms": result["wall_ms"],
            "tokens": result["tokens"], "text": result["text"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--questions", type=int, default=3)
    args = parser.parse_args()
    ets = os.environ.get("ETS_BIN") or str(Path(os.environ.get(
        "CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "ets")
    python, gguf = script("llama-server.sh"), script("fetch-model.sh")
    port = free_port()
    server = start_server(python, gguf, port)
    rows = {"server (llama-cpp-python)": [], "local engine (cpu)": []}
    try:
        for question in QUESTIONS[:args.questions]:
            rows["server (llama-cpp-python)"].append(solve(
                ets, gguf, question, args,
                ["--endpoint", f"http://127.0.0.1:{port}/v1", "--max-in-flight", "4"]))
            rows["local engine (cpu)"].append(solve(ets, gguf, question, args, ["--backend", "cpu"]))
    finally:
        server.kill()
    print(f"ETS M={args.m} K={args.k} B={args.block}, {args.max_tokens} tokens at most, "
          f"{args.questions} questions, SmolLM2-135M-Instruct Q4_1")
    print("| where | rollouts / question | run s / question | rollouts / s |")
    print("|---|---|---|---|")
    rate = {}
    for name, runs in rows.items():
        rollouts = sum(r["rollouts"] for r in runs)
        seconds = sum(r["run_ms"] for r in runs) / 1e3
        rate[name] = rollouts / seconds
        print(f"| {name} | {rollouts / len(runs):.1f} | {seconds / len(runs):.2f} | {rate[name]:.2f} |")
    server_rate, local_rate = rate.values()
    print(f"server / local rollouts per second: {server_rate / local_rate:.2f}")


if __name__ == "__main__":
    main()
