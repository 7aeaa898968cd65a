//! Speed of a loaded model, as `ets bench` and the browser's engine worker measure it: prefill
//! and decode tokens/s at several batch sizes, decoding as generation does (the next token
//! sampled on the device, only token ids and their statistics read back), the KV cache's bytes;
//! and the wall time of the real ETS chain's first guidance step (M candidate blocks, then K
//! rollouts of each, their rewards and the draw: [`Model::solve_prompt`]) against one sample of
//! the same length. Prompts are synthetic token ids, so any model can be measured.

use std::sync::atomic::{AtomicBool, Ordering};

use web_time::Instant;

use crate::bundle::Model;
use crate::decode::diffusion::DiffusionSchedule;
use crate::decode::lm::LanguageModel;
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::transformer::{LogitsFor, Transformer};
use crate::reward::RewardKind;
use crate::rng::CounterRng;
use crate::sampling::{Picked, RowPick, SamplingParams};
use crate::solve::{KvPeak, SolveOptions};
use crate::strategy::{EtsParams, SolveSpec, Strategy, ValidSpec};
use crate::task::answer::Extraction;
use crate::trace::TraceEvent;

pub use ets_spec::bench::{BenchFigures, BenchSettings, DecodeFigures, EtsStepFigures};

/// Every measurement `settings` asks for on `model` (checked first).
pub async fn run(model: &Model, settings: &BenchSettings) -> Result<BenchFigures> {
    settings.validate()?;
    let mut decode_figures = Vec::new();
    for &batch in &settings.batch {
        decode_figures.push(decode(&model.transformer, settings, batch).await?);
    }
    let ets_step = match settings.ets_m {
        0 => None,
        _ => Some(ets_step(model, settings).await?),
    };
    Ok(BenchFigures {
        decode: decode_figures,
        ets_step,
    })
}

/// The median of a few timings (seconds).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Prompt `b` of a batch: `len` token ids below `vocab` (the same ids `bench/` gives peers).
pub fn prompt(b: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((b * 31 + i * 7) % vocab) as u32)
        .collect()
}

/// Draws one token per sequence of a batch of `batch` rows at temperature 1, as generation does.
async fn draw<L: Logits>(logits: &L, batch: usize, step: u64) -> Result<Vec<Picked>> {
    let rng = CounterRng { seed: 0 };
    let picks: Vec<RowPick> = (0..batch as u64)
        .map(|b| RowPick::Draw(rng.uniform(b, step)))
        .collect();
    logits.take(&picks, &SamplingParams::default()).await
}

/// Prefill of `batch` prompts (its first tokens drawn and read back), then `decode_steps`
/// steps of one sampled token per sequence; each timed `repeats` times after a warm-up.
pub async fn decode(
    t: &Transformer,
    settings: &BenchSettings,
    batch: usize,
) -> Result<DecodeFigures> {
    let vocab = t.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| prompt(b, settings.prompt_len, vocab))
        .collect();
    let chunks: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (mut prefills, mut decodes) = (Vec::new(), Vec::new());
    let mut kv_bytes = 0;
    for run in 0..=settings.repeats {
        let start = Instant::now();
        let mut cache = t.new_cache(batch);
        let mut logits = LanguageModel::forward(t, &chunks, &mut cache, LogitsFor::Last).await?;
        let mut next = draw(&logits, batch, 0).await?;
        let prefill = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for step in 1..=settings.decode_steps as u64 {
            let tokens: Vec<[u32; 1]> = next.iter().map(|p| [p.token]).collect();
            let chunks: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
            logits = LanguageModel::forward(t, &chunks, &mut cache, LogitsFor::Last).await?;
            next = draw(&logits, batch, step).await?;
        }
        let decode = start.elapsed().as_secs_f64();
        kv_bytes = cache.bytes();
        // The first run warms up (shader compilation, allocations).
        if run > 0 {
            prefills.push(prefill);
            decodes.push(decode);
        }
    }
    Ok(DecodeFigures {
        batch,
        prefill_tokens_per_s: (batch * settings.prompt_len) as f64 / median(prefills),
        decode_tokens_per_s: (batch * settings.decode_steps) as f64 / median(decodes),
        kv_bytes,
    })
}

/// The real ETS chain's first guidance step ([`Model::solve_prompt`] with M candidate blocks
/// and K rollouts completing max tokens = block + rollout; stopped once the step's trace event
/// arrives) against one sample of max tokens, both from the same prompt (its prefill included)
/// and decoded past end-of-sequence tokens, so every run has its full length.
pub async fn ets_step(model: &Model, settings: &BenchSettings) -> Result<EtsStepFigures> {
    let question = prompt(
        0,
        settings.prompt_len,
        model.transformer.config().vocab_size,
    );
    let spec = |strategy: Strategy| -> Result<ValidSpec> {
        Ok(SolveSpec {
            strategy,
            sampling: SamplingParams::default(),
            max_tokens: settings.ets_block + settings.ets_rollout,
            diffusion: DiffusionSchedule::default(),
            reward: RewardKind::MeanLogProb,
            extraction: Extraction::Strict,
            seed: 0,
        }
        .validate()?)
    };
    let sample = spec(Strategy::Sample)?;
    let ets = spec(Strategy::Ets(EtsParams {
        m: settings.ets_m,
        k: settings.ets_k,
        block: settings.ets_block,
        ..EtsParams::default()
    }))?;
    let (mut samples, mut steps) = (Vec::new(), Vec::new());
    let (mut kv_bytes, mut kv_unshared_bytes) = (0, 0);
    for run in 0..=settings.repeats {
        let options = SolveOptions {
            ignore_eos: true,
            ..SolveOptions::default()
        };
        let start = Instant::now();
        model
            .solve_prompt(&question, &sample, options, &mut |_| {})
            .await?;
        let sample_s = start.elapsed().as_secs_f64();

        let stop = AtomicBool::new(false);
        let kv_peak = KvPeak::default();
        let options = SolveOptions {
            stop: Some(&stop),
            ignore_eos: true,
            kv_peak: Some(&kv_peak),
            ..SolveOptions::default()
        };
        let mut step_s = None;
        let start = Instant::now();
        let mut first_step = |event: &TraceEvent| {
            if matches!(event, TraceEvent::Step(_)) && step_s.is_none() {
                step_s = Some(start.elapsed().as_secs_f64());
                stop.store(true, Ordering::Relaxed);
            }
        };
        match model
            .solve_prompt(&question, &ets, options, &mut first_step)
            .await
        {
            Ok(_) | Err(Error::Stopped) => {}
            Err(e) => return Err(e),
        }
        let step_s = step_s.ok_or(Error::Internal(
            "the ETS run ended before its first guidance step",
        ))?;
        (kv_bytes, kv_unshared_bytes) = (kv_peak.held(), kv_peak.unshared());
        if run > 0 {
            samples.push(sample_s);
            steps.push(step_s);
        }
    }
    Ok(EtsStepFigures {
        step_s: median(steps),
        sample_s: median(samples),
        kv_bytes,
        kv_unshared_bytes,
    })
}
