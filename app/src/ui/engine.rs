//! The UI's side of the engine: reaches the host (a web worker in the browser, the desktop
//! app's process through Tauri), sends it requests, and folds its responses into the
//! [`AppState`]. Runs go one at a time (compare mode queues the second), so timings are not
//! muddled by two runs sharing the device.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::Serialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, Worker};

use crate::ui::state::{AppState, RunStatus, RunView};
use crate::ui::tauri;
use ets_protocol::models::{ModelSource, id_for_file, id_for_folder};
use ets_protocol::{Request, Response, SolveRequest};

/// The path of the worker's loader script in the built site (`web/ets-engine-worker_loader.js`;
/// the worker is `ets-web`'s `ets-engine-worker` binary).
const WORKER_PATH: &str = "./ets-engine-worker_loader.js";

/// The desktop app's command that takes every request, and the event that carries every
/// response (see `src-tauri`).
const TAURI_REQUEST: &str = "engine_request";
const TAURI_RESPONSE: &str = "engine-response";

/// How requests reach the engine host.
enum Transport {
    /// The browser: a web worker; requests and responses travel as JSON strings.
    Worker(Worker),
    /// The desktop app: Tauri commands out, Tauri events back (failures shown in `AppState`).
    Tauri(AppState),
}

thread_local! {
    static TRANSPORT: RefCell<Option<Transport>> = const { RefCell::new(None) };
    /// Requests for the desktop app not yet handed over (they go one at a time, in order).
    static OUTBOX: RefCell<VecDeque<Request>> = const { RefCell::new(VecDeque::new()) };
    static SENDING: Cell<bool> = const { Cell::new(false) };
    /// Runs waiting for the current one to end.
    static QUEUE: RefCell<VecDeque<SolveRequest>> = const { RefCell::new(VecDeque::new()) };
}

/// Whether the engine runs in the desktop app (natively) rather than in a web worker.
pub fn is_desktop() -> bool {
    TRANSPORT.with(|t| matches!(*t.borrow(), Some(Transport::Tauri(_))))
}

/// Reaches the engine (the desktop app's when the page runs inside it, a new web worker
/// otherwise) and starts it (on the GPU unless `prefer_gpu` is false; its buffers taken to hold
/// at most `max_buffer_bytes` when given).
pub fn start(state: AppState, prefer_gpu: bool, max_buffer_bytes: Option<u64>) {
    let transport = if tauri::available() {
        let listening = tauri::listen(TAURI_RESPONSE, move |response| match response {
            Ok(response) => receive(state, response),
            Err(e) => state
                .error
                .set(Some(format!("a message from the engine: {e}"))),
        });
        if let Err(e) = listening {
            state.error.set(Some(e));
        }
        Transport::Tauri(state)
    } else {
        match spawn_worker(state) {
            Ok(worker) => Transport::Worker(worker),
            Err(message) => {
                state.error.set(Some(message));
                return;
            }
        }
    };
    TRANSPORT.with(|t| *t.borrow_mut() = Some(transport));
    send(Request::Init {
        prefer_gpu,
        max_buffer_bytes,
    });
    send(Request::ListCache);
}

/// Starts the engine's web worker, its responses going to [`receive`].
fn spawn_worker(state: AppState) -> Result<Worker, String> {
    let worker = Worker::new(WORKER_PATH)
        .map_err(|e| format!("the engine's web worker did not start: {e:?}"))?;
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let text = event.data().as_string().unwrap_or_default();
        match serde_json::from_str::<Response>(&text) {
            Ok(response) => receive(state, response),
            Err(e) => state.error.set(Some(format!(
                "a message from the engine does not parse: {e}"
            ))),
        }
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let on_error = Closure::<dyn FnMut(ErrorEvent)>::new(move |event: ErrorEvent| {
        state.error.set(Some(format!(
            "the engine's web worker failed: {}",
            event.message()
        )));
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    // The handlers live as long as the page's one worker.
    on_message.forget();
    on_error.forget();
    Ok(worker)
}

/// Sends a request to the engine host.
pub fn send(request: Request) {
    TRANSPORT.with(|t| match t.borrow().as_ref() {
        Some(Transport::Worker(worker)) => {
            // Our protocol types have string keys only: serialising them cannot fail.
            let json = serde_json::to_string(&request).unwrap_or_default();
            if let Err(e) = worker.post_message(&JsValue::from_str(&json)) {
                web_sys::console::error_2(&"a request could not reach the engine:".into(), &e);
            }
        }
        Some(Transport::Tauri(state)) => {
            OUTBOX.with(|o| o.borrow_mut().push_back(request));
            if !SENDING.replace(true) {
                spawn_local(hand_over(*state));
            }
        }
        None => {}
    });
}

/// Hands the desktop app's outbox over, one request after another (so they arrive in order).
async fn hand_over(state: AppState) {
    #[derive(Serialize)]
    struct Args {
        request: Request,
    }
    while let Some(request) = OUTBOX.with(|o| o.borrow_mut().pop_front()) {
        if let Err(e) = tauri::invoke::<_, ()>(TAURI_REQUEST, &Args { request }).await {
            state
                .error
                .set(Some(format!("the engine refused a request: {e}")));
        }
    }
    SENDING.set(false);
}

/// Loads model `id` unless it is loaded already.
pub fn load(state: AppState, id: &str, source: ModelSource) {
    if !id.is_empty() && !state.is_loaded(id) {
        send(Request::Load {
            id: id.to_string(),
            source,
        });
    }
}

/// Loads model `id` afresh from `source` (a copy already loaded under that id is forgotten)
/// and selects it.
pub fn load_afresh(state: AppState, id: String, source: ModelSource) {
    state.loaded.update(|l| l.retain(|m| m.id != id));
    send(Request::Load {
        id: id.clone(),
        source,
    });
    state.settings.update(|s| s.select_model(id));
}

/// Loads the model read in place from the folder `path` (or from the GGUF file `file` in it),
/// named after the folder or the file, and selects it (the desktop app).
pub fn load_in_place(state: AppState, path: String, file: Option<String>) {
    let id = match &file {
        Some(file) => id_for_file(file),
        None => id_for_folder(&path),
    };
    load_afresh(state, id, ModelSource::Folder { path, file });
}

/// The desktop app's command that returns the model named on its command line.
const OPENED_MODEL: &str = "opened_model";

/// Loads the model to start with once the engine is ready: in the desktop app the model folder
/// or GGUF file named on its command line (`ets-desktop --model PATH`), if any; otherwise the
/// last model used (the settings remember it).
fn load_start_model(state: AppState) {
    let last = move || {
        let id = state.settings.get_untracked().model;
        load(state, &id, source_of(state, &id));
    };
    if !is_desktop() {
        return last();
    }
    spawn_local(async move {
        let opened = tauri::invoke::<_, Option<(String, Option<String>)>>(OPENED_MODEL, &()).await;
        match opened {
            Ok(Some((path, file))) => load_in_place(state, path, file),
            Ok(None) => last(),
            Err(e) => {
                state.error.set(Some(e));
                last();
            }
        }
    });
}

/// Where a model id's files are: bundled, or a cached download or import.
pub fn source_of(state: AppState, id: &str) -> ModelSource {
    let cached = state
        .cache
        .with(|c| c.iter().find(|m| m.id == id).map(|m| m.source.clone()));
    cached.unwrap_or(ModelSource::Bundled)
}

/// Puts runs on screen and starts the first; the rest follow one by one.
pub fn run(state: AppState, requests: Vec<SolveRequest>) {
    state.runs.set(
        requests
            .iter()
            .map(|r| RunView {
                request: r.clone(),
                events: Vec::new(),
                status: RunStatus::Running,
                recorded: false,
                drafts: None,
            })
            .collect(),
    );
    state.share_url.set(None);
    QUEUE.with(|q| q.borrow_mut().extend(requests));
    next_run();
}

/// Stops the run in progress and drops the queued ones.
pub fn stop(state: AppState) {
    QUEUE.with(|q| q.borrow_mut().clear());
    send(Request::Stop);
    state.runs.update(|runs| {
        for r in runs.iter_mut().filter(|r| r.events.is_empty()) {
            r.status = RunStatus::Failed("stopped".into());
        }
    });
}

fn next_run() {
    if let Some(request) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        send(Request::Solve(Box::new(request)));
    }
}

/// Applies `f` to the run `id`.
fn update_run(state: AppState, id: u64, f: impl FnOnce(&mut RunView)) {
    state.runs.update(|runs| {
        if let Some(run) = runs.iter_mut().find(|r| r.request.run == id) {
            f(run);
        }
    });
}

fn receive(state: AppState, response: Response) {
    match response {
        Response::Ready(info) => {
            // A later Ready: the engine moved to another device (its GPU was lost) and reloads
            // its models, each answering Loaded again.
            let moved = state.backend.get_untracked().is_some();
            state.backend.set(Some(info));
            if moved {
                state.loaded.set(Vec::new());
            } else {
                load_start_model(state);
            }
        }
        Response::Progress { task, done, total } => {
            state.progress.set(Some((task, done, total)));
        }
        Response::Loaded(info) => {
            state.progress.set(None);
            state.loaded.update(|l| {
                l.retain(|m| m.id != info.id);
                l.push(info);
            });
            send(Request::ListCache);
        }
        Response::Cache(models) => state.cache.set(models),
        Response::Checked(check) => {
            state.checking.set(false);
            state.check.set(Some(check));
        }
        // Benchmarks come from bench/browser's own connection to the worker, not the UI.
        Response::Bench { .. } => {}
        Response::Trace { run, event } => update_run(state, run, |r| r.record(event)),
        Response::Finished {
            run,
            answer,
            memory,
        } => {
            update_run(state, run, |r| {
                r.status = RunStatus::Done { answer, memory }
            });
            next_run();
        }
        Response::Failed {
            run: Some(run),
            message,
        } => {
            update_run(state, run, |r| r.status = RunStatus::Failed(message));
            next_run();
        }
        Response::Failed { run: None, message } => {
            state.progress.set(None);
            state.checking.set(false);
            state.error.set(Some(message));
        }
    }
}
