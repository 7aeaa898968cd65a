//! The engine in the desktop app: one thread owns the [`Host`] (device and models) and runs the
//! UI's requests in the order they came, natively (wgpu on Vulkan, Metal or DX12; the CPU where
//! there is no usable GPU). Stop acts at once, from whichever thread receives it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use ets_engine::backend::{BackendKind, Device, cpu_device, max_buffer_bytes, wgpu_device};
use ets_engine::model::random_access::RandomAccessFile;
use ets_host::{Host, Platform, StopMark, StopSignal};
use ets_protocol::models::{CachedModel, ModelSource, Progress, StorageError};
use ets_protocol::{BackendInfo, Request, Response};

use crate::storage::ModelStore;

/// The environment variable that picks the backend (`cpu` or `wgpu`) over the UI's wish.
pub const BACKEND_VAR: &str = "ETS_BACKEND";

/// The desktop platform: the native device and the model store.
pub struct Desktop {
    store: ModelStore,
    /// The backend [`BACKEND_VAR`] asks for, if it asks.
    backend: Option<BackendKind>,
}

impl Desktop {
    /// A platform keeping models in `store`; `backend` overrides the UI's choice of device.
    pub fn new(store: ModelStore, backend: Option<BackendKind>) -> Self {
        Self { store, backend }
    }
}

fn cpu_info(notice: Option<String>) -> BackendInfo {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    BackendInfo::cpu(format!("CPU ({threads} threads)"), notice)
}

impl Platform for Desktop {
    fn cpu_backend(&self, notice: Option<String>) -> BackendInfo {
        cpu_info(notice)
    }

    async fn start_device(&self, prefer_gpu: bool) -> (Device, BackendInfo) {
        let gpu = match self.backend {
            Some(kind) => kind == BackendKind::Wgpu,
            None => prefer_gpu,
        };
        if !gpu {
            return (cpu_device(), cpu_info(None));
        }
        match wgpu_device() {
            Ok((device, adapter)) => {
                let info = BackendInfo::gpu("wgpu", adapter, max_buffer_bytes(&device));
                (device, info)
            }
            Err(e) => {
                let notice = format!("{e}: the engine runs on the CPU, slower.");
                (cpu_device(), cpu_info(Some(notice)))
            }
        }
    }

    async fn model_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.store.model_file(id, source, name, progress)
    }

    async fn weights_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError> {
        let file = self.store.weights_file(id, source, name, progress)?;
        Ok(file.map(|f| Arc::new(f) as Arc<dyn RandomAccessFile>))
    }

    async fn remote_file(
        &self,
        source: &ModelSource,
        name: &str,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError> {
        let file = self.store.remote_file(source, name)?;
        Ok(file.map(|f| Arc::new(f) as Arc<dyn RandomAccessFile>))
    }

    async fn storage_room(&self) -> Option<u64> {
        self.store.free_space()
    }

    async fn record(&self, model: &CachedModel) -> Result<(), StorageError> {
        self.store.record(model)
    }

    async fn list_cached(&self) -> Result<Vec<CachedModel>, StorageError> {
        self.store.list()
    }

    async fn delete_cached(&self, id: &str) -> Result<Vec<CachedModel>, StorageError> {
        self.store.delete(id)
    }

    async fn discard_download(&self, id: &str, source: &ModelSource) -> Result<(), StorageError> {
        self.store.discard_download(id, source)
    }

    /// The host has its thread to itself: nothing to give way to.
    async fn yield_now(&self) {}
}

/// The handle the app keeps: where requests go, and the flag Stop raises.
pub struct Engine {
    requests: Sender<(Request, StopMark)>,
    stop: Arc<StopSignal>,
}

/// Why a request could not be handed to the engine.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped working (its thread ended); restart the app")]
pub struct EngineGone;

impl Engine {
    /// Starts the engine thread with `platform`; every response goes to `respond`.
    pub fn start(
        platform: Desktop,
        respond: impl Fn(Response) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (requests, inbox) = channel::<(Request, StopMark)>();
        let stop = Arc::new(StopSignal::default());
        let host_stop = stop.clone();
        std::thread::Builder::new()
            .name("ets-engine".into())
            .spawn(move || {
                let host = Host::new(platform, host_stop);
                for (request, received) in inbox {
                    let run = match &request {
                        Request::Solve(solve) => Some(solve.run),
                        _ => None,
                    };
                    // A bug that panics fails its request, not the app: the UI hears why and
                    // the engine takes the next request.
                    let handled = catch_unwind(AssertUnwindSafe(|| {
                        pollster::block_on(host.handle(request, received, &respond))
                    }));
                    if let Err(panic) = handled {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "no message".into());
                        // A lost GPU can panic in wgpu before it is reported lost: the host
                        // checks the device, says so and moves to the CPU.
                        let answered = catch_unwind(AssertUnwindSafe(|| {
                            pollster::block_on(host.fail_after_panic(run, &why, &respond))
                        }));
                        if answered.is_err() {
                            let message = format!("the engine failed: {why}");
                            respond(Response::Failed { run, message });
                        }
                    }
                }
            })?;
        Ok(Self { requests, stop })
    }

    /// Hands `request` to the engine (Stop acts at once; the rest wait their turn).
    pub fn send(&self, request: Request) -> Result<(), EngineGone> {
        if let Request::Stop = request {
            self.stop.raise();
            return Ok(());
        }
        self.requests
            .send((request, self.stop.mark()))
            .map_err(|_| EngineGone)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    use ets_engine::SamplingParams;
    use ets_engine::decode::diffusion::DiffusionSchedule;
    use ets_engine::reward::RewardKind;
    use ets_engine::strategy::{EtsParams, SolveSpec, Strategy, ValidSpec};
    use ets_engine::task::answer::Extraction;
    use ets_protocol::{ModelInfo, SolveRequest};

    use super::*;

    /// An engine on the CPU with the repository's bundled models; responses arrive on the
    /// returned channel.
    fn engine(cache: &Path) -> (Engine, Receiver<Response>) {
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let store = ModelStore::new(bundled, cache.to_path_buf());
        let (sender, responses) = channel();
        let engine = Engine::start(Desktop::new(store, Some(BackendKind::Cpu)), move |r| {
            let _ = sender.send(r);
        })
        .unwrap();
        (engine, responses)
    }

    /// The next response that `wanted` accepts (others are skipped).
    fn next<T>(responses: &Receiver<Response>, mut wanted: impl FnMut(Response) -> Option<T>) -> T {
        loop {
            let response = responses
                .recv_timeout(Duration::from_secs(120))
                .expect("the engine answers within two minutes");
            if let Some(found) = wanted(response) {
                return found;
            }
        }
    }

    /// Starts the engine on the CPU (the UI not asking for the GPU).
    fn start_cpu(engine: &Engine, responses: &Receiver<Response>) {
        let init = Request::Init {
            prefer_gpu: false,
            max_buffer_bytes: None,
        };
        engine.send(init).unwrap();
        next(responses, |r| matches!(r, Response::Ready(_)).then_some(()));
    }

    /// Loads model `id` from `source`: its info, or the engine's message.
    fn load_from(
        engine: &Engine,
        responses: &Receiver<Response>,
        id: &str,
        source: &ModelSource,
    ) -> Result<ModelInfo, String> {
        let id = id.to_string();
        let source = source.clone();
        engine.send(Request::Load { id, source }).unwrap();
        next(responses, |r| match r {
            Response::Loaded(info) => Some(Ok(info)),
            Response::Failed { run: None, message } => Some(Err(message)),
            _ => None,
        })
    }

    /// The models in the cache manager (after a listing or a deletion).
    fn cache_answer(responses: &Receiver<Response>) -> Vec<CachedModel> {
        next(responses, |r| match r {
            Response::Cache(models) => Some(models),
            _ => None,
        })
    }

    /// ETS as the UI asks for it by default (M = 8, K = 3, blocks of 4 tokens).
    fn solve_request(run: u64) -> Request {
        let ets = Strategy::Ets(EtsParams {
            block: 4,
            ..EtsParams::default()
        });
        Request::Solve(Box::new(SolveRequest {
            run,
            model: "ref-ar".into(),
            draft: None,
            question: "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?".into(),
            system: None,
            spec: spec(ets, 160),
        }))
    }

    /// `strategy` with the UI's other defaults and at most `max_tokens` new tokens.
    fn spec(strategy: Strategy, max_tokens: usize) -> ValidSpec {
        SolveSpec {
            strategy,
            sampling: SamplingParams::default(),
            max_tokens,
            diffusion: DiffusionSchedule::default(),
            reward: RewardKind::SelfConsistency,
            extraction: Extraction::Strict,
            seed: 0,
        }
        .validate()
        .unwrap()
    }

    fn load(engine: &Engine, responses: &Receiver<Response>) {
        engine
            .send(Request::Init {
                prefer_gpu: true,
                max_buffer_bytes: None,
            })
            .unwrap();
        let ready = next(responses, |r| match r {
            Response::Ready(info) => Some(info),
            _ => None,
        });
        assert_eq!(
            ready.kind, "cpu",
            "{BACKEND_VAR}=cpu wins over the UI's wish"
        );
        let source = ModelSource::Bundled;
        let id = "ref-ar".to_string();
        engine.send(Request::Load { id, source }).unwrap();
        let loaded = next(responses, |r| match r {
            Response::Loaded(info) => Some(Ok(info)),
            Response::Failed { message, .. } => Some(Err(message)),
            _ => None,
        })
        .unwrap();
        assert_eq!(loaded.architecture, "LlamaForCausalLM");
    }

    #[test]
    fn the_native_engine_answers_with_its_trace() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        load(&engine, &responses);
        engine.send(solve_request(1)).unwrap();
        let mut steps = 0;
        let answer = next(&responses, |r| match r {
            Response::Trace { run: 1, event } => {
                if let ets_engine::trace::TraceEvent::Step(step) = event {
                    assert_eq!(step.candidates.len(), 8, "M = 8 candidates per step");
                    steps += 1;
                }
                None
            }
            Response::Finished { run: 1, answer, .. } => Some(Ok(answer)),
            Response::Failed { message, .. } => Some(Err(message)),
            _ => None,
        });
        assert_eq!(answer.unwrap().as_deref(), Some("18"));
        assert!(steps > 0);
    }

    #[test]
    fn stop_ends_a_run_from_another_thread() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        load(&engine, &responses);
        engine.send(solve_request(2)).unwrap();
        // Stop once the run is under way (its first event), from this thread.
        next(&responses, |r| {
            matches!(r, Response::Trace { run: 2, .. }).then_some(())
        });
        engine.send(Request::Stop).unwrap();
        let end = next(&responses, |r| match r {
            Response::Finished { run: 2, .. } => Some(Ok(())),
            Response::Failed {
                run: Some(2),
                message,
            } => Some(Err(message)),
            _ => None,
        });
        assert!(end.unwrap_err().contains("stop"));
    }

    /// The run's end: its answer, or the engine's message.
    fn end_of(responses: &Receiver<Response>, run: u64) -> Result<Option<String>, String> {
        next(responses, |r| match r {
            Response::Finished {
                run: done, answer, ..
            } if done == run => Some(Ok(answer)),
            Response::Failed {
                run: Some(failed),
                message,
            } if failed == run => Some(Err(message)),
            _ => None,
        })
    }

    #[test]
    fn a_run_sent_while_its_model_loads_waits_for_it() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        start_cpu(&engine, &responses);
        let (id, source) = ("ref-ar".to_string(), ModelSource::Bundled);
        engine.send(Request::Load { id, source }).unwrap();
        engine.send(solve_request(3)).unwrap();
        assert_eq!(end_of(&responses, 3).unwrap().as_deref(), Some("18"));
    }

    #[test]
    fn stop_ends_the_run_and_refuses_the_ones_waiting_behind_it() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        load(&engine, &responses);
        for run in [4, 5] {
            engine.send(solve_request(run)).unwrap();
        }
        engine.send(Request::Stop).unwrap();
        for run in [4, 5] {
            assert_eq!(end_of(&responses, run).unwrap_err(), "stopped", "run {run}");
        }
        // A run asked for after the Stop runs.
        engine.send(solve_request(6)).unwrap();
        assert_eq!(end_of(&responses, 6).unwrap().as_deref(), Some("18"));
    }

    /// The real SmolLM2-135M-Instruct Q4_1 file: scripts/fetch-model.sh fetches it into its
    /// cache once (98 MB) and prints where it is.
    fn real_model() -> std::path::PathBuf {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
        let out = std::process::Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/fetch-model.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }

    #[test]
    fn a_gguf_file_loads_in_place_and_answers() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        start_cpu(&engine, &responses);
        let model = real_model();
        let source = ModelSource::Folder {
            path: model.parent().unwrap().display().to_string(),
            file: Some(model.file_name().unwrap().to_string_lossy().into_owned()),
        };
        let id = "smollm2".to_string();
        let loaded = load_from(&engine, &responses, &id, &source).unwrap();
        assert_eq!(loaded.architecture, "LlamaForCausalLM");
        assert_eq!(
            loaded.bytes,
            fs::metadata(&model).unwrap().len(),
            "the one file"
        );
        assert!((130_000_000..140_000_000).contains(&loaded.parameters));
        // Remembered as the file it is, read in place (nothing copied into the cache).
        engine.send(Request::ListCache).unwrap();
        let listed = cache_answer(&responses);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].source, source);
        assert!(
            fs::read_dir(cache.path())
                .unwrap()
                .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".gguf") })
        );

        let spec = spec(Strategy::Greedy, 16);
        engine
            .send(Request::Solve(Box::new(SolveRequest {
                run: 3,
                model: id,
                draft: None,
                question: "What is the capital of Germany?".into(),
                system: None,
                spec,
            })))
            .unwrap();
        let finish = next(&responses, |r| match r {
            Response::Trace {
                run: 3,
                event: ets_engine::trace::TraceEvent::Finish(finish),
            } => Some(Ok(finish)),
            Response::Failed { message, .. } => Some(Err(message)),
            _ => None,
        })
        .unwrap();
        // The question goes into the file's chat template; llama.cpp's greedy answer with the
        // same file is "The capital of Germany is Berlin."
        assert!(finish.text.contains("Berlin"), "{:?}", finish.text);

        // A GGUF file that is not there fails with a message naming it.
        let missing = ModelSource::Folder {
            path: cache.path().display().to_string(),
            file: Some("absent.gguf".into()),
        };
        let message = load_from(&engine, &responses, "absent", &missing).unwrap_err();
        assert!(message.contains("absent.gguf"), "{message}");
    }

    #[test]
    fn a_model_folder_loads_in_place_and_is_only_forgotten() {
        let cache = tempfile::tempdir().unwrap();
        let (engine, responses) = engine(cache.path());
        start_cpu(&engine, &responses);
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ref-ar-draft");
        let path = folder.display().to_string();
        let source = ModelSource::Folder {
            path: path.clone(),
            file: None,
        };
        let loaded = load_from(&engine, &responses, "my-draft", &source);
        assert_eq!(loaded.unwrap().id, "my-draft");
        engine.send(Request::ListCache).unwrap();
        let listed = cache_answer(&responses);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].source, source);

        // A folder without a model fails with a message, and the engine goes on.
        let empty = tempfile::tempdir().unwrap();
        let source = ModelSource::Folder {
            path: empty.path().display().to_string(),
            file: None,
        };
        let message = load_from(&engine, &responses, "empty", &source).unwrap_err();
        assert!(message.contains("config.json"), "{message}");

        engine
            .send(Request::DeleteCached {
                id: "my-draft".into(),
            })
            .unwrap();
        let left = cache_answer(&responses);
        assert!(left.is_empty());
        assert!(
            folder.join("model.safetensors").exists(),
            "the folder is untouched"
        );
    }
}
