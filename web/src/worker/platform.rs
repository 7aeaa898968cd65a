//! The engine host's platform in the browser: WebGPU (or the CPU where WebGPU is missing), and
//! models in Cache Storage (`ets_app::browser::cache`, which the page shares).

use std::ops::Range;
use std::sync::Arc;

use ets_app::browser::cache::{self, js_message};
use ets_engine::backend::{Device, cpu_device, max_buffer_bytes, wgpu_device_async};
use ets_engine::model::random_access::RandomAccessFile;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use web_sys::{Blob, FileReaderSync, XmlHttpRequest, XmlHttpRequestResponseType};

use ets_host::Platform;
use ets_protocol::BackendInfo;
use ets_protocol::models::{
    CachedModel, MAX_BROWSER_FILE_BYTES, ModelSource, Progress, StorageError,
};

/// The browser platform: WebGPU through wgpu, Cache Storage for models.
pub struct Browser;

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

impl Platform for Browser {
    fn cpu_backend(&self, notice: Option<String>) -> BackendInfo {
        BackendInfo::cpu("CPU (WebAssembly, one thread)".into(), notice)
    }

    async fn start_device(&self, prefer_gpu: bool) -> (Device, BackendInfo) {
        let cpu = |notice| self.cpu_backend(notice);
        if !prefer_gpu {
            return (cpu_device(), cpu(None));
        }
        if let Some(why) = webgpu_missing().await {
            let notice = format!("No WebGPU: {why}. The engine runs on the CPU, slower.");
            return (cpu_device(), cpu(Some(notice)));
        }
        match wgpu_device_async().await {
            Ok((device, adapter)) => {
                let info = BackendInfo::gpu("webgpu", adapter, max_buffer_bytes(&device));
                (device, info)
            }
            Err(e) => {
                let notice =
                    format!("WebGPU is not usable here ({e}): the engine runs on the CPU, slower.");
                (cpu_device(), cpu(Some(notice)))
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
        cache::model_file(id, source, name, progress).await
    }

    async fn weights_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError> {
        let Some(blob) = cache::weights_file(id, source, name, progress).await? else {
            return Ok(None);
        };
        let reader = FileReaderSync::new()
            .map_err(|e| StorageError(format!("reading {name}: {}", js_message(&e))))?;
        Ok(Some(Arc::new(BlobFile { blob, reader })))
    }

    async fn remote_file(
        &self,
        source: &ModelSource,
        name: &str,
    ) -> Result<Option<Arc<dyn RandomAccessFile>>, StorageError> {
        let ModelSource::Url { base, .. } = source else {
            return Err(StorageError(format!("{name} is not on a server")));
        };
        let url = format!("{}/{name}", base.trim_end_matches('/'));
        let file = RemoteFile::open(&url)?;
        Ok(file.map(|f| Arc::new(f) as Arc<dyn RandomAccessFile>))
    }

    async fn storage_room(&self) -> Option<u64> {
        cache::storage_room().await
    }

    fn max_file_bytes(&self) -> Option<u64> {
        Some(MAX_BROWSER_FILE_BYTES)
    }

    async fn record(&self, model: &CachedModel) -> Result<(), StorageError> {
        cache::write_manifest(model).await
    }

    async fn list_cached(&self) -> Result<Vec<CachedModel>, StorageError> {
        cache::list_cached().await
    }

    async fn delete_cached(&self, id: &str) -> Result<Vec<CachedModel>, StorageError> {
        cache::delete_cached(id).await
    }

    async fn discard_download(&self, id: &str, source: &ModelSource) -> Result<(), StorageError> {
        cache::discard_files(id, source).await
    }

    async fn yield_now(&self) {
        gloo_timers::future::TimeoutFuture::new(0).await;
    }
}

/// A Blob (a file in Cache Storage, which the browser keeps on disk) read a range at a time, as
/// a worker can: synchronously, with `FileReaderSync`. Only the range read enters wasm memory.
struct BlobFile {
    blob: Blob,
    reader: FileReaderSync,
}

impl RandomAccessFile for BlobFile {
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }

    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, String> {
        let part = self
            .blob
            .slice_with_f64_and_f64(range.start as f64, range.end as f64)
            .map_err(|e| js_message(&e))?;
        let buffer = self
            .reader
            .read_as_array_buffer(&part)
            .map_err(|e| js_message(&e))?;
        let bytes = Uint8Array::new(&buffer);
        if u64::from(bytes.length()) != range.end - range.start {
            return Err(format!(
                "bytes {}..{} lie beyond its {} bytes",
                range.start,
                range.end,
                self.len()
            ));
        }
        Ok(bytes.to_vec())
    }
}

/// A file on a web server, read a range at a time with synchronous requests (a worker may make
/// them): what a check reads of a model before its download, its header.
struct RemoteFile {
    url: String,
    len: u64,
}

impl RemoteFile {
    /// The file at `url`, its length from a HEAD request; None when the server has none.
    fn open(url: &str) -> Result<Option<Self>, StorageError> {
        let failed = |what: &str| StorageError(format!("checking {url}: {what}"));
        let xhr = XmlHttpRequest::new().map_err(|e| failed(&js_message(&e)))?;
        xhr.open_with_async("HEAD", url, false)
            .map_err(|e| failed(&js_message(&e)))?;
        xhr.send().map_err(|e| {
            failed(&format!(
                "the network is off, the server is down, or it does not let other sites read \
                 its files (CORS) ({})",
                js_message(&e)
            ))
        })?;
        match xhr.status().unwrap_or(0) {
            200 => {}
            404 => return Ok(None),
            status => return Err(failed(&format!("the server answered {status}"))),
        }
        let len = xhr
            .get_response_header("content-length")
            .ok()
            .flatten()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| failed("the server does not say the file's size"))?;
        Ok(Some(Self {
            url: url.to_string(),
            len,
        }))
    }
}

impl RandomAccessFile for RemoteFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, String> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if range.end > self.len {
            return Err(format!(
                "bytes {}..{} lie beyond its {} bytes",
                range.start, range.end, self.len
            ));
        }
        let xhr = XmlHttpRequest::new().map_err(|e| js_message(&e))?;
        xhr.open_with_async("GET", &self.url, false)
            .map_err(|e| js_message(&e))?;
        xhr.set_request_header("Range", &format!("bytes={}-{}", range.start, range.end - 1))
            .map_err(|e| js_message(&e))?;
        xhr.set_response_type(XmlHttpRequestResponseType::Arraybuffer);
        xhr.send().map_err(|e| js_message(&e))?;
        match xhr.status().unwrap_or(0) {
            206 => {}
            200 => return Err("the server does not send parts of files".into()),
            status => return Err(format!("the server answered {status}")),
        }
        let buffer = xhr.response().map_err(|e| js_message(&e))?;
        let bytes = Uint8Array::new(&buffer).to_vec();
        if bytes.len() as u64 != range.end - range.start {
            return Err(format!(
                "the server sent {} bytes for a range of {}",
                bytes.len(),
                range.end - range.start
            ));
        }
        Ok(bytes)
    }
}
