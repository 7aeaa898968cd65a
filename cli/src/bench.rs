//! `ets bench`: prefill and decode throughput of the engine on each backend.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use ets_engine::backend::{read_f32, select_device};
use ets_engine::model::config::{ModelConfig, SMOLLM2_135M_CONFIG};
use ets_engine::model::random::random_model_files;
use ets_engine::{BackendKind, LogitsFor, Model};

#[derive(Args)]
pub struct BenchArgs {
    /// A model directory; default: random weights with SmolLM2-135M's shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cpu,wgpu")]
    backends: Vec<BackendKind>,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    /// Prompt tokens per sequence for the prefill measurement.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Decode steps measured per sequence.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Print one JSON object per measurement instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !args.json {
        println!("| backend | batch | prompt | prefill tok/s | decode tok/s | KV cache MiB |");
        println!("|---|---|---|---|---|---|");
    }
    for &backend in &args.backends {
        let (device, _, description) = select_device(Some(backend))?;
        eprintln!("backend: {description}");
        let model = match &args.model {
            Some(dir) => Model::from_dir(dir, &device)?,
            None => {
                let config = ModelConfig::from_json(SMOLLM2_135M_CONFIG)?;
                eprintln!(
                    "building random weights ({} parameters)…",
                    config.parameter_count()
                );
                Model::from_files(random_model_files(SMOLLM2_135M_CONFIG, &config, 0), &device)?
            }
        };
        let t = &model.transformer;
        let vocab = t.config().vocab_size;
        // Warm-up: compiles and autotunes kernels so they are not timed.
        let mut cache = t.new_cache(1);
        read_f32(t.forward(&[&[1, 2, 3]], &mut cache, LogitsFor::Last)?)?;
        for &batch in &args.batch {
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|b| {
                    (0..args.prompt_len)
                        .map(|i| ((b * 31 + i * 7) % vocab) as u32)
                        .collect()
                })
                .collect();
            let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let mut cache = t.new_cache(batch);
            let start = Instant::now();
            read_f32(t.forward(&chunks, &mut cache, LogitsFor::Last)?)?;
            let prefill = (batch * args.prompt_len) as f64 / start.elapsed().as_secs_f64();
            let start = Instant::now();
            for step in 0..args.decode_steps {
                let tokens: Vec<[u32; 1]> = (0..batch)
                    .map(|b| [((b + step * 13) % vocab) as u32])
                    .collect();
                let chunks: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
                read_f32(t.forward(&chunks, &mut cache, LogitsFor::Last)?)?;
            }
            let decode = (batch * args.decode_steps) as f64 / start.elapsed().as_secs_f64();
            let kv_mib = cache.bytes() as f64 / (1 << 20) as f64;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"backend": backend.name(), "device": description, "batch": batch,
                        "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
                        "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "kv_cache_mib": kv_mib})
                );
            } else {
                println!(
                    "| {} | {batch} | {} | {prefill:.1} | {decode:.1} | {kv_mib:.1} |",
                    backend.name(),
                    args.prompt_len
                );
            }
        }
    }
    Ok(())
}
