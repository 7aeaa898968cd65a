//! Reward models: tiny random Hugging Face `*ForSequenceClassification` checkpoints
//! (tests/fixtures/make_reward_fixtures.py) score a question's responses as transformers does,
//! on every backend, in one batched pass after the question's shared one; a reward model drives
//! Best-of-N and ETS through `Model::solve`; a model without a score head, or a classifier with
//! several labels, is refused with a clear error.

mod common;

use std::path::PathBuf;

use common::{TestBackend, fixture};
use ets_engine::reward::{self, RewardContext, RewardKind};
use ets_engine::solve::SolveOptions;
use ets_engine::strategy::{EtsParams, SolveSpec, Strategy};
use ets_engine::task::answer::Extraction;
use ets_engine::trace::{Selection, TraceEvent};
use ets_engine::{Error, Model};
use pollster::block_on;
use serde::Deserialize;

/// The reward-model fixtures: one with a chat template, one without.
const REWARD_MODELS: [&str; 2] = ["llama-reward", "qwen2-reward"];

#[derive(Deserialize)]
struct Expected {
    question: String,
    system: Option<String>,
    responses: Vec<String>,
    inputs: Vec<Vec<u32>>,
    scores: Vec<f64>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model_reward(name: &str) -> RewardKind {
    RewardKind::Model { name: name.into() }
}

/// Scores every fixture's responses in one call and compares them with transformers'.
fn check_scores(backend: &TestBackend) {
    for name in REWARD_MODELS {
        let exp = expected(name);
        let model = Model::from_dir(&fixture(name), &backend.device).unwrap();
        let context = RewardContext {
            question: Some(&exp.question),
            system: exp.system.as_deref(),
            reward_model: Some(&model),
            ..RewardContext::default()
        };
        let mut reward = reward::build(&model_reward(name), context).unwrap();
        let scores = block_on(reward.score(&common::text_responses(&exp.responses))).unwrap();
        let err = scores
            .iter()
            .zip(&exp.scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{name} on {}: max |Δscore| = {err:e}", backend.name);
        assert!(
            err <= f64::from(backend.tolerance),
            "{name} on {}: scores {scores:?}, transformers {:?}",
            backend.name,
            exp.scores
        );
        // The question ran once, each response after it: the shared prefix of the inputs
        // plus what each adds (the same tokens transformers read, or the counts differ).
        let shared = (0..)
            .take_while(|&i| {
                exp.inputs
                    .iter()
                    .all(|ids| ids.get(i) == exp.inputs[0].get(i))
            })
            .count();
        let expected_tokens = shared
            + exp
                .inputs
                .iter()
                .map(|ids| ids.len() - shared)
                .sum::<usize>();
        assert_eq!(reward.forward_tokens(), expected_tokens as u64, "{name}");
        let whole: usize = exp.inputs.iter().map(Vec::len).sum();
        assert!(
            reward.forward_tokens() < whole as u64,
            "{name} shares the question's pass"
        );
        // A second call reuses the question's cache: only the responses run.
        block_on(reward.score(&common::text_responses(&exp.responses[..1]))).unwrap();
        assert_eq!(
            reward.forward_tokens(),
            (expected_tokens + exp.inputs[0].len() - shared) as u64
        );
    }
}

#[test]
fn reward_models_match_transformers_cpu() {
    check_scores(&common::cpu());
}

#[test]
fn reward_models_match_transformers_wgpu() {
    if let Some(backend) = common::wgpu() {
        check_scores(&backend);
    }
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

const QUESTION: &str = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";

fn spec(strategy: Strategy) -> ets_engine::strategy::ValidSpec {
    SolveSpec {
        strategy,
        sampling: Default::default(),
        max_tokens: 48,
        diffusion: Default::default(),
        reward: model_reward("qwen2-reward"),
        extraction: Extraction::Strict,
        seed: 5,
    }
    .validate()
    .unwrap()
}

#[test]
fn best_of_n_keeps_the_response_the_reward_model_scores_highest() {
    let device = common::cpu().device;
    let policy = Model::from_dir(&models().join("ref-ar"), &device).unwrap();
    let scorer = Model::from_dir(&fixture("qwen2-reward"), &device).unwrap();
    let options = SolveOptions {
        reward_model: Some(&scorer),
        ..SolveOptions::default()
    };
    let best_of_4 = spec(Strategy::BestOfN { n: 4 });
    let solution = block_on(policy.solve(QUESTION, &best_of_4, options, &mut |_| {})).unwrap();
    let Some(TraceEvent::Step(step)) = solution
        .trace
        .iter()
        .find(|e| matches!(e, TraceEvent::Step(_)))
    else {
        panic!("best-of-n traces its choice");
    };
    let Selection::RewardArgmax { rewards } = &step.selection else {
        panic!("best-of-n chooses by reward");
    };
    // Each reward is the reward model's score of that sample alone.
    let texts: Vec<String> = step.candidates.iter().map(|c| c.text.clone()).collect();
    for (text, &batched) in texts.iter().zip(rewards) {
        let context = RewardContext {
            question: Some(QUESTION),
            reward_model: Some(&scorer),
            ..RewardContext::default()
        };
        let mut alone = reward::build(&model_reward("qwen2-reward"), context).unwrap();
        let score =
            block_on(alone.score(&common::text_responses(std::slice::from_ref(text)))).unwrap()[0];
        assert!(
            (score - batched).abs() < 1e-4,
            "{text:?}: {score} alone, {batched} batched"
        );
    }
    let best = rewards
        .iter()
        .enumerate()
        .fold(0, |best, (i, r)| if *r > rewards[best] { i } else { best });
    assert_eq!(step.chosen, best);
    assert_eq!(solution.text, texts[best]);
    assert!(
        solution.reward_tokens > 0,
        "the reward model's tokens are counted"
    );

    // ETS runs on it too, reproducibly, and counts the reward model's tokens.
    let ets = spec(Strategy::Ets(EtsParams {
        m: 3,
        k: 2,
        block: 8,
        ..EtsParams::default()
    }));
    let a = block_on(policy.solve(QUESTION, &ets, options, &mut |_| {})).unwrap();
    let b = block_on(policy.solve(QUESTION, &ets, options, &mut |_| {})).unwrap();
    assert_eq!((&a.text, a.reward_tokens), (&b.text, b.reward_tokens));
    assert!(a.reward_tokens > 0);
}

#[test]
fn a_model_reward_without_its_model_or_with_a_language_model_is_refused() {
    let device = common::cpu().device;
    let policy = Model::from_dir(&models().join("ref-ar"), &device).unwrap();
    let spec = spec(Strategy::BestOfN { n: 2 });
    let err =
        block_on(policy.solve(QUESTION, &spec, SolveOptions::default(), &mut |_| {})).unwrap_err();
    assert!(err.to_string().contains("not loaded"), "{err}");
    let options = SolveOptions {
        reward_model: Some(&policy),
        ..SolveOptions::default()
    };
    let err = block_on(policy.solve(QUESTION, &spec, options, &mut |_| {})).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("score head"), "{err}");
}
