//! The messages between the UI and the engine host (a web worker in the browser, a thread of
//! the desktop app), and where models come from ([`models`]). They travel as JSON: the trace's
//! tagged enums need a self-describing format. Nothing here links the engine: the browser's
//! page uses this crate, the worker and the desktop app's host (`ets-host`) answer it.

pub mod models;

use ets_spec::bench::{BenchFigures, BenchSettings};
use ets_spec::strategy::ValidSpec;
use ets_spec::trace::TraceEvent;
use serde::{Deserialize, Serialize};

use crate::models::{CachedModel, ModelCheck, ModelSource};

/// What the UI asks of the engine host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Start the engine: WebGPU when `prefer_gpu` and an adapter exists, the CPU otherwise;
    /// with `max_buffer_bytes`, its buffers taken to hold at most that many bytes (below the
    /// adapter's own limit: larger matrices are split on load, as on a smaller adapter).
    Init {
        prefer_gpu: bool,
        #[serde(default)]
        max_buffer_bytes: Option<u64>,
    },
    /// Load a model (downloading what the cache lacks) under `id`.
    Load { id: String, source: ModelSource },
    /// List the models in the download cache.
    ListCache,
    /// Delete a model from the download cache (and unload it).
    DeleteCached { id: String },
    /// Answer a question.
    Solve(Box<SolveRequest>),
    /// Stop the run in progress at its next forward pass.
    Stop,
    /// Check, before anything downloads, whether the model at `source` (a URL) would load and
    /// fit: its size, and its GGUF header or config.json, against the storage and the device.
    Check { source: ModelSource },
    /// Measure loaded model `model`'s speed (as `ets bench` does natively); the worker is busy
    /// until the figures come back.
    Bench {
        model: String,
        settings: BenchSettings,
    },
}

/// One question to answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolveRequest {
    /// Chosen by the UI; every event of the run carries it.
    pub run: u64,
    /// A loaded model's id.
    pub model: String,
    /// The draft model's id (ETS-IS).
    pub draft: Option<String>,
    pub question: String,
    /// The system message put ahead of the question in the model's chat template (models
    /// without one ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub spec: ValidSpec,
}

impl SolveRequest {
    /// The models the run reads besides `model`, by id: the draft (ETS-IS) and the model the
    /// reward reads (`model:ID`, `lm:ID`); the front end loads them before the run.
    pub fn helper_models(&self) -> Vec<String> {
        self.draft
            .iter()
            .cloned()
            .chain(self.spec.reward.model_name().map(str::to_string))
            .collect()
    }
}

/// The backend the engine runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `webgpu` or `cpu`.
    pub kind: String,
    /// The adapter's name, or the CPU backend's.
    pub adapter: String,
    /// Why the CPU is used, when WebGPU was wanted.
    pub notice: Option<String>,
    /// The largest buffer one tensor may occupy (min of maxBufferSize and
    /// maxStorageBufferBindingSize, or the limit `Init` set), in bytes; None on the CPU unless
    /// `Init` set one.
    pub max_buffer_bytes: Option<u64>,
}

impl BackendInfo {
    /// The GPU backend `kind` (`webgpu`, `wgpu`) on adapter `adapter`, whose buffers hold at
    /// most `max_buffer_bytes` bytes (the engine's `backend::max_buffer_bytes` of the device).
    pub fn gpu(kind: &str, adapter: String, max_buffer_bytes: Option<u64>) -> Self {
        Self {
            kind: kind.into(),
            adapter,
            notice: None,
            max_buffer_bytes,
        }
    }

    /// The CPU backend, described as `adapter`; `notice` says why the GPU is not used, when
    /// it was wanted.
    pub fn cpu(adapter: String, notice: Option<String>) -> Self {
        Self {
            kind: "cpu".into(),
            adapter,
            notice,
            max_buffer_bytes: None,
        }
    }
}

/// A loaded model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    /// config.json's architecture, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    /// Whether it is a masked diffusion model.
    pub diffusion: bool,
    pub parameters: usize,
    /// Bytes of its files.
    pub bytes: u64,
    /// The longest sequence it accepts, in tokens (config.json's `max_position_embeddings`).
    pub context: usize,
    /// Weight matrices kept in several device buffers (each larger than one).
    #[serde(default)]
    pub split_matrices: usize,
    /// For a model on an inference server: the server, e.g. `llama.cpp at
    /// http://127.0.0.1:8080/v1` (its parameters and bytes are then unknown here: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// Memory the engine host holds, bytes, where known: what long use is watched by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReading {
    /// Host memory: the worker's wasm heap in a browser, the process's resident memory (RSS)
    /// natively.
    pub host_bytes: Option<u64>,
    /// What the GPU's memory pools hold (None on the CPU).
    pub device_bytes: Option<u64>,
}

/// What the engine host tells the UI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// The engine is up, on this backend; sent again when it moves to another (its GPU was lost:
    /// the CPU, with a notice), before it reloads its models.
    Ready(BackendInfo),
    /// A slow task advanced: `done` of `total` (bytes for downloads).
    Progress {
        task: String,
        done: u64,
        total: Option<u64>,
    },
    /// A model is loaded and ready.
    Loaded(ModelInfo),
    /// The download cache's models.
    Cache(Vec<CachedModel>),
    /// What a `Check` found.
    Checked(ModelCheck),
    /// An event of run `run`, as it happens.
    Trace { run: u64, event: TraceEvent },
    /// Run `run` ended with its answer (its finish event came before), and the memory the host
    /// held then.
    Finished {
        run: u64,
        answer: Option<String>,
        #[serde(default)]
        memory: MemoryReading,
    },
    /// What a `Bench` request measured on model `model`.
    Bench {
        model: String,
        figures: BenchFigures,
    },
    /// Something failed; `run` names the run it belongs to, if any.
    Failed { run: Option<u64>, message: String },
}
