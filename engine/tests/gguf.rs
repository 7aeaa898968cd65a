//! GGUF files: the reader and the reference dequantizers against the `gguf` Python package
//! (llama.cpp's own library), bit for bit, on a file gguf wrote with a tensor of every type the
//! engine reads and on every tensor of the real SmolLM2-135M-Instruct Q4_1 file (fetched by
//! scripts/fetch-model.sh; expected values: tests/fixtures/make_gguf_fixtures.py); and the real
//! model answering chat questions as llama.cpp does with the same file, and computing the
//! logits transformers computes from that file (tests/fixtures/make_transformers_fixtures.py).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ets_engine::backend::cpu_device;
use ets_engine::backend::read_f32;
use ets_engine::model::gguf::{GgufFile, Value};
use ets_engine::quant::dequantize;
use ets_engine::tokenize::{ChatMessage, TextTokenizer};
use ets_engine::{GenerateOptions, LogitsFor, Model, SamplingParams, generate};
use pollster::block_on;
use serde::Deserialize;
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf")
}

/// The real model's path: scripts/fetch-model.sh fetches it into its cache once (98 MB, a few
/// seconds) and prints where it is.
fn real_model() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/fetch-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The f32 bit patterns b_i summed as Σ b_i·(2i + 1) mod 2^64 (the fixture script's fingerprint).
fn fingerprint(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |sum, (i, v)| {
        sum.wrapping_add(u64::from(v.to_bits()).wrapping_mul(2 * i as u64 + 1))
    })
}

/// Checks every tensor of the file `bytes` against the fixture `expected` (by name): type,
/// dimensions, fingerprint and first values.
fn check_against(name: &str, bytes: &[u8], expected: &Json) {
    let file = GgufFile::parse(name, bytes).unwrap();
    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(file.tensors.len(), tensors.len(), "tensor count");
    for want in tensors {
        let tensor = want["name"].as_str().unwrap();
        let t = file
            .tensor(tensor)
            .unwrap_or_else(|| panic!("no tensor {tensor}"));
        assert_eq!(
            t.tensor_type.name(),
            want["type"].as_str().unwrap(),
            "{tensor}"
        );
        let dims: Vec<usize> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims, dims, "{tensor}");
        let mut values = vec![0.0f32; t.elements()];
        dequantize(t.tensor_type, &bytes[t.range.clone()], &mut values).unwrap();
        let first: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        for (i, bits) in want["first_bits"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                u64::from(first[i]),
                bits.as_u64().unwrap(),
                "{tensor}[{i}]: {} against gguf's {}",
                values[i],
                f32::from_bits(bits.as_u64().unwrap() as u32)
            );
        }
        assert_eq!(
            fingerprint(&values),
            want["fingerprint"].as_u64().unwrap(),
            "{tensor}: the dequantized values differ from gguf's"
        );
    }
}

fn json(name: &str) -> Json {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_type_matches_the_gguf_package_bit_for_bit() {
    let bytes = std::fs::read(fixtures().join("every-type.gguf")).unwrap();
    let expected = json("every-type.json");
    assert_eq!(expected["tensors"].as_array().unwrap().len(), 8);
    check_against("every-type.gguf", &bytes, &expected);
}

#[test]
fn the_real_model_reads_and_dequantizes_as_the_gguf_package_does() {
    let path = real_model();
    let bytes = std::fs::read(&path).unwrap();
    let file = GgufFile::parse("SmolLM2-135M-Instruct.Q4_1.gguf", &bytes).unwrap();
    let meta = |key: &str| {
        file.get(key)
            .unwrap_or_else(|| panic!("no metadata key {key}"))
    };
    assert_eq!(meta("general.architecture").as_str(), Some("llama"));
    for (key, value) in [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.context_length", 8192),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        assert_eq!(meta(key).as_u64(), Some(value), "{key}");
    }
    assert_eq!(meta("llama.rope.freq_base").as_f64(), Some(100_000.0));
    assert_eq!(meta("tokenizer.ggml.model").as_str(), Some("gpt2"));
    assert_eq!(meta("tokenizer.ggml.pre").as_str(), Some("smollm"));
    match meta("tokenizer.ggml.tokens") {
        Value::Array(ets_engine::model::gguf::Array::String(tokens)) => {
            assert_eq!(tokens.len(), 49_152)
        }
        other => panic!("tokens: {other:?}"),
    }
    assert!(
        meta("tokenizer.chat_template")
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    assert!(file.tensor("output.weight").is_none(), "the head is tied");
    check_against(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        &bytes,
        &json("smollm2-q4_1.json"),
    );
}

/// llama.cpp (llama-cpp-python 0.3.36, the same file) answers these greedily with "The capital of
/// Germany is Berlin." and "The opposite of hot is cold. …".
#[test]
fn the_real_model_answers_chat_questions_as_llama_cpp_does() {
    let model = Model::from_dir(&real_model(), &cpu_device()).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let options = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        seed: 0,
        stop_ids: model.stop_ids(),
    };
    for (question, expected) in [
        (
            "What is the capital of Germany?",
            "The capital of Germany is Berlin.",
        ),
        (
            "What is the opposite of hot?",
            "The opposite of hot is cold.",
        ),
    ] {
        let prompt = tokenizer.encode_chat(question, None).unwrap();
        let ids = block_on(generate(&model.transformer, &[prompt], &[0], &options)).unwrap();
        let answer = tokenizer.decode(&ids[0]).unwrap();
        assert!(answer.starts_with(expected), "{question} → {answer:?}");
    }
}

/// What llama.cpp (llama-cpp-python 0.3.36) makes of the real model:
/// tests/fixtures/make_llama_cpp_fixtures.py.
#[derive(Deserialize)]
struct LlamaCpp {
    tokens: Vec<Tokenized>,
    chat: Vec<ChatRun>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatRun {
    question: String,
    prompt: String,
    ids: Vec<u32>,
    greedy: Vec<u32>,
    /// The largest logit minus the second largest, at each greedy step.
    margins: Vec<f32>,
}

fn llama_cpp() -> LlamaCpp {
    let text = std::fs::read_to_string(fixtures().join("smollm2-llama-cpp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_real_models_tokenizer_gives_llama_cpps_ids() {
    let model = Model::from_dir(&real_model(), &cpu_device()).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let expected = llama_cpp();
    let cases = expected
        .tokens
        .iter()
        .map(|t| (t.text.as_str(), false, &t.ids[..]));
    assert_llama_cpps_ids(tokenizer, cases);
}

/// Our ids of each (text, whether BOS is added, llama.cpp's ids) equal llama.cpp's, for at
/// least 50 strings; the failure lists every string that differs.
fn assert_llama_cpps_ids<'a>(
    tokenizer: &TextTokenizer,
    cases: impl IntoIterator<Item = (&'a str, bool, &'a [u32])>,
) {
    let (mut total, mut wrong) = (0, Vec::new());
    for (text, bos, want) in cases {
        total += 1;
        let ids = tokenizer.encode(text, bos).unwrap();
        if ids != want {
            wrong.push(format!(
                "{text:?} (BOS {bos}): ours {ids:?}, llama.cpp {want:?}"
            ));
        }
    }
    assert!(total >= 50, "only {total} strings");
    assert!(
        wrong.is_empty(),
        "{} of {total} strings differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A SentencePiece (`llama`) tokenizer, trained by tests/fixtures/make_spm_fixtures.py and
/// written as llama.cpp's converter writes one: our ids equal llama.cpp's on every string of
/// the BPE test plus SentencePiece's own cases (its specials, literal ▁, leading and trailing
/// spaces), without BOS and, for a few, with it; decoding gives the text back.
#[test]
fn a_sentencepiece_tokenizer_gives_llama_cpps_ids() {
    #[derive(Deserialize)]
    struct Case {
        text: String,
        bos: bool,
        ids: Vec<u32>,
    }
    #[derive(Deserialize)]
    struct Fixture {
        tokens: Vec<Case>,
    }
    let bytes = std::fs::read(fixtures().join("spm-tiny.gguf")).unwrap();
    let file = GgufFile::parse("spm-tiny.gguf", &bytes).unwrap();
    assert_eq!(
        file.get("tokenizer.ggml.model").and_then(Value::as_str),
        Some("llama")
    );
    let tokenizer = TextTokenizer::from_gguf("spm-tiny.gguf", &file).unwrap();
    let text = std::fs::read_to_string(fixtures().join("spm-tiny-llama-cpp.json")).unwrap();
    let expected: Fixture = serde_json::from_str(&text).unwrap();
    let cases = expected.tokens.iter();
    assert_llama_cpps_ids(
        &tokenizer,
        cases.map(|c| (c.text.as_str(), c.bos, &c.ids[..])),
    );
    let plain = "Hello  world, café 你好\n\tend";
    let ids = tokenizer.encode(plain, false).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), plain);

    // A kind we do not read, and scores that do not match the tokens: one line each.
    let mut other = file.clone();
    other
        .metadata
        .insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    let err = TextTokenizer::from_gguf("spm-tiny.gguf", &other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("spm-tiny.gguf") && err.contains("\"bert\" is not supported"),
        "{err}"
    );
    let mut short = file.clone();
    short.metadata.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(ets_engine::model::gguf::Array::F32(vec![0.0; 3])),
    );
    let err = TextTokenizer::from_gguf("spm-tiny.gguf", &short)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.ggml.scores"), "{err}");
}

/// Below this gap between the two largest logits, llama.cpp (which multiplies quantized weights
/// by 8-bit-quantized activations) and our exact f32 math of the same weights may rightly choose
/// differently.
const NEAR_TIE: f32 = 0.5;

/// The chat template renders llama.cpp's prompt, the tokenizer gives its ids, and along
/// llama.cpp's 32 greedy tokens (teacher-forced, so a near-tie does not end the comparison) our
/// most likely next token is llama.cpp's at every step that is not a near-tie.
#[test]
fn chat_prompts_and_greedy_tokens_match_llama_cpp() {
    let model = Model::from_dir(&real_model(), &cpu_device()).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let t = &model.transformer;
    let vocab = t.config().vocab_size;
    let (mut compared, mut skipped) = (0, 0);
    for run in llama_cpp().chat {
        let prompt = tokenizer
            .apply_chat_template(&[ChatMessage::user(run.question.as_str())], true)
            .unwrap();
        assert_eq!(prompt, run.prompt, "the rendered chat template");
        let ids = tokenizer.encode_chat(&run.question, None).unwrap();
        assert_eq!(ids, run.ids, "{}: prompt ids", run.question);
        let forced: Vec<u32> = ids.iter().chain(&run.greedy).copied().collect();
        let mut cache = t.new_cache(1);
        let logits = read_f32(t.forward(&[&forced], &mut cache, LogitsFor::All).unwrap()).unwrap();
        for (step, (&token, &margin)) in run.greedy.iter().zip(&run.margins).enumerate() {
            if margin < NEAR_TIE {
                skipped += 1;
                continue;
            }
            let row = &logits[(ids.len() - 1 + step) * vocab..][..vocab];
            let ours = (0..vocab)
                .max_by(|a, b| row[*a].total_cmp(&row[*b]))
                .unwrap();
            assert_eq!(
                ours as u32, token,
                "{} step {step}: our most likely token differs from llama.cpp's (its margin {margin})",
                run.question
            );
            compared += 1;
        }
    }
    eprintln!("{compared} greedy steps agree with llama.cpp; {skipped} near-ties skipped");
    assert!(compared >= 32, "only {compared} steps compared");
}

/// The real model's logits against Hugging Face transformers loading the same GGUF file (every
/// weight dequantized to f32: the exact math of the file's weights), on the three chat prompts
/// with 8 tokens of their answers: the CPU backend's block kernels (f32 activations, f32 sums)
/// within 1e-3 of it over the whole vocabulary, wgpu's block kernels within 1e-2. On both the
/// weights stay in their blocks: at most 1.15× the file's tensor bytes.
#[test]
fn the_real_models_logits_match_transformers_on_the_same_file() {
    let meta = json("smollm2-transformers.json");
    let bytes = std::fs::read(fixtures().join("smollm2-transformers.logits")).unwrap();
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    let file = GgufFile::parse("real model", &std::fs::read(real_model()).unwrap()).unwrap();
    let file_bytes: usize = file.tensors.iter().map(|t| t.range.len()).sum();
    let mut backends = vec![(common::cpu().device, "cpu", 1e-3f32)];
    backends.extend(common::wgpu().map(|b| (b.device, "wgpu", 1e-2f32)));
    for (device, name, tolerance) in backends {
        let model = Model::from_dir(&real_model(), &device).unwrap();
        let t = &model.transformer;
        assert_eq!(t.config().vocab_size, vocab);
        let ratio = t.weight_bytes() as f64 / file_bytes as f64;
        eprintln!(
            "{name}: weights take {} bytes, {ratio:.4}× the file's {file_bytes} tensor bytes",
            t.weight_bytes()
        );
        assert!(
            ratio <= 1.15,
            "{name}: weights take {ratio:.3}× the file's tensor bytes"
        );
        let (mut row, mut worst) = (0, 0.0f32);
        for run in meta["runs"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(run["ids"].clone()).unwrap();
            let mut cache = t.new_cache(1);
            let logits = read_f32(t.forward(&[&ids], &mut cache, LogitsFor::All).unwrap()).unwrap();
            for position in run["positions"].as_array().unwrap() {
                let p = position.as_u64().unwrap() as usize;
                let ours = &logits[p * vocab..][..vocab];
                let want = &expected[row * vocab..][..vocab];
                worst = worst.max(common::max_abs_diff(ours, want));
                row += 1;
            }
        }
        assert_eq!(row * vocab, expected.len(), "every fixture row compared");
        eprintln!("{name}: max |Δlogit| against transformers over {row} positions: {worst:.2e}");
        assert!(
            worst <= tolerance,
            "{name}: logits differ from transformers' by {worst} (allowed {tolerance})"
        );
    }
}

/// A GGUF file read a tensor at a time (from disk, as the CLI, the desktop app and the browser's
/// worker load one) gives the model the whole file in memory gives: the same logits, bit for
/// bit, on every backend; and the reads cover each tensor once, the header aside.
#[test]
fn a_gguf_read_a_tensor_at_a_time_loads_the_model_the_whole_file_does() {
    use ets_engine::model::files::ModelFiles;
    use ets_engine::model::random_access::{DiskFile, RandomAccessFile};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The real file on disk, counting the bytes read from it.
    struct Counted {
        file: DiskFile,
        read: Arc<AtomicU64>,
    }
    impl RandomAccessFile for Counted {
        fn len(&self) -> u64 {
            self.file.len()
        }
        fn read_range(&self, range: std::ops::Range<u64>) -> Result<Vec<u8>, String> {
            self.read
                .fetch_add(range.end - range.start, Ordering::Relaxed);
            self.file.read_range(range)
        }
    }

    let path = real_model();
    let name = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let whole = std::fs::read(&path).unwrap();
    let header = GgufFile::parse(name, &whole).unwrap();
    let tensor_bytes: u64 = header.tensors.iter().map(|t| t.range.len() as u64).sum();
    let ids = [1u32, 504, 3458, 282, 4649, 314, 253];
    let mut backends = vec![common::cpu().device];
    backends.extend(common::wgpu().map(|b| b.device));
    for device in backends {
        let in_memory = Model::from_files(
            ModelFiles::from_memory([(name.to_string(), whole.clone())]),
            &device,
        )
        .unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let mut files = ModelFiles::default();
        files.insert_ranges(
            name,
            Arc::new(Counted {
                file: DiskFile::open(&path).unwrap(),
                read: Arc::clone(&read),
            }),
        );
        let by_tensor = Model::from_files(files, &device).unwrap();
        // The header (read once, a few MB) and every tensor the model uses, once (the tied
        // embedding serves as the output head without a second read).
        let read = read.load(Ordering::Relaxed);
        let header_read = read - tensor_bytes;
        eprintln!("read {read} bytes: {tensor_bytes} of tensors, {header_read} for the header");
        assert!(read >= tensor_bytes && header_read <= 16 << 20);
        let logits = |model: &Model| {
            let t = &model.transformer;
            read_f32(
                t.forward(&[&ids], &mut t.new_cache(1), LogitsFor::All)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(logits(&in_memory), logits(&by_tensor));
    }
}

/// `ets random-gguf`'s files: the shape, block types and stand-in tokenizer asked for, the same
/// bytes for the same seed.
#[test]
fn a_random_gguf_loads_with_its_shape_blocks_and_tokenizer() {
    use ets_engine::model::config::ModelConfig;
    use ets_engine::model::files::ModelFiles;
    use ets_engine::model::random::random_gguf;
    use ets_engine::quant::TensorType;
    let json = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "vocab_size": 300, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128, "tie_word_embeddings": true}"#;
    let config = ModelConfig::from_json(json).unwrap();
    let bytes = random_gguf(&config, TensorType::Q4_K, TensorType::Q4_0, 1).unwrap();
    assert_eq!(
        bytes,
        random_gguf(&config, TensorType::Q4_K, TensorType::Q4_0, 1).unwrap()
    );
    let file = GgufFile::parse("random.gguf", &bytes).unwrap();
    let kind = |name: &str| file.tensor(name).unwrap().tensor_type;
    assert_eq!(kind("token_embd.weight"), TensorType::Q4_0);
    // Rows of 256 (down) take Q4_K; rows of 64 are not whole Q4_K blocks: Q8_0.
    assert_eq!(kind("blk.1.ffn_down.weight"), TensorType::Q4_K);
    assert_eq!(kind("blk.0.attn_q.weight"), TensorType::Q8_0);
    assert_eq!(kind("blk.0.attn_q.bias"), TensorType::F32);
    let model = Model::from_files(
        ModelFiles::from_memory([("random.gguf".to_string(), bytes)]),
        &cpu_device(),
    )
    .unwrap();
    let loaded = model.transformer.config();
    assert_eq!(
        (loaded.vocab_size, loaded.num_layers, loaded.qkv_bias),
        (300, 2, true)
    );
    let tokenizer = model.tokenizer().unwrap();
    let ids = tokenizer.encode("héllo", false).unwrap();
    assert_eq!(ids.len(), 6, "one token a byte: {ids:?}");
    assert_eq!(tokenizer.decode(&ids).unwrap(), "héllo");
    assert_eq!(tokenizer.decode(&[256, 299]).unwrap(), "t256");
    assert_eq!(model.stop_ids(), vec![299]);
}
