//! A batch of sequences of different lengths, forked sequences and pruned batches must give the
//! logits each sequence gets alone, on every backend.

mod common;

use common::{TestBackend, fixture, max_abs_diff};
use ets_engine::backend::read_f32;
use ets_engine::model::transformer::Transformer;
use ets_engine::{GenerateOptions, LogitsFor, Model, SamplingParams, generate};

/// Last-position logits of each sequence run alone through its chunks.
fn alone(t: &Transformer, chunks: &[&[u32]]) -> Vec<f32> {
    let mut cache = t.new_cache(1);
    let mut last = Vec::new();
    for chunk in chunks {
        last = read_f32(t.forward(&[chunk], &mut cache, LogitsFor::Last).unwrap()).unwrap();
    }
    last
}

fn check(backend: &TestBackend) {
    let model = Model::from_dir(&fixture("qwen3-qknorm"), &backend.device).unwrap();
    let t = &model.transformer;
    let vocab = t.config().vocab_size;
    let prompts: [&[u32]; 3] = [&[5, 17, 3], &[9, 8, 7, 6, 5, 4, 3], &[42]];

    // Prefill three prompts of different lengths in one batch.
    let mut cache = t.new_cache(3);
    let batch = read_f32(t.forward(&prompts, &mut cache, LogitsFor::Last).unwrap()).unwrap();
    for (b, prompt) in prompts.iter().enumerate() {
        let err = max_abs_diff(&batch[b * vocab..(b + 1) * vocab], &alone(t, &[prompt]));
        assert!(
            err <= backend.tolerance,
            "{}: batched prefill row {b}: {err:e}",
            backend.name
        );
    }

    // Chunks of different lengths after the prefill (the middle one is padded in between).
    let next: [&[u32]; 3] = [&[11, 12, 13, 14], &[1], &[2, 3]];
    let batch = read_f32(t.forward(&next, &mut cache, LogitsFor::Last).unwrap()).unwrap();
    for b in 0..3 {
        let err = max_abs_diff(
            &batch[b * vocab..(b + 1) * vocab],
            &alone(t, &[prompts[b], next[b]]),
        );
        assert!(
            err <= backend.tolerance,
            "{}: second chunk row {b}: {err:e}",
            backend.name
        );
    }

    // Fork sequence 1 three times and drop the others; each fork continues differently.
    let mut forked = cache.select(&[1, 1, 1]).unwrap();
    let tails: [&[u32]; 3] = [&[100], &[200], &[300]];
    let batch = read_f32(t.forward(&tails, &mut forked, LogitsFor::Last).unwrap()).unwrap();
    for (b, tail) in tails.iter().enumerate() {
        let err = max_abs_diff(
            &batch[b * vocab..(b + 1) * vocab],
            &alone(t, &[prompts[1], next[1], tail]),
        );
        assert!(
            err <= backend.tolerance,
            "{}: fork {b}: {err:e}",
            backend.name
        );
    }
}

#[test]
fn batches_forks_and_padding_cpu() {
    check(&common::cpu());
}

#[test]
fn batches_forks_and_padding_wgpu() {
    if let Some(backend) = common::wgpu() {
        check(&backend);
    }
}

#[test]
fn a_sequence_draws_the_same_tokens_whatever_its_batch() {
    let backend = common::cpu();
    let model = Model::from_dir(&fixture("llama-gqa"), &backend.device).unwrap();
    let options = GenerateOptions {
        max_new_tokens: 10,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
        },
        seed: 1234,
        stop_ids: Vec::new(),
    };
    let a = vec![5u32, 6, 7];
    let b = vec![100u32, 101];
    let alone = generate(&model.transformer, &[a.clone()], &[7], &options).unwrap();
    let together = generate(&model.transformer, &[b, a.clone()], &[3, 7], &options).unwrap();
    assert_eq!(alone[0], together[1]);
    let reseeded = GenerateOptions {
        seed: 99,
        ..options.clone()
    };
    let other = generate(&model.transformer, &[a], &[7], &reseeded).unwrap();
    assert_ne!(
        alone[0], other[0],
        "a different seed should change a 10-token sample"
    );
}
