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
/// The stderr of `ets args`, which must fail.
fn failure_stderr(args: &[&str]) -> String {
    let out = ets(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
    // A config claiming 10^9 layers (it used to abort the process on the allocation it sized).
    let huge = scratch("huge-config");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model.join(file), huge.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["num_hidden_layers"] = 1_000_000_000.into();
    std::fs::write(huge.join("config.json"), config.to_string()).unwrap();
    let model = model.to_str().unwrap();
    for args in [
        vec![
            "generate",
            "--backend",
            "cpu",
            "--model",
            huge.to_str().unwrap(),
            "--ids",
            "1",
        ],
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
    let stderr = failure_stderr(&[
        "train",
        "--out",
        "/tmp/ets-never-written",
        "--hidden",
        "30",
        "--heads",
        "4",
    ]);
    assert!(
        stderr.contains("error:") && stderr.contains("multiple of --heads"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/tmp/ets-never-written").exists());
}

const QUESTION: &str = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";

fn reference(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    root.join(name).to_str().unwrap().to_string()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ets-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The prompt's token count in a trace file `ets solve --trace` wrote.
fn prompt_tokens(trace: &std::path::Path) -> u64 {
    fn find(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(map) => map
                .get("prompt_tokens")
                .and_then(|t| t.as_u64())
                .or_else(|| map.values().find_map(find)),
            serde_json::Value::Array(items) => items.iter().find_map(find),
            _ => None,
        }
    }
    let text = std::fs::read_to_string(trace).unwrap();
    find(&serde_json::from_str(&text).unwrap()).expect("a start event")
}

#[test]
fn solve_puts_the_question_in_the_chat_template_unless_told_not_to() {
    // llama3-tied's tokenizer_config.json has a chat template.
    let model = fixture("llama3-tied");
    let model = model.to_str().unwrap();
    let dir = scratch("chat");
    let mut counts = Vec::new();
    for (name, extra) in [
        ("chat", None),
        ("raw", Some("--raw-prompt")),
        ("system", Some("--system=Answer in one word, please.")),
    ] {
        let trace = dir.join(format!("trace-{name}.json"));
        let mut args = vec!["solve", "--backend", "cpu", "--model", model];
        args.extend(["--strategy", "greedy", "--max-tokens", "2", "--json"]);
        args.extend(["--trace", trace.to_str().unwrap(), "hello"]);
        args.extend(extra);
        ets_json(&args);
        counts.push(prompt_tokens(&trace));
    }
    // The template adds its role headers and special tokens around the question, and a
    // system turn (its header and its words) ahead of it.
    assert!(
        counts[0] > counts[1] + 4,
        "chat {} vs raw {}",
        counts[0],
        counts[1]
    );
    assert!(
        counts[2] > counts[0] + 6,
        "with a system message {} vs without {}",
        counts[2],
        counts[0]
    );
    // A model without a template cannot take one: refused in one line.
    let ar = reference("ref-ar");
    let stderr = failure_stderr(&[
        "solve",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--system",
        "x",
        "1+1?",
    ]);
    assert!(
        stderr.contains("--system needs a model with a chat template"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn solve_prints_the_answer_and_writes_a_trace() {
    let ar = reference("ref-ar");
    let greedy = ets_json(&[
        "solve",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--strategy",
        "greedy",
        "--json",
        QUESTION,
    ]);
    assert_eq!(greedy["answer"], "18", "{greedy}");
    assert!(greedy["text"].as_str().unwrap().ends_with("#### 18"));
    assert!(greedy["tokens"].as_u64().unwrap() > 20);
    assert!(greedy["wall_ms"].as_f64().unwrap() > 0.0);

    let dir = scratch("solve");
    let trace = dir.join("trace.json");
    let draft = reference("ref-ar-draft");
    let ets_is = ets_json(&[
        "solve",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--draft",
        &draft,
        "--strategy",
        "ets-is",
        "--m",
        "4",
        "--k",
        "2",
        "--block",
        "8",
        "--trace",
        trace.to_str().unwrap(),
        "--json",
        QUESTION,
    ]);
    assert!(ets_is["draft_tokens"].as_u64().unwrap() > 0, "{ets_is}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert_eq!(written["spec"]["strategy"]["name"], "ets-is");
    let events = written["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()["event"], "start");
    assert_eq!(events.last().unwrap()["event"], "finish");
    let step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert_eq!(step["candidates"].as_array().unwrap().len(), 4);

    // The README's main job: ETS with the defaults.
    let readme = ets_json(&[
        "solve",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--json",
        QUESTION,
    ]);
    assert_eq!(readme["answer"], "18", "{readme}");

    // Plain text: the response, then the answer line.
    let out = ets(&[
        "solve",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--strategy",
        "majority",
        QUESTION,
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim_end().ends_with("answer: 18"), "{stdout}");

    // ets-is without a draft, an unknown strategy, a bad reward: one line each.
    for args in [
        vec!["--strategy", "ets-is"],
        vec!["--strategy", "nope"],
        vec!["--reward", "format:("],
        vec!["--lambda", "0"],
    ] {
        let mut all = vec!["solve", "--backend", "cpu", "--model", &ar];
        all.extend(args.iter().copied());
        all.push(QUESTION);
        let out = ets(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn eval_runs_a_strategy_and_a_sweep() {
    let ar = reference("ref-ar");
    // `ets eval` of ref-ar on the CPU over the first `n` test problems, then `rest`.
    let eval = |n: &str, rest: &[&str]| -> Vec<String> {
        let head = ["eval", "--backend", "cpu", "--model", &ar, "--n", n];
        head.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let run_json =
        |args: Vec<String>| ets_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let result = run_json(eval(
        "3",
        &[
            "--strategy",
            "ets",
            "--m",
            "2",
            "--k",
            "2",
            "--block",
            "8",
            "--json",
        ],
    ));
    for field in ["accuracy", "n", "ci95", "tokens_mean", "wall_ms_mean"] {
        assert!(!result[field].is_null(), "{field} missing: {result}");
    }
    assert_eq!(result["n"], 3);
    let dir = scratch("sweep");
    // A dot in the prefix stays: the table is sweep.v1.md.
    let prefix = dir.join("sweep.v1");
    // Runs made before join a sweep's table and plot: one with another reward is labelled
    // with it; one over other questions is refused before anything runs.
    let other_questions = dir.join("three.json");
    std::fs::write(&other_questions, result.to_string()).unwrap();
    let verified = run_json(eval(
        "2",
        &[
            "--strategy",
            "best-of-n",
            "--m",
            "2",
            "--reward",
            "verifier",
            "--json",
        ],
    ));
    let joined = dir.join("verified.json");
    std::fs::write(&joined, verified.to_string()).unwrap();
    let sweep = |join: &std::path::Path| {
        let args = eval(
            "2",
            &[
                "--sweep",
                "--budgets",
                "2",
                "--strategies",
                "greedy,majority,ets",
                "--block",
                "8",
                "--out",
                prefix.to_str().unwrap(),
                "--join",
                join.to_str().unwrap(),
            ],
        );
        ets(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let refused = sweep(&other_questions);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("over 3 questions"),
        "{err}"
    );
    let out = sweep(&joined);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(dir.join("sweep.v1.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + 3 + 1, "{table}");
    assert!(table.contains("| best-of-n (verifier) | 2 |"), "{table}");
    let svg = std::fs::read_to_string(dir.join("sweep.v1.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("majority"));
    assert!(svg.contains("best-of-n (verifier)"), "{svg}");
    // A run that was labelled when joined before keeps one label.
    let mut labelled = verified.clone();
    labelled["strategy"] = "best-of-n (verifier)".into();
    std::fs::write(&joined, labelled.to_string()).unwrap();
    assert!(sweep(&joined).status.success());
    let table = std::fs::read_to_string(dir.join("sweep.v1.md")).unwrap();
    assert!(table.contains("| best-of-n (verifier) | 2 |"), "{table}");
    assert!(!table.contains("(verifier) (verifier)"), "{table}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_judging_language_model_guides_solve_and_is_measured_by_reward_auc() {
    let ar = reference("ref-ar");
    let judge = format!("lm:{}", reference("ref-judge"));
    // `ets solve` with Best-of-m on ref-ar, guided by `reward`, then `tail`.
    let best_of = |m: &'static str, reward: &str, tail: &[&'static str]| -> Vec<String> {
        let head = [
            "solve",
            "--backend",
            "cpu",
            "--model",
            &ar,
            "--strategy",
            "best-of-n",
        ];
        let args = head.into_iter().chain(["--m", m, "--reward", reward]);
        args.chain(tail.iter().copied())
            .map(str::to_string)
            .collect()
    };
    let args = best_of("4", &judge, &["--json", QUESTION]);
    let solved = ets_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The judge read the question once and each of the four samples after it.
    assert!(solved["reward_tokens"].as_u64().unwrap() > 4, "{solved}");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/reward/heldout-200.jsonl");
    let measured = ets_json(&[
        "reward-auc",
        "--backend",
        "cpu",
        "--model",
        &reference("ref-judge"),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(measured["auc"].as_f64().unwrap() >= 0.85, "{measured}");
    // A likelihood has no sign to read a verdict from.
    assert!(measured["accuracy_at_0"].is_null(), "{measured}");
    // A score-head model is not a judge, nor is a judge a score head: one error line each.
    let reward_model = format!("lm:{}", fixture("qwen2-reward").display());
    let args = best_of("2", &reward_model, &[QUESTION]);
    let err = failure_stderr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("score head"),
        "{err}"
    );
}

#[test]
fn a_sweep_checks_every_run_before_the_first() {
    let ar = reference("ref-ar");
    let draft = reference("ref-ar-draft");
    let started = std::time::Instant::now();
    // Recycling suits ets, not ets-is: refused before any question runs.
    let err = failure_stderr(&[
        "eval",
        "--backend",
        "cpu",
        "--model",
        &ar,
        "--draft",
        &draft,
        "--n",
        "500",
        "--sweep",
        "--strategies",
        "greedy,ets,ets-is",
        "--recycle",
        "--out",
        "/nonexistent/sweep",
    ]);
    assert!(
        err.contains("ets-is with budget") && err.contains("recycling"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 20, "it ran questions first");
}
