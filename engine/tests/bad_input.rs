//! Bad input gets a typed error with a clear message, never a panic.

mod common;

use common::fixture;
use ets_engine::model::config::ModelConfig;
use ets_engine::model::files::ModelFiles;
use ets_engine::model::random::random_model_files;
use ets_engine::model::safetensors::{Dtype, serialize};
use ets_engine::{Error, GenerateOptions, LogitsFor, Model, SamplingParams, generate};
use pollster::block_on;

const TINY: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":32,"hidden_size":16,
  "intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
  "rms_norm_eps":1e-5,"max_position_embeddings":16,"tie_word_embeddings":true}"#;

fn load(files: ModelFiles) -> Result<Model, Error> {
    Model::from_files(files, &common::cpu().device)
}

/// The fixture's files with `model.safetensors` replaced by `weights`.
fn with_weights(weights: Vec<u8>) -> ModelFiles {
    let dir = fixture("llama-gqa");
    let read = |name: &str| (name.to_string(), std::fs::read(dir.join(name)).unwrap());
    ModelFiles::from_memory([
        read("config.json"),
        ("model.safetensors".to_string(), weights),
    ])
}

fn fixture_weights() -> Vec<u8> {
    std::fs::read(fixture("llama-gqa").join("model.safetensors")).unwrap()
}

fn message(result: Result<Model, Error>) -> (Error, String) {
    let err = result.err().expect("loading should fail");
    let text = err.to_string();
    (err, text)
}

#[test]
fn truncated_file() {
    let mut bytes = fixture_weights();
    bytes.truncate(bytes.len() / 2);
    let (err, text) = message(load(with_weights(bytes)));
    assert!(matches!(err, Error::TensorOutOfRange { .. }), "{text}");
    assert!(text.contains("truncated or corrupt"), "{text}");
    let (err, text) = message(load(with_weights(vec![0, 1, 2])));
    assert!(
        matches!(err, Error::Safetensors { .. }) && text.contains("truncated"),
        "{text}"
    );
}

#[test]
fn header_length_beyond_the_file() {
    let mut bytes = fixture_weights();
    let claimed = bytes.len() as u64 * 2;
    bytes[..8].copy_from_slice(&claimed.to_le_bytes());
    let (_, text) = message(load(with_weights(bytes)));
    assert!(text.contains("header claims"), "{text}");
}

#[test]
fn tensor_offsets_out_of_range() {
    let header =
        br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,999999]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    let (err, text) = message(load(with_weights(bytes)));
    assert!(
        matches!(err, Error::TensorOutOfRange { end: 999999, .. }),
        "{text}"
    );
}

#[test]
fn missing_tensor() {
    let bytes = serialize(
        &[(
            "model.embed_tokens.weight",
            &[320, 64],
            &vec![0.0; 320 * 64],
        )],
        Dtype::F32,
    );
    let (err, text) = message(load(with_weights(bytes)));
    assert!(matches!(err, Error::MissingTensor(_)), "{text}");
    assert!(text.contains("has no tensor `lm_head.weight`"), "{text}");
    let mut files = with_weights(fixture_weights());
    files.take("model.safetensors");
    let (err, _) = message(load(files));
    assert!(matches!(err, Error::MissingFile(ref f) if f == "model.safetensors"));
}

#[test]
fn shape_mismatch() {
    let bytes = serialize(
        &[(
            "model.embed_tokens.weight",
            &[320, 32],
            &vec![0.0; 320 * 32],
        )],
        Dtype::F32,
    );
    let (err, text) = message(load(with_weights(bytes)));
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{text}");
    assert!(
        text.contains("[320, 32]") && text.contains("[320, 64]"),
        "{text}"
    );
}

#[test]
fn unknown_architecture() {
    let files = ModelFiles::from_memory([(
        "config.json".to_string(),
        br#"{"architectures":["GPT2LMHeadModel"],"vocab_size":10}"#.to_vec(),
    )]);
    let (err, text) = message(load(files));
    assert!(matches!(err, Error::UnknownArchitecture(_)), "{text}");
    assert!(
        text.contains("GPT2LMHeadModel") && text.contains("LlamaForCausalLM"),
        "{text}"
    );
}

#[test]
fn token_id_beyond_the_vocabulary_and_empty_input() {
    let config = ModelConfig::from_json(TINY).unwrap();
    let model = load(random_model_files(TINY, &config, 1)).unwrap();
    let t = &model.transformer;
    let mut cache = t.new_cache(1);
    let err = t
        .forward(&[&[3, 32]], &mut cache, LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                id: 32,
                vocab_size: 32
            }
        ),
        "{err}"
    );
    let err = t.forward(&[&[]], &mut cache, LogitsFor::Last).unwrap_err();
    assert!(matches!(err, Error::EmptyInput(_)), "{err}");
    let options = GenerateOptions {
        max_new_tokens: 4,
        sampling: SamplingParams::default(),
        seed: 0,
        stop_ids: vec![],
    };
    let err = block_on(generate(t, &[], &[], &options)).unwrap_err();
    assert!(matches!(err, Error::EmptyInput(_)), "{err}");
    // A prompt longer than the model's context is refused before anything runs.
    let long: Vec<u32> = (0..17).map(|i| i % 32).collect();
    let err = t
        .forward(&[&long], &mut t.new_cache(1), LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContextTooLong {
                needed: 17,
                max: 16
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupt_config_and_tokenizer() {
    let files =
        ModelFiles::from_memory([("config.json".to_string(), b"{\"architectures\": [".to_vec())]);
    assert!(matches!(message(load(files)).0, Error::Json { .. }));
    let mut files = with_weights(fixture_weights());
    let mut all: Vec<(String, Vec<u8>)> = vec![];
    for name in ["config.json", "model.safetensors"] {
        all.push((name.to_string(), files.take(name).unwrap()));
    }
    all.push(("tokenizer.json".to_string(), b"not a tokenizer".to_vec()));
    let (err, text) = message(load(ModelFiles::from_memory(all)));
    assert!(matches!(err, Error::Tokenizer(_)), "{text}");
}

/// A run whose KV cache cannot fit is refused before it starts, with what it would need: on
/// the CPU against the host memory free, on a GPU against the largest buffer. (ETS with
/// M = 256, K = 64 and 32,768 tokens: 16,640 sequences, 279 GB of cache for this small model.)
#[test]
fn a_run_whose_kv_cache_cannot_fit_is_refused_before_it_starts() {
    use ets_engine::solve::SolveOptions;
    use ets_spec::answer::Extraction;
    use ets_spec::diffusion::DiffusionSchedule;
    use ets_spec::reward::RewardKind;
    use ets_spec::strategy::{EtsParams, SolveSpec, Strategy};
    let dir = fixture("llama-gqa");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 32_768.into();
    let files = || {
        let read = |name: &str| (name.to_string(), std::fs::read(dir.join(name)).unwrap());
        ModelFiles::from_memory([
            ("config.json".to_string(), config.to_string().into_bytes()),
            read("model.safetensors"),
            read("tokenizer.json"),
        ])
    };
    let spec = SolveSpec {
        strategy: Strategy::Ets(EtsParams {
            m: 256,
            k: 64,
            ..EtsParams::default()
        }),
        sampling: SamplingParams::default(),
        max_tokens: 32_768,
        diffusion: DiffusionSchedule::default(),
        reward: RewardKind::SelfConsistency,
        extraction: Extraction::Strict,
        seed: 1,
    }
    .validate()
    .unwrap();
    let backends = std::iter::once(common::cpu()).chain(common::wgpu());
    for backend in backends {
        let model = Model::from_files(files(), &backend.device).unwrap();
        let started = std::time::Instant::now();
        let err = block_on(model.solve(
            "What is 2 + 3?",
            &spec,
            SolveOptions::default(),
            &mut |_| {},
        ))
        .unwrap_err();
        let text = err.to_string();
        match backend.name {
            "cpu" => assert!(
                matches!(
                    err,
                    Error::KvCacheTooLarge {
                        sequences: 16_640,
                        ..
                    }
                ) && text.contains("279")
                    && text.contains("lower M, K, N or max tokens"),
                "{text}"
            ),
            _ => assert!(
                matches!(err, Error::TooLargeForDevice { .. }) && text.contains("KV cache"),
                "{text}"
            ),
        }
        assert!(
            started.elapsed().as_secs() < 2,
            "{}: not refused at once",
            backend.name
        );
    }
}
