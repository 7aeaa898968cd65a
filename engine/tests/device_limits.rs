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
