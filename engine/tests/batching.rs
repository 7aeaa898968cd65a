//! A batch of sequences of different lengths, forked sequences and pruned batches must give the
//! logits each sequence gets alone, on every backend.

mod common;

use common::{TestBackend, fixture, max_abs_diff};
use ets_engine::backend::read_f32;
use ets_engine::model::transformer::Transformer;
use ets_engine::{GenerateOptions, LogitsFor, Model, SamplingParams, generate};
use pollster::block_on;

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

/// The ETS tree: one prompt forked into 3 candidates, each candidate into 2 rollouts. The
/// prompt and the candidate blocks are held once (shared segments), every sequence still gets
/// the logits it gets alone, and so does a batch whose sequences read the shared groups in an
/// irregular order.
fn check_shared_prefix_tree(backend: &TestBackend) {
    let model = Model::from_dir(&fixture("llama-gqa"), &backend.device).unwrap();
    let t = &model.transformer;
    let vocab = t.config().vocab_size;
    let prompt: Vec<u32> = (0..20).map(|i| 5 + i * 3).collect();
    let mut cache = t.new_cache(1);
    t.forward(&[&prompt], &mut cache, LogitsFor::Last).unwrap();
    let single_bytes = cache.bytes();

    let mut candidates = cache.select(&[0, 0, 0]).unwrap();
    let blocks: Vec<Vec<u32>> = (0..3)
        .map(|c| (0..9).map(|i| 40 + c * 10 + i).collect())
        .collect();
    let chunks: Vec<&[u32]> = blocks.iter().map(Vec::as_slice).collect();
    t.forward(&chunks, &mut candidates, LogitsFor::Last)
        .unwrap();
    assert_eq!(candidates.shared_segments(), 1, "the prompt is frozen once");
    assert_eq!(candidates.bytes(), single_bytes * (20 + 3 * 9) / 20);

    let mut rollouts = candidates.select(&[0, 0, 1, 1, 2, 2]).unwrap();
    let tails: Vec<[u32; 2]> = (0..6).map(|r| [90 + r, 91 + r]).collect();
    let chunks: Vec<&[u32]> = tails.iter().map(|t| t.as_slice()).collect();
    let batch = read_f32(t.forward(&chunks, &mut rollouts, LogitsFor::Last).unwrap()).unwrap();
    assert_eq!(rollouts.shared_segments(), 2, "prompt and candidate blocks");
    let per_slot = single_bytes / 20;
    assert_eq!(rollouts.bytes(), per_slot * (20 + 3 * 9 + 6 * 2));
    assert_eq!(rollouts.unshared_bytes(), per_slot * 6 * (20 + 9 + 2));
    for r in 0..6 {
        let err = max_abs_diff(
            &batch[r * vocab..(r + 1) * vocab],
            &alone(t, &[&prompt, &blocks[r / 2], &tails[r]]),
        );
        assert!(
            err <= backend.tolerance,
            "{}: rollout {r}: {err:e}",
            backend.name
        );
    }

    // An irregular map (candidates read out of order, one dropped) gathers its groups.
    let order = [2usize, 0, 2, 1];
    let mut mixed = rollouts.select(&[4, 0, 5, 2]).unwrap();
    let next: Vec<[u32; 1]> = (0..4).map(|i| [7 + i]).collect();
    let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
    let batch = read_f32(t.forward(&chunks, &mut mixed, LogitsFor::Last).unwrap()).unwrap();
    for (i, (&c, rollout)) in order.iter().zip([4usize, 0, 5, 2]).enumerate() {
        let err = max_abs_diff(
            &batch[i * vocab..(i + 1) * vocab],
            &alone(t, &[&prompt, &blocks[c], &tails[rollout], &next[i]]),
        );
        assert!(
            err <= backend.tolerance,
            "{}: reordered {i}: {err:e}",
            backend.name
        );
    }
}

#[test]
fn shared_prefix_tree_cpu() {
    check_shared_prefix_tree(&common::cpu());
}

#[test]
fn shared_prefix_tree_wgpu() {
    if let Some(backend) = common::wgpu() {
        check_shared_prefix_tree(&backend);
    }
}

/// Decoding one token at a time writes each step's keys and values into the cache's spare
/// room (growing it every 32 slots), and a fork in between reads only the filled slots: the
/// logits after 70 single-token steps equal one pass over the whole sequence.
fn check_token_by_token(backend: &TestBackend) {
    let model = Model::from_dir(&fixture("llama-gqa"), &backend.device).unwrap();
    let t = &model.transformer;
    let vocab = t.config().vocab_size;
    let tokens: Vec<u32> = (0..75).map(|i| 5 + (i * 7) % 90).collect();
    let mut cache = t.new_cache(1);
    t.forward(&[&tokens[..5]], &mut cache, LogitsFor::Last)
        .unwrap();
    for (i, token) in tokens[5..].iter().enumerate() {
        if i == 40 {
            // Two copies of the sequence, each holding spare slots past its 45 filled ones.
            cache = cache.select(&[0, 0]).unwrap();
        }
        let chunks = vec![std::slice::from_ref(token); cache.batch_size()];
        let logits = read_f32(t.forward(&chunks, &mut cache, LogitsFor::Last).unwrap()).unwrap();
        if i + 6 == tokens.len() {
            let whole = alone(t, &[&tokens]);
            for b in 0..2 {
                let err = max_abs_diff(&logits[b * vocab..(b + 1) * vocab], &whole);
                assert!(
                    err <= backend.tolerance,
                    "{}: copy {b} after {} steps: {err:e}",
                    backend.name,
                    i + 1
                );
            }
        }
    }
}

#[test]
fn token_by_token_cpu() {
    check_token_by_token(&common::cpu());
}

#[test]
fn token_by_token_wgpu() {
    if let Some(backend) = common::wgpu() {
        check_token_by_token(&backend);
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
    let alone = block_on(generate(
        &model.transformer,
        std::slice::from_ref(&a),
        &[7],
        &options,
    ))
    .unwrap();
    let together = block_on(generate(
        &model.transformer,
        &[b, a.clone()],
        &[3, 7],
        &options,
    ))
    .unwrap();
    assert_eq!(alone[0], together[1]);
    let reseeded = GenerateOptions {
        seed: 99,
        ..options.clone()
    };
    let other = block_on(generate(&model.transformer, &[a], &[7], &reseeded)).unwrap();
    assert_ne!(
        alone[0], other[0],
        "a different seed should change a 10-token sample"
    );
}

/// A chunk longer than one forward window (256 slots) is split into windows; the logits must
/// equal those of the same tokens fed in small pieces, also when a short sequence in the batch
/// has nothing but padding in the first window.
fn check_long_chunks(backend: &TestBackend) {
    let json = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":64,"hidden_size":32,
      "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
      "rms_norm_eps":1e-6,"max_position_embeddings":1024,"rope_theta":10000.0}"#;
    let config = ets_engine::model::config::ModelConfig::from_json(json).unwrap();
    let files = ets_engine::model::random::random_model_files(json, &config, 3);
    let model = Model::from_files(files, &backend.device).unwrap();
    let t = &model.transformer;
    let long: Vec<u32> = (0..600).map(|i| (i * 7 % 64) as u32).collect();
    let short: Vec<u32> = vec![3, 1, 4, 1, 5];
    let mut cache = t.new_cache(2);
    let logits = read_f32(
        t.forward(&[&long, &short], &mut cache, LogitsFor::All)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(logits.len(), 2 * 600 * 64);
    let mut pieces = t.new_cache(1);
    let mut expected = Vec::new();
    for piece in long.chunks(100) {
        expected
            .extend(read_f32(t.forward(&[piece], &mut pieces, LogitsFor::All).unwrap()).unwrap());
    }
    let err = max_abs_diff(&logits[..600 * 64], &expected);
    assert!(
        err <= backend.tolerance,
        "{}: long chunk: {err:e}",
        backend.name
    );
    let short_alone = alone(t, &[&short]);
    let err = max_abs_diff(&logits[2 * 600 * 64 - 64..], &short_alone);
    assert!(
        err <= backend.tolerance,
        "{}: short sequence beside a long one: {err:e}",
        backend.name
    );
    // Both keep going from the right positions.
    let next = read_f32(
        t.forward(&[&[9], &[9]], &mut cache, LogitsFor::Last)
            .unwrap(),
    )
    .unwrap();
    let err = max_abs_diff(&next[64..], &alone(t, &[&short, &[9]]));
    assert!(
        err <= backend.tolerance,
        "{}: decode after windows: {err:e}",
        backend.name
    );
}

#[test]
fn long_chunks_run_in_windows_cpu() {
    check_long_chunks(&common::cpu());
}

#[test]
fn long_chunks_run_in_windows_wgpu() {
    if let Some(backend) = common::wgpu() {
        check_long_chunks(&backend);
    }
}

#[test]
fn generation_stops_at_the_end_of_the_context() {
    let backend = common::cpu();
    let model = Model::from_dir(&fixture("llama-gqa"), &backend.device).unwrap();
    let max = model.transformer.config().max_position_embeddings;
    let prompt: Vec<u32> = (0..max as u32 - 3).map(|i| 5 + i % 100).collect();
    let options = GenerateOptions {
        max_new_tokens: 10,
        sampling: SamplingParams::greedy(),
        seed: 0,
        stop_ids: Vec::new(),
    };
    let out = block_on(generate(&model.transformer, &[prompt], &[0], &options)).unwrap();
    // Three positions are left: three forward passes fit, and the last sampled token ends it.
    assert_eq!(out[0].len(), 4);
}
