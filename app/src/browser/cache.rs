//! The browser's model store: Cache Storage (cache [`CACHE_NAME`]) holds downloaded and
//! imported models' files and their manifests; bundled models are fetched from the site.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, AbortSignal, Blob, Cache, CacheStorage, ReadableStream,
    ReadableStreamDefaultReader, Response,
};

use ets_protocol::models::{
    CachedModel, ModelSource, Progress, StorageError, TEXT_FILES, check_browser_file_size,
    check_storage_room, file_prefix, format_bytes, is_gguf,
};

/// The Cache Storage cache that holds downloaded and imported models.
const CACHE_NAME: &str = "ets-models-v1";

fn js_error(what: &str, e: JsValue) -> StorageError {
    StorageError(format!("{what}: {}", js_message(&e)))
}

/// A JavaScript error's message.
pub fn js_message(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// A key the cache accepts: relative prefixes are resolved against the page or worker origin.
fn absolute(url: &str) -> Result<String, StorageError> {
    let base: String = Reflect::get(&js_sys::global(), &"location".into())
        .and_then(|l| Reflect::get(&l, &"href".into()))
        .ok()
        .and_then(|h| h.as_string())
        .unwrap_or_default();
    web_sys::Url::new_with_base(url, &base)
        .map(|u| u.href())
        .map_err(|e| js_error(&format!("bad URL {url:?}"), e))
}

async fn open_cache() -> Result<Cache, StorageError> {
    let caches: CacheStorage = Reflect::get(&js_sys::global(), &"caches".into())
        .ok()
        .filter(|c| !c.is_undefined())
        .ok_or_else(|| {
            StorageError("this browser has no Cache Storage (a private window?)".into())
        })?
        .unchecked_into();
    let cache = JsFuture::from(caches.open(CACHE_NAME))
        .await
        .map_err(|e| js_error("opening the model cache", e))?;
    Ok(cache.unchecked_into())
}

/// A response's Content-Length, when it sends one.
fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<u64>().ok())
}

/// The file name at the end of `url`, for messages.
fn file_name(url: &str) -> &str {
    url.rsplit('/').find(|part| !part.is_empty()).unwrap_or(url)
}

/// Reads a body `stream` to its end, reporting (bytes so far, `total`) as it goes, and returns
/// how many bytes came; they are appended to `keep` when given (else only counted). A body
/// larger than the browser's engine takes is refused as soon as it grows past that, one that
/// breaks off is an error (the stream is cancelled on every error).
async fn read_stream(
    name: &str,
    stream: &ReadableStream,
    (total, encoded): (Option<u64>, bool),
    progress: &Progress<'_>,
    mut keep: Option<&mut Vec<u8>>,
) -> Result<u64, StorageError> {
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    // Stops the download (the connection is let go) and hands the error on.
    let give_up = |e: StorageError| {
        let _ = reader.cancel();
        e
    };
    let broke_off = |so_far: u64| {
        let of = total
            .map(|t| format!(" of {}", format_bytes(t)))
            .unwrap_or_default();
        format!(
            "the download of {name} broke off after {}{of} (nothing was kept; try again)",
            format_bytes(so_far)
        )
    };
    let mut read = 0u64;
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error(&broke_off(read), e))?;
        let done = Reflect::get(&chunk, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(|e| js_error("reading a download", e))?
            .unchecked_into();
        let len = u64::from(value.length());
        check_browser_file_size(name, read + len).map_err(give_up)?;
        if let Some(bytes) = keep.as_deref_mut() {
            let start = bytes.len();
            bytes.try_reserve(len as usize).map_err(|_| {
                give_up(StorageError(format!(
                    "downloading {name}: the browser gave no memory for its {}",
                    format_bytes(read + len)
                )))
            })?;
            bytes.resize(start + len as usize, 0);
            value.copy_to(&mut bytes[start..]);
        }
        read += len;
        progress(read, total).map_err(give_up)?;
    }
    // A body shorter than its Content-Length broke off (unless it came compressed, when the
    // header counts the compressed bytes; cross-origin, the encoding is not shown and a
    // plain body is assumed, as model hosts send them).
    if let Some(total) = total
        && !encoded
        && read < total
    {
        return Err(StorageError(broke_off(read)));
    }
    Ok(read)
}

/// A response's Content-Length and whether its body came compressed.
fn body_size(response: &Response) -> (Option<u64>, bool) {
    let encoded = response
        .headers()
        .get("content-encoding")
        .ok()
        .flatten()
        .is_some_and(|e| e != "identity");
    (content_length(response), encoded)
}

/// Reads a response body to the end into memory (bundled models' small files), reporting
/// progress. A body larger than the browser's engine takes is refused before it is read (by
/// its Content-Length) or as soon as it grows past that; one that breaks off is an error.
async fn read_body(
    url: &str,
    response: &Response,
    progress: &Progress<'_>,
) -> Result<Vec<u8>, StorageError> {
    let name = file_name(url);
    let Some(body) = response.body() else {
        return Ok(Vec::new());
    };
    let size = body_size(response);
    let mut bytes = Vec::new();
    if let Some(total) = size.0 {
        let reserved = check_browser_file_size(name, total).and_then(|()| {
            // At most 2 GiB − 1 after the check: it fits in a usize on wasm32.
            bytes.try_reserve_exact(total as usize).map_err(|_| {
                StorageError(format!(
                    "downloading {name}: the browser gave no memory for its {}",
                    format_bytes(total)
                ))
            })
        });
        if let Err(e) = reserved {
            let _ = body.cancel();
            return Err(e);
        }
    }
    read_stream(name, &body, size, progress, Some(&mut bytes)).await?;
    Ok(bytes)
}

/// Sends a GET for `url` (`abort` cancels it, body included); None when the server has no
/// such file (404).
async fn request(url: &str, abort: Option<&AbortSignal>) -> Result<Option<Response>, StorageError> {
    // fetch fails without saying why (a TypeError) for every kind of network failure, CORS's
    // refusal among them.
    let response = gloo_net::http::Request::get(url)
        .abort_signal(abort)
        .send()
        .await
        .map_err(|e| {
            StorageError(format!(
                "could not download {url}: the network is off, the server is down, or it does not \
             let other sites read its files (CORS) ({e})"
            ))
        })?;
    match response.status() {
        200 => Ok(Some(response.into())),
        404 => Ok(None),
        status => Err(StorageError(format!(
            "downloading {url}: the server answered {status} {}",
            response.status_text()
        ))),
    }
}

/// This origin's storage (usage, quota) in bytes, where the browser tells
/// (`navigator.storage.estimate()`, in the page and in workers).
async fn storage_estimate() -> Option<(u64, u64)> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let storage = Reflect::get(&navigator, &"storage".into())
        .ok()
        .filter(|s| s.is_object())?;
    let estimate: js_sys::Function = Reflect::get(&storage, &"estimate".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let promise: js_sys::Promise = estimate.call0(&storage).ok()?.dyn_into().ok()?;
    let estimate = JsFuture::from(promise).await.ok()?;
    let field = |name: &str| {
        Reflect::get(&estimate, &name.into())
            .ok()
            .and_then(|v| v.as_f64())
    };
    Some((field("usage")? as u64, field("quota")? as u64))
}

/// The bytes this origin may still store (quota − usage), where the browser tells.
pub async fn storage_room() -> Option<u64> {
    storage_estimate()
        .await
        .map(|(usage, quota)| quota.saturating_sub(usage))
}

/// Refuses a download of `needed` bytes that the site's storage has no room for (nothing is
/// checked where the browser gives no estimate).
async fn ensure_room(needed: u64) -> Result<(), StorageError> {
    match storage_estimate().await {
        Some((usage, quota)) => check_storage_room(needed, usage, quota),
        None => Ok(()),
    }
}

/// Downloads `url` into the cache under the same key, streaming: the body goes to Cache Storage
/// as it arrives and is only counted here (for progress and the size checks), so a download
/// never sits whole in memory. The storage quota is checked before the body is read (by its
/// Content-Length) or, without one, once it has arrived; on any failure the download is
/// cancelled and nothing stays cached. Returns the bytes stored; None on a 404.
async fn download_to_cache(
    cache: &Cache,
    url: &str,
    progress: &Progress<'_>,
) -> Result<Option<u64>, StorageError> {
    let abort = AbortController::new().map_err(|e| js_error("starting a download", e))?;
    let Some(response) = request(url, Some(&abort.signal())).await? else {
        return Ok(None);
    };
    let name = file_name(url);
    let size = body_size(&response);
    if let Some(length) = size.0 {
        let fits = match check_browser_file_size(name, length) {
            Ok(()) => ensure_room(length).await,
            Err(e) => Err(e),
        };
        if let Err(e) = fits {
            // The body is not read: let the connection go.
            abort.abort();
            return Err(e);
        }
    }
    let Some(body) = response.body() else {
        store(cache, url, &[]).await?;
        return Ok(Some(0));
    };
    // One branch of the body goes to the cache, the other is counted here.
    let branches = body.tee();
    let to_cache: ReadableStream = branches.get(0).unchecked_into();
    let to_count: ReadableStream = branches.get(1).unchecked_into();
    let stored = Response::new_with_opt_readable_stream(Some(&to_cache))
        .map_err(|e| js_error("storing a model file", e))?;
    let put = cache.put_with_str(url, &stored);
    // The cache refuses the file as soon as the storage fills up (QuotaExceededError): the
    // download stops at its next chunk then, not at its end.
    let put_failed: Rc<RefCell<Option<JsValue>>> = Rc::default();
    wasm_bindgen_futures::spawn_local({
        let (put, put_failed) = (put.clone(), put_failed.clone());
        async move {
            if let Err(e) = JsFuture::from(put).await {
                *put_failed.borrow_mut() = Some(e);
            }
        }
    });
    let storing_failed = |e: JsValue| {
        js_error(
            "storing a model file (is the browser's storage full? delete a model)",
            e,
        )
    };
    let counting = |done, total| match put_failed.borrow().clone() {
        Some(e) => Err(storing_failed(e)),
        None => progress(done, total),
    };
    let counted = match read_stream(name, &to_count, size, &counting, None).await {
        Ok(read) if size.0.is_none() => ensure_room(read).await.map(|()| read),
        counted => counted,
    };
    match counted {
        Ok(read) => match JsFuture::from(put).await {
            Ok(_) => Ok(Some(read)),
            Err(e) => {
                let _ = JsFuture::from(cache.delete_with_str(url)).await;
                Err(storing_failed(e))
            }
        },
        Err(e) => {
            // The cache's copy is cut off too (a put of a failed body stores nothing; one cut
            // short by the size checks might): none of it stays.
            abort.abort();
            let _ = JsFuture::from(put).await;
            let _ = JsFuture::from(cache.delete_with_str(url)).await;
            Err(e)
        }
    }
}

/// A cached file's response, if the cache has it.
async fn cached_response(cache: &Cache, key: &str) -> Result<Option<Response>, StorageError> {
    let hit = JsFuture::from(cache.match_with_str(key))
        .await
        .map_err(|e| js_error("reading the model cache", e))?;
    Ok((!hit.is_undefined()).then(|| hit.unchecked_into()))
}

/// The bytes of a cached file, if the cache has it.
async fn cached(cache: &Cache, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let Some(response) = cached_response(cache, key).await? else {
        return Ok(None);
    };
    let buffer = JsFuture::from(
        response
            .array_buffer()
            .map_err(|e| js_error("reading the model cache", e))?,
    )
    .await
    .map_err(|e| js_error("reading the model cache", e))?;
    Ok(Some(Uint8Array::new(&buffer).to_vec()))
}

/// Stores `bytes` in the cache under `key`.
async fn store(cache: &Cache, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let body = Uint8Array::from(bytes);
    let response = Response::new_with_opt_buffer_source(Some(&body))
        .map_err(|e| js_error("storing a model file", e))?;
    put(cache, key, &response).await
}

/// Stores `response` in the cache under `key`.
async fn put(cache: &Cache, key: &str, response: &Response) -> Result<(), StorageError> {
    JsFuture::from(cache.put_with_str(key, response))
        .await
        .map_err(|e| {
            js_error(
                "storing a model file (is the browser's storage full? delete a model)",
                e,
            )
        })?;
    Ok(())
}

/// One file of a model as a response to read: from the site (bundled models, which the service
/// worker caches), from the cache, or downloaded into the cache first; with its key. None when
/// the source has no such file.
async fn file_response(
    id: &str,
    source: &ModelSource,
    name: &str,
    progress: &Progress<'_>,
) -> Result<Option<(String, Response)>, StorageError> {
    let key = absolute(&format!("{}{name}", file_prefix(id, source)))?;
    let response = match source {
        ModelSource::Bundled => request(&key, None).await?,
        ModelSource::Local => cached_response(&open_cache().await?, &key).await?,
        ModelSource::Folder { .. } => {
            return Err(StorageError(
                "model folders open in the desktop app; in the browser, pick the files".into(),
            ));
        }
        ModelSource::Server { url, .. } => {
            return Err(StorageError(format!(
                "model {id} is served by {url}: it has no files here"
            )));
        }
        ModelSource::Url { .. } => {
            let cache = open_cache().await?;
            match cached_response(&cache, &key).await? {
                Some(response) => Some(response),
                None => match download_to_cache(&cache, &key, progress).await? {
                    Some(_) => cached_response(&cache, &key).await?,
                    None => None,
                },
            }
        }
    };
    Ok(response.map(|r| (key, r)))
}

/// One file of a model in memory (see [`file_response`]), reporting progress as it is read.
pub async fn model_file(
    id: &str,
    source: &ModelSource,
    name: &str,
    progress: &Progress<'_>,
) -> Result<Option<Vec<u8>>, StorageError> {
    match file_response(id, source, name, progress).await? {
        Some((key, response)) => read_body(&key, &response, progress).await.map(Some),
        None => Ok(None),
    }
}

/// A model's weights file (see [`file_response`]) as a Blob that stays in the browser's
/// storage, to be read a tensor at a time (a download goes straight to the cache).
pub async fn weights_file(
    id: &str,
    source: &ModelSource,
    name: &str,
    progress: &Progress<'_>,
) -> Result<Option<Blob>, StorageError> {
    let Some((_, response)) = file_response(id, source, name, progress).await? else {
        return Ok(None);
    };
    let read = |e| js_error(&format!("reading {name}"), e);
    let blob: Blob = JsFuture::from(response.blob().map_err(read)?)
        .await
        .map_err(read)?
        .unchecked_into();
    let size = blob.size() as u64;
    progress(size, Some(size))?;
    Ok(Some(blob))
}

/// Deletes every cached file of model `id` from `source`, the manifest aside: the keys under
/// its prefix, or only its own file for a GGUF source (other GGUF files of the same folder
/// share the prefix).
pub async fn discard_files(id: &str, source: &ModelSource) -> Result<(), StorageError> {
    let cache = open_cache().await?;
    let prefix = file_prefix(id, source);
    let prefix = absolute(&format!("{prefix}{}", source.gguf_file().unwrap_or("")))?;
    let keys = JsFuture::from(cache.keys())
        .await
        .map_err(|e| js_error("listing the model cache", e))?;
    for request in js_sys::Array::from(&keys).iter() {
        let url = Reflect::get(&request, &"url".into())
            .ok()
            .and_then(|u| u.as_string())
            .unwrap_or_default();
        if url.starts_with(&prefix) {
            JsFuture::from(cache.delete_with_str(&url))
                .await
                .map_err(|e| js_error("deleting a model file", e))?;
        }
    }
    Ok(())
}

/// The manifest's key for model `id`.
fn manifest_key(id: &str) -> Result<String, StorageError> {
    absolute(&format!("ets-manifests/{id}.json"))
}

/// Records `model` in the cache manager (its manifest).
pub async fn write_manifest(model: &CachedModel) -> Result<(), StorageError> {
    let cache = open_cache().await?;
    let json = serde_json::to_vec(model).map_err(|e| StorageError(e.to_string()))?;
    store(&cache, &manifest_key(&model.id)?, &json).await
}

/// Stores files the user picked as model `id` (from the UI): one GGUF file, or a model
/// folder's files (`config.json`, `tokenizer.json` and the `*.safetensors` among them). The
/// browser copies each file into the cache itself: none passes through memory here.
pub async fn import_local(id: &str, files: Vec<web_sys::File>) -> Result<(), StorageError> {
    let names: Vec<String> = files.iter().map(web_sys::File::name).collect();
    let ggufs = names.iter().filter(|n| is_gguf(n)).count();
    if ggufs > 1 {
        return Err(StorageError("pick one GGUF file".into()));
    }
    if ggufs == 0 {
        for required in &TEXT_FILES[..2] {
            if !names.iter().any(|n| n == required) {
                return Err(StorageError(format!("pick a {required} too")));
            }
        }
        if !names.iter().any(|n| n.ends_with(".safetensors")) {
            return Err(StorageError(
                "pick the model's *.safetensors file(s) or one GGUF file".into(),
            ));
        }
    }
    let sizes: Vec<(String, u64)> = files
        .iter()
        .map(|file| (file.name(), file.size() as u64))
        .collect();
    ensure_room(sizes.iter().map(|(_, size)| size).sum()).await?;
    let cache = open_cache().await?;
    let prefix = file_prefix(id, &ModelSource::Local);
    for file in &files {
        let key = absolute(&format!("{prefix}{}", file.name()))?;
        let response = Response::new_with_opt_blob(Some(file))
            .map_err(|e| js_error("storing a model file", e))?;
        put(&cache, &key, &response).await?;
    }
    write_manifest(&CachedModel::with_sizes(id, ModelSource::Local, sizes)).await
}

/// The models in the cache, from their manifests.
pub async fn list_cached() -> Result<Vec<CachedModel>, StorageError> {
    let cache = open_cache().await?;
    let keys = JsFuture::from(cache.keys())
        .await
        .map_err(|e| js_error("listing the model cache", e))?;
    let mut models = Vec::new();
    for request in js_sys::Array::from(&keys).iter() {
        let url = Reflect::get(&request, &"url".into())
            .ok()
            .and_then(|u| u.as_string())
            .unwrap_or_default();
        if !url.contains("/ets-manifests/") {
            continue;
        }
        if let Some(bytes) = cached(&cache, &url).await?
            && let Ok(model) = serde_json::from_slice::<CachedModel>(&bytes)
        {
            models.push(model);
        }
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// Deletes model `id`'s files and manifest from the cache; returns the models left.
pub async fn delete_cached(id: &str) -> Result<Vec<CachedModel>, StorageError> {
    let cache = open_cache().await?;
    let (gone, left): (Vec<_>, Vec<_>) = list_cached().await?.into_iter().partition(|m| m.id == id);
    let Some(model) = gone.into_iter().next() else {
        return Err(StorageError(format!("no cached model {id}")));
    };
    let prefix = file_prefix(id, &model.source);
    for (name, _) in &model.files {
        let key = absolute(&format!("{prefix}{name}"))?;
        JsFuture::from(cache.delete_with_str(&key))
            .await
            .map_err(|e| js_error("deleting a model file", e))?;
    }
    JsFuture::from(cache.delete_with_str(&manifest_key(id)?))
        .await
        .map_err(|e| js_error("deleting a model", e))?;
    Ok(left)
}
