//! What decoding needs from a language model: a batched forward pass over a forkable cache that
//! hands back logits rows where the model computed them ([`Logits`]: on the device for the
//! transformer, so a decoding step reads back tokens and their statistics, not rows). The
//! transformer implements it on any Burn device; tests implement it with tables whose output
//! distribution can be enumerated.
//!
//! The forward pass is async because reading a GPU buffer back is: a browser cannot block on
//! WebGPU, so every decoder above it awaits (natively, callers block on the future).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::decode::device_sampling::DeviceLogits;
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{LogitsFor, Transformer};

/// A model the decoders and strategies can run.
// The engine runs on one thread (a browser worker has one), so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait LanguageModel {
    /// Per-sequence state kept between forward passes (the KV cache).
    type Cache: Clone;
    /// Logits rows, [rows, vocab], kept where the model computed them.
    type Logits: Logits;

    /// Tokens in the vocabulary (the length of a logits row).
    fn vocab_size(&self) -> usize;
    /// Causal or masked diffusion.
    fn objective(&self) -> Objective;
    /// The longest sequence the model accepts, in tokens.
    fn max_positions(&self) -> usize;
    /// An empty cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> Self::Cache;
    /// Runs one chunk of new tokens per sequence (chunks may differ in length) and returns the
    /// logits rows `logits_for` asks for, [batch · rows, vocab] (sequence-major).
    async fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut Self::Cache,
        logits_for: LogitsFor,
    ) -> Result<Self::Logits>;
    /// A cache whose sequence i is `cache`'s sequence `rows[i]` (fork, drop, reorder).
    fn select(&self, cache: &Self::Cache, rows: &[usize]) -> Result<Self::Cache>;
    /// The sequences of several caches in one, in order (they hold equally many slots).
    fn concat(&self, caches: Vec<Self::Cache>) -> Result<Self::Cache>;
}

impl LanguageModel for Transformer {
    type Cache = KvCache;
    type Logits = DeviceLogits;

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn objective(&self) -> Objective {
        self.config().objective
    }

    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }

    fn new_cache(&self, batch: usize) -> KvCache {
        Transformer::new_cache(self, batch)
    }

    async fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut KvCache,
        logits_for: LogitsFor,
    ) -> Result<DeviceLogits> {
        let logits = Transformer::forward(self, chunks, cache, logits_for)?;
        let [batch, rows, vocab] = logits.dims();
        Ok(DeviceLogits(logits.reshape([batch * rows, vocab])))
    }

    fn select(&self, cache: &KvCache, rows: &[usize]) -> Result<KvCache> {
        cache.select(rows)
    }

    fn concat(&self, caches: Vec<KvCache>) -> Result<KvCache> {
        KvCache::concat(caches)
    }
}

/// Counts the tokens a run passes through a model's forward (the compute it spends), and
/// carries the run's stop flag: once it is set, the next forward pass fails with
/// [`Error::Stopped`].
#[derive(Debug, Default)]
pub struct Meter<'s> {
    tokens: Cell<u64>,
    stop: Option<&'s AtomicBool>,
}

impl<'s> Meter<'s> {
    /// A meter whose run stops at the first forward pass after `stop` is set.
    pub fn with_stop(stop: Option<&'s AtomicBool>) -> Self {
        Self {
            tokens: Cell::new(0),
            stop,
        }
    }

    /// Adds the real (unpadded) tokens of one forward pass.
    pub fn add(&self, chunks: &[&[u32]]) {
        let n: usize = chunks.iter().map(|c| c.len()).sum();
        self.tokens.set(self.tokens.get() + n as u64);
    }

    /// Tokens counted so far.
    pub fn tokens(&self) -> u64 {
        self.tokens.get()
    }
}

/// Runs a forward pass and counts its tokens; fails with [`Error::Stopped`] instead once the
/// meter's stop flag is raised.
pub async fn metered_forward<M: LanguageModel>(
    model: &M,
    meter: &Meter<'_>,
    chunks: &[&[u32]],
    cache: &mut M::Cache,
    logits_for: LogitsFor,
) -> Result<M::Logits> {
    if meter.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        return Err(Error::Stopped);
    }
    meter.add(chunks);
    model.forward(chunks, cache, logits_for).await
}
