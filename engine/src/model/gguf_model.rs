//! A GGUF file as a model: its hyperparameters as a [`ModelConfig`] (architectures `llama`,
//! `qwen2`, `qwen3`), Hugging Face tensor names mapped to GGUF's, and Llama's Q and K rows put
//! back in Hugging Face's order (llama.cpp's converter interleaves the two rotary halves of each
//! head; Qwen's files are not permuted).

use serde_json::json;

use crate::error::{Error, GgufError, Result};
use crate::model::config::{Architecture, ModelConfig};
use crate::model::gguf::{Array, GgufFile, Value};

/// The model config a GGUF file's metadata describes; `name` labels errors.
pub fn config_from_gguf(name: &str, file: &GgufFile) -> Result<ModelConfig> {
    let problem = |key: &str, problem: String| Error::Gguf {
        file: name.to_string(),
        problem: GgufError::Metadata {
            key: key.to_string(),
            problem,
        },
    };
    let arch_key = "general.architecture";
    let arch = file
        .get(arch_key)
        .and_then(Value::as_str)
        .ok_or_else(|| problem(arch_key, "missing, or not a string".into()))?;
    let architecture = match arch {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(problem(
                arch_key,
                format!("architecture {other:?} is not supported (llama, qwen2 and qwen3 are)"),
            ));
        }
    };
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let integer = |key: &str| -> Result<Option<u64>> {
        match file.get(key) {
            None => Ok(None),
            Some(Value::Array(_)) => Err(problem(
                key,
                "per-layer values are not supported (one value for every layer is)".into(),
            )),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                problem(key, format!("must be an integer, found {}", v.type_name()))
            }),
        }
    };
    let required = |key: &str| integer(key)?.ok_or_else(|| problem(key, "missing".into()));
    let float = |key: &str| -> Result<Option<f64>> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| problem(key, format!("must be a float, found {}", v.type_name()))),
        }
    };
    let heads = required(&key("attention.head_count"))?;
    let kv_heads = integer(&key("attention.head_count_kv"))?.unwrap_or(heads);
    let hidden = required(&key("embedding_length"))?;
    let head_dim = integer(&key("attention.key_length"))?;
    let rope_dims = integer(&key("rope.dimension_count"))?;
    if let (Some(rope), Some(head)) = (rope_dims, head_dim.or(hidden.checked_div(heads)))
        && rope != head
    {
        return Err(problem(
            &key("rope.dimension_count"),
            format!("rotary embeddings over {rope} of {head} head dimensions are not supported"),
        ));
    }
    if let Some(kind) = file.get(&key("rope.scaling.type")).and_then(Value::as_str)
        && kind != "none"
    {
        return Err(problem(
            &key("rope.scaling.type"),
            format!("rope scaling {kind:?} is not supported"),
        ));
    }
    let vocab_size = match integer(&key("vocab_size"))? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens") {
            Some(Value::Array(Array::String(tokens))) => tokens.len() as u64,
            _ => file
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1))
                .map(|d| *d as u64)
                .ok_or_else(|| problem(&key("vocab_size"), "missing".into()))?,
        },
    };
    let mut config = json!({
        "architectures": [architecture.hf_name()],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": required(&key("feed_forward_length"))?,
        "num_hidden_layers": required(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": float(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| problem(&key("attention.layer_norm_rms_epsilon"), "missing".into()))?,
        "rope_theta": float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        "max_position_embeddings": required(&key("context_length"))?,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "attention_bias": file.tensor("blk.0.attn_q.bias").is_some(),
    });
    if let Some(d) = head_dim {
        config["head_dim"] = json!(d);
    }
    if let Some(id) = integer("tokenizer.ggml.bos_token_id")? {
        config["bos_token_id"] = json!(id);
    }
    if let Some(id) = integer("tokenizer.ggml.eos_token_id")? {
        config["eos_token_id"] = json!(id);
    }
    ModelConfig::from_json(&config.to_string()).map_err(|e| match e {
        Error::Config(reason) => problem("(hyperparameters)", reason),
        other => other,
    })
}

/// The GGUF name of the Hugging Face tensor `hf` (e.g. `model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`), or None for a name GGUF files do not use.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// How many heads the rows of Hugging Face tensor `hf` hold when llama.cpp's converter permuted
/// them (Llama's Q and K projections and their biases): `heads` for Q, `kv_heads` for K.
pub fn permuted_heads(
    architecture: Architecture,
    hf: &str,
    heads: usize,
    kv_heads: usize,
) -> Option<usize> {
    if architecture != Architecture::Llama {
        return None;
    }
    if hf.contains(".self_attn.q_proj.") {
        Some(heads)
    } else if hf.contains(".self_attn.k_proj.") {
        Some(kv_heads)
    } else {
        None
    }
}

/// Puts the rows of a permuted Q or K tensor (`values`: rows of `row_len` values — f32, or the
/// bytes of whole quantized blocks — `heads` heads of equal size) back in Hugging Face's order:
/// within each head, GGUF row 2i + p is Hugging Face row p·d/2 + i (d the head's rows,
/// p ∈ {0, 1}).
pub fn unpermute_rows<T: Copy + Default>(values: &[T], row_len: usize, heads: usize) -> Vec<T> {
    let rows = values.len() / row_len.max(1);
    let head = rows / heads.max(1);
    let half = head / 2;
    let mut out = vec![T::default(); values.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let from = (h * head + 2 * i + p) * row_len;
                let to = (h * head + p * half + i) * row_len;
                out[to..to + row_len].copy_from_slice(&values[from..from + row_len]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_gguf_names() {
        for (hf, gguf) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.12.self_attn.q_proj.bias",
                "blk.12.attn_q.bias",
            ),
            (
                "model.layers.3.self_attn.k_norm.weight",
                "blk.3.attn_k_norm.weight",
            ),
            (
                "model.layers.29.mlp.down_proj.weight",
                "blk.29.ffn_down.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.rotary.inv_freq"), None);
    }

    #[test]
    fn unpermuting_inverts_the_converters_permutation() {
        // Two heads of 8 rows, rows of 3: HF row r holds the values 10r, 10r + 1, 10r + 2.
        let (heads, head, row_len) = (2, 8, 3);
        let hf: Vec<f32> = (0..heads * head * row_len)
            .map(|k| (10 * (k / row_len) + k % row_len) as f32)
            .collect();
        // The converter: reshape(heads, 2, head / 2, …).swapaxes(1, 2), i.e. GGUF row
        // h·8 + 2i + p is HF row h·8 + 4p + i.
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for i in 0..head / 2 {
                for p in 0..2 {
                    let to = (h * head + 2 * i + p) * row_len;
                    let from = (h * head + p * head / 2 + i) * row_len;
                    gguf[to..to + row_len].copy_from_slice(&hf[from..from + row_len]);
                }
            }
        }
        assert_eq!(
            &gguf[..8 * row_len]
                .chunks(3)
                .map(|r| r[0] as usize / 10)
                .collect::<Vec<_>>(),
            &[0, 4, 1, 5, 2, 6, 3, 7]
        );
        assert_eq!(unpermute_rows(&gguf, row_len, heads), hf);
    }
}
