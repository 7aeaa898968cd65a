//! A real OpenAI-compatible server on 127.0.0.1: llama.cpp's, from llama-cpp-python
//! (`scripts/llama-server.sh` installs it in a cache; it compiles llama.cpp the first time,
//! about 7 minutes), serving the real model (SmolLM2-135M-Instruct Q4_1,
//! `scripts/fetch-model.sh`). Greedy decoding over the server gives llama.cpp's known answer;
//! sampling, Best-of-N, majority and ETS answer through it; a server killed mid-run fails the
//! run with one clear error after the retries. And the bundled ref-ar, converted to GGUF
//! (`scripts/ref_ar_to_gguf.py`) and served: ETS over the server on 100 test problems lands
//! within the 95% interval of the local engine's accuracy with the same settings. With
//! ref-ar-draft served beside it: the target's echoed log-probabilities of the draft's rollouts
//! are the local engine's, and ETS-IS over the two servers on 50 problems lands within the
//! local interval.
//!
//! Runs when `ETS_REMOTE_SERVER_TESTS=1` (CI sets it); otherwise it says so and passes.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pollster::block_on;

use ets_engine::backend::cpu_device;
use ets_engine::decode::diffusion::DiffusionSchedule;
use ets_engine::decode::lm::{LanguageModel, Meter};
use ets_engine::decode::sequences::{Drawing, Sequences};
use ets_engine::eval::evaluate;
use ets_engine::model::files::ModelFiles;
use ets_engine::remote::{Endpoint, HttpOptions, RemoteModel};
use ets_engine::reward::RewardKind;
use ets_engine::rng::CounterRng;
use ets_engine::solve::{SolveOptions, Solves};
use ets_engine::strategy::{EtsParams, SolveSpec, Strategy, ValidSpec};
use ets_engine::task::answer::Extraction;
use ets_engine::task::arith::{ArithConfig, Split, generate};
use ets_engine::task::gsm8k::Gsm8kRecord;
use ets_engine::{Error, Model, SamplingParams};

/// The output of one of the repository's scripts (its last line: a path).
fn script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(out.status.success(), "{name} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A llama-cpp-python server of `model` on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// Where its log goes.
    log: PathBuf,
}

impl Server {
    fn start(python: &Path, model: &Path, context: usize) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("ets-llama-server-{port}.log"));
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--n_ctx",
                &context.to_string(),
                "--n_threads",
                "2",
                "--seed",
                "0",
            ])
            .args(["--verbose", "false"])
            .stdout(Stdio::null())
            // A file, not a pipe: uvicorn logs every request, which would fill a pipe no one reads.
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the server: {e}"));
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}/v1"),
            log,
        };
        server.wait_ready();
        server
    }

    /// Waits (at most 120 s) for the server to list its model.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let models = format!("{}/models", self.url.trim_start_matches("http://"));
        let (host, path) = models.split_once('/').unwrap();
        while start.elapsed() < Duration::from_secs(120) {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("the server exited ({status}): {log}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(host) {
                use std::io::Write;
                let _ = write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                    eprintln!("server ready after {:.1} s", start.elapsed().as_secs_f64());
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the server did not answer within 120 s");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether the server tests were asked for; says how to ask when not.
fn asked() -> bool {
    let on = std::env::var("ETS_REMOTE_SERVER_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("skipped: set ETS_REMOTE_SERVER_TESTS=1 to run it against llama-cpp-python");
    }
    on
}

/// A served model with `tokenizer_of`'s tokenizer, 4 requests in flight, 3 tries each.
fn connect(server: &Server, model_file: &Path, context: usize) -> RemoteModel {
    let (tokenizer, _) = Model::tokenizer_of(ModelFiles::from_path(model_file).unwrap()).unwrap();
    let endpoint = Endpoint {
        context: Some(context),
        http: HttpOptions {
            max_in_flight: 4,
            attempts: 3,
            timeout: Duration::from_secs(120),
            backoff: Duration::from_millis(200),
        },
        ..Endpoint::new(&server.url)
    };
    block_on(RemoteModel::connect(&endpoint, tokenizer, context, None)).unwrap()
}

fn spec(strategy: Strategy, temperature: f32, reward: RewardKind) -> ValidSpec {
    SolveSpec {
        strategy,
        sampling: SamplingParams {
            temperature,
            ..SamplingParams::default()
        },
        max_tokens: 48,
        diffusion: DiffusionSchedule::default(),
        reward,
        extraction: Extraction::Flexible,
        seed: 1,
    }
    .validate()
    .unwrap()
}

#[test]
fn strategies_answer_through_llama_cpp_server() {
    if !asked() {
        return;
    }
    let python = script("llama-server.sh");
    let gguf = script("fetch-model.sh");
    let server = Server::start(&python, &gguf, 2048);
    let model = connect(&server, &gguf, 2048);
    let ask = |question: &str, spec: &ValidSpec| {
        let start = Instant::now();
        let solution = block_on(model.solve(question, spec, SolveOptions::default(), &mut |_| {}))
            .unwrap_or_else(|e| panic!("{}: {e}", spec.strategy.name()));
        eprintln!(
            "{}: {:?} · {} tokens · {:.1} s",
            spec.strategy.name(),
            solution.text,
            solution.tokens,
            start.elapsed().as_secs_f64()
        );
        solution
    };
    // Greedy: llama.cpp's own answer (docs: real-models.md).
    let greedy = ask(
        "What is the capital of Germany?",
        &spec(Strategy::Greedy, 0.0, RewardKind::SelfConsistency),
    );
    assert!(greedy.text.contains("Berlin"), "{:?}", greedy.text);
    assert!(
        greedy.text.starts_with("The capital of Germany is Berlin"),
        "{:?}",
        greedy.text
    );
    let question = "How many legs does a dog have? Answer with a number.";
    for strategy in [
        Strategy::Sample,
        Strategy::BestOfN { n: 3 },
        Strategy::Majority { n: 3 },
        Strategy::Ets(EtsParams {
            m: 2,
            k: 1,
            block: 16,
            ..EtsParams::default()
        }),
    ] {
        let solution = ask(question, &spec(strategy, 0.7, RewardKind::SelfConsistency));
        assert!(!solution.text.trim().is_empty());
        assert!(solution.tokens > 0);
    }
    let requests = model.requests();
    assert!(requests >= 1 + 1 + 3 + 3 + 2, "{requests} requests");
    // The server goes away: the next run fails after its retries with one clear error.
    drop(server);
    let failed = block_on(model.solve(
        question,
        &spec(Strategy::Sample, 0.7, RewardKind::SelfConsistency),
        SolveOptions::default(),
        &mut |_| {},
    ));
    match failed {
        Err(Error::Remote(e)) => {
            let message = e.to_string();
            assert!(
                message.contains("failed 3 times") && message.contains("cannot connect"),
                "{message}"
            );
        }
        other => panic!("{:?}", other.map(|s| s.text)),
    }
}

#[test]
fn ets_over_a_server_matches_the_local_engine_on_100_problems() {
    if !asked() {
        return;
    }
    let python = script("llama-server.sh");
    let dir = tempdir();
    let (server, gguf) = serve_bundled(&python, &dir, "ref-ar");
    let remote = connect(&server, &gguf, 512);
    let local = bundled("ref-ar");
    // The GGUF file's tokenizer (llama.cpp's byte-level BPE) splits text as ref-ar's own does.
    let question = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";
    assert_eq!(
        remote.tokenizer().encode(question, true).unwrap(),
        local.tokenizer().unwrap().encode(question, true).unwrap()
    );
    let (questions, truths) = test_problems(100);
    let ets = ref_ar_spec(Strategy::Ets(m4_k2_b16()));
    let run = |name: &str, result: ets_engine::Result<ets_engine::eval::StrategyResult>| {
        let r = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: {:.1}% [{:.1}, {:.1}] · {:.0} tokens · {:.0} ms per question",
            100.0 * r.accuracy,
            100.0 * r.ci95.0,
            100.0 * r.ci95.1,
            r.tokens_mean,
            r.wall_ms_mean
        );
        r
    };
    let options = SolveOptions::default;
    let here = run(
        "local engine (cpu)",
        block_on(evaluate(
            &local,
            options(),
            &questions,
            &truths,
            &ets,
            &mut |_| {},
        )),
    );
    let there = run(
        "llama-cpp-python server",
        block_on(evaluate(
            &remote,
            options(),
            &questions,
            &truths,
            &ets,
            &mut |_| {},
        )),
    );
    assert!(
        here.ci95.0 <= there.accuracy && there.accuracy <= here.ci95.1,
        "ETS over the server {:.3} lies outside the local engine's 95% interval [{:.3}, {:.3}]",
        there.accuracy,
        here.ci95.0,
        here.ci95.1
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bundled model loaded here on the CPU.
fn bundled(name: &str) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    Model::from_dir(&dir, &cpu_device()).unwrap()
}

/// The bundled model `name` converted to GGUF in `dir` (`scripts/ref_ar_to_gguf.py`) and
/// served, with a context of 512 tokens.
fn serve_bundled(python: &Path, dir: &Path, name: &str) -> (Server, PathBuf) {
    let gguf = dir.join(format!("{name}.gguf"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let converted = Command::new(python)
        .arg(root.join("scripts/ref_ar_to_gguf.py"))
        .arg(&gguf)
        .arg("--model")
        .arg(root.join("models").join(name))
        .status()
        .unwrap();
    assert!(
        converted.success(),
        "scripts/ref_ar_to_gguf.py failed for {name}"
    );
    (Server::start(python, &gguf, 512), gguf)
}

/// ETS's settings for ref-ar over a server: M 4, K 2, blocks of 16.
fn m4_k2_b16() -> EtsParams {
    EtsParams {
        m: 4,
        k: 2,
        block: 16,
        ..EtsParams::default()
    }
}

/// `strategy` on ref-ar: T = 1, at most 96 tokens, self-consistency, strict answers, seed 0.
fn ref_ar_spec(strategy: Strategy) -> ValidSpec {
    SolveSpec {
        strategy,
        sampling: SamplingParams::default(),
        max_tokens: 96,
        diffusion: DiffusionSchedule::default(),
        reward: RewardKind::SelfConsistency,
        extraction: Extraction::Strict,
        seed: 0,
    }
    .validate()
    .unwrap()
}

/// The log-probability under `model` of each chunk after `prompt` (teacher forcing).
fn fed_log_probs<M: LanguageModel>(
    model: &M,
    prompt: &[u32],
    chunks: &[&[u32]],
    drawing: Drawing<'_>,
) -> Vec<f64> {
    let meter = Meter::default();
    let root = block_on(Sequences::start(model, &meter, &[prompt], vec![0])).unwrap();
    let mut fed = root.fork(model, &vec![(0, 0); chunks.len()]).unwrap();
    block_on(fed.feed(model, &meter, chunks, drawing)).unwrap();
    fed.stats.iter().map(|s| s.sampling_log_prob).collect()
}

/// The arithmetic task's first `n` test problems: questions and true answers.
fn test_problems(n: usize) -> (Vec<String>, Vec<String>) {
    let problems = generate(&ArithConfig::default(), Split::Test, 0, n);
    let records: Vec<Gsm8kRecord> = problems.iter().map(Gsm8kRecord::from).collect();
    (
        records.iter().map(|r| r.question.clone()).collect(),
        records.iter().map(|r| r.final_answer().unwrap()).collect(),
    )
}

#[test]
fn ets_is_over_two_servers_weighs_as_the_local_engine() {
    if !asked() {
        return;
    }
    let python = script("llama-server.sh");
    let dir = tempdir().join("ets-is");
    std::fs::create_dir_all(&dir).unwrap();
    let (target_server, target_gguf) = serve_bundled(&python, &dir, "ref-ar");
    let (draft_server, _) = serve_bundled(&python, &dir, "ref-ar-draft");
    let target = connect(&target_server, &target_gguf, 512);
    let draft = connect(&draft_server, &target_gguf, 512);
    let (local, local_draft) = (bundled("ref-ar"), bundled("ref-ar-draft"));

    // The target's log-probabilities of the draft's rollouts, read from the server's echo,
    // are the local engine's: rollouts drawn here from the draft, scored both ways.
    let (questions, truths) = test_problems(50);
    let sampling = SamplingParams::default();
    let drawing = Drawing {
        sampling: &sampling,
        stop_ids: &[],
        rng: CounterRng { seed: 9 },
        drafts: None,
    };
    let meter = Meter::default();
    let mut worst = 0.0f64;
    for question in &questions[..4] {
        let prompt = local.tokenizer().unwrap().encode(question, true).unwrap();
        let d = &local_draft.transformer;
        let root = block_on(Sequences::start(d, &meter, &[&prompt], vec![0])).unwrap();
        let mut rollouts = root.fork(d, &[(0, 1), (0, 2), (0, 3)]).unwrap();
        block_on(rollouts.extend(d, &meter, 24, None, drawing)).unwrap();
        let chunks: Vec<&[u32]> = rollouts.tokens.iter().map(Vec::as_slice).collect();
        let here = fed_log_probs(&local.transformer, &prompt, &chunks, drawing);
        let there = fed_log_probs(&target, &prompt, &chunks, drawing);
        for ((a, b), chunk) in here.iter().zip(&there).zip(&chunks) {
            let per_token = (a - b).abs() / chunk.len() as f64;
            eprintln!(
                "log p of {} tokens: here {a:.4}, over the server {b:.4}",
                chunk.len()
            );
            worst = worst.max(per_token);
        }
    }
    // The served weights are F16 (here F32): a few thousandths of a nat per token.
    assert!(worst < 0.01, "scores differ by {worst:.4} nats per token");

    // ETS-IS through both servers answers as ETS-IS here does.
    let ets_is = ref_ar_spec(Strategy::EtsIs(m4_k2_b16()));
    let here = block_on(evaluate(
        &local,
        SolveOptions {
            draft: Some(&local_draft),
            ..SolveOptions::default()
        },
        &questions,
        &truths,
        &ets_is,
        &mut |_| {},
    ))
    .unwrap();
    let before = (target.requests(), draft.requests());
    let there = block_on(evaluate(
        &target,
        SolveOptions {
            served_draft: Some(&draft),
            ..SolveOptions::default()
        },
        &questions,
        &truths,
        &ets_is,
        &mut |_| {},
    ))
    .unwrap();
    for (name, r) in [("local engine", &here), ("two servers", &there)] {
        eprintln!(
            "ETS-IS, {name}: {:.1}% [{:.1}, {:.1}] · {:.0} + {:.0} draft tokens · {:.0} ms per question",
            100.0 * r.accuracy,
            100.0 * r.ci95.0,
            100.0 * r.ci95.1,
            r.tokens_mean,
            r.draft_tokens_mean,
            r.wall_ms_mean
        );
    }
    eprintln!(
        "requests per question: {:.1} to the target, {:.1} to the draft",
        (target.requests() - before.0) as f64 / questions.len() as f64,
        (draft.requests() - before.1) as f64 / questions.len() as f64
    );
    assert!(
        there.draft_tokens_mean > 0.0,
        "the draft's server decoded nothing"
    );
    assert!(
        here.ci95.0 <= there.accuracy && there.accuracy <= here.ci95.1,
        "ETS-IS over the servers {:.3} lies outside the local engine's 95% interval [{:.3}, {:.3}]",
        there.accuracy,
        here.ci95.0,
        here.ci95.1
    );
    drop((target_server, draft_server));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh folder under the system's temporary directory.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ets-remote-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
