//! Where models come from: the bundled reference models (shipped with the app), Hugging
//! Face-style repositories (downloaded once into a cache, with progress), files the user picked
//! in the browser (imported into its cache) and folders opened in the desktop app. Each cached
//! model has a manifest ([`CachedModel`]) listing its files and sizes, which the cache manager
//! reads. Where the files are kept is the platform's business ([`crate::host::Platform`]).

use serde::{Deserialize, Serialize};

/// A model shipped with the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundledModel {
    /// Its id, also its folder under `models/`.
    pub id: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Whether it is a masked diffusion model (known before it loads; `ets-host`'s tests check
    /// this and `context` against the model's config.json).
    pub diffusion: bool,
    /// Its context in tokens (config.json's `max_position_embeddings`).
    pub context: usize,
}

/// The bundled models.
pub const BUNDLED: [BundledModel; 5] = [
    BundledModel {
        id: "ref-ar",
        description: "reference Llama trained on arithmetic word problems (0.9M parameters)",
        diffusion: false,
        context: 512,
    },
    BundledModel {
        id: "ref-ar-draft",
        description: "smaller Llama (0.2M parameters) with ref-ar's tokenizer: the ETS-IS draft",
        diffusion: false,
        context: 512,
    },
    BundledModel {
        id: "ref-dlm",
        description: "masked diffusion LM (LLaDA's objective) on the same task",
        diffusion: true,
        context: 512,
    },
    BundledModel {
        id: "ref-dlm-draft",
        description: "smaller masked diffusion LM (0.2M parameters) with ref-dlm's tokenizer: its ETS-IS draft",
        diffusion: true,
        context: 512,
    },
    BundledModel {
        id: "ref-judge",
        description: "ref-ar's shape trained longer: the judge of the `lm:ref-judge` reward",
        diffusion: false,
        context: 512,
    },
];

/// What bundled model `id` accepts: whether it is a masked diffusion model, and its context in
/// tokens.
pub fn bundled_context(id: &str) -> Option<(bool, usize)> {
    let model = BUNDLED.iter().find(|m| m.id == id)?;
    Some((model.diffusion, model.context))
}

/// Files a model directory may hold besides its weights; the first two are required.
pub const TEXT_FILES: [&str; 5] = [
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
    /// `https://huggingface.co/org/name/resolve/main`); downloaded once into the cache. With
    /// `file`, the model is that one GGUF file of the repository.
    Url {
        base: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// Files the user picked in the browser, imported into its cache (a model folder's files,
    /// or one GGUF file).
    Local,
    /// A model folder on this computer (the desktop app), read where it is. With `file`, the
    /// model is that one GGUF file of the folder.
    Folder {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// A model served by an OpenAI-compatible inference server (vLLM, SGLang, llama.cpp's
    /// server, llama-cpp-python) at `url` (e.g. `http://127.0.0.1:8000/v1`): nothing
    /// downloads; prompts are tokenized with the tokenizer (and chat template) of `tokenizer`,
    /// a model in the list read without its weights.
    Server {
        url: String,
        /// The model's name on the server (None: the first model it lists).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The id of the model whose tokenizer the served model shares.
        tokenizer: String,
        /// Sent as a Bearer token; never written to the cache manager's manifests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key: Option<String>,
    },
}

impl ModelSource {
    /// The GGUF file the source names, if it is one.
    pub fn gguf_file(&self) -> Option<&str> {
        match self {
            Self::Url { file, .. } | Self::Folder { file, .. } => file.as_deref(),
            Self::Bundled | Self::Local | Self::Server { .. } => None,
        }
    }

    /// The source as the cache manager records it: a server's API key left out.
    pub fn without_secrets(&self) -> Self {
        match self {
            Self::Server {
                url,
                model,
                tokenizer,
                ..
            } => Self::Server {
                url: url.clone(),
                model: model.clone(),
                tokenizer: tokenizer.clone(),
                api_key: None,
            },
            other => other.clone(),
        }
    }
}

/// Whether `name` is a GGUF file's name.
pub fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
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
    /// The manifest of model `id` whose files are `files` (name, size in bytes).
    pub fn with_sizes(id: &str, source: ModelSource, files: Vec<(String, u64)>) -> Self {
        Self {
            id: id.to_string(),
            source,
            files,
        }
    }

    /// Bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b).sum()
    }
}

/// What a check of a model found before downloading it ([`crate::Request::Check`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCheck {
    /// The file or repository checked.
    pub location: String,
    /// Bytes to download (every file of it), where the server says.
    pub download_bytes: Option<u64>,
    /// Its architecture, as Hugging Face names it.
    pub architecture: Option<String>,
    pub parameters: Option<u64>,
    /// Bytes its weights take where they live (a GGUF file: its tensors' bytes).
    pub weight_bytes: Option<u64>,
    /// Why it would not load or fit here; empty when it would.
    pub problems: Vec<String>,
    /// What could not be checked, or is worth knowing.
    pub notes: Vec<String>,
}

/// A real model the app suggests, in a format the engine runs as it comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommended {
    pub name: &'static str,
    /// What the app's model field takes: a Hugging Face repository (`org/name`) or a GGUF file
    /// in one (`org/name/file.gguf`).
    pub location: &'static str,
    /// The weights' format, e.g. `GGUF Q8_0`.
    pub format: &'static str,
    pub parameters: u64,
    /// The download's size estimated from the parameters and the format's bits per weight (a
    /// check asks the server for the real one).
    pub estimated_bytes: u64,
}

/// The recommended real models, smallest first: instruct models with chat templates, as GGUF
/// Q8_0 files (every tensor in a block type the engine runs; Q4_K_M files of these models
/// carry Q5_0 tensors, which it does not) and as safetensors repositories.
pub const RECOMMENDED: &[Recommended] = &[
    Recommended {
        name: "SmolLM2-135M-Instruct",
        location: "bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf",
        format: "GGUF Q8_0",
        parameters: 134_515_008,
        estimated_bytes: 145_000_000,
    },
    Recommended {
        name: "SmolLM2-135M-Instruct",
        location: "HuggingFaceTB/SmolLM2-135M-Instruct",
        format: "safetensors bf16",
        parameters: 134_515_008,
        estimated_bytes: 270_000_000,
    },
    Recommended {
        name: "SmolLM2-360M-Instruct",
        location: "bartowski/SmolLM2-360M-Instruct-GGUF/SmolLM2-360M-Instruct-Q8_0.gguf",
        format: "GGUF Q8_0",
        parameters: 361_821_120,
        estimated_bytes: 386_000_000,
    },
    Recommended {
        name: "Qwen2.5-0.5B-Instruct",
        location: "Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf",
        format: "GGUF Q8_0",
        parameters: 494_032_768,
        estimated_bytes: 531_000_000,
    },
    Recommended {
        name: "Qwen3-0.6B",
        location: "Qwen/Qwen3-0.6B-GGUF/Qwen3-0.6B-Q8_0.gguf",
        format: "GGUF Q8_0",
        parameters: 596_049_920,
        estimated_bytes: 639_000_000,
    },
];

/// A failure reading, downloading or storing model files, as a message for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Reports a download's progress: (bytes so far, the total when known). An error (the user
/// stopped the load) ends the download with it.
pub type Progress<'a> = dyn Fn(u64, Option<u64>) -> Result<(), StorageError> + 'a;

/// `n` bytes for people: 1.8 MB, 512 kB.
pub fn format_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1 << 10 => format!("{:.0} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// Whether a download of `needed` bytes fits in a site's storage of which `usage` of `quota`
/// bytes are taken (the browser's `navigator.storage.estimate()`); the error says how much
/// room there is and what to do.
pub fn check_storage_room(needed: u64, usage: u64, quota: u64) -> Result<(), StorageError> {
    let room = quota.saturating_sub(usage);
    if needed <= room {
        return Ok(());
    }
    Err(StorageError(format!(
        "this model file needs {} of storage and the browser lets this site store {} more \
         ({} of {} used): delete a cached model or free some disk space",
        format_bytes(needed),
        format_bytes(room),
        format_bytes(usage),
        format_bytes(quota),
    )))
}

/// The largest file the browser's engine takes, in bytes: a file is held whole in the engine
/// worker's wasm32 memory, where one allocation is at most 2 GiB − 1 (and the whole memory
/// 4 GiB, which the weights share with the KV cache and the activations).
pub const MAX_BROWSER_FILE_BYTES: u64 = (1 << 31) - 1;

/// Whether a file of `bytes` (its Content-Length, or the bytes received so far) fits in the
/// browser's engine ([`MAX_BROWSER_FILE_BYTES`]); the error names the file and what to use.
pub fn check_browser_file_size(name: &str, bytes: u64) -> Result<(), StorageError> {
    if bytes <= MAX_BROWSER_FILE_BYTES {
        return Ok(());
    }
    Err(StorageError(format!(
        "{name} is {}: the browser's engine holds a file of at most {} in its memory (wasm32); \
         pick a smaller quantization, or use the desktop app or the command line for this model",
        format_bytes(bytes),
        format_bytes(MAX_BROWSER_FILE_BYTES),
    )))
}

/// Whether a download of `needed` bytes fits in the `free` bytes of the disk holding `folder`
/// (the desktop app's cache); the error says how much room there is and what to do.
pub fn check_disk_room(needed: u64, free: u64, folder: &str) -> Result<(), StorageError> {
    if needed <= free {
        return Ok(());
    }
    Err(StorageError(format!(
        "this model file needs {} of disk space and the disk holding {folder} has {} free: \
         delete a cached model or free some disk space",
        format_bytes(needed),
        format_bytes(free),
    )))
}

/// The prefix of a model's file names: a URL prefix in the browser's cache (and, for bundled
/// models, on the site), or a folder.
pub fn file_prefix(id: &str, source: &ModelSource) -> String {
    match source {
        ModelSource::Bundled => format!("models/{id}/"),
        ModelSource::Url { base, .. } => format!("{}/", base.trim_end_matches('/')),
        ModelSource::Local => format!("local-models/{id}/"),
        ModelSource::Folder { path, .. } => format!("{}/", path.trim_end_matches('/')),
        ModelSource::Server { url, .. } => format!("{}/", url.trim_end_matches('/')),
    }
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

/// Where a model typed by the user is: a Hugging Face repository (`org/name` or its URL) or a
/// folder URL, as [`repository_base`]; or one GGUF file in either (`org/name/file.gguf`, a
/// repository's `…/resolve/main/file.gguf` or `…/blob/main/file.gguf` URL, any URL of a
/// `.gguf` file): the base its files are under, and the GGUF file's name.
pub fn model_location(input: &str) -> Result<(String, Option<String>), StorageError> {
    let input = input.trim().trim_end_matches('/');
    if !is_gguf(input) {
        return Ok((repository_base(input)?, None));
    }
    let Some((folder, file)) = input.rsplit_once('/') else {
        return Err(StorageError(format!(
            "{input:?}: give the repository too (org/name/{input})"
        )));
    };
    let folder = match folder.split_once("/blob/") {
        Some((repo, rest)) if folder.starts_with("https://huggingface.co/") => {
            format!("{repo}/resolve/{rest}")
        }
        _ => folder.to_string(),
    };
    Ok((repository_base(&folder)?, Some(file.to_string())))
}

/// A model id for a GGUF file: its name without the extension.
pub fn id_for_file(file: &str) -> String {
    let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
    name.get(..name.len().saturating_sub(5))
        .filter(|_| is_gguf(name))
        .unwrap_or(name)
        .to_string()
}

/// A model id for a repository base: its last path segments before `resolve`.
pub fn id_for_base(base: &str) -> String {
    let path = base.split("/resolve/").next().unwrap_or(base);
    let segments: Vec<&str> = path.rsplit('/').take(2).collect();
    segments.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// A model id for a model on the server at `url`: its name there when given, else the
/// server's host and port (`server 127.0.0.1:8000`).
pub fn id_for_server(url: &str, model: Option<&str>) -> String {
    if let Some(name) = model.map(str::trim).filter(|m| !m.is_empty()) {
        return name.to_string();
    }
    let rest = url
        .trim()
        .split_once("://")
        .map_or(url.trim(), |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("server {host}")
}

/// Checks a server address the user typed: an http(s) URL with a host.
pub fn server_url(input: &str) -> Result<String, StorageError> {
    let url = input.trim().trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(StorageError(format!(
            "{url:?} is not a server address: give its URL, e.g. http://127.0.0.1:8000/v1"
        )));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(StorageError(format!("{url:?}: only http(s) servers")));
    }
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(StorageError(format!("{url:?} names no host")));
    }
    Ok(url.to_string())
}

/// A model id for a folder: its name.
pub fn id_for_folder(path: &str) -> String {
    let path = path.trim_end_matches(['/', '\\']);
    path.rsplit(['/', '\\']).next().unwrap_or(path).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recommended_model_is_an_address_the_model_field_takes() {
        for r in RECOMMENDED {
            let (base, file) = model_location(r.location).unwrap();
            assert!(base.starts_with("https://huggingface.co/"), "{base}");
            // A GGUF entry names its file and its Q8_0 blocks; a repository holds safetensors.
            assert_eq!(
                file.is_some(),
                r.format.starts_with("GGUF"),
                "{}",
                r.location
            );
            if let Some(file) = file {
                assert!(file.to_ascii_lowercase().ends_with("q8_0.gguf"), "{file}");
            }
            // The estimate: parameters at the format's bits, within 10%.
            let bits = if r.format.contains("Q8_0") { 8.5 } else { 16.0 };
            let estimate = r.parameters as f64 * bits / 8.0;
            let ratio = r.estimated_bytes as f64 / estimate;
            assert!((0.95..1.1).contains(&ratio), "{}: {ratio}", r.name);
        }
    }

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1_771_728), "1.8 MB");
        assert_eq!(format_bytes(20_948), "21 kB");
    }

    #[test]
    fn a_download_larger_than_the_storage_left_is_refused_with_the_figures() {
        assert!(check_storage_room(100, 0, 100).is_ok());
        assert!(check_storage_room(98_362_432, 1_000_000, 2_000_000_000).is_ok());
        let StorageError(message) = check_storage_room(98_362_432, 48_000_000, 60_000_000)
            .expect_err("98 MB into 12 MB of room");
        assert!(message.contains("needs 98.4 MB"), "{message}");
        assert!(message.contains("12.0 MB more"), "{message}");
        assert!(message.contains("48.0 MB of 60.0 MB used"), "{message}");
        assert!(message.contains("delete a cached model"), "{message}");
        // Usage past the quota (browsers round their estimates): no room, not an overflow.
        assert!(check_storage_room(1, 70, 60).is_err());
        assert!(check_disk_room(100, 100, "/c").is_ok());
        let StorageError(message) = check_disk_room(98_362_432, 12_000_000, "/home/u/.cache/ets")
            .expect_err("too little room");
        assert_eq!(
            message,
            "this model file needs 98.4 MB of disk space and the disk holding \
             /home/u/.cache/ets has 12.0 MB free: delete a cached model or free some disk space"
        );
    }

    #[test]
    fn a_file_too_large_for_the_browser_is_refused_by_name() {
        assert!(check_browser_file_size("m.gguf", 98_362_432).is_ok());
        assert!(check_browser_file_size("m.gguf", MAX_BROWSER_FILE_BYTES).is_ok());
        let StorageError(message) = check_browser_file_size("qwen.gguf", 3_000_000_000)
            .expect_err("3 GB is more than wasm32 holds in one piece");
        assert!(message.starts_with("qwen.gguf is 3.0 GB"), "{message}");
        assert!(message.contains("at most 2.1 GB"), "{message}");
        assert!(message.contains("desktop app"), "{message}");
    }

    #[test]
    fn every_bundled_model_says_what_it_accepts() {
        for model in BUNDLED {
            assert!(bundled_context(model.id).is_some(), "{}", model.id);
        }
        assert_eq!(bundled_context("ref-ar"), Some((false, 512)));
        assert_eq!(bundled_context("ref-dlm"), Some((true, 512)));
        assert_eq!(bundled_context("smollm2"), None);
    }

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
        assert_eq!(
            id_for_folder("/home/me/models/SmolLM2-135M/"),
            "SmolLM2-135M"
        );
        assert_eq!(id_for_folder(r"C:\models\tiny"), "tiny");
    }

    #[test]
    fn a_server_is_named_and_recorded_without_its_key() {
        assert_eq!(
            server_url(" http://127.0.0.1:8000/v1/ ").unwrap(),
            "http://127.0.0.1:8000/v1"
        );
        for bad in ["", "127.0.0.1:8000", "ftp://h/v1", "http:///v1"] {
            assert!(server_url(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            id_for_server("http://127.0.0.1:8000/v1", None),
            "server 127.0.0.1:8000"
        );
        assert_eq!(
            id_for_server("http://gpu:8000", Some(" ")),
            "server gpu:8000"
        );
        assert_eq!(
            id_for_server("http://gpu:8000/v1", Some("Qwen/Qwen2.5-7B")),
            "Qwen/Qwen2.5-7B"
        );
        let source = ModelSource::Server {
            url: "http://gpu:8000/v1".into(),
            model: None,
            tokenizer: "ref-ar".into(),
            api_key: Some("sk-secret".into()),
        };
        let recorded = serde_json::to_string(&source.without_secrets()).unwrap();
        assert!(!recorded.contains("sk-secret"), "{recorded}");
        assert_eq!(
            recorded,
            r#"{"Server":{"url":"http://gpu:8000/v1","tokenizer":"ref-ar"}}"#
        );
        assert_eq!(source.gguf_file(), None);
    }

    #[test]
    fn gguf_files_resolve_to_a_base_and_a_file() {
        let hf = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main";
        let file = Some("smollm2-135m-instruct-q8_0.gguf".to_string());
        for input in [
            "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf",
            &format!("{hf}/smollm2-135m-instruct-q8_0.gguf"),
            "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/blob/main/smollm2-135m-instruct-q8_0.gguf",
        ] {
            assert_eq!(
                model_location(input).unwrap(),
                (hf.to_string(), file.clone()),
                "{input}"
            );
        }
        assert_eq!(
            model_location("http://127.0.0.1:8000/m/SmolLM2.Q4_1.GGUF").unwrap(),
            (
                "http://127.0.0.1:8000/m".to_string(),
                Some("SmolLM2.Q4_1.GGUF".to_string())
            )
        );
        assert_eq!(
            model_location("HuggingFaceTB/SmolLM2-135M").unwrap(),
            (
                "https://huggingface.co/HuggingFaceTB/SmolLM2-135M/resolve/main".to_string(),
                None
            )
        );
        for bad in ["model.gguf", "a/b/c/d.gguf", "ftp://x/y.gguf"] {
            assert!(model_location(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            id_for_file("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(id_for_file("/models/x.GGUF"), "x");
        assert_eq!(id_for_file("weights.bin"), "weights.bin");
        // Manifests written before sources could name a file still read, and sources without
        // one are written as before.
        let old = r#"{"Url":{"base":"http://h/m"}}"#;
        let source: ModelSource = serde_json::from_str(old).unwrap();
        assert_eq!(
            source,
            ModelSource::Url {
                base: "http://h/m".into(),
                file: None
            }
        );
        assert_eq!(serde_json::to_string(&source).unwrap(), old);
    }
}
