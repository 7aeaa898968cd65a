//! The device's buffer limit (WebGPU: `maxStorageBufferBindingSize`): a weight matrix larger
//! than one buffer is split into parts on load and gives the logits of the unsplit model, on
//! the CPU backend (where an embedding table is a device tensor) and on wgpu, for float and
//! block-quantized weights, under limits forced far below the real ones; a row larger than a
//! buffer, or a batch whose attention does not fit, is refused with a clear error before
//! anything is allocated. (Own test binary: it sets limits on the process's devices; the
//! tests take turns.)

mod common;

use std::sync::Mutex;

use burn::prelude::Device;
use ets_engine::backend::{cpu_device, max_buffer_bytes, read_f32, register_buffer_limit};
use ets_engine::model::Precision;
use ets_engine::model::config::ModelConfig;
use ets_engine::model::random::random_model_files;
use ets_engine::quant::TensorType;
use ets_engine::{Error, LoadOptions, LogitsFor, Model};

const JSON: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":1000,"hidden_size":64,
  "intermediate_size":256,"num_hidden_layers":2,"num_attention_heads":4,
  "num_key_value_heads":2,"rms_norm_eps":1e-5,"max_position_embeddings":4096,
  "tie_word_embeddings":true}"#;

/// The limit is per device and process-wide: one test changes it at a time.
static LIMITS: Mutex<()> = Mutex::new(());

fn load(device: &Device, options: LoadOptions) -> Result<Model, Error> {
    let config = ModelConfig::from_json(JSON).unwrap();
    Model::from_files_in(random_model_files(JSON, &config, 0), device, options)
}

/// The last position's logits of two sequences of different lengths (prefill, then one
/// decoding step each).
fn logits(model: &Model) -> Vec<f32> {
    let t = &model.transformer;
    let (a, b): (Vec<u32>, Vec<u32>) = ((0..9).map(|i| i * 97 % 1000).collect(), vec![5, 999]);
    let mut cache = t.new_cache(2);
    let mut out = read_f32(t.forward(&[&a, &b], &mut cache, LogitsFor::Last).unwrap()).unwrap();
    let step = t
        .forward(&[&[3], &[998]], &mut cache, LogitsFor::Last)
        .unwrap();
    out.extend(read_f32(step).unwrap());
    out
}

/// Loads the model with and without `limit` on `device` (the device's own limit restored
/// after): the split model's logits, the unsplit one's, and the matrices split.
fn split_and_whole(
    device: &Device,
    limit: u64,
    options: LoadOptions,
) -> (Vec<f32>, Vec<f32>, usize) {
    let own = max_buffer_bytes(device);
    register_buffer_limit(device, u64::MAX);
    let whole = load(device, options).unwrap();
    assert_eq!(whole.transformer.matrices_in_parts(), 0);
    register_buffer_limit(device, limit);
    let split = load(device, options);
    register_buffer_limit(device, own.unwrap_or(u64::MAX));
    let split = split.unwrap();
    (
        logits(&split),
        logits(&whole),
        split.transformer.matrices_in_parts(),
    )
}

#[test]
fn matrices_larger_than_a_buffer_are_split_and_give_the_same_logits() {
    let _turn = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    // CPU: the embedding table (1000 × 64 × 4 = 256,000 bytes) is a device tensor, in 3 parts
    // under 100,000 bytes (the linear layers are host-packed there, which no limit touches).
    let cpu = cpu_device();
    let (split, whole, parts) = split_and_whole(&cpu, 100_000, Precision::F32.into());
    assert_eq!(parts, 1, "the CPU's embedding table in parts");
    let diff = common::max_abs_diff(&split, &whole);
    assert!(
        diff == 0.0,
        "cpu: the split table's logits differ by {diff}"
    );

    let Some(wgpu) = common::wgpu() else { return };
    // wgpu, f32: under 40,000 bytes the table and tied head (256,000 bytes) split in 7 parts
    // and every MLP matrix (65,536 bytes) in 2; q, k, v, o (16,384 or less) stay whole.
    let (split, whole, parts) = split_and_whole(&wgpu.device, 40_000, Precision::F32.into());
    let diff = common::max_abs_diff(&split, &whole);
    eprintln!("wgpu f32: {parts} matrices in parts, max |Δlogit| {diff:e}");
    assert_eq!(
        parts,
        2 + 2 * 3,
        "wgpu f32: table, head and the MLPs in parts"
    );
    assert!(diff <= 1e-5, "wgpu f32: split logits differ by {diff}");
    // wgpu, quantized to Q8_0 on load (68 bytes a row of 64 values, 272 of 256): under
    // 10,000 bytes the table (68,000 bytes, also the tied head: counted once) and the MLPs
    // (17,408) split.
    let q8 = LoadOptions {
        precision: Precision::F32,
        quantize: Some(TensorType::Q8_0),
    };
    let (split, whole, parts) = split_and_whole(&wgpu.device, 10_000, q8);
    let diff = common::max_abs_diff(&split, &whole);
    eprintln!("wgpu Q8_0: {parts} matrices in parts, max |Δlogit| {diff:e}");
    assert_eq!(
        parts,
        1 + 2 * 3,
        "wgpu Q8_0: the table and the MLPs in parts"
    );
    // Each output is computed as in the whole matrix.
    assert!(diff == 0.0, "wgpu Q8_0: split logits differ by {diff}");
}

#[test]
fn a_row_or_a_batch_too_large_for_the_device_is_refused() {
    let _turn = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let device = cpu_device();
    // One row of the table is 64 × 4 = 256 bytes.
    register_buffer_limit(&device, 200);
    let err = load(&device, Precision::F32.into()).err();
    register_buffer_limit(&device, 300_000);
    let err = err.expect("a row larger than a buffer is refused");
    assert!(
        matches!(
            err,
            Error::TooLargeForDevice {
                bytes: 256,
                limit: 200,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("one row of a table [1000, 64]"),
        "{err}"
    );

    let model = load(&device, Precision::F32.into()).unwrap();
    let t = &model.transformer;
    // 2 × 4 heads × 256-slot window × 2000 slots × 4 bytes of scores: far above the limit.
    let prompt: Vec<u32> = (0..2000).map(|i| i % 1000).collect();
    let err = t
        .forward(&[&prompt, &prompt], &mut t.new_cache(2), LogitsFor::Last)
        .unwrap_err();
    register_buffer_limit(&device, u64::MAX);
    assert!(matches!(err, Error::TooLargeForDevice { .. }), "{err}");
    assert!(err.to_string().contains("attention scores"), "{err}");
    // A short prompt fits.
    t.forward(&[&prompt[..10]], &mut t.new_cache(1), LogitsFor::Last)
        .unwrap();
}

/// A model of Qwen2.5-0.5B's exact shape (random weights, 494 M parameters: Q4_0 matrices, a
/// Q8_0 embedding of 151,936 × 896 = 144.6 MB, the tied head) loads on wgpu under WebGPU's
/// default binding limit of 128 MiB, its embedding and head split by vocabulary rows, and
/// decodes greedily the tokens the CPU backend decodes, with logits within the block kernels'
/// tolerance. (The browser test runs the same file, written by `ets random-gguf`.)
#[test]
fn qwen2_5_0_5bs_shape_runs_under_webgpus_default_limit_as_on_the_cpu() {
    use ets_engine::model::config::QWEN2_5_0_5B_CONFIG;
    use ets_engine::model::files::ModelFiles;
    use ets_engine::model::random::random_gguf;
    use ets_engine::{GenerateOptions, SamplingParams, generate};
    let _turn = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(wgpu) = common::wgpu() else { return };
    let config = ModelConfig::from_json(QWEN2_5_0_5B_CONFIG).unwrap();
    let started = std::time::Instant::now();
    let bytes = random_gguf(&config, TensorType::Q4_0, TensorType::Q8_0, 0).unwrap();
    eprintln!(
        "wrote {} bytes in {:.1} s",
        bytes.len(),
        started.elapsed().as_secs_f64()
    );
    let files = || ModelFiles::from_memory([("qwen-shape.gguf".to_string(), bytes.clone())]);
    let prompt: Vec<u32> = vec![151_000, 17, 4_242, 99_999, 8];
    let options = GenerateOptions {
        max_new_tokens: 4,
        sampling: SamplingParams::greedy(),
        seed: 0,
        stop_ids: Vec::new(),
    };
    let run = |model: &Model| {
        let t = &model.transformer;
        let first = read_f32(
            t.forward(&[&prompt], &mut t.new_cache(1), LogitsFor::Last)
                .unwrap(),
        )
        .unwrap();
        let tokens =
            pollster::block_on(generate(t, std::slice::from_ref(&prompt), &[0], &options)).unwrap();
        (first, tokens.into_iter().next().unwrap())
    };
    let cpu = Model::from_files(files(), &cpu_device()).unwrap();
    let (cpu_logits, cpu_tokens) = run(&cpu);
    drop(cpu);
    let own = max_buffer_bytes(&wgpu.device);
    register_buffer_limit(&wgpu.device, 128 << 20);
    let on_gpu = Model::from_files(files(), &wgpu.device);
    let result = on_gpu.map(|model| {
        let parts = model.transformer.matrices_in_parts();
        (parts, run(&model))
    });
    register_buffer_limit(&wgpu.device, own.unwrap_or(u64::MAX));
    let (parts, (gpu_logits, gpu_tokens)) = result.unwrap();
    let diff = common::max_abs_diff(&cpu_logits, &gpu_logits);
    let spread = cpu_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "Qwen2.5-0.5B's shape under 128 MiB: {parts} matrix in parts; greedy {cpu_tokens:?} on \
         the CPU, {gpu_tokens:?} on wgpu; max |Δlogit| {diff:.2e} of logits up to {spread:.1}; \
         {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(parts, 1, "the embedding (also the head) in parts");
    assert!(diff <= 1e-2 * spread.max(1.0), "logits differ by {diff}");
    assert_eq!(cpu_tokens, gpu_tokens);
}
