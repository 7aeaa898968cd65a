//! Random checkpoints of any supported shape, built in memory as ordinary model files, so that
//! benchmarks and tests load them through the same path as real checkpoints.

use crate::model::config::ModelConfig;
use crate::model::files::ModelFiles;
use crate::model::safetensors::{Dtype, serialize};
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
    if !c.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![c.vocab_size, h]));
    }
    shapes
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
            if name.ends_with("norm.weight") {
                return vec![1.0; n];
            }
            // Uniform with the variance of N(0, 1/fan_in): keeps activations in range.
            let scale = (3.0 / *shape.last().unwrap_or(&1) as f64).sqrt();
            (0..n as u64)
                .map(|k| ((2.0 * rng.uniform(t as u64, k) - 1.0) * scale) as f32)
                .collect()
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
