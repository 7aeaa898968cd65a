//! The engine's web worker: receives [`Request`]s from the UI, runs them on the [`Host`] in the
//! order they came (a run waits for the model loads asked before it; Stop acts at once), and
//! answers with a stream of [`Response`]s. Messages travel as JSON ([`Json`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use gloo_worker::{Codec, HandlerId, Worker, WorkerScope};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use crate::host::Host;
use crate::models::{delete_cached, list_cached};
use crate::protocol::{Request, Response};

/// Worker messages as JSON strings.
#[derive(Debug)]
pub struct Json;

impl Codec for Json {
    fn encode<I: Serialize>(input: I) -> JsValue {
        // Our protocol types have string keys only: serialising them cannot fail.
        JsValue::from_str(&serde_json::to_string(&input).unwrap_or_default())
    }

    fn decode<O: for<'de> Deserialize<'de>>(input: JsValue) -> O {
        let text = input.as_string().unwrap_or_default();
        // Both ends are this crate's code, built together: a message that does not parse is a
        // build mismatch, which nothing can recover from.
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a worker message does not match the protocol: {e}"))
    }
}

/// The worker that hosts the engine.
pub struct EngineWorker {
    host: Rc<Host>,
    /// Requests not yet handled, and whether a task is handling them.
    queue: Rc<RefCell<VecDeque<(Request, HandlerId)>>>,
    busy: Rc<Cell<bool>>,
}

impl Worker for EngineWorker {
    type Message = ();
    type Input = Request;
    type Output = Response;

    fn create(_scope: &WorkerScope<Self>) -> Self {
        Self {
            host: Rc::new(Host::default()),
            queue: Rc::default(),
            busy: Rc::default(),
        }
    }

    fn update(&mut self, _scope: &WorkerScope<Self>, _msg: ()) {}

    fn received(&mut self, scope: &WorkerScope<Self>, request: Request, id: HandlerId) {
        if let Request::Stop = request {
            self.host.stop();
            return;
        }
        self.queue.borrow_mut().push_back((request, id));
        if self.busy.replace(true) {
            return;
        }
        let (host, scope) = (self.host.clone(), scope.clone());
        let (queue, busy) = (self.queue.clone(), self.busy.clone());
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let next = queue.borrow_mut().pop_front();
                let Some((request, id)) = next else { break };
                let respond = |r: Response| scope.respond(id, r);
                handle(&host, request, &respond).await;
            }
            busy.set(false);
        });
    }
}

/// Runs one request to its end.
async fn handle(host: &Host, request: Request, respond: &dyn Fn(Response)) {
    let failed = |run, message: String| respond(Response::Failed { run, message });
    match request {
        Request::Init { prefer_gpu } => respond(Response::Ready(host.init(prefer_gpu).await)),
        Request::Load { id, source } => {
            let progress = |file: &str, done, total| {
                respond(Response::Progress {
                    task: format!("{id}: {file}"),
                    done,
                    total,
                })
            };
            match host.load(&id, &source, &progress).await {
                Ok(info) => respond(Response::Loaded(info)),
                Err(message) => failed(None, message),
            }
        }
        Request::ListCache => match list_cached().await {
            Ok(models) => respond(Response::Cache(models)),
            Err(e) => failed(None, e.to_string()),
        },
        Request::DeleteCached { id } => {
            host.unload(&id);
            match delete_cached(&id).await {
                Ok(models) => respond(Response::Cache(models)),
                Err(e) => failed(None, e.to_string()),
            }
        }
        Request::Solve(request) => {
            let run = request.run;
            let emit = |event| respond(Response::Trace { run, event });
            match host.solve(&request, &emit).await {
                Ok(answer) => respond(Response::Finished { run, answer }),
                Err(message) => failed(Some(run), message),
            }
        }
        Request::Stop => host.stop(),
    }
}
