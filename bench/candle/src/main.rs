//! Decode throughput of candle's Llama (CPU, f32) on a model folder, measured as `ets bench`
//! measures: a `--prompt-len` prefill of `batch` prompts, then `--decode-steps` steps of one
//! token per sequence (greedy, the token read back each step). Prints one JSON object per
//! batch size.
//!
//!     candle-decode --model DIR --batch 1,8,24,64 [--prompt-len 64] [--decode-steps 16]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};

struct Args {
    model: PathBuf,
    batch: Vec<usize>,
    prompt_len: usize,
    decode_steps: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        model: PathBuf::new(),
        batch: vec![1, 8, 24, 64],
        prompt_len: 64,
        decode_steps: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--batch" => {
                args.batch = value
                    .split(',')
                    .map(|b| b.parse().context("--batch takes numbers"))
                    .collect::<Result<_>>()?
            }
            "--prompt-len" => args.prompt_len = value.parse()?,
            "--decode-steps" => args.decode_steps = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.model.as_os_str().is_empty() {
        bail!("--model DIR is required");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::Cpu;
    let text = std::fs::read(args.model.join("config.json")).context("reading config.json")?;
    let config: LlamaConfig = serde_json::from_slice(&text)?;
    let vocab = config.vocab_size;
    let config = config.into_config(false);
    let weights = args.model.join("model.safetensors");
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
    let model = Llama::load(vb, &config)?;
    for &batch in &args.batch {
        let ids: Vec<u32> = (0..batch * args.prompt_len)
            .map(|i| ((i / args.prompt_len * 31 + i % args.prompt_len * 7) % vocab) as u32)
            .collect();
        let prompt = Tensor::from_vec(ids, (batch, args.prompt_len), &device)?;
        let (mut prefill, mut decode) = (0.0, 0.0);
        // The first pass warms caches and allocations; the second is reported.
        for _ in 0..2 {
            let mut cache = Cache::new(true, DType::F32, &config, &device)?;
            let start = Instant::now();
            let logits = model.forward(&prompt, 0, &mut cache)?;
            let mut next = logits.argmax_keepdim(1)?;
            next.to_vec2::<u32>()?;
            prefill = (batch * args.prompt_len) as f64 / start.elapsed().as_secs_f64();
            let start = Instant::now();
            for step in 0..args.decode_steps {
                let logits = model.forward(&next, args.prompt_len + step, &mut cache)?;
                next = logits.argmax_keepdim(1)?;
                next.i((.., 0))?.to_vec1::<u32>()?;
            }
            decode = (batch * args.decode_steps) as f64 / start.elapsed().as_secs_f64();
        }
        println!(
            "{}",
            serde_json::json!({"engine": "candle", "device": "cpu", "batch": batch,
                "threads": candle_core::utils::get_num_threads(),
                "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode})
        );
    }
    Ok(())
}
