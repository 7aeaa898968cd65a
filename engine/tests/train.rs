//! Training with Burn's autodiff: gradients against finite differences, the loss going down for
//! both language-model objectives and for a reward model, exact resumption from a checkpoint,
//! and the written model loading through the ordinary loader with the same logits (a reward
//! model: scoring right responses above wrong ones).

mod common;

use ets_engine::LogitsFor;
use ets_engine::Model;
use ets_engine::backend::{cpu_device, read_f32};
use ets_engine::model::safetensors::Dtype;
use ets_engine::task::arith::ArithConfig;
use ets_engine::train::reward_data::Labels;
use ets_engine::train::{
    ModelShape, TrainSpec, Trainer, masked_diffusion_config, reference_config,
};

fn spec(masked_diffusion: bool, steps: u64) -> TrainSpec {
    let shape = ModelShape {
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 512,
    };
    TrainSpec {
        model_config: reference_config(&shape, masked_diffusion),
        task: ArithConfig {
            max_steps: 2,
            distractor_rate: 0.0,
            ..ArithConfig::default()
        },
        steps,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 2,
        final_lr_fraction: 0.1,
        weight_decay: 0.1,
        grad_clip: 1.0,
        seed: 7,
        response_len: 64,
        mask_block_len: 0,
        reward_data: None,
        reward_labels: Default::default(),
        init: None,
    }
}

fn logits_of(model: &Model, text: &str) -> Vec<f32> {
    let ids = model.tokenizer().unwrap().encode(text, true).unwrap();
    let mut cache = model.transformer.new_cache(1);
    let logits = model
        .transformer
        .forward(&[&ids], &mut cache, LogitsFor::All)
        .unwrap();
    read_f32(logits).unwrap()
}

#[test]
fn the_loss_goes_down_for_both_objectives() {
    for masked_diffusion in [false, true] {
        let mut trainer = Trainer::new(spec(masked_diffusion, 40), &cpu_device()).unwrap();
        let losses: Vec<f64> = (0..40).map(|_| trainer.step().unwrap().loss).collect();
        let first = losses[..5].iter().sum::<f64>() / 5.0;
        let last = losses[35..].iter().sum::<f64>() / 5.0;
        // A uniform guess over 101 characters costs ln 101 ≈ 4.6 nats; 40 steps learn at least
        // the character statistics of the answers.
        assert!(
            last < 0.75 * first,
            "masked_diffusion={masked_diffusion}: {first:.3} → {last:.3}"
        );
    }
}

#[test]
fn resuming_a_checkpoint_takes_the_same_steps() {
    let dir = std::env::temp_dir().join(format!("ets-train-resume-{}", std::process::id()));
    let device = cpu_device();
    let mut straight = Trainer::new(spec(false, 4), &device).unwrap();
    for _ in 0..4 {
        straight.step().unwrap();
    }
    let mut first = Trainer::new(spec(false, 4), &device).unwrap();
    first.step().unwrap();
    first.step().unwrap();
    first.save_checkpoint(&dir.join("ckpt")).unwrap();
    let mut resumed = Trainer::resume(&dir.join("ckpt"), &device).unwrap();
    assert_eq!(resumed.steps_taken(), 2);
    resumed.step().unwrap();
    resumed.step().unwrap();
    let a = logits_of(&straight.model(), "Mia has 3 shells.");
    let b = logits_of(&resumed.model(), "Mia has 3 shells.");
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "resumed run differs by {diff}");
    assert!(Trainer::resume(&dir.join("missing"), &device).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_written_model_loads_with_the_same_logits() {
    let dir = std::env::temp_dir().join(format!("ets-train-write-{}", std::process::id()));
    let mut trainer = Trainer::new(spec(true, 2), &cpu_device()).unwrap();
    trainer.step().unwrap();
    let expected = logits_of(&trainer.model(), "Zoe has 12 cards.");
    for (dtype, tolerance) in [(Dtype::F32, 1e-5), (Dtype::F16, 2e-2)] {
        trainer.write_model(&dir.join("model"), dtype).unwrap();
        let loaded = Model::from_dir(&dir.join("model"), &cpu_device()).unwrap();
        assert!(
            loaded.transformer.config().objective != ets_engine::model::config::Objective::Causal
        );
        let got = logits_of(&loaded, "Zoe has 12 cards.");
        let diff = expected
            .iter()
            .zip(&got)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < tolerance, "{dtype:?}: max |Δlogit| {diff}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The token embedding table's values.
fn embedding_table(model: Model) -> Vec<f32> {
    let mut t = model.transformer;
    let p = t.parameters_mut().into_iter().next().unwrap();
    assert_eq!(p.name, "model.embed_tokens.weight");
    match p.tensor {
        ets_engine::model::transformer::ParamMut::Matrix(m) => read_f32(m.clone()).unwrap(),
        ets_engine::model::transformer::ParamMut::Vector(v) => read_f32(v.clone()).unwrap(),
    }
}

/// A masked diffusion model can start from a causal LM's weights (AR-to-diffusion adaptation):
/// same body, bidirectional attention, the diffusion objective; a config that is not a Llama
/// causal LM's is refused.
#[test]
fn a_diffusion_model_starts_from_a_causal_lms_weights() {
    let dir = std::env::temp_dir().join(format!("ets-train-adapt-{}", std::process::id()));
    let device = cpu_device();
    let causal = spec(false, 1);
    Trainer::new(causal.clone(), &device)
        .unwrap()
        .write_model(&dir, Dtype::F32)
        .unwrap();
    let config = masked_diffusion_config(causal.model_config.clone()).unwrap();
    assert_eq!(config, spec(true, 1).model_config);
    let mut trainer = Trainer::new(
        TrainSpec {
            model_config: config,
            init: Some(dir.clone()),
            ..spec(true, 3)
        },
        &device,
    )
    .unwrap();
    let model = trainer.model();
    assert!(model.transformer.config().objective != ets_engine::model::config::Objective::Causal);
    assert_eq!(
        embedding_table(model),
        embedding_table(Model::from_dir(&dir, &device).unwrap())
    );
    assert!(trainer.step().unwrap().loss.is_finite());
    for not_causal in [
        spec(true, 1).model_config,
        ets_engine::train::reward_config(causal.model_config.clone()).unwrap(),
    ] {
        let err = masked_diffusion_config(not_causal).unwrap_err();
        assert!(err.to_string().contains("causal"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The autodiff gradient of the training loss with respect to weights of every kind matches a
/// central finite difference of the same loss, at each weight's largest gradient entry.
#[test]
fn gradients_match_finite_differences() {
    for masked_diffusion in [false, true] {
        let trainer = Trainer::new(spec(masked_diffusion, 1), &cpu_device()).unwrap();
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.input_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            check_gradient(
                &trainer,
                name,
                &format!("masked_diffusion={masked_diffusion}"),
            );
        }
    }
}

/// Asserts that the autodiff gradient of step 0's loss with respect to weight `name` matches
/// a central finite difference at the gradient's largest entry (`what` names the run).
fn check_gradient(trainer: &Trainer, name: &str, what: &str) {
    let gradient = trainer.gradient(0, name).unwrap();
    let (index, &analytic) = gradient
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    let h = 2e-2;
    let plus = trainer.loss_with_shift(0, name, index, h).unwrap();
    let minus = trainer.loss_with_shift(0, name, index, -h).unwrap();
    let numeric = (plus - minus) / (2.0 * h as f64);
    assert!(
        analytic.abs() > 1e-4 && (analytic as f64 - numeric).abs() <= 0.05 * numeric.abs() + 1e-4,
        "{name}[{index}] ({what}): autodiff {analytic:.6}, finite difference {numeric:.6}"
    );
}

/// Labelled responses with a rule a tiny model can learn: right answers end in `#### 5`.
fn reward_data(dir: &std::path::Path) -> std::path::PathBuf {
    use ets_engine::train::reward_data::LabelledResponse;
    let names = ["Mia", "Liam", "Ava", "Noah", "Zoe", "Omar"];
    let mut text = String::new();
    for (i, name) in names.iter().enumerate() {
        for (answer, correct) in [("5", true), ("7", false), ("9", false)] {
            let line = LabelledResponse {
                question: format!(
                    "{name} has {} shells. How many shells does {name} have?",
                    i + 2
                ),
                response: format!("\n{} + 3 = {answer}\n#### {answer}", i + 2),
                truth: "5".into(),
                correct,
                policy: "test".into(),
                reference: format!("\n{} + 3 = 5\n#### 5", i + 2),
            };
            text.push_str(&serde_json::to_string(&line).unwrap());
            text.push('\n');
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn reward_spec(data: &std::path::Path, init: Option<std::path::PathBuf>, steps: u64) -> TrainSpec {
    let base = spec(false, steps);
    TrainSpec {
        model_config: ets_engine::train::reward_config(base.model_config.clone()).unwrap(),
        batch_size: 8,
        reward_data: Some(data.to_path_buf()),
        init,
        ..base
    }
}

/// A reward model's loss goes down, its gradients match finite differences, it starts from a
/// policy's weights when asked, and the written model scores right responses above wrong ones
/// through the ordinary reward.
#[test]
fn a_reward_model_trains_and_scores() {
    use ets_engine::reward::{self, RewardContext, RewardKind};
    let dir = std::env::temp_dir().join(format!("ets-train-reward-{}", std::process::id()));
    let data = reward_data(&dir);
    let device = cpu_device();

    for (labels, name) in [
        (Labels::Outcome, "score.weight"),
        (Labels::Outcome, "model.layers.1.self_attn.o_proj.weight"),
        (Labels::PerToken, "score.weight"),
        (Labels::PerToken, "model.norm.weight"),
    ] {
        let spec = TrainSpec {
            reward_labels: labels,
            ..reward_spec(&data, None, 1)
        };
        let trainer = Trainer::new(spec, &device).unwrap();
        check_gradient(&trainer, name, &format!("{labels:?}"));
    }

    // The body of a causal model is taken over; the score head is new.
    let policy_dir = dir.join("policy");
    Trainer::new(spec(false, 1), &device)
        .unwrap()
        .write_model(&policy_dir, Dtype::F32)
        .unwrap();
    let mut trainer =
        Trainer::new(reward_spec(&data, Some(policy_dir.clone()), 60), &device).unwrap();
    assert_eq!(
        embedding_table(trainer.model()),
        embedding_table(Model::from_dir(&policy_dir, &device).unwrap())
    );

    let losses: Vec<f64> = (0..60).map(|_| trainer.step().unwrap().loss).collect();
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[55..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "reward loss {first:.3} → {last:.3}");

    let out = dir.join("orm");
    trainer.write_model(&out, Dtype::F16).unwrap();
    let orm = Model::from_dir(&out, &device).unwrap();
    let question = "Mia has 2 shells. How many shells does Mia have?";
    let texts = ["\n2 + 3 = 5\n#### 5", "\n2 + 3 = 7\n#### 7"];
    let responses = common::text_responses(&texts);
    let context = RewardContext {
        question: Some(question),
        reward_model: Some(&orm),
        ..RewardContext::default()
    };
    let kind = RewardKind::Model { name: "orm".into() };
    let scores =
        pollster::block_on(reward::build(&kind, context).unwrap().score(&responses)).unwrap();
    assert!(
        scores[0] > scores[1] + 1.0,
        "right {} vs wrong {}",
        scores[0],
        scores[1]
    );
    std::fs::remove_dir_all(&dir).ok();
}
