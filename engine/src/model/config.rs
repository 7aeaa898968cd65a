//! Hugging Face `config.json` → [`ModelConfig`], the one description every architecture file
//! and the forward pass read.
//!
//! Supported: `LlamaForCausalLM` (Llama 2/3, SmolLM, TinyLlama), `Qwen2ForCausalLM` (q/k/v
//! biases), `Qwen3ForCausalLM` (per-head q/k RMSNorm, explicit `head_dim`), and
//! `LlamaForMaskedDiffusion` (this project's masked diffusion LM: a Llama body with bidirectional
//! attention that predicts the tokens behind `mask_token_id`, trained with LLaDA's objective).
//! Each of Llama, Qwen2 and Qwen3 also as `…ForSequenceClassification` with one label: the same
//! body with a scalar `score` head instead of `lm_head` (a reward model; [`Head::Score`]).
//! Both the classic layout (`rope_theta`, `rope_scaling`) and transformers 5's `rope_parameters`
//! are read.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The model families the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    /// A Llama body with bidirectional attention, predicting masked tokens (LLaDA-style).
    LlamaMaskedDiffusion,
}

impl Architecture {
    /// Maps an entry of `config.json`'s `architectures` list.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" => Ok(Self::Llama),
            "Qwen2ForCausalLM" => Ok(Self::Qwen2),
            "Qwen3ForCausalLM" => Ok(Self::Qwen3),
            "LlamaForMaskedDiffusion" => Ok(Self::LlamaMaskedDiffusion),
            other => Err(Error::UnknownArchitecture(other.to_string())),
        }
    }

    /// The name `config.json`'s `architectures` list gives this family.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::LlamaMaskedDiffusion => "LlamaForMaskedDiffusion",
        }
    }
}

/// What reads the last layer's normalised hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `lm_head` (or the tied embedding table): next-token logits over the vocabulary.
    LanguageModel,
    /// `score.weight` ([1, hidden], no bias): one scalar per position, a reward model's score
    /// where it is read at the last token (HF's `*ForSequenceClassification`, one label).
    Score,
}

/// The architectures list's suffix of a reward model: `LlamaForSequenceClassification`.
const SEQUENCE_CLASSIFICATION: &str = "ForSequenceClassification";

/// What the model predicts, which decides its attention mask and its sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// The next token, attending to earlier positions only.
    Causal,
    /// The original tokens behind every `mask_token_id`, attending to all positions.
    MaskedDiffusion { mask_token_id: u32 },
}

/// Llama 3's frequency-dependent RoPE rescaling (`rope_type: "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Everything the forward pass needs to know about a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub objective: Objective,
    /// What the hidden states are read by: next-token logits or a reward model's score.
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Width of one attention head (may differ from hidden_size / num_heads, as in Qwen3).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` only).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Upper bounds on a config's sizes, each far above any released model of the supported
/// families (Llama 3.1 405B: 126 layers, 16,384 wide, 53,248 MLP, 128 heads of 128, 131,072
/// positions; the largest vocabularies about 262,144), so that a damaged or hostile
/// `config.json` is refused before its numbers size anything.
pub struct ConfigLimits {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
}

/// The limits every config is checked against.
pub const LIMITS: ConfigLimits = ConfigLimits {
    vocab_size: 1 << 22,
    hidden_size: 1 << 16,
    intermediate_size: 1 << 18,
    num_layers: 1024,
    num_heads: 1024,
    head_dim: 1024,
    max_position_embeddings: 1 << 24,
};

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: usize,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    mask_token_id: Option<u32>,
    /// A classifier's labels (`*ForSequenceClassification`): their count is the head's width.
    id2label: Option<serde_json::Map<String, Value>>,
    num_labels: Option<usize>,
}

/// The `config.json` of SmolLM2-135M (HuggingFaceTB), the reference shape for benchmarks.
pub const SMOLLM2_135M_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
  "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
  "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true, "vocab_size": 49152
}"#;

/// The `config.json` of Qwen2.5-0.5B-Instruct (Qwen): a 151,936-token vocabulary, Q/K/V biases,
/// a tied head; the shape of the browser's largest-model test.
pub const QWEN2_5_0_5B_CONFIG: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645,
  "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
  "max_position_embeddings": 32768, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "use_sliding_window": false, "vocab_size": 151936
}"#;

/// Reads token ids given as a number or a list of numbers (HF allows both for `eos_token_id`).
pub(crate) fn token_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Value::Array(items) => items.iter().flat_map(token_ids).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        let name = value
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                value
                    .get("model_type")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| Error::Config("names no `architectures` and no `model_type`".into()))?;
        // A reward model: a causal family's body with a score head.
        let (family, head) = match name.strip_suffix(SEQUENCE_CLASSIFICATION) {
            Some(family) => (format!("{family}ForCausalLM"), Head::Score),
            None => (name.clone(), Head::LanguageModel),
        };
        // Check the architecture first, so an unknown model says so rather than "missing field".
        let architecture = match family.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "llama_masked_diffusion" => Architecture::LlamaMaskedDiffusion,
            other => Architecture::from_hf_name(other)
                .map_err(|_| Error::UnknownArchitecture(name.clone()))?,
        };
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))?;
        if head == Head::Score {
            // transformers writes the labels as id2label; without one a classifier has 2.
            let labels = raw
                .num_labels
                .or(raw.id2label.as_ref().map(|m| m.len()))
                .unwrap_or(2);
            if labels != 1 {
                return Err(Error::Config(format!(
                    "a reward model scores with one label; this classifier has {labels} (id2label)"
                )));
            }
        }
        Self::from_raw(architecture, head, raw)
    }

    /// Width of what the head writes per position: the vocabulary, or 1 for a score head.
    pub fn head_width(&self) -> usize {
        match self.head {
            Head::LanguageModel => self.vocab_size,
            Head::Score => 1,
        }
    }

    /// The checkpoint name of the head's weight matrix (absent when tied to the embeddings).
    pub fn head_name(&self) -> &'static str {
        match self.head {
            Head::LanguageModel => "lm_head",
            Head::Score => "score",
        }
    }

    /// Whether the output head is the embedding table (a score head never is).
    pub fn head_is_tied(&self) -> bool {
        self.head == Head::LanguageModel && self.tie_word_embeddings
    }

    fn from_raw(architecture: Architecture, head: Head, raw: RawConfig) -> Result<Self> {
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(Error::Config(format!(
                "hidden_act {act:?} is not supported (only silu)"
            )));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(Error::Config(
                "sliding-window attention is not supported".into(),
            ));
        }
        let num_heads = raw.num_attention_heads;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        for (field, value, limit) in [
            ("vocab_size", raw.vocab_size, LIMITS.vocab_size),
            ("hidden_size", raw.hidden_size, LIMITS.hidden_size),
            (
                "intermediate_size",
                raw.intermediate_size,
                LIMITS.intermediate_size,
            ),
            (
                "num_hidden_layers",
                raw.num_hidden_layers,
                LIMITS.num_layers,
            ),
            ("num_attention_heads", num_heads, LIMITS.num_heads),
            (
                "max_position_embeddings",
                raw.max_position_embeddings,
                LIMITS.max_position_embeddings,
            ),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{field} must be positive")));
            }
            if value > limit {
                return Err(Error::Config(format!(
                    "{field} ({value}) is beyond what any supported model has (at most {limit}); the config is damaged"
                )));
            }
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => {
                return Err(Error::Config(format!(
                    "hidden_size ({}) is not divisible by num_attention_heads ({num_heads}) and no head_dim is given",
                    raw.hidden_size
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > LIMITS.head_dim {
            return Err(Error::Config(format!(
                "head_dim ({head_dim}) must be even, positive and at most {}",
                LIMITS.head_dim
            )));
        }
        // transformers 5 folds rope_theta and the scaling into `rope_parameters`.
        let rope = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let rope_scaling = rope.map(parse_rope_scaling).transpose()?.flatten();
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias, qk_norm) = match architecture {
            Architecture::Llama | Architecture::LlamaMaskedDiffusion => {
                (attention_bias, attention_bias, false)
            }
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, true),
        };
        // Llama and Qwen2 default to untied embeddings, Qwen3 to tied (as in transformers).
        let tie_default = architecture == Architecture::Qwen3;
        let objective = match architecture {
            Architecture::LlamaMaskedDiffusion => {
                let mask_token_id = raw.mask_token_id.ok_or_else(|| {
                    Error::Config("a masked diffusion model needs `mask_token_id`".into())
                })?;
                if mask_token_id as usize >= raw.vocab_size {
                    return Err(Error::Config(format!(
                        "mask_token_id {mask_token_id} is outside the vocabulary ({})",
                        raw.vocab_size
                    )));
                }
                Objective::MaskedDiffusion { mask_token_id }
            }
            _ => Objective::Causal,
        };
        Ok(Self {
            architecture,
            objective,
            head,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(tie_default),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.as_ref().map(token_ids).unwrap_or_default(),
        })
    }

    /// Bytes the KV cache holds per token of one sequence, keys and values of every layer,
    /// at `element_bytes` per number.
    pub fn kv_bytes_per_token(&self, element_bytes: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * element_bytes
    }

    /// Number of parameters the config implies (embeddings counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let (h, d) = (self.hidden_size, self.head_dim);
        let q = self.num_heads * d;
        let kv = self.num_kv_heads * d;
        let bias = |on: bool, n: usize| if on { n } else { 0 };
        let attention = h * q
            + 2 * h * kv
            + q * h
            + bias(self.qkv_bias, q + 2 * kv)
            + bias(self.o_bias, h)
            + if self.qk_norm { 2 * d } else { 0 };
        let i = self.intermediate_size;
        let mlp = 3 * h * i + bias(self.mlp_bias, 2 * i + h);
        let head = match self.head {
            Head::LanguageModel if self.tie_word_embeddings => 0,
            _ => self.head_width() * h,
        };
        self.vocab_size * h + head + h + self.num_layers * (attention + mlp + 2 * h)
    }
}

/// Reads a `rope_scaling` / `rope_parameters` object; `None` for plain RoPE.
fn parse_rope_scaling(value: &Value) -> Result<Option<Llama3RopeScaling>> {
    if value.is_null() {
        return Ok(None);
    }
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let field = |name: &str| {
                value.get(name).and_then(Value::as_f64).ok_or_else(|| {
                    Error::Config(format!("rope scaling of type llama3 lacks `{name}`"))
                })
            };
            Ok(Some(Llama3RopeScaling {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: field("original_max_position_embeddings")?,
            }))
        }
        other => Err(Error::Config(format!(
            "rope scaling of type {other:?} is not supported (default and llama3 are)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::SMOLLM2_135M_CONFIG as SMOLLM2_135M;

    #[test]
    fn smollm2_shape() {
        let c = ModelConfig::from_json(SMOLLM2_135M).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.head_dim, c.num_kv_heads), (64, 3));
        assert!(c.tie_word_embeddings && c.rope_scaling.is_none());
        assert_eq!(c.rope_theta, 100000.0);
        // SmolLM2-135M has 134,515,008 parameters.
        assert_eq!(c.parameter_count(), 134_515_008);
    }

    #[test]
    fn llama3_scaling_in_both_layouts() {
        let legacy = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":8,"hidden_size":8,
          "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,
          "max_position_embeddings":64,"rope_theta":500000.0,"eos_token_id":[1,2],
          "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
          "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let v5 = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":8,"hidden_size":8,
          "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-5,
          "max_position_embeddings":64,"eos_token_id":[1,2],
          "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
          "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let a = ModelConfig::from_json(legacy).unwrap();
        let b = ModelConfig::from_json(v5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(a.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn masked_diffusion_needs_a_mask_token() {
        let json = |mask: &str| {
            format!(
                r#"{{"architectures":["LlamaForMaskedDiffusion"],"vocab_size":8,"hidden_size":8,
                "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,
                "rms_norm_eps":1e-5,"max_position_embeddings":64{mask}}}"#
            )
        };
        let c = ModelConfig::from_json(&json(r#","mask_token_id":3"#)).unwrap();
        assert_eq!(c.objective, Objective::MaskedDiffusion { mask_token_id: 3 });
        assert!(matches!(
            ModelConfig::from_json(&json("")),
            Err(Error::Config(ref m)) if m.contains("mask_token_id")
        ));
        assert!(matches!(
            ModelConfig::from_json(&json(r#","mask_token_id":8"#)),
            Err(Error::Config(_))
        ));
        assert_eq!(
            ModelConfig::from_json(SMOLLM2_135M).unwrap().objective,
            Objective::Causal
        );
    }

    #[test]
    fn unknown_architecture_is_named() {
        let err = ModelConfig::from_json(r#"{"architectures":["MambaForCausalLM"]}"#).unwrap_err();
        assert!(matches!(err, Error::UnknownArchitecture(ref n) if n == "MambaForCausalLM"));
        assert!(err.to_string().contains("MambaForCausalLM"));
    }

    #[test]
    fn a_sequence_classifier_with_one_label_is_a_reward_model() {
        let body = r#""vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"rms_norm_eps":1e-6,"max_position_embeddings":8"#;
        let with = |arch: &str, labels: &str| {
            ModelConfig::from_json(&format!(r#"{{"architectures":["{arch}"],{body}{labels}}}"#))
        };
        let c = with(
            "Qwen2ForSequenceClassification",
            r#","id2label":{"0":"LABEL_0"}"#,
        )
        .unwrap();
        assert_eq!((c.architecture, c.head), (Architecture::Qwen2, Head::Score));
        assert_eq!((c.head_width(), c.head_name()), (1, "score"));
        let c = with("LlamaForSequenceClassification", r#","num_labels":1"#).unwrap();
        assert_eq!(
            (c.architecture, c.head, c.head_is_tied()),
            (Architecture::Llama, Head::Score, false)
        );
        // transformers' default is two labels: not a reward model.
        for labels in ["", r#","id2label":{"0":"NO","1":"YES"}"#] {
            let err = with("LlamaForSequenceClassification", labels).unwrap_err();
            assert!(err.to_string().contains("one label"), "{err}");
        }
        let err = with("MambaForSequenceClassification", "").unwrap_err();
        assert!(
            matches!(err, Error::UnknownArchitecture(ref n) if n == "MambaForSequenceClassification")
        );
        let c = with("LlamaForCausalLM", "").unwrap();
        assert_eq!((c.head, c.head_width()), (Head::LanguageModel, 8));
    }

    #[test]
    fn invalid_values_are_refused() {
        let bad_heads = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":8,"hidden_size":8,
          "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,
          "num_key_value_heads":2,"rms_norm_eps":1e-5,"max_position_embeddings":64}"#;
        assert!(matches!(
            ModelConfig::from_json(bad_heads),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ModelConfig::from_json("{not json"),
            Err(Error::Json { .. })
        ));
        // Sizes no model has are refused before they size anything.
        for (field, value) in [
            ("num_hidden_layers", "1000000000"),
            ("vocab_size", "4294967296"),
            ("max_position_embeddings", "1000000000000"),
            ("hidden_size", "1048576"),
        ] {
            let text = SMOLLM2_135M.replacen(
                &format!("\"{field}\": "),
                &format!("\"{field}\": {value}, \"ignored_{field}\": "),
                1,
            );
            let err = ModelConfig::from_json(&text).unwrap_err();
            assert!(
                matches!(err, Error::Config(ref m) if m.contains(field) && m.contains(value)),
                "{field}: {err}"
            );
        }
        let unknown_rope = SMOLLM2_135M.replace(
            r#""rope_scaling": null"#,
            r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#,
        );
        assert!(
            ModelConfig::from_json(&unknown_rope)
                .unwrap_err()
                .to_string()
                .contains("yarn")
        );
    }
}
