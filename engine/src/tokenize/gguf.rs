//! The tokenizer a GGUF file describes in its metadata, built as a `tokenizers` tokenizer that
//! gives llama.cpp's token ids: `gpt2` byte-level BPE (tokens, merges, the pre-tokenizer that
//! `tokenizer.ggml.pre` names) or `llama` SentencePiece BPE (tokens with scores: the merges
//! ranked by their result's score, as Hugging Face's LlamaConverter builds them; spaces as ▁,
//! one prefixed; unknown characters as byte tokens), with special and control tokens and
//! add-BOS; the chat template; and the stop tokens (EOS, EOT and the end-of-generation markers
//! llama.cpp recognises by their text).

use std::collections::HashSet;

use serde_json::{Map, Value as Json, json};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use super::TextTokenizer;
use crate::error::{Error, GgufError, Result};
use crate::model::gguf::{Array, GgufFile, Value};

/// GPT-2's pre-tokenizer regex (with its trailing `\s+`, which llama.cpp's matcher implies).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's (`llama-bpe`): numbers in groups of up to three digits.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's, one digit at a time.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokens llama.cpp treats as control tokens whatever the file says, and that end generation.
const END_MARKERS: [&str; 9] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "</s>",
    "<eos>",
];

/// The regexes that split text before BPE for `tokenizer.ggml.pre` = `pre`, in order, whether
/// a piece that is a whole token skips the merges, and whether BOS is added by default.
fn pre_tokenizer(pre: &str) -> Option<(Vec<&'static str>, bool, bool)> {
    Some(match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false, false)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (vec![QWEN2], false, false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => (vec![LLAMA3], true, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" | "jais" => {
            (vec![GPT2], false, false)
        }
        "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        _ => return None,
    })
}

impl TextTokenizer {
    /// The tokenizer of the GGUF file `name`, from its metadata.
    pub fn from_gguf(name: &str, file: &GgufFile) -> Result<Self> {
        let bad = |key: &str, problem: String| Error::Gguf {
            file: name.to_string(),
            problem: GgufError::Metadata {
                key: key.to_string(),
                problem,
            },
        };
        let text = |key: &str| file.get(key).and_then(Value::as_str);
        let kind = text("tokenizer.ggml.model")
            .ok_or_else(|| bad("tokenizer.ggml.model", "missing, or not a string".into()))?;
        if !matches!(kind, "gpt2" | "llama") {
            return Err(bad(
                "tokenizer.ggml.model",
                format!(
                    "tokenizer {kind:?} is not supported (gpt2's byte-level BPE and llama's \
                     SentencePiece BPE are)"
                ),
            ));
        }
        let strings = |key: &str| match file.get(key) {
            Some(Value::Array(Array::String(v))) => Ok(v),
            Some(other) => Err(bad(
                key,
                format!("must be an array of strings, found {}", other.type_name()),
            )),
            None => Err(bad(key, "missing".into())),
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(Value::Array(Array::I32(t))) if t.len() == tokens.len() => {
                t.iter().map(|&t| i64::from(t)).collect()
            }
            Some(_) => {
                return Err(bad(
                    "tokenizer.ggml.token_type",
                    format!("must be {} i32 values, one a token", tokens.len()),
                ));
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|i| u32::try_from(i).ok()) {
                    Some(i) if (i as usize) < tokens.len() => Ok(Some(i)),
                    _ => Err(bad(
                        key,
                        format!("is not a token id below {}", tokens.len()),
                    )),
                },
            }
        };
        let flag =
            |key: &str, default: bool| file.get(key).and_then(Value::as_bool).unwrap_or(default);
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let vocab_size = tokens.len();
        let mut vocab = Vocab::with_capacity(vocab_size);
        for (i, token) in tokens.iter().enumerate() {
            if vocab.insert(token.clone(), i as u32).is_some() {
                return Err(bad(
                    "tokenizer.ggml.tokens",
                    format!("token {token:?} appears twice"),
                ));
            }
        }
        let pipeline = if kind == "gpt2" {
            let merges = strings("tokenizer.ggml.merges")?;
            let pre = text("tokenizer.ggml.pre").unwrap_or("default");
            byte_level_bpe(vocab, merges, pre).map_err(|(key, problem)| bad(key, problem))?
        } else {
            let scores = match file.get("tokenizer.ggml.scores") {
                Some(Value::Array(Array::F32(v))) if v.len() == vocab_size => v,
                _ => {
                    return Err(bad(
                        "tokenizer.ggml.scores",
                        format!("must be {vocab_size} f32 values, one a token"),
                    ));
                }
            };
            let unknown = id("tokenizer.ggml.unknown_token_id")?;
            let space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
            sentencepiece_bpe(vocab, tokens, scores, unknown, space_prefix)
        };
        let model = pipeline
            .model
            .build()
            .map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;
        let add_bos = flag("tokenizer.ggml.add_bos_token", pipeline.add_bos) && bos.is_some();
        let add_eos = flag("tokenizer.ggml.add_eos_token", false) && eos.is_some();

        // Special (control, and the end markers) and user-defined tokens, matched before the
        // model runs, as the JSON's `added_tokens` would be.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter_map(|(token, kind)| {
                let special = matches!(kind, 2 | 3) || END_MARKERS.contains(&token.as_str());
                (special || *kind == 4).then(|| {
                    let mut added = AddedToken::from(token.clone(), special);
                    added.normalized = false;
                    added
                })
            })
            .collect();
        let special = |id: u32| {
            let token = &tokens[id as usize];
            (
                json!({"SpecialToken": {"id": token, "type_id": 0}}),
                (
                    token.clone(),
                    json!({"id": token, "ids": [id], "tokens": [token]}),
                ),
            )
        };
        let post_processor = if add_bos || add_eos {
            let mut single = Vec::new();
            let mut specials = Map::new();
            if let (true, Some(b)) = (add_bos, bos) {
                let (piece, (k, v)) = special(b);
                single.push(piece);
                specials.insert(k, v);
            }
            single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
            if let (true, Some(e)) = (add_eos, eos) {
                let (piece, (k, v)) = special(e);
                single.push(piece);
                specials.insert(k, v);
            }
            let mut pair = single.clone();
            pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
            Some(
                json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
            )
        } else {
            None
        };
        // The small parts from their JSON form, as a tokenizer.json would give them.
        let component = |what: &str, e: serde_json::Error| {
            Error::Tokenizer(format!("{name}: the {what} built from the metadata: {e}"))
        };
        let normalizer: Option<NormalizerWrapper> = pipeline
            .normalizer
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| component("normalizer", e))?;
        let pre_tokenizer: Option<PreTokenizerWrapper> = pipeline
            .pre_tokenizer
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| component("pre-tokenizer", e))?;
        let decoder: DecoderWrapper =
            serde_json::from_value(pipeline.decoder).map_err(|e| component("decoder", e))?;
        let post_processor: Option<PostProcessorWrapper> = post_processor
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| component("post-processor", e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(normalizer)
            .map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?
            .with_pre_tokenizer(pre_tokenizer)
            .with_decoder(Some(decoder))
            .with_post_processor(post_processor);
        inner
            .add_tokens(added)
            .map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;
        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        eos_ids.extend(id("tokenizer.ggml.eot_token_id")?);
        eos_ids.extend(END_MARKERS.iter().filter_map(|m| inner.token_to_id(m)));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            chat_template: text("tokenizer.chat_template").map(str::to_string),
            bos_token: bos.map(|b| tokens[b as usize].clone()),
            eos_token: eos.map(|e| tokens[e as usize].clone()),
            eos_ids,
        })
    }
}

/// What differs between the tokenizer kinds: the BPE model (to build) and the `tokenizers`
/// components around it, in their JSON form.
struct Pipeline {
    model: tokenizers::models::bpe::BpeBuilder,
    normalizer: Option<Json>,
    pre_tokenizer: Option<Json>,
    decoder: Json,
    /// Whether BOS is added when the file does not say.
    add_bos: bool,
}

/// `gpt2`: byte-level BPE with the file's merges and the pre-tokenizer `pre` names; an error
/// names the metadata key at fault.
fn byte_level_bpe(
    vocab: Vocab,
    merges: &[String],
    pre: &str,
) -> std::result::Result<Pipeline, (&'static str, String)> {
    let (splits, ignore_merges, add_bos) = pre_tokenizer(pre).ok_or_else(|| {
        (
            "tokenizer.ggml.pre",
            format!(
                "pre-tokenizer {pre:?} is not supported (smollm, qwen2, llama-bpe, gpt-2 and \
                 default are)"
            ),
        )
    })?;
    // Ranks are the merges' order; the first of duplicate pairs counts, and pairs whose parts
    // or result are not tokens are left out (llama.cpp can never apply them).
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(merges.len());
    for merge in merges {
        let split = merge.char_indices().skip(1).find(|(_, c)| *c == ' ');
        let Some((at, _)) = split else {
            return Err((
                "tokenizer.ggml.merges",
                format!("merge {merge:?} has no space"),
            ));
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        let joined = format!("{left}{right}");
        if vocab.contains_key(left)
            && vocab.contains_key(right)
            && vocab.contains_key(&joined)
            && seen.insert((left, right))
        {
            pairs.push((left.to_string(), right.to_string()));
        }
    }
    drop(seen);
    let mut pretokenizers: Vec<Json> = splits
        .iter()
        .map(|regex| {
            json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                "invert": false})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": false, "use_regex": false});
    pretokenizers.push(byte_level.clone());
    Ok(Pipeline {
        model: BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(ignore_merges),
        normalizer: None,
        pre_tokenizer: Some(json!({"type": "Sequence", "pretokenizers": pretokenizers})),
        decoder: byte_level,
        add_bos,
    })
}

/// `llama`: SentencePiece BPE. llama.cpp merges, again and again, the adjacent pair whose
/// joined text is the token of highest score (the leftmost of equals); as a `tokenizers` BPE
/// that is every split of every token into two tokens, ranked by the token's score (Hugging
/// Face's LlamaConverter). Spaces become ▁ and, with `space_prefix`, one is put before each
/// run of text; characters that are no token become their UTF-8 bytes' tokens (<0xXX>).
fn sentencepiece_bpe(
    vocab: Vocab,
    tokens: &[String],
    scores: &[f32],
    unknown: Option<u32>,
    space_prefix: bool,
) -> Pipeline {
    let mut merges: Vec<(u32, u32, f32)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let first = merges.len();
        for (at, _) in token.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) = (vocab.get(&token[..at]), vocab.get(&token[at..]))
            {
                merges.push((left, right, score));
            }
        }
        merges[first..].sort_by_key(|&(left, right, _)| (left, right));
    }
    // Stable: equal scores keep the token order.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    let pairs = merges
        .into_iter()
        .map(|(left, right, _)| {
            (
                tokens[left as usize].clone(),
                tokens[right as usize].clone(),
            )
        })
        .collect();
    let mut model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        model = model.unk_token(tokens[unknown as usize].clone());
    }
    let replace_spaces =
        json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let (normalizer, strip) = if space_prefix {
        (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"}, replace_spaces]}),
            vec![json!({"type": "Strip", "content": " ", "start": 1, "stop": 0})],
        )
    } else {
        (replace_spaces, Vec::new())
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    decoders.extend(strip);
    Pipeline {
        model,
        normalizer: Some(normalizer),
        pre_tokenizer: None,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        add_bos: true,
    }
}
