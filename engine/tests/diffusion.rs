//! The masked diffusion model and its sampler, on a tiny random model: attention is
//! bidirectional, the sampler reveals every position, keeps the prompt, is reproducible and
//! gives a sequence the same answer alone or in a batch, stops running an answer once a stop
//! token settles it (same text, fewer forward tokens); causal and diffusion entry points
//! refuse the other kind of model.

mod common;

use common::{TestBackend, max_abs_diff};
use ets_engine::backend::read_f32;
use ets_engine::decode::diffusion::{Denoising, DiffusionOptions, Remasking, generate_diffusion};
use ets_engine::decode::lm::Meter;
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
            &[],
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
            &[],
        ))
        .unwrap();
        assert_eq!(answers, again);
        let alone = block_on(generate_diffusion(
            &dlm.transformer,
            &prompts[1..],
            &[1],
            &options(temperature),
            &[],
        ))
        .unwrap();
        assert_eq!(
            alone[0], answers[1],
            "{}: batch company changed an answer",
            backend.name
        );
        settled_answers_stop_with_the_same_text(&dlm, &prompts, &answers, temperature);
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
            &options(0.0),
            &[],
        )),
        Err(Error::Sampling(_))
    ));
    // A diffusion model reruns whole sequences: a non-empty cache is refused.
    let t = &dlm.transformer;
    let mut cache = t.new_cache(1);
    t.forward(&[&[1, 5]], &mut cache, LogitsFor::Last).unwrap();
    assert!(t.forward(&[&[6]], &mut cache, LogitsFor::Last).is_err());
}

/// Runs the sampler with a stop token that `full` (answers run every step) reveals in its
/// first block, and checks that each answer's text up to its first stop token is unchanged,
/// its statistics count the tokens up to that stop, and fewer tokens went through the model.
fn settled_answers_stop_with_the_same_text(
    dlm: &Model,
    prompts: &[Vec<u32>],
    full: &[Vec<u32>],
    temperature: f64,
) {
    let stop = full[0][1];
    let cut = |a: &[u32]| a[..a.iter().position(|&t| t == stop).unwrap_or(a.len())].to_vec();
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let run = |stop_ids: &[u32]| {
        let meter = Meter::default();
        let mut batch = Denoising::start(
            &dlm.transformer,
            &prompts,
            vec![0, 1],
            &options(temperature),
            stop_ids,
        )
        .unwrap();
        block_on(batch.run(&dlm.transformer, &meter, usize::MAX)).unwrap();
        (batch, meter.tokens())
    };
    let (unstopped, all_tokens) = run(&[]);
    assert_eq!(&unstopped.answers, full);
    let (stopped, tokens) = run(&[stop]);
    assert!(stopped.settled(0) && stopped.finished(0));
    assert!(
        stopped.answers[0].contains(&MASK),
        "{:?}",
        stopped.answers[0]
    );
    for (b, answer) in full.iter().enumerate() {
        assert_eq!(cut(&stopped.answers[b]), cut(answer), "answer {b}");
        let through_stop = answer.iter().position(|&t| t == stop).map_or(8, |p| p + 1);
        assert_eq!(stopped.stats(b).tokens, through_stop, "answer {b}");
    }
    assert!(tokens < all_tokens, "{tokens} of {all_tokens}");
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
