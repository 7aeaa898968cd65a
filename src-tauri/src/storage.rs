//! The desktop app's model store: bundled models among the app's resources, downloaded models
//! and every model's manifest in the platform's cache directory, model folders read where they
//! are. Downloads stream into a `.part` file that is renamed only when complete, so a failed or
//! interrupted download never leaves a truncated file behind.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ets_engine::model::random_access::{DiskFile, RandomAccessFile};
use ets_protocol::models::{CachedModel, ModelSource, Progress, StorageError, check_disk_room};

/// How long a download may wait to connect, and for the next bytes, before it fails.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the desktop app keeps model files.
pub struct ModelStore {
    /// The folder holding the bundled models, one folder each (`<bundled>/<id>/`).
    bundled: PathBuf,
    /// The app's cache folder: `models/` (downloads) and `manifests/`.
    cache: PathBuf,
}

/// A file-system name for model id `id` (`org/name` → `org--name`), safe as one path segment.
fn dir_name(id: &str) -> String {
    let mut name = String::new();
    for c in id.chars() {
        match c {
            '/' => name.push_str("--"),
            c if c.is_ascii_alphanumeric() || "-_.".contains(c) => name.push(c),
            _ => name.push('_'),
        }
    }
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// Refuses a model file name that is not one plain path segment (`..`, an absolute path, a
/// separator of either kind, a drive prefix): whatever a manifest, an index or a server names,
/// nothing is read or written outside the model's folder.
fn check_file_name(name: &str) -> Result<(), StorageError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', ':', '\0'])
        && Path::new(name).components().count() == 1;
    if plain {
        Ok(())
    } else {
        Err(StorageError(format!(
            "refused the file name {name:?}: a model's files are plain names inside its folder"
        )))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError(format!("{what} {}: {e}", path.display()))
}

/// The bytes of `path`, or None when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path, e)),
    }
}

/// Writes `bytes` to `path` through a temporary file, so readers see the old or the new file.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let part = path.with_extension("part");
    fs::write(&part, bytes).map_err(|e| io_error("writing", &part, e))?;
    fs::rename(&part, path).map_err(|e| io_error("writing", path, e))
}

impl ModelStore {
    /// A store with bundled models under `bundled` and downloads and manifests under `cache`.
    pub fn new(bundled: PathBuf, cache: PathBuf) -> Self {
        Self { bundled, cache }
    }

    fn downloads(&self, id: &str) -> PathBuf {
        self.cache.join("models").join(dir_name(id))
    }

    fn manifests(&self) -> PathBuf {
        self.cache.join("manifests")
    }

    /// Where file `name` of model `id` from `source` is (downloaded into the cache first for a
    /// URL, reporting (bytes so far, total)); None when the source has no such file.
    fn file_path(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<PathBuf>, StorageError> {
        check_file_name(name)?;
        let path = match source {
            ModelSource::Bundled => self.bundled.join(dir_name(id)).join(name),
            ModelSource::Folder { path, .. } => Path::new(path).join(name),
            ModelSource::Local => {
                return Err(StorageError(format!(
                    "model {id} was imported into a browser; open its folder here instead"
                )));
            }
            ModelSource::Server { url, .. } => {
                return Err(StorageError(format!(
                    "model {id} is served by {url}: it has no files here"
                )));
            }
            ModelSource::Url { base, .. } => {
                let dir = self.downloads(id);
                let path = dir.join(name);
                if !path.exists() {
                    fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
                    let url = format!("{}/{name}", base.trim_end_matches('/'));
                    if !download(&url, &path, progress)? {
                        return Ok(None);
                    }
                }
                path
            }
        };
        Ok(path.is_file().then_some(path))
    }

    /// File `name` of model `id` from `source` (downloaded into the cache first for a URL),
    /// reporting (bytes so far, total); None when the source has no such file.
    pub fn model_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(path) = self.file_path(id, source, name, progress)? else {
            return Ok(None);
        };
        let bytes = read_if_present(&path)?;
        if let Some(bytes) = &bytes {
            progress(bytes.len() as u64, Some(bytes.len() as u64))?;
        }
        Ok(bytes)
    }

    /// The weights file `name` of model `id` from `source`, found (or downloaded) as
    /// [`ModelStore::model_file`] does, opened to be read a tensor at a time.
    pub fn weights_file(
        &self,
        id: &str,
        source: &ModelSource,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<Option<DiskFile>, StorageError> {
        let Some(path) = self.file_path(id, source, name, progress)? else {
            return Ok(None);
        };
        let file = DiskFile::open(&path).map_err(|e| io_error("reading", &path, e))?;
        let len = file.len();
        progress(len, Some(len))?;
        Ok(Some(file))
    }

    /// File `name` of model `source` (a URL) on its server, read a range at a time without
    /// downloading it (a check before a download); None on a 404.
    pub fn remote_file(
        &self,
        source: &ModelSource,
        name: &str,
    ) -> Result<Option<RemoteFile>, StorageError> {
        let ModelSource::Url { base, .. } = source else {
            return Err(StorageError(format!("{name} is not on a server")));
        };
        RemoteFile::open(&format!("{}/{name}", base.trim_end_matches('/')))
    }

    /// Bytes free on the disk that holds the cache folder, where the system says.
    pub fn free_space(&self) -> Option<u64> {
        fs::create_dir_all(&self.cache).ok()?;
        free_disk_space(&self.cache)
    }

    /// Records `model` in the cache manager.
    pub fn record(&self, model: &CachedModel) -> Result<(), StorageError> {
        let dir = self.manifests();
        fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        let json = serde_json::to_vec_pretty(model).map_err(|e| StorageError(e.to_string()))?;
        write_whole(&dir.join(format!("{}.json", dir_name(&model.id))), &json)
    }

    /// The recorded models, sorted by id (a manifest that does not parse is skipped).
    pub fn list(&self) -> Result<Vec<CachedModel>, StorageError> {
        let dir = self.manifests();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &dir, e)),
        };
        let mut models = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io_error("listing", &dir, e))?.path();
            if path.extension().is_some_and(|x| x == "json")
                && let Some(bytes) = read_if_present(&path)?
                && let Ok(model) = serde_json::from_slice::<CachedModel>(&bytes)
            {
                models.push(model);
            }
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(models)
    }

    /// Deletes the files a download of model `id` left (a URL source's download folder).
    pub fn discard_download(&self, id: &str, source: &ModelSource) -> Result<(), StorageError> {
        if !matches!(source, ModelSource::Url { .. }) {
            return Ok(());
        }
        let dir = self.downloads(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("deleting", &dir, e)),
        }
    }

    /// Forgets model `id`, deleting its downloaded files (never a folder opened in place);
    /// returns the models left.
    pub fn delete(&self, id: &str) -> Result<Vec<CachedModel>, StorageError> {
        let (gone, left): (Vec<_>, Vec<_>) = self.list()?.into_iter().partition(|m| m.id == id);
        let Some(model) = gone.first() else {
            return Err(StorageError(format!("no cached model {id}")));
        };
        self.discard_download(id, &model.source)?;
        let manifest = self.manifests().join(format!("{}.json", dir_name(id)));
        fs::remove_file(&manifest).map_err(|e| io_error("deleting", &manifest, e))?;
        Ok(left)
    }
}

/// An HTTP agent with the network timeouts.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(NETWORK_TIMEOUT))
        .timeout_recv_response(Some(NETWORK_TIMEOUT))
        .timeout_recv_body(Some(NETWORK_TIMEOUT))
        .build()
        .into()
}

/// A server's answer: the response, None for a 404, or an error made by `failed` (any other
/// status, or no answer).
fn answered(
    call: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    failed: &dyn Fn(String) -> StorageError,
) -> Result<Option<ureq::http::Response<ureq::Body>>, StorageError> {
    match call {
        Ok(response) => Ok(Some(response)),
        Err(ureq::Error::StatusCode(404)) => Ok(None),
        Err(ureq::Error::StatusCode(status)) => {
            Err(failed(format!("the server answered {status}")))
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

/// A response's Content-Length, when it sends one.
fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.parse::<u64>().ok())
}

/// A file on a web server, read a range at a time (what a check reads of a model before its
/// download: a GGUF file's header, a config.json).
pub struct RemoteFile {
    url: String,
    len: u64,
    agent: ureq::Agent,
}

impl RemoteFile {
    /// The file at `url`, its length from a HEAD request; None when the server has none.
    fn open(url: &str) -> Result<Option<Self>, StorageError> {
        let failed = |why: String| StorageError(format!("checking {url}: {why}"));
        let agent = agent();
        let Some(response) = answered(agent.head(url).call(), &failed)? else {
            return Ok(None);
        };
        let len = content_length(&response)
            .ok_or_else(|| failed("the server does not say the file's size".into()))?;
        Ok(Some(Self {
            url: url.to_string(),
            len,
            agent,
        }))
    }
}

impl RandomAccessFile for RemoteFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, range: std::ops::Range<u64>) -> Result<Vec<u8>, String> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let wanted = range.end - range.start;
        let response = self
            .agent
            .get(&self.url)
            .header("Range", &format!("bytes={}-{}", range.start, range.end - 1))
            .call()
            .map_err(|e| e.to_string())?;
        if response.status().as_u16() != 206 {
            return Err("the server does not send parts of files".into());
        }
        let bytes = response
            .into_body()
            .into_with_config()
            .limit(wanted)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 != wanted {
            return Err(format!(
                "the server sent {} bytes for a range of {wanted}",
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

/// Downloads `url` into `path`, reporting (bytes so far, Content-Length); false when the
/// server has no such file (404).
fn download(url: &str, path: &Path, progress: &Progress) -> Result<bool, StorageError> {
    let failed = |why: String| StorageError(format!("downloading {url}: {why}"));
    let Some(response) = answered(agent().get(url).call(), &failed)? else {
        return Ok(false);
    };
    let total = content_length(&response);
    // Refused before a byte is written when the server says the size and the disk has less.
    if let (Some(needed), Some(dir)) = (total, path.parent())
        && let Some(free) = free_disk_space(dir)
    {
        check_disk_room(needed, free, &dir.display().to_string())?;
    }
    let part = path.with_extension("part");
    let mut file = fs::File::create(&part).map_err(|e| io_error("creating", &part, e))?;
    let mut reader = response.into_body().into_with_config().reader();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let copied = loop {
        match reader.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = file.write_all(&buffer[..n]) {
                    break Err(io_error("writing", &part, e));
                }
                done += n as u64;
                if let Err(e) = progress(done, total) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(failed(e.to_string())),
        }
    };
    let finished = copied
        .and_then(|()| file.sync_all().map_err(|e| io_error("writing", &part, e)))
        .and_then(|()| fs::rename(&part, path).map_err(|e| io_error("writing", path, e)));
    if finished.is_err() {
        let _ = fs::remove_file(&part);
    }
    finished.map(|()| true)
}

/// Bytes an unprivileged user may still write on the file system holding `dir`, or None where
/// it cannot be told (not Unix, or the call failed: the download then runs and a full disk
/// fails it with the system's message, leaving no file).
fn free_disk_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: a plain C struct of integers, for which all zeroes is a valid value.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the path is NUL-terminated; statvfs only writes into the struct we pass.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the fields' widths differ between platforms
        let free = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64);
        Some(free)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn model_ids_and_file_names_stay_inside_the_cache() {
        assert_eq!(
            dir_name("HuggingFaceTB/SmolLM2-135M"),
            "HuggingFaceTB--SmolLM2-135M"
        );
        assert_eq!(dir_name(".."), "_..");
        for bad in [
            "..",
            ".",
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "C:x",
            "x\0y",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "config.json",
            "model-00001-of-00002.safetensors",
            "m.Q4_1.gguf",
            "..x",
        ] {
            assert!(check_file_name(good).is_ok(), "{good:?}");
        }
        assert_eq!(dir_name(""), "_");
        assert_eq!(dir_name("a b\\c"), "a_b_c");
    }

    /// Serves `files` (name, body, the Content-Length to declare) over HTTP on 127.0.0.1 (404
    /// for others; HEAD, and single byte ranges with 206), one request per connection, until
    /// the test ends; returns the base URL.
    fn serve(files: Vec<(&'static str, Vec<u8>, usize)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).unwrap();
                // The headers: only a byte range matters.
                let mut range = None;
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    let lower = header.to_ascii_lowercase();
                    if let Some(r) = lower.trim().strip_prefix("range: bytes=")
                        && let Some((a, b)) = r.split_once('-')
                    {
                        range = a.parse::<usize>().ok().zip(b.parse::<usize>().ok());
                    }
                    header.clear();
                }
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or("GET").to_string();
                let path = words.next().unwrap_or("/").trim_start_matches('/');
                let reply = match files.iter().find(|(name, _, _)| *name == path) {
                    Some((_, body, declared)) => {
                        let (status, part, extra) = match range {
                            Some((a, b)) => (
                                "206 Partial Content",
                                &body[a..=b.min(body.len() - 1)],
                                format!("content-range: bytes {a}-{b}/{}\r\n", body.len()),
                            ),
                            None => ("200 OK", &body[..], String::new()),
                        };
                        let length = if range.is_some() {
                            part.len()
                        } else {
                            *declared
                        };
                        let mut r = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {length}\r\n{extra}connection: close\r\n\r\n"
                        )
                        .into_bytes();
                        if method != "HEAD" {
                            r.extend_from_slice(part);
                        }
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&reply);
            }
        });
        base
    }

    #[test]
    fn a_remote_file_is_read_by_ranges_for_a_check_before_its_download() {
        use ets_engine::model::gguf::GgufFile;
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gguf/models/llama-gqa.gguf"
        );
        let bytes = fs::read(fixture).unwrap();
        let len = bytes.len();
        let base = serve(vec![("m.gguf", bytes.clone(), len)]);
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let source = ModelSource::Url {
            base: base.clone(),
            file: Some("m.gguf".into()),
        };
        let file = store.remote_file(&source, "m.gguf").unwrap().unwrap();
        assert_eq!(RandomAccessFile::len(&file), len as u64);
        assert_eq!(file.read_range(4..12).unwrap(), bytes[4..12]);
        let header = GgufFile::read_header("m.gguf", &file).unwrap();
        let whole = GgufFile::parse("m.gguf", &bytes).unwrap();
        assert_eq!(header.tensors, whole.tensors);
        assert!(store.remote_file(&source, "absent.gguf").unwrap().is_none());
        assert!(store.free_space().is_some_and(|free| free > 0));
        // Nothing was downloaded.
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_download_is_cached_listed_and_deleted() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let weights = vec![7u8; 3 << 20];
        let n = weights.len();
        let base = serve(vec![("model.safetensors", weights.clone(), n)]);
        let source = ModelSource::Url { base, file: None };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = |done, total| {
            seen.lock().unwrap().push((done, total));
            Ok(())
        };
        let got = store
            .model_file("org/m", &source, "model.safetensors", &report)
            .unwrap();
        assert_eq!(got.as_deref(), Some(&weights[..]));
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.len() >= 3,
            "progress reported as the bytes arrive: {seen:?}"
        );
        assert_eq!(
            seen.last(),
            Some(&(weights.len() as u64, Some(weights.len() as u64)))
        );
        assert_eq!(
            store
                .model_file("org/m", &source, "tokenizer_config.json", &|_, _| Ok(()))
                .unwrap(),
            None
        );

        let files = vec![("model.safetensors".to_string(), weights.len() as u64)];
        store
            .record(&CachedModel::with_sizes("org/m", source.clone(), files))
            .unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].bytes(), weights.len() as u64);
        let on_disk = cache.path().join("models/org--m/model.safetensors");
        assert!(on_disk.exists());
        assert!(!on_disk.with_extension("part").exists());

        assert_eq!(store.delete("org/m").unwrap(), Vec::new());
        assert!(!on_disk.exists());
        assert!(store.list().unwrap().is_empty());
        assert!(store.delete("org/m").is_err());
    }

    #[test]
    fn a_download_that_fails_part_way_is_discarded_whole() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let base = serve(vec![("config.json", b"{}".to_vec(), 2)]);
        let source = ModelSource::Url { base, file: None };
        // The first file arrives, the next one does not (the host then discards the download).
        let config = store.model_file("org/m", &source, "config.json", &|_, _| Ok(()));
        assert_eq!(config.unwrap().as_deref(), Some(&b"{}"[..]));
        let folder = cache.path().join("models/org--m");
        assert!(folder.join("config.json").exists());
        store.discard_download("org/m", &source).unwrap();
        assert!(!folder.exists());
        // Nothing to discard is no error; a folder opened in place is never deleted.
        store.discard_download("org/m", &source).unwrap();
        let opened = tempfile::tempdir().unwrap();
        std::fs::write(opened.path().join("config.json"), b"{}").unwrap();
        let in_place = ModelSource::Folder {
            path: opened.path().display().to_string(),
            file: None,
        };
        store.discard_download("local", &in_place).unwrap();
        assert!(opened.path().join("config.json").exists());
    }

    #[test]
    fn a_failed_download_leaves_no_file() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        // The connection closes after half the bytes it announced.
        let cut = serve(vec![("model.safetensors", vec![1u8; 1 << 20], 2 << 20)]);
        // Nothing listens on a port we bound and closed: the connection is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for base in [cut, format!("http://127.0.0.1:{port}")] {
            let source = ModelSource::Url { base, file: None };
            let err = store
                .model_file("m", &source, "model.safetensors", &|_, _| Ok(()))
                .unwrap_err();
            assert!(err.0.starts_with("downloading"), "{err}");
            let dir = cache.path().join("models/m");
            assert_eq!(
                fs::read_dir(&dir).unwrap().count(),
                0,
                "no partial file left"
            );
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_disk_that_fills_up_during_a_download_keeps_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let base = serve(vec![("model.safetensors", vec![1u8; 1 << 20], 1 << 20)]);
        // The download's .part file is Linux's /dev/full: every write fails as on a full disk.
        let dir = cache.path().join("models/m");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.join("model.part")).unwrap();
        let source = ModelSource::Url { base, file: None };
        let Err(err) = store.model_file("m", &source, "model.safetensors", &|_, _| Ok(())) else {
            panic!("the download succeeded on a full disk");
        };
        assert!(err.0.starts_with("writing "), "{err}");
        assert!(err.0.contains("No space left on device"), "{err}");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "no file, no .part left"
        );
    }

    #[test]
    fn a_download_larger_than_the_free_disk_space_is_refused_before_it_starts() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let free = free_disk_space(cache.path()).expect("statvfs answers for a temporary folder");
        assert!(free > 0);
        // The server announces a file far larger than the disk (and sends a few bytes).
        let base = serve(vec![("model.gguf", vec![0u8; 16], 1 << 60)]);
        let source = ModelSource::Url {
            base,
            file: Some("model.gguf".into()),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = |done, total| {
            seen.lock().unwrap().push((done, total));
            Ok(())
        };
        let err = store
            .model_file("org/big", &source, "model.gguf", &report)
            .unwrap_err();
        assert!(
            err.0.starts_with("this model file needs") && err.0.contains("free: delete"),
            "{err}"
        );
        assert!(seen.lock().unwrap().is_empty(), "nothing read");
        let dir = cache.path().join("models/org--big");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "no file created");
    }

    #[test]
    fn a_download_stopped_through_its_progress_keeps_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let weights = vec![7u8; 3 << 20];
        let n = weights.len();
        let base = serve(vec![("model.safetensors", weights, n)]);
        let source = ModelSource::Url { base, file: None };
        // The user stops the load once the first megabyte has come.
        let stop = |done, _| match done >= 1 << 20 {
            true => Err(StorageError("loading org/m stopped".into())),
            false => Ok(()),
        };
        let err = store
            .model_file("org/m", &source, "model.safetensors", &stop)
            .unwrap_err();
        assert_eq!(err.0, "loading org/m stopped");
        let dir = cache.path().join("models/org--m");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "no file, no .part left"
        );
    }

    #[test]
    fn a_folder_is_read_in_place_and_only_forgotten() {
        let cache = tempfile::tempdir().unwrap();
        let folder = tempfile::tempdir().unwrap();
        fs::write(folder.path().join("config.json"), b"{}").unwrap();
        let store = ModelStore::new(cache.path().join("bundled"), cache.path().to_path_buf());
        let source = ModelSource::Folder {
            path: folder.path().display().to_string(),
            file: None,
        };
        let config = store
            .model_file("mine", &source, "config.json", &|_, _| Ok(()))
            .unwrap();
        assert_eq!(config.as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            store
                .model_file("mine", &source, "tokenizer.json", &|_, _| Ok(()))
                .unwrap(),
            None
        );
        let files = vec![("config.json".to_string(), 2)];
        store
            .record(&CachedModel::with_sizes("mine", source, files))
            .unwrap();
        store.delete("mine").unwrap();
        assert!(
            folder.path().join("config.json").exists(),
            "the user's folder stays"
        );
        let local = store.model_file("x", &ModelSource::Local, "config.json", &|_, _| Ok(()));
        assert!(local.is_err());
    }
}
