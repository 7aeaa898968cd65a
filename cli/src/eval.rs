//! `ets eval`: accuracy of a model on arithmetic test problems or a GSM8K-style JSONL file.
//! With `--strategy`, one answer per question from that strategy (accuracy with a 95% interval,
//! forward tokens and wall time per question); with `--sweep`, every strategy over a range of
//! budgets, written as a markdown table and an SVG plot; without either, plain samples scored
//! as pass@1, majority vote and pass@k.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ets_engine::eval::{Accuracy, Decoding, EvalProgress, Scores, StrategyResult, complete, score};
use ets_engine::model::config::Objective;
use ets_engine::reward::RewardKind;
use ets_engine::solve::{AnyModel, SolveOptions, Solves};
use ets_engine::strategy::ValidSpec;
use ets_engine::task::arith::generate as generate_problems;
use ets_engine::task::gsm8k::{Gsm8kRecord, read_jsonl};
use ets_engine::{Model, SamplingParams};

use crate::plot::{Series, write_svg};
use crate::solve::StrategyArgs;
use crate::{ModelArgs, RemoteArgs, SplitArg, TaskKnobs, load_served_draft, load_target};

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
    /// Without --strategy: completions per question (pass@1 averages them, the majority vote
    /// and pass@k use all).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Without --strategy: sequences run together.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    strategy: StrategyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Run every strategy at every budget of --budgets; write PREFIX.md and PREFIX.svg.
    #[arg(long)]
    sweep: bool,
    /// Sweep budgets: M for ets, samples for best-of-n and majority, beams for beam.
    #[arg(long, default_value = "2,4,8", value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Sweep budgets (M) for ets, ets-is and particle-filter, whose cost grows faster
    /// (default: --budgets).
    #[arg(long, value_delimiter = ',')]
    ets_budgets: Vec<usize>,
    /// Sweep strategies (default: all that suit the model; ets-is when --draft is given).
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Where the sweep writes its table and plot: PREFIX.md and PREFIX.svg.
    #[arg(long, default_value = "sweep")]
    out: PathBuf,
    /// Join runs made before into the sweep's table and plot: FILE holds `ets eval --json`
    /// output (a sweep's list or one run) over the same questions, such as one strategy at
    /// another block or with another reward (repeatable).
    #[arg(long)]
    join: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The runs of `files` (each `ets eval --json` output: a sweep's list or one run), refused
/// unless each ran over `n` questions.
fn joined_runs(files: &[PathBuf], n: usize) -> Result<Vec<StrategyResult>> {
    let mut runs = Vec::new();
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let list = match value {
            serde_json::Value::Array(list) => list,
            one => vec![one],
        };
        for run in list {
            let run: StrategyResult = serde_json::from_value(run).with_context(|| {
                format!("{} does not hold `ets eval --json` results", path.display())
            })?;
            if run.n != n {
                bail!(
                    "{} holds a {} run over {} questions; this sweep runs {n}",
                    path.display(),
                    run.strategy,
                    run.n
                );
            }
            runs.push(run);
        }
    }
    Ok(runs)
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

fn interval(s: &Accuracy) -> String {
    format!(
        "{:5.1}%  [{:.1}, {:.1}]",
        100.0 * s.accuracy,
        100.0 * s.ci95.0,
        100.0 * s.ci95.1
    )
}

/// Runs `spec` on every question ([`ets_engine::eval::evaluate`]) with a progress bar on stderr.
fn evaluate<S: Solves>(
    model: &S,
    models: SolveOptions<'_>,
    questions: &[String],
    truths: &[String],
    spec: &ValidSpec,
) -> Result<StrategyResult> {
    let label = match spec.strategy.budget() {
        Some(budget) => format!("{} m={budget}", spec.strategy.name()),
        None => spec.strategy.name().to_string(),
    };
    let mut bar = |p: EvalProgress| {
        let width = 24;
        let filled = width * p.done / p.total;
        eprint!(
            "\r{label} [{}{}] {}/{} · {:.1}% · {:.0} s · ETA {:.0} s   ",
            "#".repeat(filled),
            ".".repeat(width - filled),
            p.done,
            p.total,
            100.0 * p.correct as f64 / p.done as f64,
            p.elapsed_s,
            p.elapsed_s / p.done as f64 * (p.total - p.done) as f64
        );
        let _ = std::io::stderr().flush();
    };
    let result = pollster::block_on(ets_engine::eval::evaluate(
        model, models, questions, truths, spec, &mut bar,
    ));
    eprintln!();
    Ok(result?)
}

/// `PREFIX.EXT` for the sweep's `--out PREFIX`: the extension is added, never swapped for a dot
/// already in the prefix (`--out runs/t0.7` writes `runs/t0.7.md`).
fn suffixed(prefix: &Path, extension: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

fn percent(a: f64, ci: (f64, f64)) -> String {
    format!(
        "{:.1}% [{:.1}, {:.1}]",
        100.0 * a,
        100.0 * ci.0,
        100.0 * ci.1
    )
}

/// A markdown table of results; the total is the plot's x axis (the model's, the draft's and
/// the reward model's forward tokens).
fn table(results: &[StrategyResult]) -> String {
    let mut out = String::from(
        "| strategy | budget | accuracy (95% CI) | forward tokens / question | draft tokens / question | reward tokens / question | total tokens / question | wall ms / question |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            r.strategy,
            r.budget,
            percent(r.accuracy, r.ci95),
            r.tokens_mean,
            r.draft_tokens_mean,
            r.reward_tokens_mean,
            r.tokens_mean + r.draft_tokens_mean + r.reward_tokens_mean,
            r.wall_ms_mean
        ));
    }
    out
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let model = load_target(&args.model, &args.remote)?;
    let (questions, truths) = questions(args)?;
    let reward_model = args.strategy.load_reward_model(&args.model)?;
    let remote = matches!(model, AnyModel::Remote(_));
    let served_draft = load_served_draft(&args.model, &args.remote)?;
    if args.sweep {
        let mut names: Vec<String> = if args.strategies.is_empty() {
            let mut all = vec!["greedy", "sample", "majority", "best-of-n"];
            if !remote {
                all.push("beam");
            }
            all.push("particle-filter");
            all.push("ets");
            if !remote && args.strategy.draft.is_some() || served_draft.is_some() {
                all.push("ets-is");
            }
            all.into_iter().map(String::from).collect()
        } else {
            args.strategies.clone()
        };
        names.dedup();
        let draft = match names.iter().any(|n| n == "ets-is") {
            true => args
                .strategy
                .load_draft(&args.model, "ets-is", served_draft.is_some())?,
            false => None,
        };
        // Every run's spec first: settings one strategy refuses fail before any run.
        let mut plan = Vec::new();
        for name in &names {
            let budgets: &[usize] = match name.as_str() {
                "greedy" | "sample" => &[1],
                "ets" | "ets-is" | "particle-filter" if !args.ets_budgets.is_empty() => {
                    &args.ets_budgets
                }
                _ => &args.budgets,
            };
            for &budget in budgets {
                let spec = args
                    .strategy
                    .spec(args.strategy.strategy(name, budget)?)
                    .with_context(|| format!("{name} with budget {budget}"))?;
                plan.push((name, budget, spec));
            }
        }
        let joined = joined_runs(&args.join, questions.len())?;
        let mut results = Vec::new();
        for (name, budget, spec) in plan {
            let models = SolveOptions {
                draft: draft.as_ref(),
                served_draft: served_draft.as_ref(),
                reward_model: reward_model.as_ref(),
                ..SolveOptions::default()
            };
            let result = evaluate(&model, models, &questions, &truths, &spec)?;
            eprintln!(
                "{name} m={budget}: {} · {:.0} tokens · {:.0} ms per question",
                percent(result.accuracy, result.ci95),
                result.tokens_mean + result.draft_tokens_mean + result.reward_tokens_mean,
                result.wall_ms_mean
            );
            results.push(result);
        }
        // A joined run whose reward differs from this sweep's is labelled with it.
        let sweep_reward: RewardKind = args.strategy.reward.parse()?;
        for mut r in joined {
            let label = format!(" ({})", r.spec.reward.name());
            if r.spec.reward != sweep_reward && !r.strategy.ends_with(&label) {
                r.strategy.push_str(&label);
            }
            if !names.contains(&r.strategy) {
                names.push(r.strategy.clone());
            }
            results.push(r);
        }
        let markdown = table(&results);
        let (md, svg) = (suffixed(&args.out, "md"), suffixed(&args.out, "svg"));
        std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
        let series: Vec<Series> = names
            .iter()
            .map(|name| Series {
                name: name.clone(),
                points: results
                    .iter()
                    .filter(|r| &r.strategy == name)
                    .map(|r| {
                        let tokens = r.tokens_mean + r.draft_tokens_mean + r.reward_tokens_mean;
                        (tokens, r.accuracy, r.ci95)
                    })
                    .collect(),
            })
            .collect();
        let title = format!(
            "{} · {} questions",
            args.model.model.display(),
            questions.len()
        );
        std::fs::write(&svg, write_svg(&title, &series))
            .with_context(|| format!("writing {}", svg.display()))?;
        if args.json {
            println!("{}", serde_json::to_string(&results)?);
        } else {
            print!("{markdown}");
            eprintln!("wrote {} and {}", md.display(), svg.display());
        }
        return Ok(());
    }
    if let Some(name) = &args.strategy.strategy {
        let spec = args
            .strategy
            .spec(args.strategy.strategy(name, args.strategy.m)?)?;
        let draft = args
            .strategy
            .load_draft(&args.model, name, served_draft.is_some())?;
        let models = SolveOptions {
            draft: draft.as_ref(),
            served_draft: served_draft.as_ref(),
            reward_model: reward_model.as_ref(),
            ..SolveOptions::default()
        };
        let result = evaluate(&model, models, &questions, &truths, &spec)?;
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{} on {} questions: {} · {:.0} forward tokens{} · {:.0} ms per question",
                result.strategy,
                result.n,
                percent(result.accuracy, result.ci95),
                result.tokens_mean,
                if result.draft_tokens_mean > 0.0 {
                    format!(" + {:.0} draft", result.draft_tokens_mean)
                } else {
                    String::new()
                },
                result.wall_ms_mean
            );
        }
        return Ok(());
    }
    let AnyModel::Local(model) = &model else {
        bail!(
            "without --strategy, eval draws plain samples from a model loaded here: with \
             --endpoint give --strategy (sample, majority, best-of-n, ets, ...)"
        );
    };
    sample_eval(args, model, &questions, &truths)
}

/// Plain samples: pass@1, majority@k and pass@k.
fn sample_eval(
    args: &EvalArgs,
    model: &Model,
    questions: &[String],
    truths: &[String],
) -> Result<()> {
    let s = &args.strategy;
    let sampling = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
    };
    let decoding = match model.transformer.config().objective {
        Objective::Causal => Decoding::Autoregressive {
            sampling,
            max_new_tokens: s.max_tokens,
        },
        Objective::MaskedDiffusion { .. } => {
            Decoding::Diffusion(s.diffusion.options(f64::from(s.temperature), s.seed)?)
        }
    };
    let start = Instant::now();
    let completions = pollster::block_on(complete(
        model,
        questions,
        args.samples,
        &decoding,
        s.seed,
        args.batch,
        |done, total| {
            eprint!(
                "\r{done}/{total} completions · {:.0} s",
                start.elapsed().as_secs_f64()
            );
        },
    ))?;
    eprintln!();
    let wall = start.elapsed().as_secs_f64();
    let scores: Scores = score(&completions, truths);
    if args.json {
        let mut value = serde_json::to_value(&scores)?;
        value["temperature"] = serde_json::json!(s.temperature);
        value["wall_ms_per_question"] = serde_json::json!(1e3 * wall / questions.len() as f64);
        println!("{value}");
    } else {
        println!(
            "{} questions × {} samples at temperature {} in {:.1} s",
            scores.n, scores.samples, s.temperature, wall
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_adds_its_extensions_to_the_prefix() {
        assert_eq!(
            suffixed(Path::new("sweep"), "md"),
            PathBuf::from("sweep.md")
        );
        assert_eq!(
            suffixed(Path::new("runs/t0.7"), "svg"),
            PathBuf::from("runs/t0.7.svg")
        );
    }
}
