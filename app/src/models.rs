//! Where models come from and where their files are kept: the bundled reference models (served
//! with the site), Hugging Face-style repositories (downloaded once into the browser's Cache
//! Storage, with progress), and files the user picked (stored in the same cache). Each cached
//! model has a manifest entry listing its files and sizes, which the cache manager reads.

use js_sys::{Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, ReadableStreamDefaultReader, Response};

/// The Cache Storage cache that holds downloaded and imported models.
const CACHE_NAME: &str = "ets-models-v1";

/// A bundled model: its id (also its folder under `models/`) and a one-line description.
pub const BUNDLED: [(&str, &str); 3] = [
    (
        "ref-ar",
        "reference Llama trained on arithmetic word problems (0.9M parameters)",
    ),
    (
        "ref-ar-draft",
        "smaller Llama (0.2M parameters) with ref-ar's tokenizer: the ETS-IS draft",
    ),
    (
        "ref-dlm",
        "masked diffusion LM (LLaDA's objective) on the same task",
    ),
];

/// Files a model directory may hold besides its weights; the first two are required.
const TEXT_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelSource {
    /// Shipped with the app under `models/<id>/`.
    Bundled,
    /// A Hugging Face-style repository: file `f` is at `<base>/f` (e.g.
    /// `https://huggingface.co/org/name/resolve/main`); downloaded once into the cache.
    Url { base: String },
    /// Files the user picked, imported into the cache.
    Local,
}

/// A model in the download cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedModel {
    pub id: String,
    pub source: ModelSource,
    /// (file name, bytes) of each file.
    pub files: Vec<(String, u64)>,
}

impl CachedModel {
    /// Bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b).sum()
    }
}

/// A failure reading, downloading or storing model files, as a message for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

fn js_error(what: &str, e: JsValue) -> StorageError {
    let detail = e
        .as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"));
    StorageError(format!("{what}: {detail}"))
}

/// The URL prefix of a model's files in the cache (and, for bundled models, on the site).
pub fn file_prefix(id: &str, source: &ModelSource) -> String {
    match source {
        ModelSource::Bundled => format!("models/{id}/"),
        ModelSource::Url { base } => format!("{}/", base.trim_end_matches('/')),
        ModelSource::Local => format!("local-models/{id}/"),
    }
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

/// Reads a response body to the end, reporting (bytes so far, Content-Length) as it goes.
async fn read_body(
    response: &Response,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<Vec<u8>, StorageError> {
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<u64>().ok());
    let Some(body) = response.body() else {
        return Ok(Vec::new());
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error("reading a download", e))?;
        let done = Reflect::get(&chunk, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let value =
            Reflect::get(&chunk, &"value".into()).map_err(|e| js_error("reading a download", e))?;
        bytes.extend(Uint8Array::new(&value).to_vec());
        progress(bytes.len() as u64, total);
    }
    Ok(bytes)
}

/// Fetches `url`; None when the server has no such file (404).
async fn fetch(
    url: &str,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<Option<Vec<u8>>, StorageError> {
    let response = gloo_net::http::Request::get(url)
        .send()
        .await
        .map_err(|e| StorageError(format!("downloading {url}: {e}")))?;
    match response.status() {
        200 => {}
        404 => return Ok(None),
        status => {
            return Err(StorageError(format!(
                "downloading {url}: the server answered {status} {}",
                response.status_text()
            )));
        }
    }
    let raw: Response = response.into();
    read_body(&raw, progress).await.map(Some)
}

/// The bytes of a cached file, if the cache has it.
async fn cached(cache: &Cache, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let hit = JsFuture::from(cache.match_with_str(key))
        .await
        .map_err(|e| js_error("reading the model cache", e))?;
    if hit.is_undefined() {
        return Ok(None);
    }
    let response: Response = hit.unchecked_into();
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
    JsFuture::from(cache.put_with_str(key, &response))
        .await
        .map_err(|e| {
            js_error(
                "storing a model file (is the browser's storage full? delete a model)",
                e,
            )
        })?;
    Ok(())
}

/// One file of a model: from the cache, or downloaded (and cached unless bundled); None when
/// the source has no such file.
async fn model_file(
    cache: &Cache,
    id: &str,
    source: &ModelSource,
    name: &str,
    progress: &dyn Fn(&str, u64, Option<u64>),
) -> Result<Option<Vec<u8>>, StorageError> {
    let key = absolute(&format!("{}{name}", file_prefix(id, source)))?;
    let report = |done, total| progress(name, done, total);
    match source {
        ModelSource::Bundled => fetch(&key, &report).await,
        ModelSource::Local => cached(cache, &key).await,
        ModelSource::Url { .. } => {
            if let Some(bytes) = cached(cache, &key).await? {
                report(bytes.len() as u64, Some(bytes.len() as u64));
                return Ok(Some(bytes));
            }
            let bytes = fetch(&key, &report).await?;
            if let Some(bytes) = &bytes {
                store(cache, &key, bytes).await?;
            }
            Ok(bytes)
        }
    }
}

/// The shard files a `model.safetensors.index.json` names.
fn shard_names(index: &[u8]) -> Result<Vec<String>, StorageError> {
    let json: serde_json::Value = serde_json::from_slice(index)
        .map_err(|e| StorageError(format!("model.safetensors.index.json: {e}")))?;
    ets_engine::model::checkpoint::shard_names(&json).map_err(|e| StorageError(e.to_string()))
}

/// Every file of model `id`: (name, bytes). Downloads what the cache lacks, reporting
/// progress per file; `check_config` sees config.json before any weights are fetched. Records
/// the model in the cache manager when it came from a URL.
pub async fn model_files(
    id: &str,
    source: &ModelSource,
    check_config: &dyn Fn(&[u8]) -> Result<(), String>,
    progress: &dyn Fn(&str, u64, Option<u64>),
) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
    let cache = open_cache().await?;
    let mut files = Vec::new();
    for (i, name) in TEXT_FILES.iter().enumerate() {
        let file = model_file(&cache, id, source, name, progress).await?;
        if i == 0
            && let Some(config) = &file
        {
            check_config(config).map_err(|e| StorageError(format!("model {id}: {e}")))?;
        }
        match file {
            Some(bytes) => files.push((name.to_string(), bytes)),
            None if i < 2 => {
                return Err(StorageError(format!(
                    "model {id} has no {name} ({})",
                    file_prefix(id, source)
                )));
            }
            None => {}
        }
    }
    let weights = match model_file(&cache, id, source, "model.safetensors", progress).await? {
        Some(bytes) => vec![("model.safetensors".to_string(), bytes)],
        None => {
            let index = "model.safetensors.index.json";
            let Some(bytes) = model_file(&cache, id, source, index, progress).await? else {
                return Err(StorageError(format!(
                    "model {id} has neither model.safetensors nor {index}"
                )));
            };
            let mut shards = Vec::new();
            for shard in shard_names(&bytes)? {
                let Some(data) = model_file(&cache, id, source, &shard, progress).await? else {
                    return Err(StorageError(format!("model {id} lacks the shard {shard}")));
                };
                shards.push((shard, data));
            }
            shards.push((index.to_string(), bytes));
            shards
        }
    };
    files.extend(weights);
    if matches!(source, ModelSource::Url { .. }) {
        write_manifest(&cache, id, source, &files).await?;
    }
    Ok(files)
}

/// The manifest's key for model `id`.
fn manifest_key(id: &str) -> Result<String, StorageError> {
    absolute(&format!("ets-manifests/{id}.json"))
}

async fn write_manifest(
    cache: &Cache,
    id: &str,
    source: &ModelSource,
    files: &[(String, Vec<u8>)],
) -> Result<(), StorageError> {
    let manifest = CachedModel {
        id: id.to_string(),
        source: source.clone(),
        files: files
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect(),
    };
    let json = serde_json::to_vec(&manifest).map_err(|e| StorageError(e.to_string()))?;
    store(cache, &manifest_key(id)?, &json).await
}

/// Stores files the user picked as model `id` (from the UI); `config.json` and
/// `tokenizer.json` must be among them.
pub async fn import_local(id: &str, files: Vec<(String, Vec<u8>)>) -> Result<(), StorageError> {
    for required in &TEXT_FILES[..2] {
        if !files.iter().any(|(n, _)| n == required) {
            return Err(StorageError(format!("pick a {required} too")));
        }
    }
    if !files.iter().any(|(n, _)| n.ends_with(".safetensors")) {
        return Err(StorageError(
            "pick the model's *.safetensors file(s) too".into(),
        ));
    }
    let cache = open_cache().await?;
    let prefix = file_prefix(id, &ModelSource::Local);
    for (name, bytes) in &files {
        store(&cache, &absolute(&format!("{prefix}{name}"))?, bytes).await?;
    }
    write_manifest(&cache, id, &ModelSource::Local, &files).await
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

/// Turns a Hugging Face repository URL or `org/name` into the base its files are under:
/// `https://huggingface.co/org/name/resolve/main`. Other URLs are taken as given.
pub fn repository_base(input: &str) -> Result<String, StorageError> {
    let input = input.trim().trim_end_matches('/');
    if input.is_empty() {
        return Err(StorageError("enter a model URL or org/name".into()));
    }
    if !input.contains("://") {
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(StorageError(format!(
                "{input:?} is neither a URL nor a Hugging Face org/name"
            )));
        }
        return Ok(format!("https://huggingface.co/{input}/resolve/main"));
    }
    if !(input.starts_with("https://") || input.starts_with("http://")) {
        return Err(StorageError(format!("{input:?}: only http(s) URLs")));
    }
    let is_hf_repo = input.starts_with("https://huggingface.co/")
        && !input.contains("/resolve/")
        && input.matches('/').count() == 4;
    Ok(if is_hf_repo {
        format!("{input}/resolve/main")
    } else {
        input.to_string()
    })
}

/// A model id for a repository base: its last path segments before `resolve`.
pub fn id_for_base(base: &str) -> String {
    let path = base.split("/resolve/").next().unwrap_or(base);
    let segments: Vec<&str> = path.rsplit('/').take(2).collect();
    segments.into_iter().rev().collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_resolve_to_file_bases() {
        let hf = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M/resolve/main";
        assert_eq!(repository_base("HuggingFaceTB/SmolLM2-135M").unwrap(), hf);
        assert_eq!(
            repository_base("https://huggingface.co/HuggingFaceTB/SmolLM2-135M/").unwrap(),
            hf
        );
        assert_eq!(repository_base(hf).unwrap(), hf);
        assert_eq!(
            repository_base("http://127.0.0.1:8000/m").unwrap(),
            "http://127.0.0.1:8000/m"
        );
        for bad in ["", "a/b/c", "ftp://x/y", "justaname"] {
            assert!(repository_base(bad).is_err(), "{bad:?}");
        }
        assert_eq!(id_for_base(hf), "HuggingFaceTB/SmolLM2-135M");
    }

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
}
