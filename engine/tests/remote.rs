//! A model served over the OpenAI-compatible completions API, against a scripted server on
//! 127.0.0.1 (this file's `FakeServer`): every block strategy answers through it, the requests
//! turn each server's own sampling defaults off, and faults behave — a server that is down,
//! answers 5xx, answers slowly or sends malformed JSON is retried and then fails with one clear
//! error; a request the server refuses is not retried; Stop abandons what is in flight and the
//! server sees the connection close. The real server (llama-cpp-python) is tested in
//! `tests/remote_server.rs` on demand.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pollster::block_on;
use serde_json::{Value, json};

use ets_engine::decode::diffusion::DiffusionSchedule;
use ets_engine::model::files::ModelFiles;
use ets_engine::remote::{Endpoint, HttpOptions, RemoteError, RemoteModel};
use ets_engine::reward::RewardKind;
use ets_engine::solve::{SolveOptions, Solves};
use ets_engine::strategy::{EtsParams, Solution, SolveSpec, Strategy, ValidSpec};
use ets_engine::task::answer::Extraction;
use ets_engine::trace::TraceEvent;
use ets_engine::{Error, Model, SamplingParams};

/// What the scripted server answers one request with.
#[derive(Clone)]
enum Reply {
    /// A status and a body, after a delay (while it waits, it watches for the client leaving).
    Answer {
        status: u16,
        body: String,
        delay: Duration,
    },
}

fn ok(body: Value) -> Reply {
    Reply::Answer {
        status: 200,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn status(status: u16, body: &str) -> Reply {
    Reply::Answer {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// A server on 127.0.0.1 that answers each request (numbered from 0, path, JSON body or
/// null) with its handler's reply, and records what it received.
struct FakeServer {
    url: String,
    /// The completion requests' bodies, in arrival order.
    completions: Arc<Mutex<Vec<Value>>>,
    /// Requests that saw their client close the connection before the answer was sent.
    abandoned: Arc<AtomicUsize>,
}

type Handler = dyn Fn(usize, &str, &Value) -> Reply + Send + Sync;

impl FakeServer {
    fn start(handler: impl Fn(usize, &str, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let completions = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let count = Arc::new(AtomicUsize::new(0));
        let (seen, left) = (completions.clone(), abandoned.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, count, seen, left) =
                    (handler.clone(), count.clone(), seen.clone(), left.clone());
                std::thread::spawn(move || serve(stream, &*handler, &count, &seen, &left));
            }
        });
        Self {
            url,
            completions,
            abandoned,
        }
    }

    fn completions(&self) -> Vec<Value> {
        self.completions.lock().unwrap().clone()
    }

    /// Requests whose clients left, once `expected` have or `wait` has passed.
    fn abandoned_within(&self, expected: usize, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        while self.abandoned.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.abandoned.load(Ordering::SeqCst)
    }
}

/// Answers the requests of one connection (kept alive) until the client closes it.
fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    count: &AtomicUsize,
    seen: &Mutex<Vec<Value>>,
    abandoned: &AtomicUsize,
) {
    loop {
        let Some((path, body)) = read_request(&mut stream) else {
            return;
        };
        if path.ends_with("/completions") {
            seen.lock().unwrap().push(body.clone());
        }
        let n = count.fetch_add(1, Ordering::SeqCst);
        let Reply::Answer {
            status,
            body,
            delay,
        } = handler(n, &path, &body);
        if !delay.is_zero() && client_left_within(&stream, delay) {
            abandoned.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// Waits `delay`; true as soon as the client closes the connection.
fn client_left_within(stream: &TcpStream, delay: Duration) -> bool {
    let start = Instant::now();
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let left = loop {
        if start.elapsed() >= delay {
            break false;
        }
        match stream.peek(&mut byte) {
            Ok(0) => break true,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break true,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stream.set_nonblocking(false).unwrap();
    left
}

/// One HTTP/1.1 request: its path and JSON body (null for none); None once the client is gone.
fn read_request(stream: &mut TcpStream) -> Option<(String, Value)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let path = head.split_whitespace().nth(1)?.to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap_or(Value::Null);
    Some((path, body))
}

/// A completion answer in llama-cpp-python's shape: text only, an end token left out.
fn completion(text: &str, finish: &str) -> Value {
    json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
}

/// A server that lists one model and answers every completion with "#### 17".
fn answering_17() -> FakeServer {
    FakeServer::start(|_, path, _| {
        if path.ends_with("/models") {
            ok(json!({"object": "list", "data": [{"id": "fake-ref-ar", "object": "model"}]}))
        } else {
            ok(completion(" #### 17", "stop"))
        }
    })
}

const QUESTION: &str = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";

/// Retries come quickly in tests.
fn quick(attempts: u32, timeout: Duration) -> HttpOptions {
    HttpOptions {
        max_in_flight: 4,
        attempts,
        timeout,
        backoff: Duration::from_millis(10),
    }
}

/// The bundled ref-ar's tokenizer, connected to `url`.
fn connect(url: &str, http: HttpOptions) -> ets_engine::Result<RemoteModel> {
    connect_to(&Endpoint {
        http,
        ..Endpoint::new(url)
    })
}

/// The bundled ref-ar's tokenizer, connected to `endpoint`.
fn connect_to(endpoint: &Endpoint) -> ets_engine::Result<RemoteModel> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar");
    let (tokenizer, context) = Model::tokenizer_of(ModelFiles::from_path(&dir)?)?;
    block_on(RemoteModel::connect(endpoint, tokenizer, context, None))
}

fn spec(strategy: Strategy, reward: RewardKind) -> ValidSpec {
    SolveSpec {
        strategy,
        sampling: SamplingParams::default(),
        max_tokens: 64,
        diffusion: DiffusionSchedule::default(),
        reward,
        extraction: Extraction::Strict,
        seed: 3,
    }
    .validate()
    .unwrap()
}

/// The question answered by `model` with `strategy`, self-consistency and no options.
fn solve_question(model: &RemoteModel, strategy: Strategy) -> ets_engine::Result<Solution> {
    block_on(model.solve(
        QUESTION,
        &spec(strategy, RewardKind::SelfConsistency),
        SolveOptions::default(),
        &mut |_| {},
    ))
}

/// A server that answers `before` (with finish reason `finish`) while the prompt holds fewer
/// than `ones` " 1"s, then " #### 17" and stops.
fn answering_17_after_ones(ones: usize, before: String, finish: &'static str) -> FakeServer {
    FakeServer::start(move |_, path, body| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "m"}]}));
        }
        let prompt = body["prompt"].as_str().unwrap_or_default();
        if prompt.matches(" 1").count() >= ones {
            ok(completion(" #### 17", "stop"))
        } else {
            ok(completion(&before, finish))
        }
    })
}

fn ets(m: usize, k: usize) -> Strategy {
    Strategy::Ets(EtsParams {
        m,
        k,
        block: 8,
        ..EtsParams::default()
    })
}

#[test]
fn every_block_strategy_answers_through_a_server() {
    let server = answering_17();
    let model = connect(&server.url, quick(2, Duration::from_secs(10))).unwrap();
    assert_eq!(model.name(), "fake-ref-ar");
    let strategies = [
        Strategy::Sample,
        Strategy::Greedy,
        Strategy::BestOfN { n: 4 },
        Strategy::Majority { n: 4 },
        ets(4, 2),
        Strategy::ParticleFilter(EtsParams {
            m: 4,
            block: 8,
            ..EtsParams::default()
        }),
    ];
    for strategy in strategies {
        let name = strategy.name().to_string();
        let before = server.completions().len();
        let solution = solve_question(&model, strategy).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(solution.answer.as_deref(), Some("17"), "{name}");
        assert!(solution.tokens > 0, "{name}: no tokens counted");
        let requests = &server.completions()[before..];
        assert!(!requests.is_empty(), "{name}: no request");
        if name == "best-of-n" {
            // Four independent draws, four seeds.
            let mut seeds: Vec<u64> = requests
                .iter()
                .map(|b| b["seed"].as_u64().unwrap())
                .collect();
            seeds.sort_unstable();
            seeds.dedup();
            assert_eq!((requests.len(), seeds.len()), (4, 4));
        }
    }
    let bodies = server.completions();
    for body in &bodies {
        // The server's own transforms are off (top-k 0 for llama-cpp-python, which refuses
        // -1); the prompt is the text with the question.
        assert_eq!(body["top_k"], 0, "{body}");
        assert_eq!(body["min_p"], 0.0);
        assert_eq!(body["repeat_penalty"], 1.0);
        assert_eq!(body["top_p"], 1.0);
        assert_eq!(body["model"], "fake-ref-ar");
        assert!(
            body["prompt"]
                .as_str()
                .unwrap()
                .contains("Mia has 14 shells")
        );
        assert!(body["max_tokens"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn ets_blocks_are_requests_of_b_tokens_that_continue_the_chosen_prefix() {
    // Each block answers " 1" (one more token) until the prompt holds five of them, then
    // "#### 17" and stops: the requests must carry the prefix chosen so far.
    let server = answering_17_after_ones(5, " 1".into(), "length");
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    let solution = solve_question(&model, ets(2, 1)).unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"), "{}", solution.text);
    assert!(solution.text.starts_with(" 1 1"), "{:?}", solution.text);
    let bodies = server.completions();
    assert!(
        bodies
            .iter()
            .all(|b| b["max_tokens"].as_u64().unwrap() <= 64)
    );
    assert!(
        bodies.iter().any(|b| b["max_tokens"] == 8),
        "no block request of B = 8"
    );
}

#[test]
fn a_block_longer_than_asked_is_cut_to_the_block_and_the_sequence_goes_on() {
    // The first answer is longer than B = 8 tokens once tokenized again here (text only): the
    // block keeps 8 and the sequence continues with the next request, not ended with its tail
    // dropped; the next answer ends it.
    let server = answering_17_after_ones(4, " 1".repeat(12), "stop");
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    let solution = solve_question(&model, ets(2, 1)).unwrap();
    assert_eq!(
        solution.answer.as_deref(),
        Some("17"),
        "{:?}",
        solution.text
    );
    assert!(solution.text.starts_with(" 1 1"), "{:?}", solution.text);
    assert!(
        solution.text.matches(" 1").count() < 12,
        "{:?}",
        solution.text
    );
}

#[test]
fn a_server_that_takes_token_ids_gets_them_and_its_ids_are_kept() {
    // vLLM's shape: token-id prompts, `token_ids` in each choice, the end token among them.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar");
    let (tokenizer, _) = Model::tokenizer_of(ModelFiles::from_path(&dir).unwrap()).unwrap();
    let mut ids = tokenizer.encode(" #### 17", false).unwrap();
    ids.push(tokenizer.eos_ids()[0]);
    let server = FakeServer::start(move |_, path, body| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "m", "owned_by": "vllm"}]}));
        }
        let prompt_is_ids = body["prompt"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(Value::is_u64));
        if !prompt_is_ids {
            return status(400, r#"{"error": {"message": "the test wants token ids"}}"#);
        }
        // As many choices as `n` asks for.
        let n = body["n"].as_u64().unwrap_or(1);
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "text": " #### 17", "token_ids": ids, "finish_reason": "stop"}))
            .collect();
        ok(json!({ "choices": choices }))
    });
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    assert_eq!(model.server(), ets_engine::remote::Server::Vllm);
    assert!(model.prompt_ids());
    let solution = solve_question(&model, ets(2, 1)).unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"));
    assert_eq!(solution.text, " #### 17");
    let bodies = server.completions();
    assert!(
        bodies.iter().all(|b| b["top_k"] == -1),
        "vLLM's top-k off is -1"
    );
}

/// A vLLM-shaped server whose every choice is `text` (ids from ref-ar's tokenizer, the end
/// token last); with `honour_n` false it sends one choice whatever `n` asks.
fn vllm_answering(text: &str, honour_n: bool) -> FakeServer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar");
    let (tokenizer, _) = Model::tokenizer_of(ModelFiles::from_path(&dir).unwrap()).unwrap();
    let mut ids = tokenizer.encode(text, false).unwrap();
    ids.push(tokenizer.eos_ids()[0]);
    let text = text.to_string();
    FakeServer::start(move |_, path, body| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "m", "owned_by": "vllm"}]}));
        }
        let n = if honour_n {
            body["n"].as_u64().unwrap_or(1)
        } else {
            1
        };
        // The choices come in reverse: they are read by `index`.
        let choices: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"index": i, "text": text, "token_ids": ids, "finish_reason": "stop"}))
            .collect();
        ok(json!({ "choices": choices }))
    })
}

#[test]
fn identical_sequences_continue_in_one_request_with_n_where_the_server_takes_it() {
    let server = vllm_answering(" #### 17", true);
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    assert!(model.uses_n(), "vLLM takes n");
    // ETS with M = 4: the first step's four candidates continue the same prompt, so they are
    // one request with n = 4 (each ends at once, so there is nothing to roll out).
    let solution = solve_question(&model, ets(4, 2)).unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"));
    let bodies = server.completions();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["n"], 4);
    // Best-of-4 likewise: one request for four draws.
    let before = server.completions().len();
    let solution = solve_question(&model, Strategy::BestOfN { n: 4 }).unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"));
    let bodies = &server.completions()[before..];
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["n"], 4);
    // Turned off: one request each.
    let one_each = connect_to(&Endpoint {
        use_n: Some(false),
        http: quick(1, Duration::from_secs(10)),
        ..Endpoint::new(&server.url)
    })
    .unwrap();
    let before = server.completions().len();
    solve_question(&one_each, Strategy::BestOfN { n: 4 }).unwrap();
    let bodies = &server.completions()[before..];
    assert_eq!(bodies.len(), 4);
    assert!(bodies.iter().all(|b| b["n"] == 1));
}

#[test]
fn a_server_that_ignores_n_fails_with_the_advice_to_turn_it_off() {
    let server = vllm_answering(" #### 17", false);
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    let e = solve_question(&model, Strategy::BestOfN { n: 3 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("asked for n = 3"), "{e}");
    assert!(e.contains("the server sent 1"), "{e}");
    assert!(e.contains("--use-n false"), "{e}");
}

#[test]
fn what_needs_logits_is_refused_with_a_reason() {
    let server = answering_17();
    let model = connect(&server.url, quick(1, Duration::from_secs(10))).unwrap();
    let run = |strategy, reward| {
        block_on(model.solve(
            QUESTION,
            &spec(strategy, reward),
            SolveOptions::default(),
            &mut |_| {},
        ))
        .map(|s| s.text)
    };
    let beam = run(Strategy::Beam { width: 2 }, RewardKind::SelfConsistency);
    assert!(
        matches!(&beam, Err(Error::Strategy(m)) if m.contains("next-token distributions")),
        "{beam:?}"
    );
    let certainty = run(ets(2, 1), RewardKind::SelfCertainty);
    assert!(
        matches!(&certainty, Err(Error::Reward(m)) if m.contains("whole next-token distribution")),
        "{certainty:?}"
    );
    let is = run(
        Strategy::EtsIs(EtsParams::default()),
        RewardKind::SelfConsistency,
    );
    assert!(
        matches!(&is, Err(Error::Strategy(m)) if m.contains("needs the draft model on a server")),
        "{is:?}"
    );
}

/// ref-ar's tokenizer (the scripted servers' token ids).
fn ref_ar_tokenizer() -> ets_engine::tokenize::TextTokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar");
    Model::tokenizer_of(ModelFiles::from_path(&dir).unwrap())
        .unwrap()
        .0
}

/// `n` vLLM-shaped choices of `ids` (text `text`), each token with log-probability
/// `log_prob`, ending as `finish` says.
fn vllm_choices(n: u64, text: &str, ids: &[u32], log_prob: f64, finish: &str) -> Value {
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({"index": i, "text": text, "token_ids": ids, "finish_reason": finish,
                   "logprobs": {"token_logprobs": vec![log_prob; ids.len()]}})
        })
        .collect();
    json!({ "choices": choices })
}

#[test]
fn ets_is_runs_its_rollouts_on_a_served_draft_and_weighs_them_by_the_targets_echo() {
    // The target (vLLM-shaped) proposes " 14 + 9 = 23\n" until its prompt holds it, then
    // " #### 17"; it scores given tokens at −0.5 nats each. The draft always answers
    // " #### 17" at −1 nat a token. So every rollout's log-weight is 0.5 per token.
    let tokenizer = ref_ar_tokenizer();
    let eos = tokenizer.eos_ids()[0];
    let step = tokenizer.encode(" 14 + 9 = 23\n", false).unwrap();
    let mut answer = tokenizer.encode(" #### 17", false).unwrap();
    answer.push(eos);
    let (target_answer, draft_answer) = (answer.clone(), answer.clone());
    let target = FakeServer::start(move |_, path, body| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "big", "owned_by": "vllm"}]}));
        }
        let prompt: Vec<u32> = body["prompt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        if body["echo"] == true {
            let mut log_probs = vec![Value::Null];
            log_probs.extend(vec![json!(-0.5); prompt.len() - 1]);
            log_probs.push(json!(-0.1));
            return ok(
                json!({"choices": [{"index": 0, "text": "", "finish_reason": "length",
                "logprobs": {"token_logprobs": log_probs}}],
                "usage": {"prompt_tokens": prompt.len(), "completion_tokens": 1}}),
            );
        }
        let n = body["n"].as_u64().unwrap_or(1);
        let max = body["max_tokens"].as_u64().unwrap() as usize;
        let holds_step = prompt.windows(step.len()).any(|w| w == step.as_slice());
        if holds_step {
            ok(vllm_choices(n, " #### 17", &target_answer, -0.2, "stop"))
        } else {
            let cut = &step[..max.min(step.len())];
            ok(vllm_choices(n, "", cut, -0.2, "length"))
        }
    });
    let draft = FakeServer::start(move |_, path, body| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "small", "owned_by": "vllm"}]}));
        }
        let n = body["n"].as_u64().unwrap_or(1);
        ok(vllm_choices(n, " #### 17", &draft_answer, -1.0, "stop"))
    });
    let http = quick(1, Duration::from_secs(10));
    let target_model = connect(&target.url, http.clone()).unwrap();
    let draft_model = connect(&draft.url, http).unwrap();
    let (m, k) = (2, 2);
    let spec = SolveSpec {
        max_tokens: 48,
        ..spec(
            Strategy::EtsIs(EtsParams {
                m,
                k,
                block: 16,
                ..EtsParams::default()
            }),
            RewardKind::SelfConsistency,
        )
        .into()
    }
    .validate()
    .unwrap();
    let mut weights = Vec::new();
    let solution = block_on(target_model.solve(
        QUESTION,
        &spec,
        SolveOptions {
            served_draft: Some(&draft_model),
            ..SolveOptions::default()
        },
        &mut |event| {
            if let TraceEvent::Step(step) = event
                && step.index == 0
            {
                for c in &step.candidates {
                    weights.extend(c.rollouts.iter().map(|r| r.log_weight));
                }
            }
        },
    ))
    .unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"));
    assert!(solution.draft_tokens > 0, "the draft decoded nothing");
    // Step 1: M candidates, K rollouts each from the draft, each scored by the target.
    assert_eq!(weights.len(), m * k, "{weights:?}");
    for w in &weights {
        assert!((w - 0.5 * answer.len() as f64).abs() < 1e-9, "{weights:?}");
    }
    let scoring: Vec<Value> = target
        .completions()
        .into_iter()
        .filter(|b| b["echo"] == true)
        .collect();
    assert_eq!(scoring.len(), m * k);
    for body in &scoring {
        assert_eq!(body["logprobs"], 1);
        assert_eq!(body["max_tokens"], 1);
        let prompt = body["prompt"].as_array().unwrap();
        let tail: Vec<u32> = prompt[prompt.len() - answer.len()..]
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tail, answer,
            "the target scores the draft's rollout after its candidate"
        );
    }
    // The draft was asked for each token's log-probability.
    assert!(draft.completions().iter().all(|b| b["logprobs"] == 1));
}

#[test]
fn ets_is_over_a_server_is_refused_where_its_weights_would_be_wrong() {
    let target = answering_17();
    let model = connect(&target.url, quick(1, Duration::from_secs(10))).unwrap();
    let draft = connect(&target.url, quick(1, Duration::from_secs(10))).unwrap();
    let is = Strategy::EtsIs(EtsParams {
        m: 2,
        k: 1,
        block: 8,
        ..EtsParams::default()
    });
    let run = |model: &RemoteModel, sampling: SamplingParams, options: SolveOptions<'_>| {
        let spec = SolveSpec {
            sampling,
            ..spec(is.clone(), RewardKind::SelfConsistency).into()
        }
        .validate()
        .unwrap();
        block_on(model.solve(QUESTION, &spec, options, &mut |_| {}))
            .map(|s| s.text)
            .unwrap_err()
            .to_string()
    };
    let served = SolveOptions {
        served_draft: Some(&draft),
        ..SolveOptions::default()
    };
    let warm = SamplingParams {
        temperature: 0.7,
        ..SamplingParams::default()
    };
    let e = run(&model, warm, served);
    assert!(e.contains("temperature 1"), "{e}");
    let top_k = SamplingParams {
        top_k: Some(20),
        ..SamplingParams::default()
    };
    assert!(run(&model, top_k, served).contains("temperature 1"));
    // llama.cpp's server refuses echo: it cannot score the draft's tokens.
    let llama_server = FakeServer::start(|_, path, _| {
        if path.ends_with("/models") {
            ok(json!({"data": [{"id": "m", "owned_by": "llamacpp"}]}))
        } else {
            ok(completion(" #### 17", "stop"))
        }
    });
    let llama = connect(&llama_server.url, quick(1, Duration::from_secs(10))).unwrap();
    let e = run(&llama, SamplingParams::default(), served);
    assert!(e.contains("llama.cpp") && e.contains("echo"), "{e}");
    // A draft loaded here cannot propose for a served target.
    let local = Model::from_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar-draft"),
        &ets_engine::backend::cpu_device(),
    )
    .unwrap();
    let e = run(
        &model,
        SamplingParams::default(),
        SolveOptions {
            draft: Some(&local),
            ..SolveOptions::default()
        },
    );
    assert!(e.contains("a draft loaded here"), "{e}");
}

#[test]
fn a_passing_fault_is_retried() {
    // 503, then malformed JSON, then an answer.
    let server = FakeServer::start(|n, path, _| {
        if path.ends_with("/models") {
            return ok(json!({"data": [{"id": "m"}]}));
        }
        match n {
            1 => status(503, r#"{"error": {"message": "busy"}}"#),
            2 => status(200, "<html>proxy error</html>"),
            _ => ok(completion(" #### 17", "stop")),
        }
    });
    let model = connect(&server.url, quick(3, Duration::from_secs(10))).unwrap();
    let solution = solve_question(&model, Strategy::Sample).unwrap();
    assert_eq!(solution.answer.as_deref(), Some("17"));
    assert_eq!(server.completions().len(), 3);
}

/// The error of a sample run against `server` with `attempts` tries and `timeout`, and how long
/// it took.
fn failing_run(url: &str, attempts: u32, timeout: Duration) -> (String, Duration) {
    let model =
        connect(url, quick(attempts, timeout)).unwrap_or_else(|e| panic!("connecting: {e}"));
    let start = Instant::now();
    let result = solve_question(&model, Strategy::Sample);
    let error = match result {
        Ok(s) => panic!("answered {:?}", s.text),
        Err(e) => e,
    };
    assert!(matches!(error, Error::Remote(_)), "{error:?}");
    (error.to_string(), start.elapsed())
}

fn models_then(reply: Reply) -> FakeServer {
    FakeServer::start(move |_, path, _| {
        if path.ends_with("/models") {
            ok(json!({"data": [{"id": "m"}]}))
        } else {
            reply.clone()
        }
    })
}

#[test]
fn server_errors_are_retried_then_fail_with_one_clear_error() {
    let server = models_then(status(
        500,
        r#"{"error": {"message": "CUDA out of memory"}}"#,
    ));
    let (message, _) = failing_run(&server.url, 3, Duration::from_secs(10));
    assert!(message.contains("failed 3 times in a row"), "{message}");
    assert!(
        message.contains("HTTP 500: CUDA out of memory"),
        "{message}"
    );
    assert_eq!(server.completions().len(), 3);
}

#[test]
fn malformed_answers_are_retried_then_fail_with_the_reason() {
    let server = models_then(status(200, r#"{"choices": []}"#));
    let (message, _) = failing_run(&server.url, 2, Duration::from_secs(10));
    assert!(
        message.contains("not the JSON expected (no choices[0]"),
        "{message}"
    );
    assert_eq!(server.completions().len(), 2);
}

#[test]
fn slow_answers_time_out_and_are_retried() {
    let server = models_then(Reply::Answer {
        status: 200,
        body: completion(" #### 17", "stop").to_string(),
        delay: Duration::from_secs(5),
    });
    let (message, took) = failing_run(&server.url, 2, Duration::from_millis(300));
    assert!(message.contains("no answer within 0.3 s"), "{message}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Each timed-out try closed its connection; the server saw both go.
    assert_eq!(server.abandoned_within(2, Duration::from_secs(2)), 2);
}

#[test]
fn a_refused_request_is_not_retried() {
    let server = models_then(status(
        400,
        r#"{"error": {"message": "Requested tokens (9000) exceed context window of 2048", "type": "invalid_request_error", "code": "context_length_exceeded"}}"#,
    ));
    let (message, _) = failing_run(&server.url, 4, Duration::from_secs(10));
    assert!(
        message.contains("refused the request (HTTP 400)"),
        "{message}"
    );
    assert!(message.contains("exceed context window"), "{message}");
    assert_eq!(server.completions().len(), 1);
}

#[test]
fn a_server_that_is_down_fails_with_one_clear_error() {
    // A port nobody listens on: bound, then let go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let start = Instant::now();
    let error = connect(&url, quick(3, Duration::from_secs(5))).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::Remote(RemoteError::GaveUp { .. })),
        "{error:?}"
    );
    assert!(
        message.contains("failed 3 times") && message.contains("cannot connect"),
        "{message}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn stop_abandons_the_requests_in_flight() {
    let server = models_then(Reply::Answer {
        status: 200,
        body: completion(" #### 17", "stop").to_string(),
        delay: Duration::from_secs(30),
    });
    let model = connect(&server.url, quick(1, Duration::from_secs(60))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let raise = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        raise.store(true, Ordering::SeqCst);
    });
    let start = Instant::now();
    let result = block_on(model.solve(
        QUESTION,
        &spec(Strategy::BestOfN { n: 4 }, RewardKind::SelfConsistency),
        SolveOptions {
            stop: Some(&stop),
            ..SolveOptions::default()
        },
        &mut |_| {},
    ));
    let took = start.elapsed();
    assert!(
        matches!(result, Err(Error::Stopped)),
        "{:?}",
        result.map(|s| s.text)
    );
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    // The four requests were in flight; each connection closed, which servers take as a cancel.
    assert_eq!(server.abandoned_within(4, Duration::from_secs(3)), 4);
}
