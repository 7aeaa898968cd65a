//! `ets solve`: answer one question with a decoding strategy (ETS, ETS-IS or a baseline),
//! showing each guidance step on stderr; and the strategy options `ets eval` shares.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser};
use ets_engine::Model;
use ets_engine::SamplingParams;
use ets_engine::reward::RewardKind;
use ets_engine::solve::{SolveOptions, Solves};
use ets_engine::strategy::{EtsParams, STRATEGIES, SolveSpec, Strategy, ValidSpec};
use ets_engine::task::answer::Extraction;
use ets_engine::trace::{Selection, TraceEvent};

use crate::{DiffusionArgs, ModelArgs, RemoteArgs, load, load_served_draft, load_target};

/// The strategy and its parameters, as `ets solve` and `ets eval` take them.
#[derive(Args, Clone)]
pub struct StrategyArgs {
    /// The decoding strategy (solve: default ets; eval: without it, plain samples scored as
    /// pass@1 / majority / pass@k).
    #[arg(long, value_parser = strategy_names())]
    pub strategy: Option<String>,
    /// A draft model directory sharing the tokenizer (ETS-IS rollouts).
    #[arg(long)]
    pub draft: Option<PathBuf>,
    /// M: ETS candidates per guidance step; samples for best-of-n and majority; beams for beam.
    #[arg(long, default_value_t = 8)]
    pub m: usize,
    /// K: rollouts per ETS candidate.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// B: tokens per guidance step (diffusion: revealed tokens; divides --gen-length).
    #[arg(long, default_value_t = 16)]
    pub block: usize,
    /// λ: rewards weigh as exp(r / λ).
    #[arg(long, default_value_t = 0.1)]
    pub lambda: f64,
    /// Reuse the chosen candidate's rollouts as next-step candidates (ets, causal models).
    #[arg(long)]
    pub recycle: bool,
    /// ETS-IS: clip log p_ref/q to [−C, C]; 0 turns clipping off (the paper's estimator).
    #[arg(long, default_value_t = 10.0)]
    pub clip: f64,
    /// self-consistency, verifier (needs the true answer), self-certainty, neg-entropy,
    /// mean-log-prob, format:REGEX, model:DIR (a reward model: a Hugging Face
    /// `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` directory, one label),
    /// or lm:DIR (a causal language model as the judge: the lowest log-probability it gives a
    /// token of the response, nats).
    #[arg(long, default_value = "self-consistency")]
    pub reward: String,
    /// How answers are read: strict (`#### n` only) or flexible (else the last number).
    #[arg(long, default_value = "strict")]
    pub extraction: String,
    /// Sampling temperature (diffusion models: the Gumbel noise scale).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Most new tokens per answer (causal models).
    #[arg(long, default_value_t = 160, alias = "max-new-tokens")]
    pub max_tokens: usize,
    /// Seed of every random draw: the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// The engine's strategy names with their one-line descriptions, as --strategy's values.
fn strategy_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        STRATEGIES
            .iter()
            .map(|&(name, help)| PossibleValue::new(name).help(help)),
    )
}

impl StrategyArgs {
    /// The strategy named by --strategy with `m` as its budget.
    pub fn strategy(&self, name: &str, m: usize) -> Result<Strategy> {
        let ets = EtsParams {
            m,
            k: self.k,
            block: self.block,
            lambda: self.lambda,
            recycle: self.recycle,
            log_weight_clip: (self.clip > 0.0).then_some(self.clip),
        };
        Ok(name.parse::<Strategy>()?.with_ets(ets).with_budget(m))
    }

    /// The full run specification for `strategy`.
    pub fn spec(&self, strategy: Strategy) -> Result<ValidSpec> {
        let extraction: Extraction = self.extraction.parse()?;
        Ok(SolveSpec {
            strategy,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            max_tokens: self.max_tokens,
            diffusion: self.diffusion.schedule(),
            reward: self.reward.parse::<RewardKind>()?,
            extraction,
            seed: self.seed,
        }
        .validate()?)
    }

    /// Loads the draft model when one is named, and checks that ets-is has one (here, or on a
    /// server: `served`).
    pub fn load_draft(
        &self,
        model: &ModelArgs,
        strategy: &str,
        served: bool,
    ) -> Result<Option<Model>> {
        match (&self.draft, strategy) {
            (None, "ets-is") if !served => bail!(
                "ets-is needs --draft DIR (a smaller model with the same tokenizer), or over a \
                 server --draft-remote-model NAME"
            ),
            (None, _) => Ok(None),
            (Some(dir), _) => load(&model.with_path(dir)).map(Some),
        }
    }

    /// Loads the reward model when --reward names one (`model:DIR`, `lm:DIR`), like the model.
    pub fn load_reward_model(&self, model: &ModelArgs) -> Result<Option<Model>> {
        let kind = self.reward.parse::<RewardKind>()?;
        let Some(name) = kind.model_name() else {
            return Ok(None);
        };
        load(&model.with_path(std::path::Path::new(name)))
            .with_context(|| format!("loading the reward model {name}"))
            .map(Some)
    }
}

#[derive(Args)]
pub struct SolveArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    strategy: StrategyArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The true answer (only the verifier reward reads it).
    #[arg(long)]
    truth: Option<String>,
    /// Write the run's trace (JSON: the spec and every event) to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print one JSON object: answer, text, tokens, draft_tokens, wall_ms.
    #[arg(long)]
    json: bool,
    /// Tokenize the question as it is, even for a model with a chat template (by default the
    /// question goes into the template as a user message).
    #[arg(long)]
    raw_prompt: bool,
    /// A system message put ahead of the question in the model's chat template (a model with
    /// one only).
    #[arg(long, conflicts_with = "raw_prompt")]
    system: Option<String>,
    /// The question.
    question: String,
}

/// One line per trace event, for stderr: each step's candidates with what the choice weighed
/// (ETS: log-energies and the chance of each being drawn; best-of-n: rewards; majority: votes).
pub fn describe(event: &TraceEvent) -> Option<String> {
    let TraceEvent::Step(step) = event else {
        return None;
    };
    if step.candidates.len() < 2 {
        return None;
    }
    let list = |values: Vec<String>| values.join(" ");
    let weighed = match &step.selection {
        Selection::EnergyDraw { probabilities } => {
            let energies = step
                .candidates
                .iter()
                .map(|c| c.log_energy.map_or("-".into(), |e| format!("{e:.1}")))
                .collect();
            let chances = probabilities.iter().map(|p| format!("{p:.2}")).collect();
            format!(
                "log-energies [{}], chances [{}], drew",
                list(energies),
                list(chances)
            )
        }
        Selection::RewardArgmax { rewards } => format!(
            "rewards [{}], best",
            list(rewards.iter().map(|r| format!("{r:.2}")).collect())
        ),
        Selection::Vote { votes } => format!(
            "votes [{}], chose",
            list(votes.iter().map(|v| v.to_string()).collect())
        ),
        Selection::Resample {
            probabilities,
            copies,
        } => format!(
            "chances [{}], copies [{}], most copied",
            list(probabilities.iter().map(|p| format!("{p:.2}")).collect()),
            list(copies.iter().map(|n| n.to_string()).collect())
        ),
    };
    Some(format!(
        "step {}: {} candidates, {weighed} {} · {} tokens · {:.2} s",
        step.index + 1,
        step.candidates.len(),
        step.chosen,
        step.tokens,
        step.elapsed_ms / 1e3
    ))
}

pub fn run(args: &SolveArgs) -> Result<()> {
    let model = load_target(&args.model, &args.remote)?;
    if args.system.is_some() && !model.tokenizer()?.has_chat_template() {
        bail!("--system needs a model with a chat template, and this one has none");
    }
    let name = args.strategy.strategy.as_deref().unwrap_or("ets");
    let spec = args
        .strategy
        .spec(args.strategy.strategy(name, args.strategy.m)?)?;
    let served_draft = load_served_draft(&args.model, &args.remote)?;
    let draft = args
        .strategy
        .load_draft(&args.model, name, served_draft.is_some())?;
    let reward_model = args.strategy.load_reward_model(&args.model)?;
    let options = SolveOptions {
        draft: draft.as_ref(),
        served_draft: served_draft.as_ref(),
        reward_model: reward_model.as_ref(),
        truth: args.truth.as_deref(),
        raw_prompt: args.raw_prompt,
        system: args.system.as_deref(),
        ..SolveOptions::default()
    };
    let mut show = |event: &TraceEvent| {
        if let Some(line) = describe(event) {
            eprintln!("{line}");
        }
    };
    let solution = pollster::block_on(model.solve(&args.question, &spec, options, &mut show))?;
    if let Some(path) = &args.trace {
        let trace = serde_json::json!({ "spec": spec, "question": args.question, "system": args.system, "events": solution.trace });
        std::fs::write(path, serde_json::to_string_pretty(&trace)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "answer": solution.answer,
                "text": solution.text,
                "tokens": solution.tokens,
                "draft_tokens": solution.draft_tokens,
                "reward_tokens": solution.reward_tokens,
                "wall_ms": solution.wall_ms,
            })
        );
    } else {
        println!("{}", solution.text);
        println!("answer: {}", solution.answer.as_deref().unwrap_or("(none)"));
        let on = |n: u64, model: &str| {
            if n > 0 {
                format!(" + {n} on the {model}")
            } else {
                String::new()
            }
        };
        eprintln!(
            "{} forward tokens{}{} · {:.2} s",
            solution.tokens,
            on(solution.draft_tokens, "draft"),
            on(solution.reward_tokens, "reward model"),
            solution.wall_ms / 1e3
        );
    }
    Ok(())
}
