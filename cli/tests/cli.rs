//! The `ets` binary end to end: JSON outputs match the golden fixtures, failures exit non-zero
//! with one line on stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn ets(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ets"))
        .args(args)
        .output()
        .expect("the ets binary runs")
}

/// Runs `ets` with `args`, which must succeed, and parses its stdout as JSON.
fn ets_json(args: &[&str]) -> serde_json::Value {
    let out = ets(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("backend: cpu"),
        "the chosen backend is reported: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn expected(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_arg(ids: &serde_json::Value) -> String {
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn logits_match_transformers() {
    let exp = expected("qwen2-bias");
    let model = fixture("qwen2-bias");
    let got = ets_json(&[
        "logits",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids_arg(&exp["ids"]),
    ]);
    let got = got["logits"].as_array().unwrap();
    let want = exp["logits"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_array().unwrap(), w.as_array().unwrap());
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-4);
        }
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let exp = expected("llama3-tied");
    let model = fixture("llama3-tied");
    let got = ets_json(&[
        "generate",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids_arg(&exp["greedy_prompt"]),
        "--greedy",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    // The fixture's greedy run ignores stop tokens; compare up to the first eos (id 2).
    let want: Vec<u64> = exp["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let cut = want
        .iter()
        .position(|&t| t == 2)
        .map_or(want.len(), |i| i + 1);
    let ids: Vec<u64> = got["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, want[..cut]);
    assert!(got["text"].is_string());
}

#[test]
fn prompt_chat_and_sampling_are_reproducible() {
    let model = fixture("qwen3-qknorm");
    let run = |seed: &str| {
        ets_json(&[
            "generate",
            "--backend",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--chat",
            "--prompt",
            "What is 2 + 3?",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-new-tokens",
            "8",
            "--json",
        ])
    };
    assert_eq!(run("5"), run("5"));
}

#[test]
fn failures_exit_nonzero_with_one_line() {
    let model = fixture("llama-gqa");
    let model = model.to_str().unwrap();
    for args in [
        vec![
            "logits",
            "--backend",
            "cpu",
            "--model",
            "/nonexistent/model",
            "--ids",
            "1",
        ],
        vec![
            "logits",
            "--backend",
            "cpu",
            "--model",
            model,
            "--ids",
            "1,99999",
        ],
        vec![
            "generate",
            "--backend",
            "cpu",
            "--model",
            model,
            "--prompt",
            "  ",
        ],
        vec![
            "generate",
            "--backend",
            "cpu",
            "--model",
            model,
            "--ids",
            "1",
            "--top-p",
            "2",
        ],
    ] {
        let out = ets(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn task_writes_gsm8k_jsonl() {
    let run = |split: &str| {
        let out = ets(&["task", "--split", split, "--n", "50", "--seed", "1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let test = run("test");
    let records = ets_engine::task::gsm8k::read_jsonl(&test).unwrap();
    assert_eq!(records.len(), 50);
    let train = run("train");
    for r in ets_engine::task::gsm8k::read_jsonl(&train).unwrap() {
        assert!(!records.iter().any(|t| t.question == r.question));
    }
    let out = ets(&["task", "--split", "dev"]);
    assert!(!out.status.success());
}

/// The README's main job: the bundled reference model solves a new question with a worked
/// solution; the diffusion model writes one too through the same command.
#[test]
fn reference_models_write_worked_solutions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let question = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";
    for model in ["ref-ar", "ref-dlm"] {
        let got = ets_json(&[
            "generate",
            "--backend",
            "cpu",
            "--model",
            root.join(model).to_str().unwrap(),
            "--greedy",
            "--prompt",
            question,
            "--json",
        ]);
        let text = got["text"].as_str().unwrap();
        assert!(
            text.contains(" = ") && text.contains("####"),
            "{model}: {text:?}"
        );
        if model == "ref-ar" {
            assert!(
                text.contains("14 + 9 = 23") && text.ends_with("#### 18"),
                "{text:?}"
            );
        }
    }
}

#[test]
fn train_refuses_bad_settings_in_one_line() {
    let out = ets(&[
        "train",
        "--out",
        "/tmp/ets-never-written",
        "--hidden",
        "30",
        "--heads",
        "4",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("multiple of --heads"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/tmp/ets-never-written").exists());
}
