//! The tokenizer of the bundled reference models: a small BPE written as an ordinary
//! `tokenizer.json`, so the models load through the same path as any Hugging Face model.
//!
//! Every printable ASCII character and newline is a token, so any question encodes. Merges
//! build the arithmetic task's words whole (" shells", "Mia"), an operator with its leading
//! space (" +") and a digit with its leading space (" 7"); no token holds two digits, so numbers
//! are always read digit by digit. Merges grow each token from its first character, and those of
//! space-led tokens rank first, so a word is never split in the middle by another word's merges.
//! Special tokens: padding, begin and end of sequence, the diffusion model's mask, unknown.

use serde_json::{Value, json};

use crate::task::arith;

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

/// Id of [`PAD`].
pub const PAD_ID: u32 = 0;
/// Id of [`BOS`].
pub const BOS_ID: u32 = 1;
/// Id of [`EOS`].
pub const EOS_ID: u32 = 2;
/// Id of [`MASK`].
pub const MASK_ID: u32 = 3;

/// The special tokens in id order.
pub const SPECIAL_TOKENS: [&str; 5] = [PAD, BOS, EOS, MASK, UNK];

/// The characters of the vocabulary after the special tokens: newline and printable ASCII.
pub fn characters() -> Vec<char> {
    std::iter::once('\n')
        .chain((32u8..=126).map(char::from))
        .collect()
}

/// The multi-character tokens: the task's words (space-led, and bare when capitalised, as at
/// the start of a question), space-led digits and operators, and `'s`.
fn merged_tokens() -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for word in arith::vocabulary() {
        if word.starts_with(|c: char| c.is_ascii_uppercase()) {
            tokens.push(word.clone());
        }
        tokens.push(format!(" {word}"));
    }
    tokens.extend(('0'..='9').map(|d| format!(" {d}")));
    tokens.extend(["+", "-", "*", "/", "="].map(|op| format!(" {op}")));
    tokens.push("'s".to_string());
    tokens
}

/// The merges that build every merged token from its first character, one character at a
/// time (and `####` from two `##`): space-led tokens' merges first, then by length of the left
/// part.
fn merges() -> Vec<(String, String)> {
    let mut merges: Vec<(bool, usize, String, String)> = Vec::new();
    for token in merged_tokens() {
        let chars: Vec<char> = token.chars().collect();
        for i in 1..chars.len() {
            let left: String = chars[..i].iter().collect();
            merges.push((!token.starts_with(' '), i, left, chars[i].to_string()));
        }
    }
    // `####` halves at a time: left-to-right growth would stall at "##" "##".
    merges.push((true, 1, "#".into(), "#".into()));
    merges.push((true, 2, "##".into(), "##".into()));
    merges.sort();
    merges.dedup();
    merges
        .into_iter()
        .map(|(_, _, left, right)| (left, right))
        .collect()
}

/// Vocabulary size: special tokens, characters, then one token per merge.
pub fn vocab_size() -> usize {
    SPECIAL_TOKENS.len() + characters().len() + merges().len()
}

/// The `tokenizer.json` text: a BPE model over characters with the merges above, no
/// pre-tokenizer, BOS added by the post-processor, and a decoder that joins the pieces.
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for c in characters() {
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    let merges = merges();
    for (left, right) in &merges {
        vocab.insert(format!("{left}{right}"), json!(vocab.len()));
    }
    let merges: Vec<[&String; 2]> = merges.iter().map(|(l, r)| [l, r]).collect();
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
            "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": UNK,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
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

    fn pieces(t: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        t.encode(text, false).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn words_whole_digits_single() {
        let t = load();
        assert_eq!(
            pieces(&t, "Mia has 14 shells. Then she gives away 3 shells."),
            [
                "Mia", " has", " 1", "4", " shells", ".", " Then", " she", " gives", " away", " 3",
                " shells", "."
            ]
        );
        assert_eq!(
            pieces(&t, "\n14 + 9 = 23\n#### 23"),
            [
                "\n", "1", "4", " +", " 9", " =", " 2", "3", "\n", "####", " 2", "3"
            ]
        );
        assert_eq!(pieces(&t, "Zoe's"), ["Zoe", "'s"]);
        // No token holds two digits.
        for token in t.get_vocab(true).keys() {
            assert!(
                token.chars().filter(char::is_ascii_digit).count() <= 1,
                "{token:?}"
            );
        }
    }

    #[test]
    fn any_ascii_text_round_trips_with_bos() {
        let t = load();
        for text in [
            "Mia has 14 shells.\n14 + 9 = 23\n#### 23",
            "weather thermostat: 12.5 degrees? (x^2 + y) ~ {z}",
            "theshells hasMia  double  spaces",
        ] {
            let ids = t.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(ids[0], BOS_ID);
            assert_eq!(t.decode(&ids, true).unwrap(), text);
        }
        assert_eq!(t.get_vocab_size(true), vocab_size());
        // A task question is about a third as many tokens as characters.
        let q = "Liam has 25 books. He finds 4 more books. Then he gets 6 more books. How many books does Liam have now?";
        let n = t.encode(q, false).unwrap().get_ids().len();
        assert!(n * 2 < q.len(), "{n} tokens for {} characters", q.len());
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
