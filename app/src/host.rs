//! The engine host: owns the device and the loaded models and runs requests against the engine.
//! In the browser it lives in a web worker (see [`crate::worker`]), so the UI never blocks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use ets_engine::backend::{Device, check_fits, cpu_device, max_buffer_bytes, wgpu_device_async};
use ets_engine::decode::lm::LanguageModel;
use ets_engine::model::config::{ModelConfig, Objective};
use ets_engine::model::files::ModelFiles;
use ets_engine::model::transformer::Transformer;
use ets_engine::strategy::Solver;
use ets_engine::trace::TraceEvent;
use ets_engine::{LogitsFor, Model};
use js_sys::Reflect;
use wasm_bindgen::JsCast;
use web_time::Instant;

use crate::models::{ModelSource, model_files};
use crate::protocol::{BackendInfo, ModelInfo, SolveRequest};

/// Longest stretch, in ms, a run computes without giving the worker's event loop a turn (so a
/// Stop request gets through on the CPU backend, whose forward passes never wait).
const YIELD_EVERY_MS: u128 = 40;

/// The device and the models of one engine.
#[derive(Default)]
pub struct Host {
    /// The device and what it is, once started.
    device: RefCell<Option<(Device, BackendInfo)>>,
    models: RefCell<HashMap<String, Rc<Model>>>,
    /// Raised by a Stop request; cleared when a run starts.
    stop: Cell<bool>,
}

/// Why WebGPU cannot be used here, if it cannot: no `navigator.gpu`, or no adapter from it.
async fn webgpu_missing() -> Option<&'static str> {
    let gpu = Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|n| Reflect::get(&n, &"gpu".into()))
        .ok()
        .filter(|gpu| !gpu.is_undefined() && !gpu.is_null());
    let Some(gpu) = gpu else {
        return Some("this browser offers no WebGPU");
    };
    let request = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .and_then(|f| f.call0(&gpu).ok())
        .map(js_sys::Promise::from);
    let adapter = match request {
        Some(promise) => wasm_bindgen_futures::JsFuture::from(promise).await.ok(),
        None => None,
    };
    match adapter {
        Some(a) if !a.is_null() && !a.is_undefined() => None,
        _ => Some("WebGPU found no adapter (blocked or no usable GPU)"),
    }
}

impl Host {
    /// Starts the engine on WebGPU when wanted and available, on the CPU otherwise. Returns
    /// what it runs on; later calls return the same backend.
    pub async fn init(&self, prefer_gpu: bool) -> BackendInfo {
        let cpu = |notice: Option<String>| BackendInfo {
            kind: "cpu".into(),
            adapter: "CPU (WebAssembly, one thread)".into(),
            notice,
            max_buffer_bytes: None,
        };
        if let Some((_, info)) = self.device.borrow().as_ref() {
            return info.clone();
        }
        let (device, info) = if !prefer_gpu {
            (cpu_device(), cpu(None))
        } else if let Some(why) = webgpu_missing().await {
            let notice = format!("No WebGPU: {why}. The engine runs on the CPU, slower.");
            (cpu_device(), cpu(Some(notice)))
        } else {
            match wgpu_device_async().await {
                Ok((device, adapter)) => {
                    let limit = max_buffer_bytes(&device);
                    let info = BackendInfo {
                        kind: "webgpu".into(),
                        adapter,
                        notice: None,
                        max_buffer_bytes: limit,
                    };
                    (device, info)
                }
                Err(e) => {
                    let notice = format!(
                        "WebGPU is not usable here ({e}): the engine runs on the CPU, slower."
                    );
                    (cpu_device(), cpu(Some(notice)))
                }
            }
        };
        *self.device.borrow_mut() = Some((device, info.clone()));
        info
    }

    /// Loads model `id` from `source`, reporting per-file progress as (file, bytes, total).
    /// The model's largest weight is checked against the device's buffer limit first.
    pub async fn load(
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
        let check_config = |bytes: &[u8]| {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("config.json: {e}"))?;
            let config = ModelConfig::from_json(text).map_err(|e| e.to_string())?;
            let largest = config.largest_weight_bytes();
            check_fits(&device, "its largest weight matrix", largest).map_err(|e| e.to_string())
        };
        let files = model_files(id, source, &check_config, progress)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
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

    /// Forgets model `id` (after its files were deleted).
    pub fn unload(&self, id: &str) {
        self.models.borrow_mut().remove(id);
    }

    /// Stops the run in progress at its next forward pass.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// Runs `request`, handing each trace event to `emit`; returns the answer.
    pub async fn solve(
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
        let target_model = Yielding::new(&target.transformer);
        let draft_model = draft.as_ref().map(|d| Yielding::new(&d.transformer));
        self.stop.set(false);
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

/// A transformer that hands the event loop a turn between forward passes once it has
/// computed for [`YIELD_EVERY_MS`].
struct Yielding<'m> {
    model: &'m Transformer,
    last_yield: Cell<Instant>,
}

impl<'m> Yielding<'m> {
    fn new(model: &'m Transformer) -> Self {
        Self {
            model,
            last_yield: Cell::new(Instant::now()),
        }
    }
}

impl LanguageModel for Yielding<'_> {
    type Cache = <Transformer as LanguageModel>::Cache;

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
    ) -> ets_engine::Result<Vec<f32>> {
        if self.last_yield.get().elapsed().as_millis() >= YIELD_EVERY_MS {
            gloo_timers::future::TimeoutFuture::new(0).await;
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
