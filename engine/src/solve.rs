//! The one way a front end runs a question: [`Model::solve`] tokenizes it with the model's
//! tokenizer, builds the spec's reward, runs the spec's strategy ([`Solver`]) on the model (and
//! the draft) and returns the [`Solution`]. The CLI, the browser worker, the desktop app, dataset
//! evaluation and the tests call it; [`Solver`] stays the generic layer below it, for models that
//! are not a loaded bundle (the exactness test's enumerable toy models).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use web_time::Instant;

use crate::bundle::Model;
use crate::decode::lm::LanguageModel;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{LogitsFor, Transformer};
use crate::remote::RemoteModel;
use crate::reward::RewardContext;
use crate::strategy::{DraftView, Solution, Solver, Strategy, ValidSpec};
use crate::tokenize::TextTokenizer;
use crate::trace::TraceEvent;
use ets_spec::reward::RewardKind;

/// Longest stretch a run computes without giving its [`Pause`] a turn: 40 ms, so a Stop request
/// gets through to a browser worker on the CPU backend, whose forward passes never wait.
pub const PAUSE_EVERY: Duration = Duration::from_millis(40);

/// Gives an event loop a turn (a browser worker's): a run awaits it between forward passes
/// once it has computed for [`PAUSE_EVERY`].
pub trait Pause {
    /// A future that completes after the event loop has had its turn.
    fn pause(&self) -> Pin<Box<dyn Future<Output = ()> + '_>>;
}

/// How a run is carried out besides its question and spec; `SolveOptions::default()` is a
/// plain run (no draft, stream 0, no stop flag, no pauses, stopping at end-of-sequence tokens).
#[derive(Clone, Copy, Default)]
pub struct SolveOptions<'a> {
    /// The draft model q of ETS-IS (it must share the model's tokenizer).
    pub draft: Option<&'a Model>,
    /// The draft model q of ETS-IS for a model on a server: a model served too (it must share
    /// the model's tokenizer).
    pub served_draft: Option<&'a RemoteModel>,
    /// The reward model a spec's `model:NAME` reward names, loaded by the front end (it may
    /// have a tokenizer of its own: it reads the question's and the responses' text).
    pub reward_model: Option<&'a Model>,
    /// The true answer; only the verifier reward reads it.
    pub truth: Option<&'a str>,
    /// Separates the random draws of different questions under one seed.
    pub stream: u64,
    /// Once set (by whoever shares it: a Stop button), the run ends at its next forward pass
    /// with [`Error::Stopped`].
    pub stop: Option<&'a AtomicBool>,
    /// Where the run gives an event loop its turns.
    pub pause: Option<&'a dyn Pause>,
    /// Decode to the token budget, past end-of-sequence tokens (as llama.cpp's `--ignore-eos`):
    /// benchmarks whose every run must be equally long.
    pub ignore_eos: bool,
    /// Where the run records the largest KV cache it held.
    pub kv_peak: Option<&'a KvPeak>,
    /// Tokenize the question as it is even when the model has a chat template (by default
    /// [`Model::solve`] puts it in the template as a user message).
    pub raw_prompt: bool,
    /// The system message put ahead of the question in the chat template; ignored for a model
    /// without one, or with `raw_prompt`.
    pub system: Option<&'a str>,
    /// Show the texts being decoded ([`TraceEvent::Drafting`] events to the observer) at most
    /// this often; None shows none (the trace is the same either way).
    pub drafts_every: Option<Duration>,
}

/// The largest KV cache a run held, in bytes, over the target model's forward passes.
#[derive(Debug, Default)]
pub struct KvPeak {
    held: Cell<usize>,
    unshared: Cell<usize>,
}

impl KvPeak {
    /// Bytes of the largest cache, shared prefixes counted once.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// Bytes that cache would take with every sequence holding its own copy.
    pub fn unshared(&self) -> usize {
        self.unshared.get()
    }

    fn record(&self, cache: &KvCache) {
        let held = cache.bytes();
        if held > self.held.get() {
            self.held.set(held);
            self.unshared.set(cache.unshared_bytes());
        }
    }
}

/// Refuses a run whose KV cache would not fit before it starts: on the CPU, the host memory
/// free (in a browser, what the wasm heap may still grow by) against the cache of every
/// sequence held at once (the prompt's shared once); on a GPU, one layer's keys of those
/// sequences against the largest buffer (GPU memory in all is not known to wgpu).
fn check_kv_memory(
    target: &Transformer,
    draft: Option<&Transformer>,
    prompt: usize,
    spec: &ValidSpec,
) -> Result<()> {
    let sequences = spec.sequences_at_once();
    let tokens = spec.max_tokens;
    let per_token = target.kv_bytes_per_token() + draft.map_or(0, Transformer::kv_bytes_per_token);
    let needed = (per_token as u64).saturating_mul((prompt + sequences * tokens) as u64);
    let device = target.device();
    if *device == crate::backend::cpu_device() {
        if let Some(available) = crate::backend::free_host_memory()
            && needed > available
        {
            return Err(Error::KvCacheTooLarge {
                needed,
                available,
                sequences,
                tokens,
                prompt,
                place: if cfg!(target_family = "wasm") {
                    "the page's memory"
                } else {
                    "this machine"
                },
            });
        }
        return Ok(());
    }
    let keys_per_token = target.kv_bytes_per_token() / (2 * target.config().num_layers);
    let one_layer = (sequences as u64 * tokens as u64).saturating_mul(keys_per_token as u64);
    crate::backend::check_fits(
        device,
        "the keys of one layer of this run's KV cache",
        one_layer,
    )
}

impl Model {
    /// Answers `question` with `spec`; `observe` sees each trace event as it happens. A model
    /// with a chat template (an instruct model's GGUF file or tokenizer_config.json) gets the
    /// question as a user message in it (after `options.system`, if any), unless
    /// `options.raw_prompt`; others get its tokens.
    pub async fn solve(
        &self,
        question: &str,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        let prompt = prompt_of(self.tokenizer()?, question, &options)?;
        self.run(&prompt, Some(question), spec, options, observe)
            .await
    }

    /// Runs `spec` on a prompt already in token ids (benchmarks); [`Model::solve`] for text
    /// (a reward model reads the question's text, so it needs that one).
    pub async fn solve_prompt(
        &self,
        prompt: &[u32],
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        self.run(prompt, None, spec, options, observe).await
    }

    async fn run(
        &self,
        prompt: &[u32],
        question: Option<&str>,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        if options.served_draft.is_some() {
            return Err(Error::Strategy(
                "a draft on a server proposes only for a model on a server: for a model loaded \
                 here, load the draft here too"
                    .into(),
            ));
        }
        let tokenizer = self.tokenizer()?;
        let config = self.transformer.config();
        let diffusion = config.objective != Objective::Causal;
        spec.fits(diffusion, config.max_position_embeddings)?;
        if !diffusion {
            let draft = options.draft.map(|d| &d.transformer);
            check_kv_memory(&self.transformer, draft, prompt.len(), spec)?;
        }
        let target = Paced::new(&self.transformer, options.pause, options.kv_peak);
        let draft = options
            .draft
            .map(|d| Paced::new(&d.transformer, options.pause, None));
        let run = RunOn {
            target: &target,
            draft: draft.as_ref(),
            tokenizer,
            stop_ids: self.stop_ids(),
        };
        run.solve(prompt, question, spec, options, observe).await
    }
}

/// What answers questions: a loaded [`Model`] or a [`RemoteModel`] (dataset evaluation and the
/// front ends take either).
#[allow(async_fn_in_trait)]
pub trait Solves {
    /// Answers `question` with `spec` ([`Model::solve`]; on a server, what it can run).
    async fn solve(
        &self,
        question: &str,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution>;
}

impl Solves for Model {
    async fn solve(
        &self,
        question: &str,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        Model::solve(self, question, spec, options, observe).await
    }
}

/// The prompt of `question` in `tokenizer`'s ids: in the chat template as a user message
/// (after the system message) where there is one and `options.raw_prompt` is not set.
fn prompt_of(
    tokenizer: &TextTokenizer,
    question: &str,
    options: &SolveOptions<'_>,
) -> Result<Vec<u32>> {
    if question.trim().is_empty() {
        return Err(Error::EmptyInput("the question is empty"));
    }
    if tokenizer.has_chat_template() && !options.raw_prompt {
        tokenizer.encode_chat(question, options.system)
    } else {
        tokenizer.encode(question, true)
    }
}

/// A run's models, whatever they are (loaded here, or served elsewhere), and how to read their
/// tokens: what [`Model::solve`] and a [`RemoteModel`]'s share.
struct RunOn<'a, M: LanguageModel> {
    target: &'a M,
    draft: Option<&'a M>,
    tokenizer: &'a TextTokenizer,
    /// The model's end tokens.
    stop_ids: Vec<u32>,
}

impl<M: LanguageModel> RunOn<'_, M> {
    /// Builds the spec's reward and runs its strategy.
    async fn solve(
        &self,
        prompt: &[u32],
        question: Option<&str>,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        let stop_ids = if options.ignore_eos {
            Vec::new()
        } else {
            self.stop_ids.clone()
        };
        let detokenize = |ids: &[u32]| self.tokenizer.decode(ids);
        let context = RewardContext {
            truth: options.truth,
            question,
            system: options.system,
            reward_model: options.reward_model,
        };
        let mut reward = crate::reward::build(&spec.reward, context)?;
        // The trace's events and the drafts reach the one observer; neither call nests in the
        // other.
        let observe = RefCell::new(observe);
        let mut traced = |event: &TraceEvent| (observe.borrow_mut())(event);
        let show = |draft| (observe.borrow_mut())(&TraceEvent::Drafting(draft));
        let solver = Solver {
            target: self.target,
            draft: self.draft,
            stop_ids: &stop_ids,
            detokenize: &detokenize,
            stop: options.stop,
            drafts: options
                .drafts_every
                .map(|every| DraftView { show: &show, every }),
        };
        solver
            .solve(prompt, spec, options.stream, reward.as_mut(), &mut traced)
            .await
    }
}

impl Solves for RemoteModel {
    /// Answers `question` with `spec` on the server, as [`Model::solve`] does on a loaded
    /// model. ETS-IS takes its draft on a server too ([`SolveOptions::served_draft`]), at
    /// temperature 1 without top-k or top-p (servers send log-probabilities under the model
    /// itself). Refused: rewards that read the whole next-token distribution (self-certainty,
    /// negative entropy), and strategies that read logits rows (beam search).
    async fn solve(
        &self,
        question: &str,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        let prompt = prompt_of(self.tokenizer(), question, &options)?;
        spec.fits(false, LanguageModel::max_positions(self))?;
        let draft = served_draft(self, spec, &options)?;
        if matches!(
            spec.reward,
            RewardKind::SelfCertainty | RewardKind::NegEntropy
        ) {
            return Err(Error::Reward(format!(
                "{} reads the model's whole next-token distribution, which a server does not \
                 send: on a remote model use a reward model, a judge, mean-log-prob, format, \
                 self-consistency or the verifier",
                spec.reward.name()
            )));
        }
        self.want_log_probs(matches!(spec.reward, RewardKind::MeanLogProb));
        if let Some(draft) = draft {
            draft.want_log_probs(true);
        }
        let run = RunOn {
            target: self,
            draft,
            tokenizer: self.tokenizer(),
            stop_ids: self.tokenizer().eos_ids().to_vec(),
        };
        run.solve(&prompt, Some(question), spec, options, observe)
            .await
    }
}

/// The served draft an ETS-IS run over a server takes, checked: the draft on a server (a draft
/// loaded here is refused), both servers able to score given tokens, and draws from the
/// models' own distributions (servers send each token's log-probability under the model, not
/// under a temperature or a cut). None for other strategies.
fn served_draft<'a>(
    target: &RemoteModel,
    spec: &ValidSpec,
    options: &SolveOptions<'a>,
) -> Result<Option<&'a RemoteModel>> {
    if options.draft.is_some() {
        return Err(Error::Strategy(
            "a draft loaded here cannot propose for a model on a server: serve the draft too \
             (in the apps, a model from an inference server; on the command line \
             --draft-remote-model, --draft-endpoint)"
                .into(),
        ));
    }
    if !matches!(spec.strategy, Strategy::EtsIs(_)) {
        return Ok(None);
    }
    let Some(draft) = options.served_draft else {
        return Err(Error::Strategy(
            "ets-is over a server needs the draft model on a server too (--draft-remote-model \
             NAME, with --draft-endpoint URL where another server serves it)"
                .into(),
        ));
    };
    if !spec.sampling.is_plain() {
        return Err(Error::Strategy(
            "ets-is over a server draws at temperature 1 without top-k or top-p: servers send \
             each token's log-probability under the model itself, and the importance weights \
             need it under the sampling transform"
                .into(),
        ));
    }
    for (role, model) in [("model", target), ("draft", draft)] {
        if !model.server().scores_given_tokens() {
            return Err(Error::Strategy(format!(
                "ets-is over a server scores given tokens, which the {role}'s server ({}) does \
                 not (it refuses echo with log-probabilities): serve it with vLLM, SGLang or \
                 llama-cpp-python",
                model.server().name()
            )));
        }
    }
    Ok(Some(draft))
}

/// A model loaded here or served elsewhere: what the front ends (the CLI, the apps' engine
/// host) hold and answer with.
pub enum AnyModel {
    Local(Box<Model>),
    Remote(Box<RemoteModel>),
}

impl AnyModel {
    /// Whether the model is causal (a served model always is).
    pub fn causal(&self) -> bool {
        match self {
            Self::Local(m) => m.transformer.config().objective == Objective::Causal,
            Self::Remote(_) => true,
        }
    }

    /// The tokenizer its sequences are in.
    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        match self {
            Self::Local(m) => m.tokenizer(),
            Self::Remote(m) => Ok(m.tokenizer()),
        }
    }

    /// The model on a server, if it is one (ETS-IS over a server takes its draft served).
    pub fn served(&self) -> Option<&RemoteModel> {
        match self {
            Self::Local(_) => None,
            Self::Remote(m) => Some(m),
        }
    }

    /// The model loaded here, if it is one (a draft, a reward's model and benchmarks need one).
    pub fn local(&self) -> Option<&Model> {
        match self {
            Self::Local(m) => Some(m),
            Self::Remote(_) => None,
        }
    }
}

impl Solves for AnyModel {
    async fn solve(
        &self,
        question: &str,
        spec: &ValidSpec,
        options: SolveOptions<'_>,
        observe: &mut dyn FnMut(&TraceEvent),
    ) -> Result<Solution> {
        match self {
            Self::Local(m) => m.solve(question, spec, options, observe).await,
            Self::Remote(m) => Solves::solve(m.as_ref(), question, spec, options, observe).await,
        }
    }
}

/// A transformer whose forward passes give the [`Pause`] (if any) a turn once the run has
/// computed for [`PAUSE_EVERY`], and report the cache they leave to the [`KvPeak`] (if any).
struct Paced<'m> {
    model: &'m Transformer,
    pause: Option<&'m dyn Pause>,
    last_pause: Cell<Instant>,
    kv_peak: Option<&'m KvPeak>,
}

impl<'m> Paced<'m> {
    fn new(
        model: &'m Transformer,
        pause: Option<&'m dyn Pause>,
        kv_peak: Option<&'m KvPeak>,
    ) -> Self {
        Self {
            model,
            pause,
            last_pause: Cell::new(Instant::now()),
            kv_peak,
        }
    }
}

impl LanguageModel for Paced<'_> {
    type Cache = <Transformer as LanguageModel>::Cache;
    type Logits = <Transformer as LanguageModel>::Logits;

    fn vocab_size(&self) -> usize {
        LanguageModel::vocab_size(self.model)
    }
    fn objective(&self) -> Objective {
        LanguageModel::objective(self.model)
    }
    fn max_positions(&self) -> usize {
        LanguageModel::max_positions(self.model)
    }
    fn new_cache(&self, batch: usize) -> Self::Cache {
        LanguageModel::new_cache(self.model, batch)
    }
    async fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut Self::Cache,
        logits_for: LogitsFor,
    ) -> Result<Self::Logits> {
        if let Some(pause) = self.pause
            && self.last_pause.get().elapsed() >= PAUSE_EVERY
        {
            pause.pause().await;
            self.last_pause.set(Instant::now());
        }
        let logits = LanguageModel::forward(self.model, chunks, cache, logits_for).await?;
        if let Some(peak) = self.kv_peak {
            peak.record(cache);
        }
        Ok(logits)
    }
    fn select(&self, cache: &Self::Cache, rows: &[usize]) -> Result<Self::Cache> {
        LanguageModel::select(self.model, cache, rows)
    }
    fn concat(&self, caches: Vec<Self::Cache>) -> Result<Self::Cache> {
        LanguageModel::concat(self.model, caches)
    }
}
