//! Strategies on real transformers: teacher forcing scores exactly what sampling drew (ETS-IS
//! relies on it), a forked sequence continues exactly as one started from its prefix, every
//! strategy runs on the bundled models reproducibly with a trace of the promised shape, and
//! bad settings are refused with a clear error.

mod common;

use pollster::block_on;
use std::path::PathBuf;

use common::fixture;
use ets_engine::backend::cpu_device;
use ets_engine::decode::diffusion::{DiffusionSchedule, Remasking};
use ets_engine::decode::lm::Meter;
use ets_engine::decode::sequences::{Drawing, Sequences};
use ets_engine::reward::RewardKind;
use ets_engine::rng::CounterRng;
use ets_engine::solve::SolveOptions;
use ets_engine::strategy::{EtsParams, Solution, SolveSpec, Strategy};
use ets_engine::task::answer::Extraction;
use ets_engine::trace::{Selection, TraceEvent};
use ets_engine::{Error, Model, SamplingParams};

const QUESTION: &str = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";

fn sampling() -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: Some(50),
        top_p: Some(0.95),
    }
}

#[test]
fn teacher_forcing_scores_what_sampling_drew() {
    let model = Model::from_dir(&fixture("qwen3-qknorm"), &cpu_device()).unwrap();
    let t = &model.transformer;
    let meter = Meter::default();
    let sampling = sampling();
    let drawing = Drawing {
        sampling: &sampling,
        stop_ids: &[],
        rng: CounterRng { seed: 5 },
        drafts: None,
    };
    let prompt: &[u32] = &[5, 17, 3, 99];
    let root = block_on(Sequences::start(t, &meter, &[prompt], vec![0])).unwrap();
    let mut drawn = root.fork(t, &[(0, 11), (0, 12), (0, 13)]).unwrap();
    block_on(drawn.extend(t, &meter, 6, None, drawing)).unwrap();
    // Feed chunks of different lengths (left padding inside the batch).
    let lengths = [6, 4, 1];
    let chunks: Vec<&[u32]> = (0..3).map(|i| &drawn.tokens[i][..lengths[i]]).collect();
    let mut forced = root.fork(t, &[(0, 0), (0, 0), (0, 0)]).unwrap();
    block_on(forced.feed(t, &meter, &chunks, drawing)).unwrap();
    for i in 0..3 {
        // Statistics of the first `lengths[i]` drawn tokens, one token at a time.
        let mut alone = root.fork(t, &[(0, 11 + i as u64)]).unwrap();
        block_on(alone.extend(t, &meter, lengths[i], None, drawing)).unwrap();
        let (a, b) = (alone.stats[0], forced.stats[i]);
        assert_eq!(alone.tokens[0], chunks[i]);
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in [
            (a.log_prob, b.log_prob),
            (a.sampling_log_prob, b.sampling_log_prob),
            (a.entropy, b.entropy),
            (a.self_certainty, b.self_certainty),
        ] {
            assert!((x - y).abs() < 1e-3, "row {i}: {x} vs {y}");
        }
    }
    // The forward tokens are counted: 4 (prompt) + 6·3 + 6 + 4 + 1 (fed) + singles.
    assert!(meter.tokens() >= 4 + 18 + 11);
}

#[test]
fn a_fork_continues_like_a_sequence_started_from_its_prefix() {
    let model = Model::from_dir(&fixture("llama-gqa"), &cpu_device()).unwrap();
    let t = &model.transformer;
    let meter = Meter::default();
    let sampling = sampling();
    let drawing = Drawing {
        sampling: &sampling,
        stop_ids: &[],
        rng: CounterRng { seed: 9 },
        drafts: None,
    };
    let prompt: &[u32] = &[1, 2, 3];
    let prefix: &[u32] = &[40, 41, 42, 43];
    let mut root = block_on(Sequences::start(t, &meter, &[prompt], vec![0])).unwrap();
    block_on(root.feed(t, &meter, &[prefix], drawing)).unwrap();
    let mut forked = root.fork(t, &[(0, 77), (0, 78)]).unwrap();
    block_on(forked.extend(t, &meter, 8, None, drawing)).unwrap();
    let whole: Vec<u32> = prompt.iter().chain(prefix).copied().collect();
    for (i, stream) in [77u64, 78].into_iter().enumerate() {
        let mut alone = block_on(Sequences::start(t, &meter, &[&whole], vec![stream])).unwrap();
        block_on(alone.extend(t, &meter, 8, None, drawing)).unwrap();
        assert_eq!(alone.tokens[0], forked.tokens[i], "fork {i}");
    }
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// ETS with 4 candidates, 2 rollouts each, blocks of 8 tokens.
fn small_ets() -> EtsParams {
    EtsParams {
        m: 4,
        k: 2,
        block: 8,
        ..EtsParams::default()
    }
}

fn spec(strategy: Strategy) -> SolveSpec {
    SolveSpec {
        strategy,
        sampling: SamplingParams::default(),
        max_tokens: 64,
        diffusion: DiffusionSchedule {
            gen_length: 64,
            block_length: 32,
            steps: 32,
            remasking: Remasking::LowConfidence,
        },
        reward: RewardKind::SelfConsistency,
        extraction: Extraction::Strict,
        seed: 3,
    }
}

fn solve(model: &Model, draft: Option<&Model>, spec: &SolveSpec) -> ets_engine::Result<Solution> {
    let options = SolveOptions {
        draft,
        truth: Some("18"),
        ..SolveOptions::default()
    };
    let spec = spec.clone().validate()?;
    let mut seen = 0;
    let solution = block_on(model.solve(QUESTION, &spec, options, &mut |_| seen += 1))?;
    assert_eq!(seen, solution.trace.len(), "the observer sees every event");
    Ok(solution)
}

/// The guidance steps of a trace.
fn steps(solution: &Solution) -> Vec<&ets_engine::trace::StepTrace> {
    solution
        .trace
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Step(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn every_strategy_runs_reproducibly_on_the_reference_models() {
    let device = cpu_device();
    let ar = Model::from_dir(&models().join("ref-ar"), &device).unwrap();
    let draft = Model::from_dir(&models().join("ref-ar-draft"), &device).unwrap();
    let ets = small_ets();
    let strategies = [
        Strategy::Sample,
        Strategy::Greedy,
        Strategy::BestOfN { n: 4 },
        Strategy::Majority { n: 4 },
        Strategy::Beam { width: 3 },
        Strategy::Ets(ets),
        Strategy::Ets(EtsParams {
            recycle: true,
            ..ets
        }),
        Strategy::EtsIs(ets),
        Strategy::ParticleFilter(ets),
    ];
    for strategy in strategies {
        let spec = spec(strategy.clone());
        let a = solve(&ar, Some(&draft), &spec).unwrap();
        let b = solve(&ar, Some(&draft), &spec).unwrap();
        assert_eq!((&a.text, a.tokens), (&b.text, b.tokens), "{strategy:?}");
        assert!(a.tokens > 0, "{strategy:?} counts its forward tokens");
        assert!(
            matches!(a.trace.first(), Some(TraceEvent::Start { .. })),
            "{strategy:?}"
        );
        let Some(TraceEvent::Finish(finish)) = a.trace.last() else {
            panic!("{strategy:?}: no finish event");
        };
        assert_eq!(finish.text, a.text);
        if let Strategy::Ets(p) | Strategy::EtsIs(p) = &strategy {
            let steps = steps(&a);
            assert!(!steps.is_empty());
            for s in &steps {
                assert_eq!(s.candidates.len(), p.m);
                assert!(s.chosen < p.m);
                for c in &s.candidates {
                    assert_eq!(c.rollouts.len(), p.k, "K rollouts (or K copies) each");
                    assert!(c.log_energy.is_some_and(f64::is_finite));
                }
                // The trace says the step drew, with each candidate's chance: softmax(log Ê).
                let Selection::EnergyDraw { probabilities } = &s.selection else {
                    panic!("an ETS step draws: {:?}", s.selection);
                };
                assert_eq!(probabilities.len(), p.m);
                assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(
                    probabilities[s.chosen] > 0.0,
                    "the drawn candidate had a chance"
                );
            }
            // Tokens spent only grow.
            assert!(steps.windows(2).all(|w| w[0].tokens <= w[1].tokens));
            if p.recycle && steps.len() > 1 {
                assert!(steps[1].candidates.iter().take(p.k).all(|c| c.recycled));
            }
        }
        // Best-of-N and the vote choose without drawing, and their traces say so.
        if let Strategy::BestOfN { n } | Strategy::Majority { n } = &strategy {
            let steps = steps(&a);
            assert_eq!(steps.len(), 1);
            let step = steps[0];
            assert!(step.candidates.iter().all(|c| c.log_energy.is_none()));
            match (&strategy, &step.selection) {
                (Strategy::BestOfN { .. }, Selection::RewardArgmax { rewards }) => {
                    assert_eq!(rewards.len(), *n);
                    let best = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    assert_eq!(rewards[step.chosen], best, "the first best reward is kept");
                }
                (Strategy::Majority { .. }, Selection::Vote { votes }) => {
                    assert_eq!(votes.len(), *n);
                    assert_eq!(votes[step.chosen], *votes.iter().max().unwrap());
                }
                (strategy, selection) => panic!("{strategy:?} chose by {selection:?}"),
            }
        }
        if matches!(strategy, Strategy::EtsIs(_)) {
            assert!(a.draft_tokens > 0, "ETS-IS rollouts run on the draft");
            let weights: Vec<f64> = steps(&a)
                .iter()
                .flat_map(|s| s.candidates.iter())
                .flat_map(|c| c.rollouts.iter().map(|r| r.log_weight))
                .collect();
            assert!(weights.iter().any(|&w| w != 0.0));
            assert!(weights.iter().all(|w| w.abs() <= 10.0));
        }
    }
    // Different seeds explore differently.
    let mut other = spec(Strategy::Ets(ets));
    other.seed = 4;
    let base = solve(&ar, None, &spec(Strategy::Ets(ets))).unwrap();
    let moved = solve(&ar, None, &other).unwrap();
    assert_ne!(steps(&base), steps(&moved));
}

#[test]
fn ets_guides_the_diffusion_model() {
    let dlm = Model::from_dir(&models().join("ref-dlm"), &cpu_device()).unwrap();
    let spec = spec(Strategy::Ets(EtsParams {
        m: 2,
        k: 2,
        block: 16,
        ..EtsParams::default()
    }));
    let solution = solve(&dlm, None, &spec).unwrap();
    let steps = steps(&solution);
    // 64 tokens in guidance blocks of 16 would take 4 steps; the answer (about 30 tokens) is
    // settled by its end token within the second, and later steps could not change its text.
    assert_eq!(steps.len(), 2, "the answer settles in its second block");
    assert!(
        steps[0].candidates[0].text.contains('_'),
        "the first step leaves masks"
    );
    let last = &steps[1].candidates[steps[1].chosen];
    assert!(!last.text.contains('_'), "{:?}", last.text);
    assert!(!solution.text.is_empty() && solution.text.contains("####"));
    // Every pass reads the prompt and the 64-token answer; the full schedule would take 256
    // (8 denoising steps per guidance step: candidates 4 × 2 × 8, rollouts 4 × (24 + 16 + 8)),
    // and settled answers leave the batch.
    let prompt = dlm
        .tokenizer()
        .unwrap()
        .encode(QUESTION, true)
        .unwrap()
        .len();
    let passes = solution.tokens as usize / (prompt + 64);
    assert_eq!(solution.tokens as usize, passes * (prompt + 64));
    assert!(passes < 256, "{passes} passes");
}

/// ETS-IS on ref-dlm: the rollouts run on the bundled diffusion draft, each weighed by the
/// target's and the draft's log-probabilities of its new tokens (clipped to ±10 nats); the run
/// is reproducible, and a causal draft is refused.
#[test]
fn ets_is_guides_the_diffusion_model_with_its_draft() {
    let device = cpu_device();
    let dlm = Model::from_dir(&models().join("ref-dlm"), &device).unwrap();
    let draft = Model::from_dir(&models().join("ref-dlm-draft"), &device).unwrap();
    let spec = spec(Strategy::EtsIs(EtsParams {
        m: 2,
        k: 2,
        block: 16,
        ..EtsParams::default()
    }));
    let a = solve(&dlm, Some(&draft), &spec).unwrap();
    let b = solve(&dlm, Some(&draft), &spec).unwrap();
    assert_eq!(
        (&a.text, a.tokens, a.draft_tokens),
        (&b.text, b.tokens, b.draft_tokens)
    );
    assert!(a.draft_tokens > 0, "the rollouts run on the draft");
    assert!(a.text.contains("####"), "{:?}", a.text);
    let weights: Vec<f64> = steps(&a)
        .iter()
        .flat_map(|s| &s.candidates)
        .filter(|c| !c.complete)
        .flat_map(|c| c.rollouts.iter().map(|r| r.log_weight))
        .collect();
    assert!(!weights.is_empty());
    assert!(
        weights.iter().all(|w| w.is_finite() && w.abs() <= 10.0),
        "{weights:?}"
    );
    assert!(weights.iter().any(|&w| w != 0.0), "{weights:?}");
    let causal_draft = Model::from_dir(&models().join("ref-ar-draft"), &device).unwrap();
    let err = solve(&dlm, Some(&causal_draft), &spec).unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a masked diffusion model too"),
        "{err}"
    );
}

#[test]
fn beam_search_on_the_diffusion_model_widens_its_greedy_answer() {
    let dlm = Model::from_dir(&models().join("ref-dlm"), &cpu_device()).unwrap();
    // One token revealed per step, as the beam search reveals them.
    let one_per_step = |strategy| {
        let mut spec = spec(strategy);
        spec.diffusion.steps = spec.diffusion.gen_length;
        spec
    };
    let greedy = solve(&dlm, None, &one_per_step(Strategy::Greedy)).unwrap();
    let one = solve(&dlm, None, &one_per_step(Strategy::Beam { width: 1 })).unwrap();
    // A single beam reveals the most confident position's most likely token each step: the
    // greedy sampler's answer, with the same forward passes.
    assert_eq!((&one.text, one.tokens), (&greedy.text, greedy.tokens));
    let three = solve(&dlm, None, &spec(Strategy::Beam { width: 3 })).unwrap();
    let again = solve(&dlm, None, &spec(Strategy::Beam { width: 3 })).unwrap();
    assert_eq!((&three.text, three.tokens), (&again.text, again.tokens));
    assert!(three.text.contains("####"), "{:?}", three.text);
    assert!(three.tokens > one.tokens, "three beams read more than one");
}

#[test]
fn bad_settings_are_refused() {
    let device = cpu_device();
    let ar = Model::from_dir(&models().join("ref-ar"), &device).unwrap();
    let dlm = Model::from_dir(&models().join("ref-dlm"), &device).unwrap();
    let refused = |model: &Model, spec: SolveSpec| {
        let err = solve(model, None, &spec).unwrap_err();
        assert!(matches!(err, Error::Strategy(_)), "{err}");
        err.to_string()
    };
    assert!(refused(&ar, spec(Strategy::EtsIs(EtsParams::default()))).contains("draft"));
    let odd_block = spec(Strategy::Ets(EtsParams {
        block: 24,
        ..EtsParams::default()
    }));
    assert!(refused(&dlm, odd_block).contains("divide"));
    let zero_lambda = spec(Strategy::Ets(EtsParams {
        lambda: 0.0,
        ..EtsParams::default()
    }));
    assert!(refused(&ar, zero_lambda).contains("λ"));
    assert!(refused(&ar, spec(Strategy::Majority { n: 0 })).contains("at least 1"));
    let beyond_context = SolveSpec {
        max_tokens: 600,
        ..spec(Strategy::Greedy)
    };
    assert!(refused(&ar, beyond_context).contains("the model's context of 512 tokens"));
    let err = solve(
        &ar,
        Some(&dlm),
        &spec(Strategy::EtsIs(EtsParams::default())),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("draft model must be causal"),
        "{err}"
    );
}

/// With drafts shown, every causal strategy streams the texts it decodes (one sequence's response
/// token by token; the samples, beams or a step's candidates side by side), each draft a prefix of
/// what the run then chose or returned; and the run itself — trace, answer, tokens — is the one
/// it is without them.
#[test]
fn every_strategy_streams_its_text_as_it_decodes_and_runs_the_same() {
    use ets_engine::trace::DraftTrace;
    let device = cpu_device();
    let ar = Model::from_dir(&models().join("ref-ar"), &device).unwrap();
    let ets = small_ets();
    let strategies = [
        Strategy::Sample,
        Strategy::Greedy,
        Strategy::BestOfN { n: 4 },
        Strategy::Majority { n: 4 },
        Strategy::Beam { width: 3 },
        Strategy::Ets(ets),
    ];
    for strategy in strategies {
        let spec = spec(strategy.clone()).validate().unwrap();
        let plain = solve(&ar, None, &spec).unwrap();
        let mut drafts: Vec<DraftTrace> = Vec::new();
        let mut others = 0;
        let options = SolveOptions {
            truth: Some("18"),
            drafts_every: Some(std::time::Duration::ZERO),
            ..SolveOptions::default()
        };
        let shown = block_on(ar.solve(QUESTION, &spec, options, &mut |e| match e {
            TraceEvent::Drafting(d) => drafts.push(d.clone()),
            _ => others += 1,
        }))
        .unwrap();
        let name = strategy.name();
        // The same trace, times aside.
        let timeless = |trace: &[TraceEvent]| {
            let mut trace = trace.to_vec();
            for event in &mut trace {
                match event {
                    TraceEvent::Step(s) => s.elapsed_ms = 0.0,
                    TraceEvent::Finish(f) => f.wall_ms = 0.0,
                    _ => {}
                }
            }
            trace
        };
        assert_eq!(timeless(&shown.trace), timeless(&plain.trace), "{name}");
        assert_eq!(others, shown.trace.len(), "{name}: drafts are not recorded");
        assert_eq!(
            (shown.text, shown.tokens),
            (plain.text.clone(), plain.tokens)
        );
        // One showing per token decoded (a beam per expansion), the last ones the longest.
        assert!(drafts.len() >= 8, "{name}: {} drafts", drafts.len());
        let widths: Vec<usize> = drafts.iter().map(|d| d.texts.len()).collect();
        match &strategy {
            Strategy::Sample | Strategy::Greedy => {
                assert!(widths.iter().all(|&w| w == 1), "{name}: {widths:?}");
                for d in &drafts {
                    assert!(
                        plain.text.starts_with(&d.texts[0]),
                        "{name}: {:?}",
                        d.texts[0]
                    );
                }
                let last = &drafts.last().unwrap().texts[0];
                assert!(last.len() * 2 >= plain.text.len(), "{name}: {last:?}");
            }
            Strategy::BestOfN { .. } | Strategy::Majority { .. } => {
                assert!(widths.iter().all(|&w| w == 4), "{name}: {widths:?}");
                let step = &steps(&plain)[0];
                for d in &drafts {
                    for (text, c) in d.texts.iter().zip(&step.candidates) {
                        assert!(c.text.starts_with(text), "{name}: {text:?}");
                    }
                }
            }
            Strategy::Beam { .. } => assert!(widths.iter().all(|&w| (1..=3).contains(&w))),
            _ => {
                // A step's fresh candidates, each a prefix of that step's candidate.
                let steps = steps(&plain);
                assert!(widths.iter().all(|&w| w == 4), "{name}: {widths:?}");
                for d in &drafts {
                    for (text, c) in d.texts.iter().zip(&steps[d.step].candidates) {
                        assert!(
                            c.text.starts_with(text),
                            "{name}: step {}: {text:?}",
                            d.step
                        );
                    }
                }
                assert_eq!(drafts.last().unwrap().step, steps.len() - 1);
            }
        }
        // Tokens and time only grow.
        for pair in drafts.windows(2) {
            assert!(pair[0].tokens <= pair[1].tokens && pair[0].elapsed_ms <= pair[1].elapsed_ms);
        }
    }
}
