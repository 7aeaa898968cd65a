//! `ets bench`: the engine's speed on each backend, measured by [`ets_engine::bench`] (prefill
//! and decode tokens/s at several batch sizes, the KV cache's memory per sequence, the wall
//! time of the real ETS chain's first guidance step against one sample of the same length),
//! on a model read from disk or random weights of SmolLM2-135M's shape; tables or JSON lines.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use ets_engine::backend::select_device;
use ets_engine::bench::{self, BenchSettings};
use ets_engine::model::Precision;
use ets_engine::model::config::{ModelConfig, SMOLLM2_135M_CONFIG};
use ets_engine::model::files::ModelFiles;
use ets_engine::model::random::{random_model_files, word_tokenizer_json};
use ets_engine::{BackendKind, LoadOptions, Model};

use crate::QuantizeArg;
use pollster::block_on;

#[derive(Args)]
pub struct BenchArgs {
    /// A model directory or GGUF file; default: random weights with SmolLM2-135M's shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,wgpu")]
    backends: Vec<BackendKind>,
    /// Float types to measure, comma-separated (f16 where the device has f16 arithmetic).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Quantize float weights into GGUF blocks on load (q8_0 or q4_k).
    #[arg(long)]
    quantize: Option<QuantizeArg>,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,24,64")]
    batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Decode steps timed per sequence.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Timed repetitions of each measurement (after a warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Candidates M of the ETS step measured; 0 skips the measurement.
    #[arg(long, default_value_t = 8)]
    ets_m: usize,
    /// Rollouts K per candidate of the ETS step.
    #[arg(long, default_value_t = 3)]
    ets_k: usize,
    /// Tokens of a candidate block (B).
    #[arg(long, default_value_t = 16)]
    ets_block: usize,
    /// Tokens of each rollout after its candidate block.
    #[arg(long, default_value_t = 48)]
    ets_rollout: usize,
    /// Also write the model measured (config.json, model.safetensors) into this folder, so
    /// that peers (`bench/compare.py`) run the very same weights.
    #[arg(long)]
    save_model: Option<PathBuf>,
    /// Print one JSON object per measurement instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let settings = settings(args);
    settings.validate()?;
    // The model's files, read or built once: the folder given, or random weights of
    // SmolLM2-135M's shape.
    let mut files = match &args.model {
        Some(path) => ModelFiles::from_path(path)?,
        None => {
            let config = ModelConfig::from_json(SMOLLM2_135M_CONFIG)?;
            eprintln!(
                "building random weights of SmolLM2-135M's shape ({} parameters)…",
                config.parameter_count()
            );
            random_model_files(SMOLLM2_135M_CONFIG, &config, 0)
        }
    };
    if let Some(dir) = &args.save_model {
        files.write_to(dir)?;
        eprintln!("wrote the model to {}", dir.display());
    }
    if files.gguf_name()?.is_none() && files.get("tokenizer.json").is_none() {
        // The ETS step decodes its blocks to text, as every run does: random weights get a
        // tokenizer whose token i is the word `t{i}`.
        let vocab = ModelConfig::from_json(files.required_text("config.json")?)?.vocab_size;
        files.insert("tokenizer.json", word_tokenizer_json(vocab));
    }
    for &backend in &args.backends {
        let (device, _, description) = select_device(Some(backend))?;
        eprintln!("backend: {description}");
        for &precision in &args.precision {
            if let Err(e) = precision.check(&device) {
                eprintln!("skipping {} on {description}: {e}", precision.name());
                continue;
            }
            let quantize = args.quantize.map(QuantizeArg::tensor_type);
            if quantize.is_some() && backend != BackendKind::Cpu {
                eprintln!("skipping {description}: quantized weights run on the CPU backend");
                continue;
            }
            let options = LoadOptions {
                precision,
                quantize,
            };
            let model = Model::from_files_in(files.clone(), &device, options)?;
            let label = match quantize {
                Some(t) => format!("{}, weights {t}", precision.name()),
                None => precision.name().to_string(),
            };
            let setup = Setup {
                backend: backend.name(),
                device: &description,
                precision: &label,
            };
            measure(&model, args, &settings, &setup)?;
        }
    }
    Ok(())
}

/// What a measurement ran on.
struct Setup<'a> {
    backend: &'a str,
    device: &'a str,
    precision: &'a str,
}

/// The settings the arguments ask for.
fn settings(args: &BenchArgs) -> BenchSettings {
    BenchSettings {
        batch: args.batch.clone(),
        prompt_len: args.prompt_len,
        decode_steps: args.decode_steps,
        repeats: args.repeats,
        ets_m: args.ets_m,
        ets_k: args.ets_k,
        ets_block: args.ets_block,
        ets_rollout: args.ets_rollout,
    }
}

/// The decode table and the ETS step of one loaded model ([`bench::run`]).
fn measure(model: &Model, args: &BenchArgs, settings: &BenchSettings, setup: &Setup) -> Result<()> {
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    if !args.json {
        println!("\n{}, {}\n", setup.device, setup.precision);
        println!("| batch | prefill tok/s | decode tok/s | KV cache MiB | KV MiB per sequence |");
        println!("|---|---|---|---|---|");
    }
    // One batch size at a time, so its line shows as soon as it is measured.
    for &batch in &args.batch {
        let d = block_on(bench::decode(&model.transformer, settings, batch))?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"engine": "ets", "backend": setup.backend,
                    "device": setup.device, "precision": setup.precision, "batch": batch,
                    "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
                    "prefill_tokens_per_s": d.prefill_tokens_per_s,
                    "decode_tokens_per_s": d.decode_tokens_per_s,
                    "kv_cache_mib": mib(d.kv_bytes),
                    "kv_mib_per_sequence": mib(d.kv_bytes) / batch as f64})
            );
        } else {
            println!(
                "| {batch} | {:.1} | {:.1} | {:.1} | {:.2} |",
                d.prefill_tokens_per_s,
                d.decode_tokens_per_s,
                mib(d.kv_bytes),
                mib(d.kv_bytes) / batch as f64
            );
        }
    }
    if args.ets_m == 0 {
        return Ok(());
    }
    let e = block_on(bench::ets_step(model, settings))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"engine": "ets", "backend": setup.backend, "device": setup.device,
                "precision": setup.precision, "ets_m": args.ets_m, "ets_k": args.ets_k,
                "block": args.ets_block, "rollout": args.ets_rollout, "ets_step_s": e.step_s,
                "rollout_s": e.sample_s, "ratio": e.step_s / e.sample_s,
                "rollouts_kv_mib": mib(e.kv_bytes),
                "rollouts_kv_mib_unshared": mib(e.kv_unshared_bytes)})
        );
    } else {
        println!(
            "\nETS step, M = {} candidates of {} tokens, K = {} rollouts of {} more tokens each \
             ({} sequences): {:.3} s; one sample of {} tokens: {:.3} s; ratio {:.2}. The \
             step's largest KV cache: {:.1} MiB held ({:.1} MiB without prefix sharing).",
            args.ets_m,
            args.ets_block,
            args.ets_k,
            args.ets_rollout,
            args.ets_m * args.ets_k,
            e.step_s,
            args.ets_block + args.ets_rollout,
            e.sample_s,
            e.step_s / e.sample_s,
            mib(e.kv_bytes),
            mib(e.kv_unshared_bytes)
        );
    }
    Ok(())
}
