//! `ets`: run Hugging Face LMs and energy-guided test-time scaling from the command line;
//! train and evaluate the bundled reference models.

mod bench;
mod eval;
mod plot;
mod reward;
mod solve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ets_engine::backend::{cap_buffer_limit, read_f32, select_device};
use ets_engine::decode::diffusion::{
    DiffusionOptions, DiffusionSchedule, Remasking, generate_diffusion,
};
use ets_engine::model::Precision;
use ets_engine::model::config::Objective;
use ets_engine::model::files::ModelFiles;
use ets_engine::quant::TensorType;
use ets_engine::remote::{Endpoint, HttpOptions, RemoteModel};
use ets_engine::solve::AnyModel;
use ets_engine::task::arith::{ArithConfig, Split, generate as generate_problems};
use ets_engine::task::gsm8k::{Gsm8kRecord, write_jsonl};
use ets_engine::{
    BackendKind, GenerateOptions, LoadOptions, LogitsFor, Model, SamplingParams, generate,
};

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
    /// Write a GGUF file of random weights with a known model's shape and a stand-in byte-level
    /// tokenizer (for tests of loading, device limits and memory with real models' sizes).
    RandomGguf(RandomGgufArgs),
    /// Write arithmetic word problems of the synthetic task as GSM8K-style JSONL to stdout.
    Task(TaskArgs),
    /// Train a reference model (causal or masked diffusion) on the arithmetic task.
    Train(Box<train::TrainArgs>),
    /// Answer a question with a decoding strategy: ETS (default), ETS-IS or a baseline.
    Solve(Box<solve::SolveArgs>),
    /// Accuracy on test problems with a strategy (or a sweep of strategies and budgets), or
    /// plain samples' pass@1, majority vote and pass@k; 95% intervals.
    Eval(Box<eval::EvalArgs>),
    /// Sample responses from policies on the task's problems and label them right or wrong
    /// (JSONL), the data `ets train --objective reward` learns from.
    RewardData(Box<reward::RewardDataArgs>),
    /// A reward model's ROC AUC at telling right responses from wrong ones in a JSONL file of
    /// labelled responses, with its 95% interval (a language model is judged by its likelihood,
    /// as `--reward lm:DIR` reads it).
    RewardAuc(Box<reward::RewardAucArgs>),
}

#[derive(Args)]
struct RandomGgufArgs {
    /// Whose shape: smollm2-135m or qwen2.5-0.5b.
    #[arg(long)]
    like: RandomShape,
    /// Block format of the matrices: q4_0, q8_0 or q4_k (q8_0 where rows are not whole
    /// blocks of it).
    #[arg(long, default_value = "q4_0")]
    matrices: BlockArg,
    /// Block format of the embedding (the tied output head).
    #[arg(long, default_value = "q8_0")]
    embedding: BlockArg,
    /// Seed of the weights: the same seed writes the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the file.
    #[arg(long)]
    out: PathBuf,
}

/// A model shape `ets random-gguf` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RandomShape {
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    #[value(name = "qwen2.5-0.5b")]
    Qwen2_5_0_5b,
}

/// A block format of `ets random-gguf`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BlockArg {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl BlockArg {
    fn tensor_type(self) -> TensorType {
        match self {
            Self::Q4_0 => TensorType::Q4_0,
            Self::Q8_0 => TensorType::Q8_0,
            Self::Q4K => TensorType::Q4_K,
        }
    }
}

/// Writes the random GGUF file `args` asks for.
fn random_gguf(args: &RandomGgufArgs) -> Result<()> {
    let (json, like) = match args.like {
        RandomShape::Smollm2_135m => (
            ets_engine::model::config::SMOLLM2_135M_CONFIG,
            "SmolLM2-135M",
        ),
        RandomShape::Qwen2_5_0_5b => (
            ets_engine::model::config::QWEN2_5_0_5B_CONFIG,
            "Qwen2.5-0.5B",
        ),
    };
    let config = ets_engine::model::config::ModelConfig::from_json(json)?;
    eprintln!(
        "writing random weights of {like}'s shape ({:.1} M parameters)…",
        config.parameter_count() as f64 / 1e6
    );
    let bytes = ets_engine::model::random::random_gguf(
        &config,
        args.matrices.tensor_type(),
        args.embedding.tensor_type(),
        args.seed,
    )?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}

#[derive(Args)]
struct ModelArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// cpu or wgpu; default: wgpu when an adapter exists, else cpu.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Float type of weights and activations: f32, or f16 on a device with f16 arithmetic
    /// (half the memory; logits within ~2e-2 of f32).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Quantize weights stored as floats (a safetensors model) into GGUF blocks on load, run by
    /// the block kernels (CPU and wgpu): q8_0 (8.5 bits a weight) or q4_k (4.5 bits; matrices
    /// whose rows are not whole 256-value super-blocks get q8_0). A GGUF file's quantized
    /// weights are used as they are.
    #[arg(long)]
    quantize: Option<QuantizeArg>,
    /// Treat the device's buffers as holding at most this many MiB (wgpu): matrices larger
    /// than that are split on load, as on a browser adapter with that binding limit (WebGPU's
    /// default is 128). Default: the adapter's own limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_buffer_mib: Option<u64>,
}

impl ModelArgs {
    /// The model at `path` on `backend`, in f32, as it is stored.
    fn at(path: &std::path::Path, backend: Option<BackendKind>) -> Self {
        Self {
            model: path.to_path_buf(),
            backend,
            precision: Precision::F32,
            quantize: None,
            max_buffer_mib: None,
        }
    }

    /// Another model (a draft, a reward model) loaded the same way, from `path`.
    fn with_path(&self, path: &std::path::Path) -> Self {
        Self {
            model: path.to_path_buf(),
            backend: self.backend,
            precision: self.precision,
            quantize: self.quantize,
            max_buffer_mib: self.max_buffer_mib,
        }
    }
}

/// A block format `--quantize` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum QuantizeArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl QuantizeArg {
    fn tensor_type(self) -> TensorType {
        match self {
            Self::Q8_0 => TensorType::Q8_0,
            Self::Q4K => TensorType::Q4_K,
        }
    }
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
    /// A system message put ahead of the prompt in the chat template.
    #[arg(long, requires = "chat")]
    system: Option<String>,
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
    #[command(flatten)]
    diffusion: DiffusionArgs,
    /// Print {"ids": [...], "text": "..."} instead of the text.
    #[arg(long)]
    json: bool,
}

/// Settings of the masked-diffusion sampler (used when the model is a diffusion LM).
#[derive(Args, Clone)]
struct DiffusionArgs {
    /// Diffusion models: answer length in tokens (short answers end in EOS padding).
    #[arg(long, default_value_t = 64)]
    gen_length: usize,
    /// Diffusion models: tokens per semi-autoregressive block (divides --gen-length).
    #[arg(long, default_value_t = DiffusionSchedule::default().block_length)]
    block_length: usize,
    /// Diffusion models: denoising steps in all (default: --gen-length, one token per step).
    #[arg(long)]
    steps: Option<usize>,
    /// Diffusion models: which proposals to keep each step: low-confidence or random remasking.
    #[arg(long, default_value = "low-confidence")]
    remasking: Remasking,
}

impl DiffusionArgs {
    /// The sampler's schedule.
    pub fn schedule(&self) -> DiffusionSchedule {
        DiffusionSchedule {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps.unwrap_or(self.gen_length),
            remasking: self.remasking,
        }
    }

    /// The sampler's options at `temperature`, seeded by `seed`.
    pub fn options(&self, temperature: f64, seed: u64) -> Result<DiffusionOptions> {
        let options = self.schedule().options(temperature, seed);
        options.validate()?;
        Ok(options)
    }
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

/// A model served by an OpenAI-compatible server instead of loaded here.
#[derive(Args, Clone)]
struct RemoteArgs {
    /// Run the model on an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server,
    /// llama-cpp-python) at this address, e.g. http://127.0.0.1:8000/v1; --model then gives
    /// only its tokenizer (a GGUF file or a model folder; the weights are not loaded).
    #[arg(long)]
    endpoint: Option<String>,
    /// The environment variable that holds the server's API key (sent as a Bearer token).
    #[arg(long, requires = "endpoint")]
    api_key_env: Option<String>,
    /// The model's name on the server (default: the first model it lists).
    #[arg(long, requires = "endpoint")]
    remote_model: Option<String>,
    /// Prompts as token ids or text (default: ids for vLLM, SGLang and llama.cpp's server,
    /// which take them, as their model list tells; text for others, e.g. llama-cpp-python).
    #[arg(long, requires = "endpoint")]
    prompts: Option<PromptForm>,
    /// Continue identical sequences (ETS's M candidates of one prefix, a candidate's K
    /// rollouts) in one request with `n` (default: true for vLLM and SGLang, which take it;
    /// false for llama.cpp's server, which refuses n > 1, and others).
    #[arg(long, requires = "endpoint")]
    use_n: Option<bool>,
    /// ETS-IS over a server: the draft model's name on a server (the server of --endpoint,
    /// or of --draft-endpoint); it must share --model's tokenizer.
    #[arg(long, requires = "endpoint")]
    draft_remote_model: Option<String>,
    /// ETS-IS over a server: the address of the server that serves the draft model, when
    /// another than --endpoint's (default model: the first it lists).
    #[arg(long, requires = "endpoint")]
    draft_endpoint: Option<String>,
    /// The server's context in tokens (default: the model's own).
    #[arg(long, requires = "endpoint", value_parser = clap::value_parser!(u64).range(1..))]
    remote_context: Option<u64>,
    /// Requests to the server in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_in_flight: u64,
    /// Tries per request (on refused connections, timeouts, HTTP 408, 429 and 5xx, malformed
    /// answers), with exponential backoff from 0.5 s.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    attempts: u32,
    /// Seconds a try may wait for its whole answer.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
}

/// How prompts go to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PromptForm {
    Ids,
    Text,
}

/// The model of `model` loaded here, or with `--endpoint` the server's, tokenized with
/// `model`'s tokenizer; says which on stderr.
fn load_target(model: &ModelArgs, remote: &RemoteArgs) -> Result<AnyModel> {
    match &remote.endpoint {
        None => Ok(AnyModel::Local(Box::new(load(model)?))),
        Some(url) => {
            let served = connect(url, remote.remote_model.as_deref(), model, remote, "remote")?;
            Ok(AnyModel::Remote(Box::new(served)))
        }
    }
}

/// The draft model on a server that --draft-remote-model / --draft-endpoint name (ETS-IS over
/// a server), if they name one; says which on stderr.
fn load_served_draft(model: &ModelArgs, remote: &RemoteArgs) -> Result<Option<RemoteModel>> {
    let url = match (
        &remote.draft_endpoint,
        &remote.draft_remote_model,
        &remote.endpoint,
    ) {
        (Some(url), _, _) => url,
        (None, Some(_), Some(url)) => url,
        _ => return Ok(None),
    };
    let name = remote.draft_remote_model.as_deref();
    connect(url, name, model, remote, "remote draft").map(Some)
}

/// Connects to the model `name` (None: the first listed) at `url`, tokenized with `model`'s
/// tokenizer, with `remote`'s request settings; says so on stderr after `role`.
fn connect(
    url: &str,
    name: Option<&str>,
    model: &ModelArgs,
    remote: &RemoteArgs,
    role: &str,
) -> Result<RemoteModel> {
    let files = ModelFiles::from_path(&model.model)
        .with_context(|| format!("reading {}", model.model.display()))?;
    let (tokenizer, context) = Model::tokenizer_of(files)
        .with_context(|| format!("reading the tokenizer of {}", model.model.display()))?;
    let api_key = match &remote.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!("--api-key-env {var}: the environment variable is not set")
        })?),
        None => None,
    };
    if !(remote.request_timeout.is_finite() && remote.request_timeout > 0.0) {
        bail!("--request-timeout must be a positive number of seconds");
    }
    let endpoint = Endpoint {
        url: url.to_string(),
        api_key,
        model: name.map(str::to_string),
        prompt_ids: remote.prompts.map(|p| p == PromptForm::Ids),
        context: remote.remote_context.map(|c| c as usize),
        use_n: remote.use_n,
        http: HttpOptions {
            max_in_flight: remote.max_in_flight as usize,
            attempts: remote.attempts,
            timeout: std::time::Duration::from_secs_f64(remote.request_timeout),
            ..HttpOptions::default()
        },
    };
    let served = pollster::block_on(RemoteModel::connect(&endpoint, tokenizer, context, None))
        .with_context(|| format!("connecting to {url}"))?;
    eprintln!(
        "{role}: {} at {} ({}; context {} tokens, {} requests in flight, {} prompts{})",
        served.name(),
        served.url(),
        served.server().name(),
        ets_engine::decode::lm::LanguageModel::max_positions(&served),
        endpoint.http.max_in_flight,
        if served.prompt_ids() {
            "token-id"
        } else {
            "text"
        },
        if served.uses_n() {
            ", identical sequences continued with n"
        } else {
            ""
        }
    );
    Ok(served)
}

/// Loads the model on the requested (or best available) backend, saying which on stderr.
fn load(args: &ModelArgs) -> Result<Model> {
    let (device, _, description) = select_device(args.backend)?;
    eprintln!("backend: {description}");
    if let Some(mib) = args.max_buffer_mib {
        cap_buffer_limit(&device, mib.saturating_mul(1 << 20));
    }
    let start = std::time::Instant::now();
    let files = ModelFiles::from_path(&args.model)
        .with_context(|| format!("reading {}", args.model.display()))?;
    let quantize = args.quantize.map(QuantizeArg::tensor_type);
    let options = LoadOptions {
        precision: args.precision,
        quantize,
    };
    let model = Model::from_files_in(files, &device, options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let config = model.transformer.config();
    let quantized = quantize.map_or(String::new(), |t| {
        format!(", float weights quantized to {t}")
    });
    let split = match model.transformer.matrices_in_parts() {
        0 => String::new(),
        1 => ", 1 matrix split across buffers for the device's limit".to_string(),
        n => format!(", {n} matrices split across buffers for the device's limit"),
    };
    eprintln!(
        "loaded {} ({:?}, {:.1} M parameters, {}{quantized}; weights {:.1} MB{split}) in {:.1} s",
        args.model.display(),
        config.architecture,
        config.parameter_count() as f64 / 1e6,
        args.precision.name(),
        model.transformer.weight_bytes() as f64 / 1e6,
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
                tokenizer.encode_chat(text, args.system.as_deref())?
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
    let stop_ids = model.stop_ids();
    let ids = match model.transformer.config().objective {
        Objective::Causal => {
            let options = GenerateOptions {
                max_new_tokens: args.max_new_tokens,
                sampling,
                seed: args.seed,
                stop_ids,
            };
            pollster::block_on(generate(&model.transformer, &[prompt], &[0], &options))?
        }
        Objective::MaskedDiffusion { .. } => {
            let options = args
                .diffusion
                .options(f64::from(sampling.temperature), args.seed)?;
            let mut answer = pollster::block_on(generate_diffusion(
                &model.transformer,
                &[prompt],
                &[0],
                &options,
                &stop_ids,
            ))?;
            // The answer ends at its first EOS (kept, as autoregressive decoding keeps it).
            for ids in &mut answer {
                if let Some(end) = ids.iter().position(|t| stop_ids.contains(t)) {
                    ids.truncate(end + 1);
                }
            }
            answer
        }
    }
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
    split: SplitArg,
    /// Number of problems.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Seed: the same seed gives the same problems.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    knobs: TaskKnobs,
}

/// A split named on the command line.
#[derive(Clone, Copy, Debug)]
struct SplitArg(Split);

impl std::str::FromStr for SplitArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "train" => Ok(Self(Split::Train)),
            "test" => Ok(Self(Split::Test)),
            other => Err(format!("unknown split {other:?}; use train or test")),
        }
    }
}

/// The difficulty knobs of the arithmetic task.
#[derive(Args, Clone)]
struct TaskKnobs {
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
    /// Worked solutions with each run of commuting steps in a random order (several valid
    /// solutions per question; the questions are the same).
    #[arg(long)]
    any_order: bool,
}

impl TaskKnobs {
    /// The generator's config, checked.
    fn config(&self) -> Result<ArithConfig> {
        let config = ArithConfig {
            min_steps: self.min_steps,
            max_steps: self.max_steps,
            max_start: self.max_start,
            max_operand: self.max_operand,
            distractor_rate: self.distractor_rate,
            any_order: self.any_order,
        };
        config.validate()?;
        Ok(config)
    }
}

fn task(args: &TaskArgs) -> Result<()> {
    let problems = generate_problems(&args.knobs.config()?, args.split.0, args.seed, args.n);
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
        Command::RandomGguf(args) => random_gguf(args),
        Command::Task(args) => task(args),
        Command::Train(args) => train::run(args),
        Command::Solve(args) => solve::run(args),
        Command::Eval(args) => eval::run(args),
        Command::RewardData(args) => reward::data(args),
        Command::RewardAuc(args) => reward::auc_run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
