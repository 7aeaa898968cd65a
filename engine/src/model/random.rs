//! Random checkpoints of any supported shape, built in memory as ordinary model files, so that
//! benchmarks and tests load them through the same path as real checkpoints.

use crate::error::{Error, Result};
use crate::model::config::{Architecture, ModelConfig};
use crate::model::files::ModelFiles;
use crate::model::gguf::{self, Array, Value};
use crate::model::gguf_model::gguf_tensor_name;
use crate::model::safetensors::{Dtype, serialize};
use crate::quant::{TensorType, quantize};
use crate::rng::CounterRng;

/// The tensor names and HF shapes ([out, in] for linear layers) a config implies.
pub fn tensor_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_heads * d, c.num_kv_heads * d);
    let mut shapes = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let mut push =
            |name: String, shape: Vec<usize>| shapes.push((format!("{p}.{name}"), shape));
        push("input_layernorm.weight".into(), vec![h]);
        push("post_attention_layernorm.weight".into(), vec![h]);
        for (proj, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            push(format!("self_attn.{proj}.weight"), vec![out, h]);
            if c.qkv_bias {
                push(format!("self_attn.{proj}.bias"), vec![out]);
            }
        }
        push("self_attn.o_proj.weight".into(), vec![h, q]);
        if c.o_bias {
            push("self_attn.o_proj.bias".into(), vec![h]);
        }
        if c.qk_norm {
            push("self_attn.q_norm.weight".into(), vec![d]);
            push("self_attn.k_norm.weight".into(), vec![d]);
        }
        for (proj, shape) in [
            ("gate_proj", vec![i, h]),
            ("up_proj", vec![i, h]),
            ("down_proj", vec![h, i]),
        ] {
            if c.mlp_bias {
                push(format!("mlp.{proj}.bias"), vec![shape[0]]);
            }
            push(format!("mlp.{proj}.weight"), shape);
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    if !c.head_is_tied() {
        shapes.push((format!("{}.weight", c.head_name()), vec![c.head_width(), h]));
    }
    shapes
}

/// Values `range` of random tensor number `t` named `name` of `shape`: ones for a norm, else
/// uniform with the variance of N(0, 1/fan_in), which keeps activations in range.
fn random_values(
    rng: CounterRng,
    t: usize,
    (name, shape): (&str, &[usize]),
    range: std::ops::Range<u64>,
) -> Vec<f32> {
    if name.ends_with("norm.weight") {
        return vec![1.0; (range.end - range.start) as usize];
    }
    let scale = (3.0 / *shape.last().unwrap_or(&1) as f64).sqrt();
    range
        .map(|k| ((2.0 * rng.uniform(t as u64, k) - 1.0) * scale) as f32)
        .collect()
}

/// Model files (`config.json` as given, `model.safetensors` with random f32 weights) for `config_json`.
pub fn random_model_files(config_json: &str, config: &ModelConfig, seed: u64) -> ModelFiles {
    let rng = CounterRng { seed };
    let shapes = tensor_shapes(config);
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            random_values(rng, t, (name, shape), 0..n as u64)
        })
        .collect();
    let tensors: Vec<(&str, &[usize], &[f32])> = shapes
        .iter()
        .zip(&values)
        .map(|((name, shape), v)| (name.as_str(), shape.as_slice(), v.as_slice()))
        .collect();
    ModelFiles::from_memory([
        ("config.json".to_string(), config_json.as_bytes().to_vec()),
        (
            "model.safetensors".to_string(),
            serialize(&tensors, Dtype::F32),
        ),
    ])
}

/// A GGUF file of random weights with `config`'s shape (a causal Llama, Qwen2 or Qwen3): its
/// matrices in `matrices` blocks (Q8_0 where rows are not whole blocks of it), the embedding (the
/// tied output head) in `embedding` blocks, norms and biases in F32; and a byte-level BPE
/// tokenizer of `config.vocab_size` tokens without merges: the 256 bytes, then `t256`, `t257`, …,
/// the last one `<|endoftext|>`, the end of a response. Same seed, same file.
pub fn random_gguf(
    config: &ModelConfig,
    matrices: TensorType,
    embedding: TensorType,
    seed: u64,
) -> Result<Vec<u8>> {
    let arch = match config.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::LlamaMaskedDiffusion => {
            return Err(Error::Config(
                "a random GGUF file holds a causal model (llama, qwen2 or qwen3)".into(),
            ));
        }
    };
    let c = config;
    if c.vocab_size <= 256 || !c.head_is_tied() {
        return Err(Error::Config(
            "a random GGUF file needs a vocabulary above 256 tokens and a tied output head".into(),
        ));
    }
    let rng = CounterRng { seed };
    let mut data: Vec<(String, Vec<usize>, TensorType, Vec<u8>)> = Vec::new();
    for (t, (name, shape)) in tensor_shapes(c).into_iter().enumerate() {
        let gguf_name =
            gguf_tensor_name(&name).ok_or(Error::Internal("a tensor without a GGUF name"))?;
        let row = *shape.last().unwrap_or(&1);
        let rows: usize = shape.iter().product::<usize>() / row.max(1);
        let wanted = if name == "model.embed_tokens.weight" {
            embedding
        } else {
            matrices
        };
        let tensor_type = match shape.len() {
            1 => TensorType::F32,
            _ if row.is_multiple_of(wanted.block_len()) => wanted,
            _ => TensorType::Q8_0,
        };
        // A few MB of rows at a time: the embedding alone is 545 MB of f32 for Qwen2.5-0.5B.
        let chunk_rows = (1 << 20) / row.max(1) + 1;
        let mut bytes = Vec::with_capacity(tensor_type.bytes_of(rows * row).unwrap_or(0));
        for first in (0..rows).step_by(chunk_rows) {
            let last = (first + chunk_rows).min(rows);
            let values = random_values(
                rng,
                t,
                (&name, &shape),
                (first * row) as u64..(last * row) as u64,
            );
            match tensor_type {
                TensorType::F32 => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
                t => bytes.extend(quantize(t, &values)?),
            }
        }
        // ggml's dimension order: innermost first.
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        data.push((gguf_name, dims, tensor_type, bytes));
    }
    let vocab = c.vocab_size;
    let mut tokens: Vec<String> = (0..=255u8).map(byte_char).map(String::from).collect();
    tokens.extend((256..vocab - 1).map(|i| format!("t{i}")));
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; vocab];
    types[vocab - 1] = 3;
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let u32_of = |v: usize| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String("random weights".into()),
        ),
        (key("block_count"), u32_of(c.num_layers)),
        (key("context_length"), u32_of(c.max_position_embeddings)),
        (key("embedding_length"), u32_of(c.hidden_size)),
        (key("feed_forward_length"), u32_of(c.intermediate_size)),
        (key("attention.head_count"), u32_of(c.num_heads)),
        (key("attention.head_count_kv"), u32_of(c.num_kv_heads)),
        (key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(Vec::new())),
        ),
        ("tokenizer.ggml.eos_token_id".into(), u32_of(vocab - 1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    if c.head_dim * c.num_heads != c.hidden_size {
        // Otherwise the head size follows from the hidden size: llama.cpp's files leave it out.
        for name in ["key_length", "value_length"] {
            metadata.push((key(&format!("attention.{name}")), u32_of(c.head_dim)));
        }
    }
    let metadata: Vec<(&str, Value)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let tensors: Vec<(&str, &[usize], TensorType, &[u8])> = data
        .iter()
        .map(|(n, d, t, b)| (n.as_str(), d.as_slice(), *t, b.as_slice()))
        .collect();
    Ok(gguf::write(&metadata, &tensors, gguf::DEFAULT_ALIGNMENT))
}

/// The character GPT-2's byte-level BPE writes for byte `b`: printable Latin-1 bytes stand for
/// themselves, the others for the characters from U+0100 on, in order.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

/// A `tokenizer.json` for models without a vocabulary of their own (random weights): token i
/// is the word `t{i}`, words are split at whitespace and decoded joined by spaces.
pub fn word_tokenizer_json(vocab_size: usize) -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..vocab_size)
        .map(|i| (format!("t{i}"), serde_json::Value::from(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    });
    // A map of strings and numbers always serialises.
    serde_json::to_vec(&tokenizer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_tokenizer_maps_words_to_ids_and_back() {
        let tokenizer = tokenizers::Tokenizer::from_bytes(word_tokenizer_json(10)).unwrap();
        let encoding = tokenizer.encode("t3 t9  t0", true).unwrap();
        assert_eq!(encoding.get_ids(), [3, 9, 0]);
        assert_eq!(tokenizer.decode(&[3, 9, 0], true).unwrap(), "t3 t9 t0");
    }
}
