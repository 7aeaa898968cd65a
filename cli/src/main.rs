//! `ets`: run Hugging Face causal LMs and energy-guided test-time scaling from the command line.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ets_engine::backend::{read_f32, select_device};
use ets_engine::task::arith::{ArithConfig, Split, generate as generate_problems};
use ets_engine::task::gsm8k::{Gsm8kRecord, write_jsonl};
use ets_engine::{BackendKind, GenerateOptions, LogitsFor, Model, SamplingParams, generate};

#[derive(Parser)]
#[command(
    name = "ets",
    version,
    about = "Energy-guided test-time scaling on your own machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the logits of every input position as JSON: {"logits": [[vocab floats], ...]}.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids, e.g. 5,17,3.
        #[arg(long)]
        ids: TokenIds,
    },
    /// Continue a prompt with greedy or sampled decoding.
    Generate(GenerateArgs),
    /// Measure prefill and decode tokens/s (random weights of SmolLM2-135M's shape by default).
    Bench(bench::BenchArgs),
    /// Write arithmetic word problems of the synthetic task as GSM8K-style JSONL to stdout.
    Task(TaskArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// cpu or wgpu; default: wgpu when an adapter exists, else cpu.
    #[arg(long)]
    backend: Option<BackendKind>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (tokenized with the model's tokenizer).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids.
    #[arg(long)]
    ids: Option<TokenIds>,
    /// Apply the model's chat template to the prompt (as a user message).
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p.
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the random generator: the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    /// Print {"ids": [...], "text": "..."} instead of the text.
    #[arg(long)]
    json: bool,
}

/// Token ids given on the command line as a comma-separated list.
#[derive(Clone, Debug)]
struct TokenIds(Vec<u32>);

impl std::str::FromStr for TokenIds {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let ids = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .map_err(|_| format!("{s:?} is not a token id"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        if ids.is_empty() {
            return Err("no token ids given".into());
        }
        Ok(Self(ids))
    }
}

/// Loads the model on the requested (or best available) backend, saying which on stderr.
fn load(args: &ModelArgs) -> Result<Model> {
    let (device, _, description) = select_device(args.backend)?;
    eprintln!("backend: {description}");
    let start = std::time::Instant::now();
    let model = Model::from_dir(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let config = model.transformer.config();
    eprintln!(
        "loaded {} ({:?}, {:.1} M parameters) in {:.1} s",
        args.model.display(),
        config.architecture,
        config.parameter_count() as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn logits(model_args: &ModelArgs, ids: &[u32]) -> Result<()> {
    let model = load(model_args)?;
    let t = &model.transformer;
    let mut cache = t.new_cache(1);
    let logits = t.forward(&[ids], &mut cache, LogitsFor::All)?;
    let vocab = t.config().vocab_size;
    let values = read_f32(logits)?;
    let rows: Vec<&[f32]> = values.chunks(vocab).collect();
    println!("{}", serde_json::json!({ "logits": rows }));
    Ok(())
}

fn run_generate(args: &GenerateArgs) -> Result<()> {
    let model = load(&args.model)?;
    let prompt = match (&args.prompt, &args.ids) {
        (Some(text), _) => {
            if text.trim().is_empty() {
                bail!("the prompt is empty");
            }
            let tokenizer = model.tokenizer()?;
            if args.chat {
                tokenizer.encode_chat(text)?
            } else {
                tokenizer.encode(text, true)?
            }
        }
        (None, Some(ids)) => ids.0.clone(),
        (None, None) => bail!("give --prompt or --ids"),
    };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let sampling = if args.greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        }
    };
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.seed,
        stop_ids: model.stop_ids(),
    };
    let ids = generate(&model.transformer, &[prompt], &[0], &options)?
        .pop()
        .unwrap_or_default();
    let text = match &model.tokenizer {
        Some(t) => t.decode(&ids)?,
        None => String::new(),
    };
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "text": text }));
    } else {
        println!("{text}");
    }
    Ok(())
}

#[derive(Args)]
struct TaskArgs {
    /// train or test (disjoint by construction).
    #[arg(long, default_value = "test")]
    split: String,
    /// Number of problems.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Seed: the same seed gives the same problems.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fewest operations per problem.
    #[arg(long, default_value_t = ArithConfig::default().min_steps)]
    min_steps: usize,
    /// Most operations per problem.
    #[arg(long, default_value_t = ArithConfig::default().max_steps)]
    max_steps: usize,
    /// Largest starting quantity.
    #[arg(long, default_value_t = ArithConfig::default().max_start)]
    max_start: i64,
    /// Largest number added or taken away in one step.
    #[arg(long, default_value_t = ArithConfig::default().max_operand)]
    max_operand: i64,
    /// Chance of a distractor sentence after each step (0 to 1).
    #[arg(long, default_value_t = ArithConfig::default().distractor_rate)]
    distractor_rate: f64,
}

fn task(args: &TaskArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        other => bail!("unknown split {other:?}; use train or test"),
    };
    if args.min_steps == 0 || args.min_steps > args.max_steps {
        bail!("need 1 ≤ --min-steps ≤ --max-steps");
    }
    if !(0.0..=1.0).contains(&args.distractor_rate) {
        bail!("--distractor-rate must lie in [0, 1]");
    }
    if args.max_start < 2 || args.max_operand < 1 {
        bail!("need --max-start ≥ 2 and --max-operand ≥ 1");
    }
    let config = ArithConfig {
        min_steps: args.min_steps,
        max_steps: args.max_steps,
        max_start: args.max_start,
        max_operand: args.max_operand,
        distractor_rate: args.distractor_rate,
    };
    let problems = generate_problems(&config, split, args.seed, args.n);
    let records: Vec<Gsm8kRecord> = problems.iter().map(Gsm8kRecord::from).collect();
    print!("{}", write_jsonl(&records));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logits { model, ids } => logits(model, &ids.0),
        Command::Generate(args) => run_generate(args),
        Command::Bench(args) => bench::run(args),
        Command::Task(args) => task(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
