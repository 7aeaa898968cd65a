//! The character-level tokenizer of the bundled reference models, written as an ordinary
//! `tokenizer.json` so the models load through the same path as any Hugging Face model.
//!
//! One token per character (so every digit is its own token), plus the special tokens the
//! models need: padding, begin and end of sequence, the diffusion model's mask, unknown.

use serde_json::{Value, json};

/// Padding (id 0).
pub const PAD: &str = "<|pad|>";
/// Beginning of sequence (id 1), added in front of every encoded text.
pub const BOS: &str = "<|bos|>";
/// End of sequence (id 2): a finished answer.
pub const EOS: &str = "<|eos|>";
/// The masked-diffusion model's mask token (id 3).
pub const MASK: &str = "<|mask|>";
/// Any character outside the vocabulary (id 4).
pub const UNK: &str = "<|unk|>";

/// The special tokens in id order.
pub const SPECIAL_TOKENS: [&str; 5] = [PAD, BOS, EOS, MASK, UNK];

/// The characters of the vocabulary after the special tokens: newline and printable ASCII.
pub fn characters() -> Vec<char> {
    std::iter::once('\n')
        .chain((32u8..=126).map(char::from))
        .collect()
}

/// Vocabulary size: special tokens plus characters.
pub fn vocab_size() -> usize {
    SPECIAL_TOKENS.len() + characters().len()
}

/// The `tokenizer.json` text: a BPE model without merges (so each character is one token), no
/// pre-tokenizer, BOS added by the post-processor, and a decoder that joins characters.
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for (i, c) in characters().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(SPECIAL_TOKENS.len() + i));
    }
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bos = |type_id: u32| json!({"SpecialToken": {"id": BOS, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), seq("A", 0)],
            "pair": [bos(0), seq("A", 0), seq("B", 1)],
            "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": UNK,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    serde_json::to_string_pretty(&tokenizer).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> tokenizers::Tokenizer {
        tokenizers::Tokenizer::from_bytes(tokenizer_json().as_bytes()).unwrap()
    }

    #[test]
    fn one_token_per_character_with_bos() {
        let t = load();
        let text = "Mia has 14 shells.\n14 + 9 = 23\n#### 23";
        let ids = t.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.chars().count() + 1);
        assert_eq!(ids[0], 1);
        assert_eq!(t.decode(&ids, true).unwrap(), text);
        assert_eq!(t.get_vocab_size(true), vocab_size());
    }

    #[test]
    fn special_tokens_have_fixed_ids() {
        let t = load();
        for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(t.token_to_id(token), Some(id as u32));
        }
        let ids = t.encode("a<|eos|>", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![t.token_to_id("a").unwrap(), 2]);
        // Characters outside the vocabulary become <|unk|>.
        let ids = t.encode("é", false).unwrap().get_ids().to_vec();
        assert!(ids.iter().all(|&id| id == 4), "{ids:?}");
    }
}
