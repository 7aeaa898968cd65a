//! The engine's layers point down only: every `crate::…` path in a module of `engine/src` names
//! a module of a lower layer (or its own). The layers, lowest first, are listed here and drawn in
//! docs/architecture.md; a new module must be placed in one before this test passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The engine's top-level modules by layer, lowest first. A module may use its own items and
/// those of lower layers, never a peer's of its own layer or anything above it.
const LAYERS: &[&[&str]] = &[
    // Leaves: errors, random numbers, the trace's event types.
    &["error", "rng", "trace"],
    // The devices (CPU or wgpu, buffer limits, reading tensors back); drawing a token from a
    // row of logits (the sampling transform and its host reference); tensor element types and
    // their blocks (quantized formats and the reference dequantizers).
    &["backend", "sampling", "quant"],
    // Compute kernels, each with a plain CPU reference: the CPU matmul, the sampling kernel.
    &["kernels"],
    // What a checkpoint is (weights, config, the transformer and its KV cache) and the tasks.
    &["model", "task"],
    // Text to tokens.
    &["tokenize"],
    // A loaded model (weights + tokenizer); decoding sequences through any model.
    &["bundle", "decode"],
    // A model served elsewhere (the OpenAI-compatible completions API), decoded a block per
    // request.
    &["remote"],
    // Rewards read responses (tokens, statistics, answers).
    &["reward"],
    // Strategies (sampling, best-of-n, majority, beam, ETS) over any model.
    &["strategy"],
    // What front ends call: solve a question ...
    &["solve"],
    // ... evaluate a dataset (by solving each question), train a reference model, measure speed.
    &["eval", "train", "bench"],
    // The crate root re-exports.
    &["lib"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every .rs file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source file names as `crate::module` in its code (`use` lines and
/// paths; comments, where docs may point anywhere, are left out).
fn crate_paths(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // Skip `ets_engine::…`-like identifiers that merely end in "crate".
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module {module} is in no layer",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&text) {
            // Crate-root re-exports name the lower module they come from.
            let target = match used.as_str() {
                "Error" | "Result" => "error",
                "Model" => "bundle",
                other => other,
            };
            match layer_of(target) {
                _ if target == module => {}
                Some(layer) if layer < own => {}
                Some(_) => violations.push(format!(
                    "{}: {module} uses crate::{used}, which is not in a lower layer",
                    relative.display()
                )),
                None => violations.push(format!(
                    "{}: crate::{used} is in no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_upward_imports() {
    let upward = "use crate::decode::kv_cache::KvCache;\nfn f() { crate::strategy::x(); }";
    let found = crate_paths(upward);
    assert!(found.contains("decode") && found.contains("strategy"));
    assert!(crate_paths("use ets_engine::decode::lm; // crate::strategy, no_crate::x").is_empty());
    assert!(crate_paths("/// Above it: [`crate::solve`].\nfn f() {}").is_empty());
    assert!(layer_of("strategy") > layer_of("model"));
}
