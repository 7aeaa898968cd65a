//! The engine's web worker: receives [`Request`]s from the UI, runs them on the [`Host`] in the
//! order they came (a run waits for the model loads asked before it; Stop acts at once), and
//! answers with a stream of [`Response`]s. Messages travel as JSON ([`Json`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gloo_worker::{Codec, HandlerId, Worker, WorkerScope};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use crate::browser::Browser;
use ets_host::Host;
use ets_host::protocol::{Request, Response};

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
    host: Rc<Host<Browser>>,
    /// The host's stop flag, raised by Stop while a run holds the host.
    stop: Arc<AtomicBool>,
    /// Requests not yet handled, and whether a task is handling them.
    queue: Rc<RefCell<VecDeque<(Request, HandlerId)>>>,
    busy: Rc<Cell<bool>>,
}

impl Worker for EngineWorker {
    type Message = ();
    type Input = Request;
    type Output = Response;

    fn create(_scope: &WorkerScope<Self>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        Self {
            host: Rc::new(Host::new(Browser, stop.clone())),
            stop,
            queue: Rc::default(),
            busy: Rc::default(),
        }
    }

    fn update(&mut self, _scope: &WorkerScope<Self>, _msg: ()) {}

    fn received(&mut self, scope: &WorkerScope<Self>, request: Request, id: HandlerId) {
        if let Request::Stop = request {
            self.stop.store(true, Ordering::Relaxed);
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
                host.handle(request, &respond).await;
            }
            busy.set(false);
        });
    }
}
