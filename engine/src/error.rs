//! The engine's error type: every way a user's input can be wrong, with a message that says how.

use std::path::PathBuf;

/// Everything the engine can refuse, each with a clear, user-facing message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a safetensors file: {reason}")]
    Safetensors { file: String, reason: String },
    #[error(
        "{file}: tensor `{tensor}` lies at bytes {start}..{end}, beyond the {len} data bytes the file holds (truncated or corrupt)"
    )]
    TensorOutOfRange {
        file: String,
        tensor: String,
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("the checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{tensor}` has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype { tensor: String, dtype: String },
    #[error("{file}: invalid JSON: {reason}")]
    Json { file: String, reason: String },
    #[error(
        "unknown architecture {0:?}; supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForMaskedDiffusion"
    )]
    UnknownArchitecture(String),
    #[error("config.json: {0}")]
    Config(String),
    #[error("the model directory has no {0}")]
    MissingFile(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("token id {id} is out of range: the vocabulary has {vocab_size} tokens")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("empty input: {0}")]
    EmptyInput(&'static str),
    #[error("the sequence would reach {needed} positions; the model supports {max}")]
    ContextTooLong { needed: usize, max: usize },
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// A strategy's settings do not fit the run (its parameters, the model, the draft).
    #[error("strategy settings: {0}")]
    Strategy(String),
    /// The reward cannot score this run (its model is missing or of the wrong kind, it lacks
    /// what it reads).
    #[error("reward: {0}")]
    Reward(String),
    /// A broken internal invariant: a bug in the engine, never the user's input.
    #[error("internal error (a bug in the engine, please report it): {0}")]
    Internal(&'static str),
    #[error(
        "{what} needs {bytes} bytes in one buffer; this GPU allows at most {limit} (try the CPU backend, a smaller batch or a shorter prompt)"
    )]
    TooLargeForDevice {
        what: String,
        bytes: u64,
        limit: u64,
    },
    /// A run's KV cache would not fit the memory left (checked before it starts).
    #[error(
        "this run would hold about {} MB of KV cache ({sequences} sequences of up to {tokens} tokens after a {prompt}-token prompt) but {place} has {} MB free: lower M, K, N or max tokens",
        .needed / 1_000_000,
        .available / 1_000_000
    )]
    KvCacheTooLarge {
        needed: u64,
        available: u64,
        sequences: usize,
        tokens: usize,
        prompt: usize,
        place: &'static str,
    },
    #[error("dataset: {0}")]
    Dataset(String),
    /// A run failed on one question of a dataset (1-based).
    #[error("question {index}: {source}")]
    AtQuestion {
        index: usize,
        #[source]
        source: Box<Error>,
    },
    #[error("backend: {0}")]
    Backend(String),
    /// The GPU device went away during the work (a driver reset, a timeout, a GPU removed, a
    /// browser reclaiming it): every later operation on it fails; the reason is the driver's.
    #[error("the GPU was lost ({0})")]
    DeviceLost(String),
    /// A model served over an API failed to answer (after its retries) or refused a request.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("training: {0}")]
    Train(String),
    #[error("stopped")]
    Stopped,
    #[error("{file}: {problem}")]
    Gguf { file: String, problem: GgufError },
    #[error("{0} is neither a model folder nor a .gguf file")]
    NotAModel(PathBuf),
    #[error("the model folder holds several GGUF files ({0}); give one of them")]
    SeveralGgufFiles(String),
    #[error("{bytes} bytes do not hold {elements} elements of {tensor_type} (whole blocks)")]
    QuantizedLength {
        tensor_type: &'static str,
        elements: usize,
        bytes: usize,
    },
    #[error("cannot quantize to {tensor_type}: {reason}")]
    Quantize {
        tensor_type: &'static str,
        reason: String,
    },
}

/// What is wrong with a GGUF file ([`Error::Gguf`] names the file).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (it starts with {0:02x?}, not \"GGUF\")")]
    NotGguf(Vec<u8>),
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    Version(u32),
    #[error("the file ends inside {what} (byte {at}): truncated or corrupt")]
    Truncated { what: String, at: usize },
    #[error("its header does not end within its first {limit} bytes ({problem})")]
    HeaderTooLarge {
        limit: usize,
        problem: Box<GgufError>,
    },
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("{what} claims {claimed} bytes or elements; at most {limit} fit")]
    TooLarge {
        what: String,
        claimed: u64,
        limit: u64,
    },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("metadata key `{key}` has value type {id}, which GGUF does not define")]
    ValueType { key: String, id: u32 },
    #[error("metadata key `{key}` holds an array of arrays, which llama.cpp does not read either")]
    NestedArray { key: String },
    #[error("metadata key `{key}` holds the boolean byte {value}, neither 0 nor 1")]
    Bool { key: String, value: u8 },
    #[error("a metadata key is empty")]
    EmptyKey,
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("metadata key `{key}`: {problem}")]
    Metadata { key: String, problem: String },
    #[error("general.alignment is {0}; it must be a power of two")]
    Alignment(u64),
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    #[error("tensor `{tensor}`: {problem}")]
    Tensor { tensor: String, problem: String },
    #[error("tensors `{first}` and `{second}` overlap in the file")]
    Overlap { first: String, second: String },
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<ets_spec::SpecError> for Error {
    /// A spec refused: the same kind, the same words.
    fn from(e: ets_spec::SpecError) -> Self {
        match e {
            ets_spec::SpecError::Sampling(m) => Self::Sampling(m),
            ets_spec::SpecError::Strategy(m) => Self::Strategy(m),
        }
    }
}

/// Why a remote request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address is not one the client can send to.
    #[error("bad server address {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Every try failed with something that may have passed; `last` says what the last was.
    #[error("{url} failed {attempts} times in a row; the last time: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    /// The server answered that the request itself is wrong (HTTP 4xx other than 408 and 429):
    /// trying again would not help.
    #[error("{url} refused the request (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The server cannot do what the run needs (a missing field, an unsupported option).
    #[error("{url}: {message}")]
    Unsupported { url: String, message: String },
}
