//! The engine host: owns the device and the loaded models and runs the UI's requests against
//! the engine. It is the same code in both homes; what differs is its [`Platform`]: a web
//! worker in the browser ([`crate::browser`]), a thread of the desktop app's process.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ets_engine::backend::{Device, check_fits};
use ets_engine::decode::lm::LanguageModel;
use ets_engine::model::config::{ModelConfig, Objective};
use ets_engine::model::files::ModelFiles;
use ets_engine::model::transformer::Transformer;
use ets_engine::strategy::Solver;
use ets_engine::trace::TraceEvent;
use ets_engine::{LogitsFor, Model};
use web_time::Instant;

use crate::models::{CachedModel, ModelSource, StorageError, TEXT_FILES, file_prefix, shard_names};
use crate::protocol::{BackendInfo, ModelInfo, Request, Response, SolveRequest};

/// Longest stretch, in ms, a run computes without giving the event loop a turn (so a Stop
/// request gets through to a worker on the CPU backend, whose forward passes never wait).
const YIELD_EVERY_MS: u128 = 40;

/// Where the host runs: it starts the device and keeps model files.
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// Starts the device: the GPU when `prefer_gpu` and one is usable, the CPU otherwise (with a
    /// notice saying why, when the GPU was wanted).
    async fn start_device(&self, prefer_gpu: bool) -> (Device, BackendInfo);

    /// File `name` of model `id` from `source`, downloaded and cached if need be, reporting
    /// (bytes so far, total bytes); None when the source has no such file.
    async fn model_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &dyn Fn(u64, Option<u64>),
    ) -> Result<Option<Vec<u8>>, StorageError>;

    /// Records a model in the cache manager.
    async fn record(&self, model: &CachedModel) -> Result<(), StorageError>;

    /// The models in the cache manager, sorted by id.
    async fn list_cached(&self) -> Result<Vec<CachedModel>, StorageError>;

    /// Deletes model `id` from the cache (a folder opened in place is only forgotten, never
    /// deleted); returns the models left.
    async fn delete_cached(&self, id: &str) -> Result<Vec<CachedModel>, StorageError>;

    /// Gives the event loop a turn, where the host shares a thread with one.
    async fn yield_now(&self);
}

/// The device and the models of one engine.
pub struct Host<P: Platform> {
    platform: P,
    /// The device and what it is, once started.
    device: RefCell<Option<(Device, BackendInfo)>>,
    models: RefCell<HashMap<String, Rc<Model>>>,
    /// Raised by a Stop request (possibly from another thread); cleared when a run starts.
    stop: Arc<AtomicBool>,
}

impl<P: Platform> Host<P> {
    /// A host with no device started and no model loaded; raising `stop` (from any thread)
    /// stops the run in progress at its next forward pass.
    pub fn new(platform: P, stop: Arc<AtomicBool>) -> Self {
        Self {
            platform,
            device: RefCell::default(),
            models: RefCell::default(),
            stop,
        }
    }

    /// Runs one request to its end, answering through `respond`.
    pub async fn handle(&self, request: Request, respond: &dyn Fn(Response)) {
        let failed = |run, message: String| respond(Response::Failed { run, message });
        match request {
            Request::Init { prefer_gpu } => respond(Response::Ready(self.init(prefer_gpu).await)),
            Request::Load { id, source } => {
                let progress = |file: &str, done, total| {
                    respond(Response::Progress {
                        task: format!("{id}: {file}"),
                        done,
                        total,
                    })
                };
                match self.load(&id, &source, &progress).await {
                    Ok(info) => respond(Response::Loaded(info)),
                    Err(message) => failed(None, message),
                }
            }
            Request::ListCache => match self.platform.list_cached().await {
                Ok(models) => respond(Response::Cache(models)),
                Err(e) => failed(None, e.to_string()),
            },
            Request::DeleteCached { id } => {
                self.models.borrow_mut().remove(&id);
                match self.platform.delete_cached(&id).await {
                    Ok(models) => respond(Response::Cache(models)),
                    Err(e) => failed(None, e.to_string()),
                }
            }
            Request::Solve(request) => {
                let run = request.run;
                let emit = |event| respond(Response::Trace { run, event });
                match self.solve(&request, &emit).await {
                    Ok(answer) => respond(Response::Finished { run, answer }),
                    Err(message) => failed(Some(run), message),
                }
            }
            Request::Stop => self.stop.store(true, Ordering::Relaxed),
        }
    }

    /// Starts the device (see [`Platform::start_device`]); later calls return the same backend.
    async fn init(&self, prefer_gpu: bool) -> BackendInfo {
        if let Some((_, info)) = self.device.borrow().as_ref() {
            return info.clone();
        }
        let (device, info) = self.platform.start_device(prefer_gpu).await;
        *self.device.borrow_mut() = Some((device, info.clone()));
        info
    }

    /// Loads model `id` from `source`, reporting per-file progress as (file, bytes, total).
    /// The model's largest weight is checked against the device's buffer limit before any
    /// weights are fetched.
    async fn load(
        &self,
        id: &str,
        source: &ModelSource,
        progress: &dyn Fn(&str, u64, Option<u64>),
    ) -> Result<ModelInfo, String> {
        let device = self
            .device
            .borrow()
            .as_ref()
            .map(|(device, _)| device.clone())
            .ok_or("the engine is not started")?;
        let files = self
            .model_files(id, source, &device, progress)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
        if matches!(source, ModelSource::Url { .. } | ModelSource::Folder { .. }) {
            let manifest = CachedModel::new(id, source.clone(), &files);
            self.platform
                .record(&manifest)
                .await
                .map_err(|e| e.to_string())?;
        }
        let model = Model::from_files(ModelFiles::from_memory(files), &device)
            .map_err(|e| format!("model {id}: {e}"))?;
        let config = model.transformer.config();
        let info = ModelInfo {
            id: id.to_string(),
            architecture: config.architecture.hf_name().to_string(),
            diffusion: config.objective != Objective::Causal,
            parameters: config.parameter_count(),
            bytes,
        };
        self.models
            .borrow_mut()
            .insert(id.to_string(), Rc::new(model));
        Ok(info)
    }

    /// Every file of model `id`: (name, bytes): the text files, then the weights (one file, or
    /// the shards an index names). config.json is checked against `device` first.
    async fn model_files(
        &self,
        id: &str,
        source: &ModelSource,
        device: &Device,
        progress: &dyn Fn(&str, u64, Option<u64>),
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let fetch = async |name: &str| {
            let report = |done, total| progress(name, done, total);
            self.platform.model_file(id, source, name, &report).await
        };
        let missing = |what: String| StorageError(format!("model {id} has no {what}"));
        let mut files = Vec::new();
        for (i, name) in TEXT_FILES.iter().enumerate() {
            let file = fetch(name).await?;
            if i == 0
                && let Some(config) = &file
            {
                check_config(device, config)
                    .map_err(|e| StorageError(format!("model {id}: {e}")))?;
            }
            match file {
                Some(bytes) => files.push((name.to_string(), bytes)),
                None if i < 2 => {
                    return Err(missing(format!("{name} ({})", file_prefix(id, source))));
                }
                None => {}
            }
        }
        if let Some(bytes) = fetch("model.safetensors").await? {
            files.push(("model.safetensors".to_string(), bytes));
            return Ok(files);
        }
        let index = "model.safetensors.index.json";
        let Some(bytes) = fetch(index).await? else {
            return Err(missing(format!("model.safetensors nor {index}")));
        };
        for shard in shard_names(&bytes)? {
            let Some(data) = fetch(&shard).await? else {
                return Err(missing(format!("shard {shard}")));
            };
            files.push((shard, data));
        }
        files.push((index.to_string(), bytes));
        Ok(files)
    }

    /// Runs `request`, handing each trace event to `emit`; returns the answer.
    async fn solve(
        &self,
        request: &SolveRequest,
        emit: &dyn Fn(TraceEvent),
    ) -> Result<Option<String>, String> {
        let model = |id: &str| {
            self.models
                .borrow()
                .get(id)
                .cloned()
                .ok_or_else(|| format!("model {id} is not loaded"))
        };
        let target = model(&request.model)?;
        let draft = request.draft.as_deref().map(model).transpose()?;
        let tokenizer = target.tokenizer().map_err(|e| e.to_string())?;
        if request.question.trim().is_empty() {
            return Err("the question is empty".into());
        }
        let prompt = tokenizer
            .encode(&request.question, true)
            .map_err(|e| e.to_string())?;
        let stop_ids = target.stop_ids();
        let detokenize = |ids: &[u32]| tokenizer.decode(ids);
        let target_model = Yielding::new(&target.transformer, &self.platform);
        let draft_model = draft
            .as_ref()
            .map(|d| Yielding::new(&d.transformer, &self.platform));
        self.stop.store(false, Ordering::Relaxed);
        let solver = Solver {
            target: &target_model,
            draft: draft_model.as_ref(),
            stop_ids: &stop_ids,
            detokenize: &detokenize,
            stop: Some(&self.stop),
        };
        let mut reward = request.spec.reward.build(None).map_err(|e| e.to_string())?;
        let mut observe = |event: &TraceEvent| emit(event.clone());
        let solution = solver
            .solve(&prompt, &request.spec, 0, reward.as_mut(), &mut observe)
            .await
            .map_err(|e| e.to_string())?;
        Ok(solution.answer)
    }
}

/// Parses config.json and checks the model's largest weight fits one buffer of `device`.
fn check_config(device: &Device, bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("config.json: {e}"))?;
    let config = ModelConfig::from_json(text).map_err(|e| e.to_string())?;
    check_fits(
        device,
        "its largest weight matrix",
        config.largest_weight_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// A transformer that gives the platform's event loop a turn between forward passes once it
/// has computed for [`YIELD_EVERY_MS`].
struct Yielding<'m, P: Platform> {
    model: &'m Transformer,
    platform: &'m P,
    last_yield: Cell<Instant>,
}

impl<'m, P: Platform> Yielding<'m, P> {
    fn new(model: &'m Transformer, platform: &'m P) -> Self {
        Self {
            model,
            platform,
            last_yield: Cell::new(Instant::now()),
        }
    }
}

impl<P: Platform> LanguageModel for Yielding<'_, P> {
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
    ) -> ets_engine::Result<Self::Logits> {
        if self.last_yield.get().elapsed().as_millis() >= YIELD_EVERY_MS {
            self.platform.yield_now().await;
            self.last_yield.set(Instant::now());
        }
        LanguageModel::forward(self.model, chunks, cache, logits_for).await
    }
    fn select(&self, cache: &Self::Cache, rows: &[usize]) -> ets_engine::Result<Self::Cache> {
        LanguageModel::select(self.model, cache, rows)
    }
    fn concat(&self, caches: Vec<Self::Cache>) -> ets_engine::Result<Self::Cache> {
        LanguageModel::concat(self.model, caches)
    }
}
