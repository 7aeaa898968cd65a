//! The desktop app's side of the bridge: Tauri's global API (`window.__TAURI__`, which the
//! desktop app enables with `app.withGlobalTauri`): commands through `core.invoke`, events
//! through `event.listen`. Values cross as JSON.

use js_sys::{Function, JSON, Promise, Reflect};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// Whether the page runs inside the desktop app.
pub fn available() -> bool {
    Reflect::has(&js_sys::global(), &"__TAURI_INTERNALS__".into()).unwrap_or(false)
}

/// `window.__TAURI__.<module>.<name>`, bound to its module.
fn api(module: &str, name: &str) -> Result<(JsValue, Function), String> {
    let module = Reflect::get(&js_sys::global(), &"__TAURI__".into())
        .and_then(|tauri| Reflect::get(&tauri, &module.into()))
        .map_err(|_| "the desktop app's API is missing".to_string())?;
    let function = Reflect::get(&module, &name.into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .ok_or_else(|| format!("the desktop app's API has no {name}"))?;
    Ok((module, function))
}

fn message(e: JsValue) -> String {
    e.as_string()
        .or_else(|| e.dyn_ref::<js_sys::Error>().map(|e| e.message().into()))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// `value` as JSON text; `undefined` (a command that returns nothing) reads as null.
fn to_json(value: &JsValue) -> String {
    if value.is_undefined() {
        return "null".into();
    }
    JSON::stringify(value)
        .map(String::from)
        .unwrap_or_else(|_| "null".into())
}

/// Calls command `command` with `args` (an object of its named arguments) and returns its
/// result.
pub async fn invoke<A: Serialize, R: DeserializeOwned>(
    command: &str,
    args: &A,
) -> Result<R, String> {
    let (core, invoke) = api("core", "invoke")?;
    let json = serde_json::to_string(args).map_err(|e| e.to_string())?;
    let args = JSON::parse(&json).map_err(message)?;
    let promise: Promise = invoke
        .call2(&core, &command.into(), &args)
        .map_err(message)?
        .unchecked_into();
    let result = JsFuture::from(promise).await.map_err(message)?;
    serde_json::from_str(&to_json(&result))
        .map_err(|e| format!("{command} answered unexpectedly: {e}"))
}

/// Calls `handler` with the payload of every `event` the app emits, for the page's lifetime.
pub fn listen<T: DeserializeOwned>(
    event: &str,
    handler: impl Fn(Result<T, String>) + 'static,
) -> Result<(), String> {
    let (module, listen) = api("event", "listen")?;
    let callback = Closure::<dyn Fn(JsValue)>::new(move |event: JsValue| {
        let payload = Reflect::get(&event, &"payload".into()).unwrap_or(JsValue::NULL);
        handler(serde_json::from_str(&to_json(&payload)).map_err(|e| e.to_string()));
    });
    listen
        .call2(&module, &event.into(), callback.as_ref())
        .map_err(message)?;
    // The listener lives as long as the page.
    callback.forget();
    Ok(())
}
