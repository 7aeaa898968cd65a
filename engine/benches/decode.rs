//! Criterion benchmarks of the decoding hot path on the CPU backend: taking tokens from logits
//! by tensor ops, from a CPU tensor (read back, then the host loop) and from host rows, the
//! same on wgpu by tensor ops and by the fused kernel (where an adapter exists), the
//! linear-layer kernel against Burn's matmul, one decode step of the bundled reference model
//! (forward pass and sampling) at several batch sizes, and forking a prefilled prompt into 24
//! sequences that share its KV cache. `cargo bench -p ets-engine`; `ets bench` measures whole
//! models on every backend (docs/performance.md).

use std::hint::black_box;
use std::path::PathBuf;

use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pollster::block_on;

use ets_engine::backend::{cpu_device, read_f32, wgpu_device};
use ets_engine::decode::device_sampling::DeviceLogits;
use ets_engine::decode::lm::LanguageModel;
use ets_engine::decode::logits::{HostLogits, Logits};
use ets_engine::kernels::cpu_matmul::{PackedMatrix, Storage};
use ets_engine::kernels::quant_matmul::QuantMatrix;
use ets_engine::quant::TensorType;
use ets_engine::rng::CounterRng;
use ets_engine::sampling::RowPick;
use ets_engine::{LogitsFor, Model, SamplingParams};

/// SmolLM2's vocabulary size: the length of the rows sampling walks.
const VOCAB: usize = 49_152;

fn uniform_picks(rows: usize) -> Vec<RowPick> {
    let rng = CounterRng { seed: 1 };
    (0..rows as u64)
        .map(|r| RowPick::Draw(rng.uniform(r, 0)))
        .collect()
}

fn sampling(c: &mut Criterion) {
    let device = cpu_device();
    let rng = CounterRng { seed: 0 };
    let mut group = c.benchmark_group("take_tokens");
    group.sample_size(10);
    for rows in [1usize, 24, 64] {
        let values: Vec<f32> = (0..rows * VOCAB)
            .map(|i| (rng.uniform(0, i as u64) * 10.0 - 5.0) as f32)
            .collect();
        let host = HostLogits {
            values: values.clone(),
            vocab: VOCAB,
        };
        let on_device = DeviceLogits(Tensor::from_data(
            TensorData::new(values, [rows, VOCAB]),
            &device,
        ));
        let picks = uniform_picks(rows);
        let params = SamplingParams::default();
        group.bench_with_input(BenchmarkId::new("tensor_ops", rows), &rows, |b, _| {
            b.iter(|| block_on(on_device.take_by_tensor_ops(black_box(&picks), &params)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("cpu_tensor", rows), &rows, |b, _| {
            b.iter(|| block_on(on_device.take(black_box(&picks), &params)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("host", rows), &rows, |b, _| {
            b.iter(|| block_on(host.take(black_box(&picks), &params)).unwrap())
        });
    }
    group.finish();
}

/// Taking tokens on wgpu: Burn's tensor ops against the fused kernel, for a draw at a
/// temperature and with a top-p cut (the tensor ops' bisection).
fn sampling_wgpu(c: &mut Criterion) {
    let Ok((device, adapter)) = wgpu_device() else {
        eprintln!("take_tokens_wgpu: no wgpu adapter, skipped");
        return;
    };
    eprintln!("take_tokens_wgpu on {adapter}");
    let rng = CounterRng { seed: 0 };
    let mut group = c.benchmark_group("take_tokens_wgpu");
    group.sample_size(10);
    let top_p = SamplingParams {
        top_p: Some(0.9),
        ..SamplingParams::default()
    };
    for rows in [1usize, 24, 64] {
        let values: Vec<f32> = (0..rows * VOCAB)
            .map(|i| (rng.uniform(0, i as u64) * 10.0 - 5.0) as f32)
            .collect();
        let on_device = DeviceLogits(Tensor::from_data(
            TensorData::new(values, [rows, VOCAB]),
            &device,
        ));
        let picks = uniform_picks(rows);
        for (name, params) in [("t1", SamplingParams::default()), ("top_p", top_p)] {
            let id = format!("{name}/{rows}");
            group.bench_function(BenchmarkId::new("tensor_ops", &id), |b| {
                b.iter(|| {
                    block_on(on_device.take_by_tensor_ops(black_box(&picks), &params)).unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("kernel", &id), |b| {
                b.iter(|| block_on(on_device.take_by_kernel(black_box(&picks), &params)).unwrap())
            });
        }
    }
    group.finish();
}

fn reference_model() -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar");
    Model::from_dir(&dir, &cpu_device()).expect("the bundled reference model")
}

fn decode_step(c: &mut Criterion) {
    let model = reference_model();
    let t = &model.transformer;
    let prompt: Vec<u32> = (0..64).map(|i| 5 + i % 50).collect();
    let params = SamplingParams::default();
    let mut group = c.benchmark_group("decode_step_ref_ar");
    for batch in [1usize, 8, 24, 64] {
        let chunks: Vec<&[u32]> = vec![&prompt; batch];
        let mut cache = t.new_cache(batch);
        block_on(LanguageModel::forward(
            t,
            &chunks,
            &mut cache,
            LogitsFor::Last,
        ))
        .unwrap();
        let picks = uniform_picks(batch);
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_batched(
                || cache.clone(),
                |mut cache| {
                    let next: Vec<[u32; 1]> = vec![[7]; batch];
                    let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
                    let logits = block_on(LanguageModel::forward(
                        t,
                        &chunks,
                        &mut cache,
                        LogitsFor::Last,
                    ))
                    .unwrap();
                    block_on(logits.take(&picks, &params)).unwrap()
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One linear layer of SmolLM2-135M's MLP (576 → 1536) and its output head (576 → 49,152)
/// at decode batch sizes: the weight packed for the CPU kernel against Burn's matmul.
/// A weight [n, k] of random blocks of `t` whose f16 scales lie in ±0.05.
fn random_blocks(t: TensorType, n: usize, k: usize, rng: &CounterRng) -> QuantMatrix {
    let bytes = t.bytes_of(n * k).expect("a whole number of blocks");
    let mut blocks: Vec<u8> = (0..bytes as u64)
        .map(|i| (rng.uniform(3, i) * 256.0) as u8)
        .collect();
    for (b, block) in blocks.chunks_exact_mut(t.block_bytes()).enumerate() {
        // d (and Q4_1's m) lead the block.
        let fields = if t == TensorType::Q4_1 { 2 } else { 1 };
        for f in 0..fields {
            let v = half::f16::from_f64((rng.uniform(4 + f as u64, b as u64) - 0.5) * 0.1);
            block[2 * f..2 * f + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    QuantMatrix::new(t, n, k, blocks).expect("sizes of whole blocks")
}

fn linear(c: &mut Criterion) {
    let device = cpu_device();
    let rng = CounterRng { seed: 2 };
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    for (name, k, n) in [
        ("mlp_576x1536", 576usize, 1536usize),
        ("head_576x49152", 576, VOCAB),
    ] {
        let w: Vec<f32> = (0..k * n)
            .map(|i| (rng.uniform(1, i as u64) - 0.5) as f32)
            .collect();
        let packed = PackedMatrix::from_row_major(&w, k, n, Storage::F32);
        // The same shape in GGUF blocks: random quants, scales of ±0.05 (SmolLM2's file holds
        // Q4_1 layers and a Q8_0 head).
        let quantized: Vec<(TensorType, QuantMatrix)> = [TensorType::Q4_1, TensorType::Q8_0]
            .into_iter()
            .map(|t| (t, random_blocks(t, n, k, &rng)))
            .collect();
        let weight = Tensor::<2>::from_data(TensorData::new(w, [k, n]), &device);
        for rows in [1usize, 8, 12, 16, 24, 64] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| (rng.uniform(2, i as u64) - 0.5) as f32)
                .collect();
            let id = format!("{name}/{rows}");
            group.bench_function(BenchmarkId::new("packed", &id), |b| {
                b.iter(|| packed.left_mul(black_box(&x), rows))
            });
            for (t, q) in &quantized {
                group.bench_function(BenchmarkId::new(t.name(), &id), |b| {
                    b.iter(|| q.left_mul(black_box(&x), rows))
                });
            }
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows, k]), &device);
            group.bench_function(BenchmarkId::new("burn", &id), |b| {
                b.iter(|| read_f32(x.clone().matmul(weight.clone())).unwrap())
            });
        }
    }
    group.finish();
}

fn fork_shared_prefix(c: &mut Criterion) {
    let model = reference_model();
    let t = &model.transformer;
    let prompt: Vec<u32> = (0..64).map(|i| 5 + i % 50).collect();
    let mut cache = t.new_cache(1);
    block_on(LanguageModel::forward(
        t,
        &[&prompt],
        &mut cache,
        LogitsFor::Last,
    ))
    .unwrap();
    let rows = vec![0usize; 24];
    c.bench_function("fork_24_from_a_64_token_prompt", |b| {
        b.iter(|| cache.select(black_box(&rows)).unwrap())
    });
}

criterion_group!(
    benches,
    sampling,
    sampling_wgpu,
    linear,
    decode_step,
    fork_shared_prefix
);
criterion_main!(benches);
