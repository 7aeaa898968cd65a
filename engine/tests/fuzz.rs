//! Fuzzing the parsers of untrusted bytes: mutants of valid model files (the safetensors header,
//! config.json, tokenizer.json, the chat template) and of a GSM8K JSONL file. Every case either
//! loads (and then runs: a forward pass, an encode and decode, a rendered template) or fails with
//! a typed error — never a panic, a hang, or an allocation sized by a damaged field. CI runs a
//! thousand or more cases a target; `ETS_FUZZ_CASES=20000 cargo test --release -p ets-engine --test
//! fuzz -- --nocapture` runs more (docs/reliability.md has the figures).

mod common;

use common::fixture;
use ets_engine::model::config::ModelConfig;
use ets_engine::model::files::ModelFiles;
use ets_engine::task::gsm8k::read_jsonl;
use ets_engine::tokenize::{ChatMessage, TextTokenizer};
use ets_engine::{LogitsFor, Model};
use ets_fuzz::{
    CappedAlloc, Outcome, Report, Rng, cases, mutate_bytes, mutate_json_text, run, seed,
};
use serde_json::Value;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// No case of these small inputs (a 460 kB model) needs more at once.
const ALLOCATION_CAP: usize = 64 << 20;

/// The fixture model's files, `name` replaced by `bytes`.
fn fixture_files(name: &str, bytes: &[u8]) -> ModelFiles {
    let dir = fixture("llama-gqa");
    let files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ];
    ModelFiles::from_memory(files.map(|f| {
        let content = match f == name {
            true => bytes.to_vec(),
            false => std::fs::read(dir.join(f)).unwrap(),
        };
        (f.to_string(), content)
    }))
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture("llama-gqa").join(name)).unwrap()
}

/// Loads the files on the CPU; a model that loads must run a forward pass and a chat prompt
/// (errors allowed, panics not).
fn load_and_use(files: ModelFiles) -> Outcome {
    let Ok(model) = Model::from_files(files, &common::cpu().device) else {
        return Outcome::Refused;
    };
    let t = &model.transformer;
    let _ = t.forward(&[&[1, 2, 3]], &mut t.new_cache(1), LogitsFor::Last);
    if let Some(tokenizer) = &model.tokenizer {
        let _ = tokenizer.encode_chat("What is 2 + 3?", Some("Be brief."));
    }
    Outcome::Accepted
}

fn finish(report: Report) {
    eprintln!("{report}");
    assert!(report.findings.is_empty(), "{report}");
    assert!(
        report.accepted > 0 && report.refused > 0,
        "the mutants should include files that load and files that do not: {report}"
    );
}

/// The safetensors header is JSON behind a length: edits of its tree, re-framed with the right
/// length (so they reach the checks past the framing), and byte edits of the framing itself.
#[test]
fn safetensors_headers() {
    let file = read_fixture("model.safetensors");
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
    let data = file[8 + header_len..].to_vec();
    let report = run(
        "safetensors",
        cases(1000),
        seed(1),
        ALLOCATION_CAP,
        |rng: &mut Rng| {
            if rng.chance(0.7) {
                let json = mutate_json_text(rng, &header);
                let mut out = (json.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&json);
                out.extend_from_slice(&data);
                out
            } else {
                let head = mutate_bytes(rng, &file[..8 + header_len]);
                [head, data.clone()].concat()
            }
        },
        |bytes| load_and_use(fixture_files("model.safetensors", bytes)),
    );
    finish(report);
}

/// config.json: parsed, then loaded against the fixture's tensors (sizes, layer counts and
/// ids that do not match them are refused before anything is allocated by them).
#[test]
fn model_configs() {
    let config: Value = serde_json::from_slice(&read_fixture("config.json")).unwrap();
    let report = run(
        "config",
        cases(1000),
        seed(2),
        ALLOCATION_CAP,
        |rng| mutate_json_text(rng, &config),
        |bytes| {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Outcome::Refused;
            };
            if ModelConfig::from_json(text).is_err() {
                return Outcome::Refused;
            }
            load_and_use(fixture_files("config.json", bytes))
        },
    );
    finish(report);
}

/// tokenizer.json: a tokenizer that loads must encode and decode text.
#[test]
fn tokenizers() {
    let tokenizer: Value = serde_json::from_slice(&read_fixture("tokenizer.json")).unwrap();
    let report = run(
        "tokenizer",
        cases(1000),
        seed(3),
        ALLOCATION_CAP,
        |rng| mutate_json_text(rng, &tokenizer),
        |bytes| {
            let files = fixture_files("tokenizer.json", bytes);
            match TextTokenizer::from_files(&files, &[2]) {
                Ok(t) => {
                    if let Ok(ids) = t.encode("Natalia sold 48 clips in April. ### 72", true) {
                        let _ = t.decode(&ids);
                    }
                    Outcome::Accepted
                }
                Err(_) => Outcome::Refused,
            }
        },
    );
    finish(report);
}

/// Jinja a hostile model file might carry: unbounded loops, huge strings, deep recursion.
const HOSTILE_JINJA: [&str; 8] = [
    "{% for i in range(1000000000) %}x{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set s = 'ab' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}{{ s }}",
    "{{ messages * 100000000 }}",
    "{{ range(100000) | list | join(',') }}",
    "{% for m in messages %}{% for n in messages %}{{ m }}{% endfor %}{% endfor %}",
    "{{ raise_exception('refused') }}",
];

/// The chat template (a model file's Jinja, run on every prompt): byte edits of the fixture's,
/// and hostile snippets put into it.
#[test]
fn chat_templates() {
    let template = read_fixture("chat_template.jinja");
    let report = run(
        "chat-template",
        cases(1000),
        seed(4),
        // minijinja builds a repeated string of up to 100 MB before it is written out (and
        // refused past 8 MiB of output): bounded by minijinja, not by the template.
        128 << 20,
        |rng| {
            if rng.chance(0.4) {
                let at = rng.below(template.len() + 1);
                let snippet = rng.pick(&HOSTILE_JINJA).as_bytes();
                [&template[..at], snippet, &template[at..]].concat()
            } else {
                mutate_bytes(rng, &template)
            }
        },
        |bytes| {
            let files = fixture_files("chat_template.jinja", bytes);
            let Ok(t) = TextTokenizer::from_files(&files, &[2]) else {
                return Outcome::Refused;
            };
            match t.apply_chat_template(&[ChatMessage::user("What is 2 + 3?")], true) {
                Ok(_) => Outcome::Accepted,
                Err(_) => Outcome::Refused,
            }
        },
    );
    finish(report);
}

/// GSM8K-style JSONL (`ets eval --data`): edits of one line's JSON, and byte edits of the text.
#[test]
fn gsm8k_jsonl() {
    let line = serde_json::json!({
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    });
    let text = format!("{line}\n{line}\n{line}\n");
    let report = run(
        "gsm8k-jsonl",
        cases(5000),
        seed(5),
        ALLOCATION_CAP,
        |rng| {
            if rng.chance(0.6) {
                let edited = mutate_json_text(rng, &line);
                [text.as_bytes(), &edited, b"\n"].concat()
            } else {
                mutate_bytes(rng, text.as_bytes())
            }
        },
        |bytes| match std::str::from_utf8(bytes).map(read_jsonl) {
            Ok(Ok(records)) => {
                for r in &records {
                    let _ = r.final_answer();
                }
                Outcome::Accepted
            }
            _ => Outcome::Refused,
        },
    );
    finish(report);
}
