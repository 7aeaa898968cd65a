"""Converts the bundled causal reference model (models/ref-ar: a Llama safetensors folder with a
BPE tokenizer.json) into a GGUF file that llama.cpp loads, for the remote-model tests that serve
it from llama.cpp's server:

    "$(scripts/llama-server.sh)" scripts/ref_ar_to_gguf.py OUT.gguf [--model models/ref-ar]

- tensors under GGUF's names: matrices in F16 as stored, norms in F32; the Q and K projections'
  rows permuted as llama.cpp's convert_hf_to_gguf.py does (llama.cpp applies RoPE to adjacent
  pairs, Hugging Face to the two halves of each head);
- llama.* metadata from config.json;
- the tokenizer as llama.cpp's byte-level BPE (`gpt2`): tokens and merges spelt in GPT-2's
  byte-to-unicode alphabet, pre-tokenizer `gpt-2`, the special tokens as control tokens, BOS
  added at the start of a text as the tokenizer.json's post-processor does.

Needs the `gguf` and `numpy` packages (scripts/llama-server.sh's environment has both).
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent


def read_safetensors(path):
    """Every tensor of a safetensors file as a numpy array."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    dtypes = {"F16": np.float16, "F32": np.float32, "BF16": None}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            raw = np.frombuffer(body[start:end], dtype=np.uint16).astype(np.uint32) << 16
            array = raw.view(np.float32)
        else:
            array = np.frombuffer(body[start:end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = kept[:]
    n = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(kept, chars)}


def permute(w, heads):
    """llama.cpp's row order for a Q or K projection of `heads` heads."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "ref-ar")
    args = parser.parse_args()
    config = json.loads((args.model / "config.json").read_text())
    tokenizer = json.loads((args.model / "tokenizer.json").read_text())
    if config["architectures"] != ["LlamaForCausalLM"] or tokenizer["model"]["type"] != "BPE":
        sys.exit("expects a LlamaForCausalLM folder with a BPE tokenizer.json")
    tensors = read_safetensors(args.model / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]

    writer = gguf.GGUFWriter(str(args.out), "llama")
    writer.add_name(args.model.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # The tokenizer, in llama.cpp's byte-level BPE alphabet.
    alphabet = bytes_to_unicode()
    spell = lambda text: "".join(alphabet[b] for b in text.encode("utf-8"))
    vocab = tokenizer["model"]["vocab"]
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens, types = [], []
    for text, id_ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if id_ != len(tokens):
            sys.exit(f"token ids are not contiguous at {id_}")
        if text in special:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(spell(text))
            types.append(gguf.TokenType.NORMAL)
    merges = [" ".join(spell(part) for part in (m if isinstance(m, list) else m.split(" ")))
              for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    eos = config["eos_token_id"]
    writer.add_eos_token_id(eos[0] if isinstance(eos, list) else eos)
    writer.add_pad_token_id(config.get("pad_token_id", 0))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def add(name, array):
        array = np.ascontiguousarray(array)
        writer.add_tensor(name, array.astype(np.float32) if array.ndim == 1 else array.astype(np.float16))

    add("token_embd.weight", tensors["model.embed_tokens.weight"])
    add("output_norm.weight", tensors["model.norm.weight"])
    add("output.weight", tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"]))
    for i in range(layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", tensors[p + "input_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", permute(tensors[p + "self_attn.q_proj.weight"], heads))
        add(f"blk.{i}.attn_k.weight", permute(tensors[p + "self_attn.k_proj.weight"], kv_heads))
        add(f"blk.{i}.attn_v.weight", tensors[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", tensors[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", tensors[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", tensors[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", tensors[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(args.out)


if __name__ == "__main__":
    main()
