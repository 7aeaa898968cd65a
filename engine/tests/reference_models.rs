//! The bundled reference models (models/: three language models and the judge): they load
//! through the ordinary loader, fit the size budget, share one tokenizer, write readable worked solutions, and a small sample of test
//! problems keeps ref-ar inside the quality window that docs/reference-models.md reports, and
//! the judge-guided strategies keep the ranking docs/results.md measures.

use pollster::block_on;
use std::path::{Path, PathBuf};

use ets_engine::backend::cpu_device;
use ets_engine::decode::diffusion::{DiffusionOptions, DiffusionSchedule, Remasking};
use ets_engine::eval::{Decoding, complete, evaluate, score};
use ets_engine::model::config::Objective;
use ets_engine::reward::RewardKind;
use ets_engine::solve::SolveOptions;
use ets_engine::strategy::{EtsParams, SolveSpec, Strategy};
use ets_engine::task::answer::Extraction;
use ets_engine::task::arith::{ArithConfig, Split, generate};
use ets_engine::{Model, SamplingParams};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn load(name: &str) -> Model {
    Model::from_dir(&models().join(name), &cpu_device()).unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// The test problems the doc's quality window is measured on (first `n` of them).
fn test_problems(n: usize) -> (Vec<String>, Vec<String>) {
    generate(&ArithConfig::default(), Split::Test, 0, n)
        .into_iter()
        .map(|p| (p.question, p.answer.to_string()))
        .unzip()
}

#[test]
fn the_bundled_models_load_and_fit_the_budget() {
    let ar = load("ref-ar");
    let draft = load("ref-ar-draft");
    let dlm = load("ref-dlm");
    let judge = load("ref-judge");
    let dlm_draft = load("ref-dlm-draft");
    assert_eq!(judge.transformer.config().objective, Objective::Causal);
    // ETS-IS on ref-dlm: a smaller masked diffusion model with the same mask token.
    assert_eq!(
        dlm_draft.transformer.config().objective,
        dlm.transformer.config().objective
    );
    assert!(
        dlm_draft.transformer.config().parameter_count()
            < dlm.transformer.config().parameter_count()
    );
    assert_eq!(ar.transformer.config().objective, Objective::Causal);
    assert_eq!(draft.transformer.config().objective, Objective::Causal);
    assert!(matches!(
        dlm.transformer.config().objective,
        Objective::MaskedDiffusion { .. }
    ));
    assert!(
        draft.transformer.config().parameter_count() < ar.transformer.config().parameter_count()
    );
    // The draft proposes tokens the reference scores: one tokenizer for all.
    let tokenizer = |name: &str| std::fs::read(models().join(name).join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer("ref-ar"), tokenizer("ref-ar-draft"));
    assert_eq!(tokenizer("ref-ar"), tokenizer("ref-dlm"));
    assert_eq!(tokenizer("ref-ar"), tokenizer("ref-judge"));
    assert_eq!(tokenizer("ref-ar"), tokenizer("ref-dlm-draft"));
    // The whole bundle: every model directory under models/.
    let total: u64 = std::fs::read_dir(models())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .map(|dir| dir_bytes(&dir))
        .sum();
    assert!(total < 30 << 20, "{total} bytes");
}

#[test]
fn ref_ar_stays_in_the_quality_window() {
    let model = load("ref-ar");
    let (questions, truths) = test_problems(48);
    let decoding = Decoding::Autoregressive {
        sampling: SamplingParams::default(),
        max_new_tokens: 96,
    };
    let completions =
        block_on(complete(&model, &questions, 8, &decoding, 0, 96, |_, _| {})).unwrap();
    let s = score(&completions, &truths);
    // On 500 problems the doc measures pass@1 41.6% and maj@8 51.6%; its window is 30–75% with
    // maj@8 at least 5 points higher. A 48-question sample keeps a margin for sampling error.
    assert!(
        (0.25..=0.65).contains(&s.pass1.accuracy),
        "pass@1 {:.3}",
        s.pass1.accuracy
    );
    assert!(
        s.majority.accuracy >= s.pass1.accuracy + 0.03,
        "maj@8 {:.3} vs pass@1 {:.3}",
        s.majority.accuracy,
        s.pass1.accuracy
    );
    // Every completion is a worked solution with a `####` answer line.
    let formatted = completions
        .iter()
        .flatten()
        .filter(|t| t.contains("####"))
        .count();
    assert!(
        formatted * 10 >= completions.len() * 8 * 9,
        "{formatted} formatted"
    );
}

#[test]
fn ref_dlm_writes_worked_solutions() {
    let model = load("ref-dlm");
    let (questions, truths) = test_problems(48);
    let decoding = Decoding::Diffusion(DiffusionOptions {
        gen_length: 64,
        block_length: 8,
        steps: 64,
        temperature: 0.0,
        remasking: Remasking::LowConfidence,
        seed: 0,
    });
    let completions =
        block_on(complete(&model, &questions, 1, &decoding, 0, 48, |_, _| {})).unwrap();
    let s = score(&completions, &truths);
    // The doc measures 70.2% greedy accuracy on 500 problems (the floor: 30%); a
    // 48-question sample keeps a margin for a retrained model's sampling error.
    assert!(
        s.pass1.accuracy >= 0.45,
        "greedy accuracy {:.3}",
        s.pass1.accuracy
    );
    for text in completions.iter().flatten() {
        assert!(text.contains(" = ") && text.contains("####"), "{text:?}");
    }
}

/// A small-sample check of the ranking docs/results.md measures on 500 test problems with the
/// bundled judge as the reward (greedy 56.4%, one sample 41.4%; Best-of-8 72.6%, particle
/// filtering with 8 particles 78.8%, ETS with M = 8 75.8%): on the first 60, each guided strategy
/// is at least 10 points above greedy decoding and one sample.
#[test]
fn the_judge_guided_strategies_keep_their_ranking() {
    let (policy, judge) = (load("ref-ar"), load("ref-judge"));
    let (questions, truths) = test_problems(60);
    let options = SolveOptions {
        reward_model: Some(&judge),
        ..SolveOptions::default()
    };
    let accuracy = |strategy: Strategy| {
        let spec = SolveSpec {
            strategy,
            sampling: SamplingParams::default(),
            max_tokens: 160,
            diffusion: DiffusionSchedule::default(),
            reward: RewardKind::Likelihood {
                name: "models/ref-judge".into(),
            },
            extraction: Extraction::Strict,
            seed: 0,
        }
        .validate()
        .unwrap();
        let result = block_on(evaluate(
            &policy,
            options,
            &questions,
            &truths,
            &spec,
            &mut |_| {},
        ))
        .unwrap();
        result.accuracy
    };
    // The app's default guided run, and particle filtering with the same blocks.
    let guided = EtsParams {
        m: 8,
        k: 1,
        block: 16,
        lambda: 0.1,
        recycle: true,
        ..EtsParams::default()
    };
    let floor = accuracy(Strategy::Greedy).max(accuracy(Strategy::Sample));
    for (name, strategy) in [
        ("best-of-8", Strategy::BestOfN { n: 8 }),
        (
            "particle filtering",
            Strategy::ParticleFilter(EtsParams {
                recycle: false,
                ..guided
            }),
        ),
        ("ets", Strategy::Ets(guided)),
    ] {
        let a = accuracy(strategy);
        eprintln!(
            "{name}: {:.1}% (greedy and sample at most {:.1}%)",
            100.0 * a,
            100.0 * floor
        );
        assert!(a >= floor + 0.10, "{name}: {a:.3} against {floor:.3}");
    }
}
