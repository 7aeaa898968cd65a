"""PyTorch eager decode speed on a random Llama of SmolLM2-135M's shape (or a model folder):
prefill a prompt, then decode one token per step with the KV cache (greedy, the tokens read
back every step), at several batch sizes, the way `ets bench` measures. Prints one JSON object
per measurement; `bench/compare.py` runs it beside our engine and candle.

    python3 bench/torch_decode.py --device cuda --batch 1,8,24,64
"""

import argparse
import json
import time
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    # transformers 5 renames `past_key_values`; the old name still works and says so each step.
    warnings.filterwarnings("ignore", category=FutureWarning)
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", default="1,8,24,64")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--model", help="a model folder; default: random SmolLM2-135M shape")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.model:
        model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    else:
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    model = model.to(a.device).eval()
    vocab = model.config.vocab_size
    for batch in [int(b) for b in a.batch.split(",")]:
        ids = torch.randint(0, vocab, (batch, a.prompt_len), device=a.device)
        with torch.inference_mode():
            for repeat in range(2):  # the first pass warms up kernels and allocator
                sync(a.device)
                t0 = time.perf_counter()
                out = model(ids, use_cache=True)
                sync(a.device)
                t1 = time.perf_counter()
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                nxt.tolist()
                t1_decode = time.perf_counter()
                for _ in range(a.decode_steps):
                    out = model(nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    nxt.tolist()  # the tokens reach the host every step, as in ets bench
                sync(a.device)
                t2 = time.perf_counter()
        print(json.dumps({
            "engine": "pytorch-eager",
            "device": a.device,
            "threads": torch.get_num_threads(),
            "batch": batch,
            "prefill_tokens_per_s": batch * a.prompt_len / (t1 - t0),
            "decode_tokens_per_s": batch * a.decode_steps / (t2 - t1_decode),
        }), flush=True)


if __name__ == "__main__":
    main()
