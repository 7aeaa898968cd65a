//! The masked diffusion model and its sampler, on a tiny random model: attention is
//! bidirectional, the sampler reveals every position, keeps the prompt, is reproducible and
//! gives a sequence the same answer alone or in a batch; causal and diffusion entry points
//! refuse the other kind of model.

mod common;

use common::{TestBackend, max_abs_diff};
use ets_engine::backend::read_f32;
use ets_engine::decode::diffusion::{DiffusionOptions, Remasking, generate_diffusion};
use ets_engine::model::config::ModelConfig;
use ets_engine::model::random::random_model_files;
use ets_engine::{Error, GenerateOptions, LogitsFor, Model, SamplingParams, generate};
use pollster::block_on;

const MASK: u32 = 3;

fn tiny(architecture: &str) -> String {
    format!(
        r#"{{"architectures":["{architecture}"],"vocab_size":24,"hidden_size":16,
        "intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"rms_norm_eps":1e-5,"max_position_embeddings":64,
        "tie_word_embeddings":false,"eos_token_id":2,"mask_token_id":{MASK}}}"#
    )
}

fn model(architecture: &str, backend: &TestBackend) -> Model {
    let json = tiny(architecture);
    let config = ModelConfig::from_json(&json).unwrap();
    Model::from_files(random_model_files(&json, &config, 5), &backend.device).unwrap()
}

fn options(temperature: f64) -> DiffusionOptions {
    DiffusionOptions {
        gen_length: 8,
        block_length: 4,
        steps: 8,
        temperature,
        remasking: Remasking::LowConfidence,
        seed: 11,
    }
}

/// First-position logits of `ids` run from an empty cache.
fn first_row(model: &Model, ids: &[u32]) -> Vec<f32> {
    let t = &model.transformer;
    let mut cache = t.new_cache(1);
    let logits = read_f32(t.forward(&[ids], &mut cache, LogitsFor::All).unwrap()).unwrap();
    logits[..t.config().vocab_size].to_vec()
}

fn check(backend: &TestBackend) {
    let dlm = model("LlamaForMaskedDiffusion", backend);
    let causal = model("LlamaForCausalLM", backend);

    // Changing the last token moves the first position's logits only with bidirectional attention.
    let (a, b) = ([5u32, 6, 7, 8], [5u32, 6, 7, 9]);
    assert!(max_abs_diff(&first_row(&dlm, &a), &first_row(&dlm, &b)) > 1e-4);
    assert!(max_abs_diff(&first_row(&causal, &a), &first_row(&causal, &b)) <= backend.tolerance);

    let prompts = vec![vec![1, 5, 6, 7], vec![1, 9]];
    for temperature in [0.0, 1.0] {
        let answers = block_on(generate_diffusion(
            &dlm.transformer,
            &prompts,
            &[0, 1],
            &options(temperature),
        ))
        .unwrap();
        for answer in &answers {
            assert_eq!(answer.len(), 8);
            assert!(!answer.contains(&MASK), "{}: {answer:?}", backend.name);
        }
        let again = block_on(generate_diffusion(
            &dlm.transformer,
            &prompts,
            &[0, 1],
            &options(temperature),
        ))
        .unwrap();
        assert_eq!(answers, again);
        let alone = block_on(generate_diffusion(
            &dlm.transformer,
            &prompts[1..],
            &[1],
            &options(temperature),
        ))
        .unwrap();
        assert_eq!(
            alone[0], answers[1],
            "{}: batch company changed an answer",
            backend.name
        );
    }

    // Each kind of model refuses the other's entry points.
    let sampling = GenerateOptions {
        max_new_tokens: 4,
        sampling: SamplingParams::greedy(),
        seed: 0,
        stop_ids: vec![2],
    };
    assert!(matches!(
        block_on(generate(&dlm.transformer, &prompts, &[0, 1], &sampling)),
        Err(Error::Sampling(_))
    ));
    assert!(matches!(
        block_on(generate_diffusion(
            &causal.transformer,
            &prompts,
            &[0, 1],
            &options(0.0)
        )),
        Err(Error::Sampling(_))
    ));
    // A diffusion model reruns whole sequences: a non-empty cache is refused.
    let t = &dlm.transformer;
    let mut cache = t.new_cache(1);
    t.forward(&[&[1, 5]], &mut cache, LogitsFor::Last).unwrap();
    assert!(t.forward(&[&[6]], &mut cache, LogitsFor::Last).is_err());
}

#[test]
fn masked_diffusion_cpu() {
    check(&common::cpu());
}

#[test]
fn masked_diffusion_wgpu() {
    if let Some(backend) = common::wgpu() {
        check(&backend);
    }
}
