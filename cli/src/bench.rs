//! `ets bench`: the engine's speed on each backend. Prefill and decode tokens/s at several
//! batch sizes, decoding as generation does (the next token sampled on the device, only token
//! ids and their statistics read back); the KV cache's memory per sequence; and the wall time
//! of the real ETS chain's first guidance step (M candidate blocks, then K rollouts of each,
//! their rewards and the draw: [`Model::solve_prompt`]) against one sample of the same length.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ets_engine::backend::select_device;
use ets_engine::decode::diffusion::DiffusionSchedule;
use ets_engine::decode::lm::LanguageModel;
use ets_engine::decode::logits::Logits;
use ets_engine::model::Precision;
use ets_engine::model::config::{ModelConfig, SMOLLM2_135M_CONFIG};
use ets_engine::model::files::ModelFiles;
use ets_engine::model::random::{random_model_files, word_tokenizer_json};
use ets_engine::model::transformer::Transformer;
use ets_engine::reward::RewardKind;
use ets_engine::rng::CounterRng;
use ets_engine::sampling::RowPick;
use ets_engine::solve::{KvPeak, SolveOptions};
use ets_engine::strategy::{EtsParams, SolveSpec, Strategy, ValidSpec};
use ets_engine::task::answer::Extraction;
use ets_engine::trace::TraceEvent;
use ets_engine::{BackendKind, Error, LoadOptions, LogitsFor, Model, SamplingParams};

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

/// The median of a few timings (seconds).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs `f` once to warm up, then `repeats` times; `f` returns the seconds it measured (its
/// set-up left out). The median.
fn timed(repeats: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    f()?;
    let times = (0..repeats).map(|_| f()).collect::<Result<Vec<_>>>()?;
    Ok(median(times))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repeats == 0 || args.batch.contains(&0) || args.prompt_len == 0 {
        bail!("--repeats, --batch and --prompt-len must be at least 1");
    }
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
            measure(&model, args, &setup)?;
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

/// The decode table and the ETS step of one loaded model.
fn measure(model: &Model, args: &BenchArgs, setup: &Setup) -> Result<()> {
    let t = &model.transformer;
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    if !args.json {
        println!("\n{}, {}\n", setup.device, setup.precision);
        println!("| batch | prefill tok/s | decode tok/s | KV cache MiB | KV MiB per sequence |");
        println!("|---|---|---|---|---|");
    }
    for &batch in &args.batch {
        let d = decode(t, args, batch)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"engine": "ets", "backend": setup.backend,
                    "device": setup.device, "precision": setup.precision, "batch": batch,
                    "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
                    "prefill_tokens_per_s": d.prefill, "decode_tokens_per_s": d.decode,
                    "kv_cache_mib": mib(d.kv_bytes),
                    "kv_mib_per_sequence": mib(d.kv_bytes) / batch as f64})
            );
        } else {
            println!(
                "| {batch} | {:.1} | {:.1} | {:.1} | {:.2} |",
                d.prefill,
                d.decode,
                mib(d.kv_bytes),
                mib(d.kv_bytes) / batch as f64
            );
        }
    }
    if args.ets_m == 0 {
        return Ok(());
    }
    let e = ets_step(model, args)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"engine": "ets", "backend": setup.backend, "device": setup.device,
                "precision": setup.precision, "ets_m": args.ets_m, "ets_k": args.ets_k,
                "block": args.ets_block, "rollout": args.ets_rollout, "ets_step_s": e.step,
                "rollout_s": e.rollout, "ratio": e.step / e.rollout,
                "rollouts_kv_mib": mib(e.kv_bytes), "rollouts_kv_mib_unshared": mib(e.kv_unshared)})
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
            e.step,
            args.ets_block + args.ets_rollout,
            e.rollout,
            e.step / e.rollout,
            mib(e.kv_bytes),
            mib(e.kv_unshared)
        );
    }
    Ok(())
}

/// Prompt `b` of a batch: `len` token ids.
fn prompt(b: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((b * 31 + i * 7) % vocab) as u32)
        .collect()
}

struct Decode {
    /// tokens/s
    prefill: f64,
    decode: f64,
    kv_bytes: usize,
}

/// Prefill of `batch` prompts (its first tokens drawn and read back), then `decode_steps`
/// steps of one sampled token per sequence.
fn decode(t: &Transformer, args: &BenchArgs, batch: usize) -> Result<Decode> {
    let vocab = t.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| prompt(b, args.prompt_len, vocab))
        .collect();
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let sampling = SamplingParams::default();
    let rng = CounterRng { seed: 0 };
    let draw = |logits: &<Transformer as LanguageModel>::Logits, step: u64| {
        let picks: Vec<RowPick> = (0..batch as u64)
            .map(|b| RowPick::Draw(rng.uniform(b, step)))
            .collect();
        block_on(logits.take(&picks, &sampling))
    };
    let mut kv_bytes = 0;
    let prefill = timed(args.repeats, || {
        let start = Instant::now();
        let mut cache = t.new_cache(batch);
        let logits = block_on(LanguageModel::forward(
            t,
            &chunks,
            &mut cache,
            LogitsFor::Last,
        ))?;
        draw(&logits, 0)?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let decode = timed(args.repeats, || {
        let mut cache = t.new_cache(batch);
        let mut logits = block_on(LanguageModel::forward(
            t,
            &chunks,
            &mut cache,
            LogitsFor::Last,
        ))?;
        let mut next = draw(&logits, 0)?;
        let start = Instant::now();
        for step in 1..=args.decode_steps as u64 {
            let tokens: Vec<[u32; 1]> = next.iter().map(|p| [p.token]).collect();
            let chunks: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
            logits = block_on(LanguageModel::forward(
                t,
                &chunks,
                &mut cache,
                LogitsFor::Last,
            ))?;
            next = draw(&logits, step)?;
        }
        let seconds = start.elapsed().as_secs_f64();
        kv_bytes = cache.bytes();
        Ok(seconds)
    })?;
    Ok(Decode {
        prefill: (batch * args.prompt_len) as f64 / prefill,
        decode: (batch * args.decode_steps) as f64 / decode,
        kv_bytes,
    })
}

struct EtsStep {
    /// seconds
    step: f64,
    rollout: f64,
    /// The largest KV cache of the step (its rollouts'), held and as it would be without
    /// sharing.
    kv_bytes: usize,
    kv_unshared: usize,
}

/// The real ETS chain's first guidance step ([`Model::solve_prompt`] with M candidate blocks
/// and K rollouts completing max tokens = block + rollout; stopped once the step's trace event
/// arrives) against one sample of max tokens, both from the same prompt (its prefill included)
/// and decoded past end-of-sequence tokens, so every run has its full length.
fn ets_step(model: &Model, args: &BenchArgs) -> Result<EtsStep> {
    let question = prompt(0, args.prompt_len, model.transformer.config().vocab_size);
    let spec = |strategy: Strategy| -> Result<ValidSpec> {
        Ok(SolveSpec {
            strategy,
            sampling: SamplingParams::default(),
            max_tokens: args.ets_block + args.ets_rollout,
            diffusion: DiffusionSchedule::default(),
            reward: RewardKind::MeanLogProb,
            extraction: Extraction::Strict,
            seed: 0,
        }
        .validate()?)
    };
    let sample = spec(Strategy::Sample)?;
    let ets = spec(Strategy::Ets(EtsParams {
        m: args.ets_m,
        k: args.ets_k,
        block: args.ets_block,
        ..EtsParams::default()
    }))?;
    let rollout = timed(args.repeats, || {
        let options = SolveOptions {
            ignore_eos: true,
            ..SolveOptions::default()
        };
        let start = Instant::now();
        block_on(model.solve_prompt(&question, &sample, options, &mut |_| {}))?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let (mut kv_bytes, mut kv_unshared) = (0, 0);
    let step = timed(args.repeats, || {
        let stop = AtomicBool::new(false);
        let kv_peak = KvPeak::default();
        let options = SolveOptions {
            stop: Some(&stop),
            ignore_eos: true,
            kv_peak: Some(&kv_peak),
            ..SolveOptions::default()
        };
        let mut seconds = None;
        let start = Instant::now();
        let mut first_step = |event: &TraceEvent| {
            if matches!(event, TraceEvent::Step(_)) && seconds.is_none() {
                seconds = Some(start.elapsed().as_secs_f64());
                stop.store(true, Ordering::Relaxed);
            }
        };
        match block_on(model.solve_prompt(&question, &ets, options, &mut first_step)) {
            Ok(_) | Err(Error::Stopped) => {}
            Err(e) => return Err(e.into()),
        }
        (kv_bytes, kv_unshared) = (kv_peak.held(), kv_peak.unshared());
        seconds.context("the ETS run ended before its first guidance step")
    })?;
    Ok(EtsStep {
        step,
        rollout,
        kv_bytes,
        kv_unshared,
    })
}
