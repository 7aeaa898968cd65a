//! `ets eval`: accuracy of a model on arithmetic test problems or a GSM8K-style JSONL file,
//! with several samples per question: pass@1, majority vote and pass@k, each with a 95%
//! interval.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ets_engine::SamplingParams;
use ets_engine::eval::{Decoding, Scores, complete, score};
use ets_engine::model::config::Objective;
use ets_engine::task::arith::generate as generate_problems;
use ets_engine::task::gsm8k::{Gsm8kRecord, read_jsonl};

use crate::{DiffusionArgs, ModelArgs, SplitArg, TaskKnobs, load};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Generated problems of this split of the arithmetic task (ignored with --data).
    #[arg(long, default_value = "test")]
    split: SplitArg,
    /// Number of questions (the first N of --data).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Seed of the generated problems.
    #[arg(long, default_value_t = 0)]
    task_seed: u64,
    #[command(flatten)]
    knobs: TaskKnobs,
    /// Evaluate on a GSM8K-style JSONL file ({"question", "answer"} per line) instead.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Completions per question: pass@1 averages them, the majority vote and pass@k use all.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature (0 = greedy; for diffusion models, the Gumbel noise scale).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Most new tokens per answer (causal models).
    #[arg(long, default_value_t = 160)]
    max_new_tokens: usize,
    #[command(flatten)]
    diffusion: DiffusionArgs,
    /// Sequences run together.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The questions and their true answers.
fn questions(args: &EvalArgs) -> Result<(Vec<String>, Vec<String>)> {
    let records: Vec<Gsm8kRecord> = match &args.data {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            read_jsonl(&text)
                .with_context(|| format!("reading {}", path.display()))?
                .into_iter()
                .take(args.n)
                .collect()
        }
        None => generate_problems(&args.knobs.config()?, args.split.0, args.task_seed, args.n)
            .iter()
            .map(Gsm8kRecord::from)
            .collect(),
    };
    if records.is_empty() {
        bail!("no questions to evaluate");
    }
    let mut questions = Vec::with_capacity(records.len());
    let mut truths = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let truth = r
            .final_answer()
            .with_context(|| format!("question {} has no `#### n` answer", i + 1))?;
        truths.push(truth);
        questions.push(r.question);
    }
    Ok((questions, truths))
}

fn interval(s: &ets_engine::eval::Accuracy) -> String {
    format!(
        "{:5.1}%  [{:.1}, {:.1}]",
        100.0 * s.accuracy,
        100.0 * s.ci95.0,
        100.0 * s.ci95.1
    )
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let model = load(&args.model)?;
    let (questions, truths) = questions(args)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: None,
        top_p: None,
    };
    let decoding = match model.transformer.config().objective {
        Objective::Causal => Decoding::Autoregressive {
            sampling,
            max_new_tokens: args.max_new_tokens,
        },
        Objective::MaskedDiffusion { .. } => Decoding::Diffusion(
            args.diffusion
                .options(f64::from(args.temperature), args.seed)?,
        ),
    };
    let start = Instant::now();
    let completions = complete(
        &model,
        &questions,
        args.samples,
        &decoding,
        args.seed,
        args.batch,
        |done, total| {
            eprint!(
                "\r{done}/{total} completions · {:.0} s",
                start.elapsed().as_secs_f64()
            );
        },
    )?;
    eprintln!();
    let wall = start.elapsed().as_secs_f64();
    let scores: Scores = score(&completions, &truths);
    if args.json {
        let mut value = serde_json::to_value(&scores)?;
        value["temperature"] = serde_json::json!(args.temperature);
        value["wall_ms_per_question"] = serde_json::json!(1e3 * wall / questions.len() as f64);
        println!("{value}");
    } else {
        println!(
            "{} questions × {} samples at temperature {} in {:.1} s",
            scores.n, scores.samples, args.temperature, wall
        );
        println!("pass@1           {}", interval(&scores.pass1));
        if scores.samples > 1 {
            println!(
                "majority@{:<2}      {}",
                scores.samples,
                interval(&scores.majority)
            );
            println!(
                "pass@{:<2}          {}",
                scores.samples,
                interval(&scores.any)
            );
        }
    }
    Ok(())
}
