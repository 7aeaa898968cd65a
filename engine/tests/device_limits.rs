//! A model or a batch too large for the device's buffer limit is refused with a clear error
//! before anything is allocated. (Own test binary: it sets a limit on the process's CPU device.)

use ets_engine::backend::{cpu_device, register_buffer_limit};
use ets_engine::model::config::ModelConfig;
use ets_engine::model::random::random_model_files;
use ets_engine::{Error, LogitsFor, Model};

const JSON: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":1000,"hidden_size":64,
  "intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,
  "rms_norm_eps":1e-5,"max_position_embeddings":4096,"tie_word_embeddings":true}"#;

#[test]
fn too_large_for_the_device() {
    let device = cpu_device();
    let config = ModelConfig::from_json(JSON).unwrap();
    // The embedding is 1000 × 64 × 4 = 256,000 bytes.
    register_buffer_limit(&device, 200_000);
    let err = Model::from_files(random_model_files(JSON, &config, 0), &device)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::TooLargeForDevice {
                bytes: 256_000,
                limit: 200_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("largest weight matrix"), "{err}");

    register_buffer_limit(&device, 300_000);
    let model = Model::from_files(random_model_files(JSON, &config, 0), &device).unwrap();
    let t = &model.transformer;
    // 2 × 4 heads × 256-slot window × 2000 slots × 4 bytes of scores: far above the limit.
    let prompt: Vec<u32> = (0..2000).map(|i| i % 1000).collect();
    let err = t
        .forward(&[&prompt, &prompt], &mut t.new_cache(2), LogitsFor::Last)
        .unwrap_err();
    assert!(matches!(err, Error::TooLargeForDevice { .. }), "{err}");
    assert!(err.to_string().contains("attention scores"), "{err}");
    // A short prompt fits.
    t.forward(&[&prompt[..10]], &mut t.new_cache(1), LogitsFor::Last)
        .unwrap();
}
