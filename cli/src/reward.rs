//! `ets reward-data`: responses sampled from policies on the task's problems, labelled by the
//! verifier, as JSONL (what `ets train --objective reward` learns from); `ets reward-auc`: how
//! well a reward model tells right responses from wrong ones in such a file (ROC AUC).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ets_engine::SamplingParams;
use ets_engine::eval::{auc, ordered_within_groups};
use ets_engine::model::config::Head;
use ets_engine::reward::{self, Response, RewardContext, RewardKind};
use ets_engine::task::arith::generate as generate_problems;
use ets_engine::train::reward_data::{Sampling, read_jsonl, sample_labelled};

use crate::{ModelArgs, SplitArg, TaskKnobs, load};

#[derive(Args)]
pub struct RewardDataArgs {
    /// A policy model directory; give it several times to mix policies (each answers every
    /// problem).
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// cpu or wgpu; default: wgpu when an adapter exists, else cpu.
    #[arg(long)]
    backend: Option<ets_engine::BackendKind>,
    /// Problems of this split (train for training data, test for held-out data).
    #[arg(long, default_value = "train")]
    split: SplitArg,
    /// Number of problems.
    #[arg(long, default_value_t = 1000)]
    problems: usize,
    /// Seed of the problems and of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Responses per problem and policy.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Most new tokens per response.
    #[arg(long, default_value_t = 160)]
    max_tokens: usize,
    #[command(flatten)]
    knobs: TaskKnobs,
    /// The JSONL file to write (one labelled response per line).
    #[arg(long)]
    out: PathBuf,
}

pub fn data(args: &RewardDataArgs) -> Result<()> {
    if args.problems == 0 || args.samples == 0 {
        bail!("--problems and --samples must be positive");
    }
    let problems = generate_problems(
        &args.knobs.config()?,
        args.split.0,
        args.seed,
        args.problems,
    );
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: None,
        top_p: None,
    };
    let mut all = Vec::new();
    for dir in &args.policies {
        let model = load(&ModelArgs::at(dir, args.backend))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let start = Instant::now();
        let mut bar = |done: usize, total: usize| {
            if !done.is_multiple_of((total / 100).max(1)) && done != total {
                return;
            }
            eprint!(
                "\r{name}: {done}/{total} problems · {:.0} s   ",
                start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        };
        let labelled = pollster::block_on(sample_labelled(
            &model,
            &name,
            &problems,
            Sampling {
                samples: args.samples,
                params: sampling,
                max_tokens: args.max_tokens,
                seed: args.seed,
            },
            &mut bar,
        ))?;
        let right = labelled.iter().filter(|l| l.correct).count();
        eprintln!(
            "\r{name}: {} responses, {right} right ({:.1}%), {:.0} s",
            labelled.len(),
            100.0 * right as f64 / labelled.len() as f64,
            start.elapsed().as_secs_f64()
        );
        all.extend(labelled);
    }
    let mut out = String::new();
    for l in &all {
        out.push_str(&serde_json::to_string(l)?);
        out.push('\n');
    }
    std::fs::write(&args.out, out).with_context(|| format!("writing {}", args.out.display()))?;
    let right = all.iter().filter(|l| l.correct).count();
    eprintln!(
        "wrote {} ({} responses: {right} right, {} wrong)",
        args.out.display(),
        all.len(),
        all.len() - right
    );
    Ok(())
}

#[derive(Args)]
pub struct RewardAucArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A JSONL file of labelled responses (`ets reward-data`).
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object: auc, ci95, n, right, accuracy at score 0 (a score head's; null
    /// for a language model), within_question, pairs.
    #[arg(long)]
    json: bool,
}

pub fn auc_run(args: &RewardAucArgs) -> Result<()> {
    let model = load(&args.model)?;
    let data = read_jsonl(&args.data)?;
    let name = args.model.model.display().to_string();
    // A score head scores; a language model judges by its likelihood of the response.
    let kind = match model.transformer.config().head {
        Head::Score => RewardKind::Model { name },
        Head::LanguageModel => RewardKind::Likelihood { name },
    };
    // The responses of one question share its pass through the reward model.
    let mut by_question: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in data.iter().enumerate() {
        by_question.entry(&d.question).or_default().push(i);
    }
    let mut scores = vec![0.0; data.len()];
    let start = Instant::now();
    for (done, (question, indices)) in by_question.iter().enumerate() {
        let context = RewardContext {
            question: Some(question),
            reward_model: Some(&model),
            ..RewardContext::default()
        };
        let mut reward = reward::build(&kind, context)?;
        let responses: Vec<Response<'_>> = indices
            .iter()
            .map(|&i| Response::of_text(&data[i].response))
            .collect();
        for (&i, s) in indices
            .iter()
            .zip(pollster::block_on(reward.score(&responses))?)
        {
            scores[i] = s;
        }
        eprint!(
            "\r{}/{} questions · {:.0} s   ",
            done + 1,
            by_question.len(),
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let labels: Vec<bool> = data.iter().map(|d| d.correct).collect();
    let Some((area, (lo, hi))) = auc(&scores, &labels) else {
        bail!("the data needs right and wrong responses to measure an AUC");
    };
    let right = labels.iter().filter(|&&l| l).count();
    // What choosing among one question's responses needs.
    let groups: Vec<&[usize]> = by_question.values().map(Vec::as_slice).collect();
    let (within, pairs) = ordered_within_groups(&scores, &labels, &groups);
    // A score head's sign is its verdict; a likelihood (≤ 0) has none.
    let agree = matches!(kind, RewardKind::Model { .. }).then(|| {
        scores
            .iter()
            .zip(&labels)
            .filter(|&(&s, &l)| (s > 0.0) == l)
            .count() as f64
            / data.len() as f64
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({"auc": area, "ci95": [lo, hi], "n": data.len(), "right": right,
                "accuracy_at_0": agree, "within_question": within, "pairs": pairs})
        );
    } else {
        let sign = agree
            .map(|a| format!("; score > 0 agrees with the label on {:.1}%", 100.0 * a))
            .unwrap_or_default();
        println!(
            "AUC {area:.3} [{lo:.3}, {hi:.3}] on {} responses ({right} right){sign}; \
             within a question a right response outscores a wrong one in {:.1}% of {pairs} pairs",
            data.len(),
            100.0 * within
        );
    }
    Ok(())
}
