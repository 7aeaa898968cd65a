//! The web worker that hosts the engine: receives [`Request`]s from the page as JSON strings,
//! runs them on the [`Host`] in the order they came (a run waits for the model loads asked
//! before it; Stop acts at once, on the work in progress and on what is queued), and answers with a stream of [`Response`]s, JSON too. Its
//! loader (`web/ets-engine-worker_loader.js`) holds the messages that arrive while the wasm
//! starts and hands them over once [`main`] has set the handler.

mod platform;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use ets_host::{Host, StopMark, StopSignal};
use ets_protocol::{Request, Response};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::platform::Browser;

/// Sends `response` to the page.
fn post(response: &Response) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    // Our protocol types have string keys only: serialising them cannot fail.
    let json = serde_json::to_string(response).unwrap_or_default();
    if let Err(e) = scope.post_message(&JsValue::from_str(&json)) {
        web_sys::console::error_2(&"the engine could not answer the page:".into(), &e);
    }
}

fn main() {
    console_error_panic_hook::set_once();
    let stop = Arc::new(StopSignal::default());
    let host = Rc::new(Host::new(Browser, stop.clone()));
    // Requests not yet handled (each with its Stop mark), and whether a task is handling them.
    let queue: Rc<RefCell<VecDeque<(Request, StopMark)>>> = Rc::default();
    let busy: Rc<Cell<bool>> = Rc::default();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let text = event.data().as_string().unwrap_or_default();
        let request = match serde_json::from_str::<Request>(&text) {
            Ok(request) => request,
            Err(e) => {
                post(&Response::Failed {
                    run: None,
                    message: format!("the engine received a message it does not understand: {e}"),
                });
                return;
            }
        };
        if let Request::Stop = request {
            stop.raise();
            return;
        }
        queue.borrow_mut().push_back((request, stop.mark()));
        if busy.replace(true) {
            return;
        }
        let (host, queue, busy) = (host.clone(), queue.clone(), busy.clone());
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let next = queue.borrow_mut().pop_front();
                let Some((request, received)) = next else {
                    break;
                };
                host.handle(request, received, &|response| post(&response))
                    .await;
            }
            busy.set(false);
        });
    });
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    on_message.forget();
}
