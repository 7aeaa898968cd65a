//! The engine host: owns the device and the loaded models and runs the UI's requests against
//! the engine ([`Model::solve`] for a question). It is the same code in both homes; what differs
//! is its [`Platform`]: a web worker in the browser, a thread of the desktop app's process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use ets_engine::Model;
use ets_engine::backend::{
    Device, cap_buffer_limit, cpu_device, device_lost, device_memory, max_buffer_bytes,
    resident_host_memory,
};
use ets_engine::model::config::{ModelConfig, Objective};
use ets_engine::model::files::ModelFiles;
use ets_engine::model::gguf::GgufFile;
use ets_engine::model::gguf_model::config_from_gguf;
use ets_engine::model::random_access::RandomAccessFile;
use ets_engine::remote::{Endpoint, HttpOptions, RemoteModel};
use ets_engine::solve::{AnyModel, Pause, SolveOptions, Solves};
use ets_engine::trace::TraceEvent;

use ets_protocol::models::{
    CachedModel, ModelCheck, ModelSource, Progress, StorageError, TEXT_FILES, bundled_context,
    file_prefix, format_bytes, is_gguf,
};
use ets_protocol::{BackendInfo, MemoryReading, ModelInfo, Request, Response, SolveRequest};

use crate::stop::{StopMark, StopSignal};

/// Reports a model load's progress: (file name, bytes so far, the file's total when known); an
/// error ends the load with it.
type FileProgress<'a> = dyn Fn(&str, u64, Option<u64>) -> Result<(), StorageError> + 'a;

/// How often a run shows the texts it is decoding: about ten times a second, enough for text
/// that streams in and few enough messages for a worker or a desktop window to take.
pub const DRAFTS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Where the host runs: it starts the device and keeps model files.
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// Starts the device: the GPU when `prefer_gpu` and one is usable, the CPU otherwise (with a
    /// notice saying why, when the GPU was wanted).
    async fn start_device(&self, prefer_gpu: bool) -> (Device, BackendInfo);

    /// The CPU backend as the platform describes it, with `notice` saying why it is used.
    fn cpu_backend(&self, notice: Option<String>) -> BackendInfo;

    /// File `name` of model `id` from `source`, downloaded and cached if need be, reporting
    /// (bytes so far, total bytes); None when the source has no such file.
    async fn model_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Vec<u8>>, StorageError>;

    /// The weights file (a GGUF or safetensors file) `name` of model `id` from `source`, found,
    /// downloaded and cached as [`Platform::model_file`] does it, but opened to be read a range
    /// at a time: the model then loads tensor by tensor, never holding the whole file in memory.
    async fn weights_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError>;

    /// File `name` of model `source` (a URL) on its server, read a range at a time without
    /// downloading it (a check before a download); None when the server has no such file.
    async fn remote_file(
        &self,
        source: &ModelSource,
        name: &str,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError>;

    /// Bytes the model store may still take (a browser's quota less its usage, the desktop's
    /// free disk), where known.
    async fn storage_room(&self) -> Option<u64>;

    /// The largest model file the platform can load, where it has such a limit (a browser's
    /// CPU backend holds a file in wasm32 memory, and downloads refuse larger files).
    fn max_file_bytes(&self) -> Option<u64> {
        None
    }

    /// Records a model in the cache manager.
    async fn record(&self, model: &CachedModel) -> Result<(), StorageError>;

    /// The models in the cache manager, sorted by id.
    async fn list_cached(&self) -> Result<Vec<CachedModel>, StorageError>;

    /// Deletes model `id` from the cache (a folder opened in place is only forgotten, never
    /// deleted); returns the models left.
    async fn delete_cached(&self, id: &str) -> Result<Vec<CachedModel>, StorageError>;

    /// Deletes the files a download of model `id` from `source` left in the cache before it
    /// failed (no manifest names them yet): a failed download leaves nothing behind.
    async fn discard_download(&self, id: &str, source: &ModelSource) -> Result<(), StorageError>;

    /// Gives the event loop a turn, where the host shares a thread with one.
    async fn yield_now(&self);
}

/// The device and the models of one engine.
pub struct Host<P: Platform> {
    platform: P,
    /// The device and what it is, once started.
    device: RefCell<Option<(Device, BackendInfo)>>,
    /// The models loaded here, and those served by an inference server.
    models: RefCell<HashMap<String, Rc<AnyModel>>>,
    /// Where each loaded model came from, in the order they loaded: what reloads them when the
    /// device changes.
    sources: RefCell<Vec<(String, ModelSource)>>,
    /// Raised by a Stop (possibly from another thread): see [`StopSignal`].
    stop: Arc<StopSignal>,
}

impl<P: Platform> Host<P> {
    /// A host with no device started and no model loaded; raising `stop` (from any thread)
    /// stops the run or download in progress and the requests received before it.
    pub fn new(platform: P, stop: Arc<StopSignal>) -> Self {
        Self {
            platform,
            device: RefCell::default(),
            models: RefCell::default(),
            sources: RefCell::default(),
            stop,
        }
    }

    /// Runs one request, received at `received` ([`StopSignal::mark`]), to its end, answering
    /// through `respond`. A run, load, check or benchmark asked for before a later Stop is
    /// refused with a message instead.
    pub async fn handle(&self, request: Request, received: StopMark, respond: &dyn Fn(Response)) {
        let failed = |run, message: String| respond(Response::Failed { run, message });
        if let Some((run, what)) = stoppable(&request)
            && !self.stop.begin(received)
        {
            return failed(run, what);
        }
        match request {
            Request::Init {
                prefer_gpu,
                max_buffer_bytes,
            } => respond(Response::Ready(
                self.init(prefer_gpu, max_buffer_bytes).await,
            )),
            Request::Load { id, source } => {
                if let Err(message) = self.load_reporting(&id, &source, respond).await {
                    self.fail(None, message, respond).await;
                }
            }
            Request::ListCache => match self.platform.list_cached().await {
                Ok(models) => respond(Response::Cache(models)),
                Err(e) => failed(None, e.to_string()),
            },
            Request::DeleteCached { id } => {
                self.models.borrow_mut().remove(&id);
                self.sources
                    .borrow_mut()
                    .retain(|(loaded, _)| *loaded != id);
                match self.platform.delete_cached(&id).await {
                    Ok(models) => respond(Response::Cache(models)),
                    Err(e) => failed(None, e.to_string()),
                }
            }
            Request::Solve(request) => {
                let run = request.run;
                let emit = |event| respond(Response::Trace { run, event });
                match self.solve(&request, &emit).await {
                    Ok(answer) => respond(Response::Finished {
                        run,
                        answer,
                        memory: self.memory(),
                    }),
                    Err(message) => self.fail(Some(run), message, respond).await,
                }
            }
            Request::Stop => self.stop.raise(),
            Request::Check { source } => respond(Response::Checked(self.check(&source).await)),
            Request::Bench { model, settings } => {
                let loaded = match self.local_model(&model) {
                    Ok(loaded) => loaded,
                    Err(message) => return failed(None, message),
                };
                let Some(loaded) = loaded.local() else {
                    return failed(None, format!("model {model} is not loaded here"));
                };
                match ets_engine::bench::run(loaded, &settings).await {
                    Ok(figures) => respond(Response::Bench { model, figures }),
                    Err(e) => {
                        let message = format!("benchmark of {model}: {e}");
                        self.fail(None, message, respond).await;
                    }
                }
            }
        }
    }

    /// Starts the device (see [`Platform::start_device`]), its buffers taken to hold at most
    /// `buffer_cap` bytes when given; later calls return the same backend.
    async fn init(&self, prefer_gpu: bool, buffer_cap: Option<u64>) -> BackendInfo {
        if let Some((_, info)) = self.device.borrow().as_ref() {
            return info.clone();
        }
        let (device, mut info) = self.platform.start_device(prefer_gpu).await;
        if let Some(cap) = buffer_cap {
            cap_buffer_limit(&device, cap);
            info.max_buffer_bytes = max_buffer_bytes(&device);
        }
        *self.device.borrow_mut() = Some((device, info.clone()));
        info
    }

    /// Loads model `id` from `source`, answering with its progress and then `Loaded`; the
    /// error's message when it fails.
    async fn load_reporting(
        &self,
        id: &str,
        source: &ModelSource,
        respond: &dyn Fn(Response),
    ) -> Result<(), String> {
        let progress = |file: &str, done, total| {
            if self.stop.raised() {
                return Err(StorageError(format!("loading {id} stopped")));
            }
            respond(Response::Progress {
                task: format!("{id}: {file}"),
                done,
                total,
            });
            Ok(())
        };
        let info = self.load(id, source, &progress).await?;
        respond(Response::Loaded(info));
        Ok(())
    }

    /// Answers a request that failed with `message` (run `run`, if a run). When the GPU it ran
    /// on is gone (a driver reset, a GPU removed, a browser taking its device back), the answer
    /// says so instead — the error it surfaced as may not — and the engine moves to the CPU
    /// ([`Host::move_to_cpu`]).
    async fn fail(&self, run: Option<u64>, message: String, respond: &dyn Fn(Response)) {
        match self.lost_device().await {
            Some(reason) => {
                respond(Response::Failed {
                    run,
                    message: format!("the GPU was lost ({reason})"),
                });
                self.move_to_cpu(&reason, respond).await;
            }
            None => respond(Response::Failed { run, message }),
        }
    }

    /// Answers a request that panicked (`why`; run `run`, if a run) when its platform caught the
    /// panic, as [`Host::fail`] does: a lost GPU can surface as a wgpu validation error before
    /// it is reported lost.
    pub async fn fail_after_panic(&self, run: Option<u64>, why: &str, respond: &dyn Fn(Response)) {
        self.fail(run, format!("the engine failed: {why}"), respond)
            .await;
    }

    /// Why the engine's GPU is gone, if it is (None on the CPU and on a GPU that works).
    async fn lost_device(&self) -> Option<String> {
        let device = self
            .device
            .borrow()
            .as_ref()
            .map(|(device, _)| device.clone())?;
        device_lost(&device).await
    }

    /// Moves the engine to the CPU after its GPU was lost (`reason`): answers `Ready` with the
    /// CPU backend and a notice saying why, then reloads the models that were loaded, as `Load`
    /// does (progress, then `Loaded` or a failure for each).
    async fn move_to_cpu(&self, reason: &str, respond: &dyn Fn(Response)) {
        let notice = format!(
            "The GPU was lost ({reason}): the engine runs on the CPU now, slower. Restart the \
             app to use the GPU again.",
        );
        let cpu = self.platform.cpu_backend(Some(notice));
        *self.device.borrow_mut() = Some((cpu_device(), cpu.clone()));
        self.models.borrow_mut().clear();
        respond(Response::Ready(cpu));
        let sources = self.sources.borrow().clone();
        for (id, source) in sources {
            if let Err(message) = self.load_reporting(&id, &source, respond).await {
                respond(Response::Failed {
                    run: None,
                    message: format!("reloading {id} on the CPU: {message}"),
                });
            }
        }
    }

    /// The memory the host holds now: host memory, and the device's pools once started.
    fn memory(&self) -> MemoryReading {
        let device = self.device.borrow();
        MemoryReading {
            host_bytes: resident_host_memory(),
            device_bytes: device
                .as_ref()
                .and_then(|(device, _)| device_memory(device))
                .map(|m| m.reserved_bytes),
        }
    }

    /// Loads model `id` from `source`, reporting per-file progress as (file, bytes, total).
    /// Its config.json is parsed before any weights are fetched.
    async fn load(
        &self,
        id: &str,
        source: &ModelSource,
        progress: &FileProgress<'_>,
    ) -> Result<ModelInfo, String> {
        if let ModelSource::Server { .. } = source {
            let (model, info) = self.connect(id, source, progress).await?;
            self.keep(id, source, model);
            return Ok(info);
        }
        let device = self
            .device
            .borrow()
            .as_ref()
            .map(|(device, _)| device.clone())
            .ok_or("the engine is not started")?;
        let files = match self.model_files(id, source, progress).await {
            Ok(files) => files,
            Err(e) => {
                // A download cut off (quota, network, a missing file): its files go too, unless
                // the model was cached whole before.
                if matches!(source, ModelSource::Url { .. }) {
                    let recorded = self.platform.list_cached().await.ok();
                    if recorded.is_some_and(|models| models.iter().all(|m| m.id != id)) {
                        let _ = self.platform.discard_download(id, source).await;
                    }
                }
                return Err(e.to_string());
            }
        };
        let (files, sizes) = files;
        let bytes = sizes.iter().map(|(_, size)| size).sum();
        if matches!(source, ModelSource::Url { .. } | ModelSource::Folder { .. }) {
            let manifest = CachedModel::with_sizes(id, source.clone(), sizes);
            self.platform
                .record(&manifest)
                .await
                .map_err(|e| e.to_string())?;
        }
        let model = Model::from_files(files, &device).map_err(|e| format!("model {id}: {e}"))?;
        let config = model.transformer.config();
        let info = ModelInfo {
            id: id.to_string(),
            architecture: config.architecture.hf_name().to_string(),
            diffusion: config.objective != Objective::Causal,
            parameters: config.parameter_count(),
            bytes,
            context: config.max_position_embeddings,
            split_matrices: model.transformer.matrices_in_parts(),
            served_by: None,
        };
        self.keep(id, source, AnyModel::Local(Box::new(model)));
        Ok(info)
    }

    /// Keeps `model`, loaded (or connected to) from `source`, as model `id`.
    fn keep(&self, id: &str, source: &ModelSource, model: AnyModel) {
        self.models
            .borrow_mut()
            .insert(id.to_string(), Rc::new(model));
        let mut sources = self.sources.borrow_mut();
        sources.retain(|(loaded, _)| loaded != id);
        sources.push((id.to_string(), source.clone()));
    }

    /// Connects model `id` to the inference server `source` names: reads the tokenizer of the
    /// model it names (its files, not its weights), asks the server for its models, and
    /// records the server in the cache manager (without its API key).
    async fn connect(
        &self,
        id: &str,
        source: &ModelSource,
        progress: &FileProgress<'_>,
    ) -> Result<(AnyModel, ModelInfo), String> {
        let ModelSource::Server {
            url,
            model,
            tokenizer,
            api_key,
        } = source
        else {
            return Err(format!("model {id} is not on a server"));
        };
        let tokenizer_source = self.source_of(tokenizer).await?;
        if let ModelSource::Server { .. } = tokenizer_source {
            return Err(format!(
                "model {tokenizer} is itself on a server: take the tokenizer of a model whose \
                 files are here"
            ));
        }
        let (files, _) = self
            .model_files(tokenizer, &tokenizer_source, progress)
            .await
            .map_err(|e| e.to_string())?;
        let (text_tokenizer, context) =
            Model::tokenizer_of(files).map_err(|e| format!("the tokenizer of {tokenizer}: {e}"))?;
        progress(&format!("connecting to {url}"), 0, None).map_err(|e| e.to_string())?;
        let endpoint = Endpoint {
            url: url.clone(),
            api_key: api_key.clone(),
            model: model.clone(),
            prompt_ids: None,
            context: None,
            use_n: None,
            http: HttpOptions::default(),
        };
        let served =
            RemoteModel::connect(&endpoint, text_tokenizer, context, Some(self.stop.flag()))
                .await
                .map_err(|e| format!("connecting to {url}: {e}"))?;
        let info = ModelInfo {
            id: id.to_string(),
            architecture: format!("{} on {}", served.name(), served.server().name()),
            diffusion: false,
            parameters: 0,
            bytes: 0,
            context: ets_engine::decode::lm::LanguageModel::max_positions(&served),
            split_matrices: 0,
            served_by: Some(format!(
                "{} at {} (tokenizer of {tokenizer})",
                served.server().name(),
                served.url()
            )),
        };
        let manifest = CachedModel::with_sizes(id, source.without_secrets(), Vec::new());
        self.platform
            .record(&manifest)
            .await
            .map_err(|e| e.to_string())?;
        Ok((AnyModel::Remote(Box::new(served)), info))
    }

    /// Where model `id` in the list comes from: bundled, loaded, or in the cache manager.
    async fn source_of(&self, id: &str) -> Result<ModelSource, String> {
        if bundled_context(id).is_some() {
            return Ok(ModelSource::Bundled);
        }
        let loaded = self.sources.borrow().iter().find(|(l, _)| l == id).cloned();
        if let Some((_, source)) = loaded {
            return Ok(source);
        }
        let cached = self
            .platform
            .list_cached()
            .await
            .map_err(|e| e.to_string())?;
        cached
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.source)
            .ok_or_else(|| format!("there is no model {id} to take the tokenizer from"))
    }

    /// Every file of model `id`, and each one's (name, bytes): its GGUF file, or the text files,
    /// then the weights (one file, or the shards an index names); weights files are opened to be
    /// read a tensor at a time. config.json is parsed first.
    async fn model_files(
        &self,
        id: &str,
        source: &ModelSource,
        progress: &FileProgress<'_>,
    ) -> Result<(ModelFiles, Vec<(String, u64)>), StorageError> {
        let fetch = async |name: &str| {
            let report = |done, total| progress(name, done, total);
            self.platform.model_file(id, source, name, &report).await
        };
        let missing = |what: String| StorageError(format!("model {id} has no {what}"));
        // One GGUF file holds the whole model: the one the source names, or the one an
        // import of picked files stored.
        let gguf = match source {
            ModelSource::Local => self
                .platform
                .list_cached()
                .await?
                .into_iter()
                .find(|m| m.id == id)
                .and_then(|m| {
                    m.files
                        .into_iter()
                        .map(|(name, _)| name)
                        .find(|n| is_gguf(n))
                }),
            source => source.gguf_file().map(str::to_string),
        };
        if let Some(name) = gguf {
            let report = |done, total| progress(&name, done, total);
            let file = self
                .platform
                .weights_file(id, source, &name, &report)
                .await?
                .ok_or_else(|| missing(format!("{name} ({})", file_prefix(id, source))))?;
            let sizes = vec![(name.clone(), file.len())];
            let mut files = ModelFiles::default();
            files.insert_ranges(&name, file);
            return Ok((files, sizes));
        }
        let mut files = Vec::new();
        for (i, name) in TEXT_FILES.iter().enumerate() {
            let file = fetch(name).await?;
            if i == 0
                && let Some(config) = &file
            {
                check_config(config).map_err(|e| StorageError(format!("model {id}: {e}")))?;
            }
            match file {
                Some(bytes) => files.push((name.to_string(), bytes)),
                None if i < 2 => {
                    return Err(missing(format!("{name} ({})", file_prefix(id, source))));
                }
                None => {}
            }
        }
        // The weights are opened to be read a tensor at a time, never held whole.
        let weights = async |name: &str| {
            let report = |done, total| progress(name, done, total);
            self.platform.weights_file(id, source, name, &report).await
        };
        let mut sizes: Vec<(String, u64)> = files
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect();
        let mut model = ModelFiles::from_memory(files);
        let mut add = |model: &mut ModelFiles, name: &str, file: Arc<dyn RandomAccessFile>| {
            sizes.push((name.to_string(), file.len()));
            model.insert_ranges(name, file);
        };
        if let Some(file) = weights("model.safetensors").await? {
            add(&mut model, "model.safetensors", file);
            return Ok((model, sizes));
        }
        let index = "model.safetensors.index.json";
        let Some(bytes) = fetch(index).await? else {
            return Err(missing(format!("model.safetensors nor {index}")));
        };
        for shard in shard_names(&bytes)? {
            let Some(file) = weights(&shard).await? else {
                return Err(missing(format!("shard {shard}")));
            };
            add(&mut model, &shard, file);
        }
        sizes.push((index.to_string(), bytes.len() as u64));
        model.insert(index, bytes);
        Ok((model, sizes))
    }

    /// Checks, before anything downloads, whether the model at `source` (a URL) would load and
    /// fit: the server's sizes; a GGUF file's header (architecture, hyperparameters, every
    /// tensor's block type: read by ranges, the weights untouched) or a repository's
    /// config.json; against the storage left, the platform's file limit and the device.
    async fn check(&self, source: &ModelSource) -> ModelCheck {
        let ModelSource::Url { base, file } = source else {
            return ModelCheck {
                problems: vec!["only a model from a URL is checked before it downloads".into()],
                ..ModelCheck::default()
            };
        };
        let mut check = ModelCheck {
            location: match file {
                Some(name) => format!("{}/{name}", base.trim_end_matches('/')),
                None => base.clone(),
            },
            ..ModelCheck::default()
        };
        let found = match file {
            Some(name) => self.check_gguf(source, name, &mut check).await,
            None => self.check_repository(source, &mut check).await,
        };
        if let Err(e) = found {
            check.problems.push(e);
            return check;
        }
        let fmt = format_bytes;
        if let (Some(bytes), Some(room)) =
            (check.download_bytes, self.platform.storage_room().await)
            && bytes > room
        {
            check.problems.push(format!(
                "it needs {} of storage and {} are left for this app: delete a cached model or \
                 free some disk space",
                fmt(bytes),
                fmt(room)
            ));
        }
        let backend = self.device.borrow().as_ref().map(|(_, info)| info.clone());
        let on_gpu = backend.as_ref().is_some_and(|b| b.kind != "cpu");
        if let (Some(limit), Some(bytes)) = (self.platform.max_file_bytes(), check.download_bytes)
            && bytes > limit
        {
            check.problems.push(format!(
                "its {} are more than this app takes in one file here ({}): use a smaller \
                 quantization, or the desktop app",
                fmt(bytes),
                fmt(limit)
            ));
        }
        if let (true, Some(weights)) = (on_gpu, check.weight_bytes) {
            check.notes.push(format!(
                "its weights take {} of GPU memory, which WebGPU does not report: on a GPU with \
                 less, the load fails with a message",
                fmt(weights)
            ));
        }
        check
    }

    /// A GGUF file's part of [`Host::check`]: its size and header.
    async fn check_gguf(
        &self,
        source: &ModelSource,
        name: &str,
        check: &mut ModelCheck,
    ) -> Result<(), String> {
        let file = self
            .platform
            .remote_file(source, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the server has no file {name}"))?;
        check.download_bytes = Some(file.len());
        let header = GgufFile::read_header(name, file.as_ref()).map_err(|e| e.to_string())?;
        let config = config_from_gguf(name, &header).map_err(|e| e.to_string())?;
        check.architecture = Some(config.architecture.hf_name().to_string());
        check.parameters = Some(config.parameter_count() as u64);
        check.weight_bytes = Some(header.tensors.iter().map(|t| t.range.len() as u64).sum());
        Ok(())
    }

    /// A repository's part of [`Host::check`]: config.json (a few kB, read whole) and the
    /// sizes of its weights (one file or an index's shards).
    async fn check_repository(
        &self,
        source: &ModelSource,
        check: &mut ModelCheck,
    ) -> Result<(), String> {
        let remote = async |name: &str| {
            self.platform
                .remote_file(source, name)
                .await
                .map_err(|e| e.to_string())
        };
        let small = |file: &dyn RandomAccessFile, name: &str| {
            if file.len() > 16 << 20 {
                return Err(format!("{name} is larger than 16 MB: not a model's {name}"));
            }
            file.read_range(0..file.len())
                .map_err(|e| format!("reading {name}: {e}"))
        };
        let config_file = remote("config.json")
            .await?
            .ok_or("the repository has no config.json")?;
        let config_bytes = small(config_file.as_ref(), "config.json")?;
        let text = std::str::from_utf8(&config_bytes).map_err(|e| format!("config.json: {e}"))?;
        let config = ModelConfig::from_json(text).map_err(|e| e.to_string())?;
        check.architecture = Some(config.architecture.hf_name().to_string());
        check.parameters = Some(config.parameter_count() as u64);
        let mut bytes = config_file.len();
        for name in TEXT_FILES.iter().skip(1) {
            match remote(name).await? {
                Some(f) => bytes += f.len(),
                None if *name == "tokenizer.json" => {
                    return Err("the repository has no tokenizer.json".into());
                }
                None => {}
            }
        }
        let weights = match remote("model.safetensors").await? {
            Some(f) => f.len(),
            None => {
                let index_name = "model.safetensors.index.json";
                let index = remote(index_name)
                    .await?
                    .ok_or("the repository has no model.safetensors nor an index of shards")?;
                let index_bytes = small(index.as_ref(), index_name)?;
                bytes += index.len();
                let mut shards = 0;
                for shard in shard_names(&index_bytes).map_err(|e| e.to_string())? {
                    let f = remote(&shard)
                        .await?
                        .ok_or_else(|| format!("the repository has no shard {shard}"))?;
                    shards += f.len();
                }
                shards
            }
        };
        check.download_bytes = Some(bytes + weights);
        check.weight_bytes = Some(weights);
        check.notes.push(
            "weights stored as floats load as f32 (twice a bf16 file's size in memory)".into(),
        );
        Ok(())
    }

    /// Runs `request`, handing each trace event to `emit`; returns the answer.
    async fn solve(
        &self,
        request: &SolveRequest,
        emit: &dyn Fn(TraceEvent),
    ) -> Result<Option<String>, String> {
        let target = self.model(&request.model)?;
        // A draft is loaded here or, for a served model's ETS-IS, served too; a reward read by
        // a model (`model:ID`, `lm:ID`) is loaded here.
        let draft = request
            .draft
            .as_deref()
            .map(|id| self.model(id))
            .transpose()?;
        let reward_model = (request.spec.reward.model_name())
            .map(|id| self.local_model(id))
            .transpose()?;
        let pause = PlatformPause(&self.platform);
        let options = SolveOptions {
            draft: draft.as_deref().and_then(AnyModel::local),
            served_draft: draft.as_deref().and_then(AnyModel::served),
            reward_model: reward_model.as_deref().and_then(AnyModel::local),
            stop: Some(self.stop.flag()),
            pause: Some(&pause),
            system: request.system.as_deref(),
            drafts_every: Some(DRAFTS_EVERY),
            ..SolveOptions::default()
        };
        let mut observe = |event: &TraceEvent| emit(event.clone());
        let solution = target
            .solve(&request.question, &request.spec, options, &mut observe)
            .await
            .map_err(|e| e.to_string())?;
        Ok(solution.answer)
    }

    /// Model `id`, loaded or served.
    fn model(&self, id: &str) -> Result<Rc<AnyModel>, String> {
        self.models
            .borrow()
            .get(id)
            .cloned()
            .ok_or_else(|| format!("model {id} is not loaded"))
    }

    /// Model `id`, which must be loaded here (not served): a reward's model, a benchmark's.
    fn local_model(&self, id: &str) -> Result<Rc<AnyModel>, String> {
        let model = self.model(id)?;
        match model.local() {
            Some(_) => Ok(model),
            None => Err(format!(
                "model {id} is on a server: a reward's model and a benchmark take a model \
                 loaded here"
            )),
        }
    }
}

/// For work a Stop cancels before it starts: the run it belongs to (if any) and the message
/// its refusal gives; None for requests that always run (starting, listing, deleting).
fn stoppable(request: &Request) -> Option<(Option<u64>, String)> {
    match request {
        Request::Solve(solve) => Some((Some(solve.run), "stopped".into())),
        Request::Load { id, .. } => Some((None, format!("loading {id} stopped"))),
        Request::Check { .. } => Some((None, "the check was stopped".into())),
        Request::Bench { model, .. } => {
            Some((None, format!("the benchmark of {model} was stopped")))
        }
        Request::Init { .. }
        | Request::ListCache
        | Request::DeleteCached { .. }
        | Request::Stop => None,
    }
}

/// The platform's event-loop turn, as the engine's runs take it.
struct PlatformPause<'p, P: Platform>(&'p P);

impl<P: Platform> Pause for PlatformPause<'_, P> {
    fn pause(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(self.0.yield_now())
    }
}

/// Parses config.json, so that a model the engine cannot run fails before its weights are
/// fetched. (Matrices larger than one buffer of the device are split on load.)
fn check_config(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("config.json: {e}"))?;
    ModelConfig::from_json(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The shard files a `model.safetensors.index.json` names.
pub fn shard_names(index: &[u8]) -> Result<Vec<String>, StorageError> {
    let json: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| StorageError(format!("model.safetensors.index.json: {e}")))?;
    ets_engine::model::checkpoint::shard_names(&json).map_err(|e| StorageError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ets_protocol::models::BUNDLED;

    #[test]
    fn shard_index_names_files() {
        let index = br#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-1.safetensors"}}"#;
        assert_eq!(
            shard_names(index).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        assert!(shard_names(br#"{"weight_map": {"a": "../x"}}"#).is_err());
        assert!(shard_names(b"not json").is_err());
    }

    #[test]
    fn the_bundled_models_accept_what_their_configs_say() {
        for model in BUNDLED {
            let path = format!(
                "{}/../models/{}/config.json",
                env!("CARGO_MANIFEST_DIR"),
                model.id
            );
            let json = std::fs::read_to_string(&path).unwrap();
            let config = ModelConfig::from_json(&json).unwrap();
            assert_eq!(
                (model.diffusion, model.context),
                (
                    config.objective != Objective::Causal,
                    config.max_position_embeddings
                ),
                "{}",
                model.id
            );
        }
    }
}
