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
use crate::sampling::{Picked, SamplingParams};

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

    /// Whether the model decodes whole blocks itself (a server behind an API) instead of
    /// handing logits rows to the decoders: they then continue sequences with
    /// [`LanguageModel::continue_rows`], and a forward pass only records the tokens it is given.
    fn decodes_blocks(&self) -> bool {
        false
    }

    /// For a model that [decodes blocks](LanguageModel::decodes_blocks): continues each row
    /// `request.row` of `cache` by up to `request.max_new` tokens drawn with `sampling` from the
    /// random seed `request.seed`, each ending at a token of `stop_ids` (kept); returns each
    /// row's tokens with their statistics. The cache is left as it was: the decoders feed it the
    /// tokens they keep. Fails with [`Error::Stopped`] as soon as `stop` is raised.
    async fn continue_rows(
        &self,
        cache: &Self::Cache,
        requests: &[BlockRequest],
        sampling: &SamplingParams,
        stop_ids: &[u32],
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<Block>> {
        let _ = (cache, requests, sampling, stop_ids, stop);
        Err(Error::Internal(
            "continue_rows called on a model that hands back logits rows",
        ))
    }

    /// For a model that [decodes blocks](LanguageModel::decodes_blocks): scores the given tokens
    /// (teacher forcing) — each token of `chunks[i]` after row i of `cache` and the chunk's
    /// tokens before it — as if drawn with `sampling`; returns each chunk's tokens with their
    /// statistics. The cache is left as it was. Fails with [`Error::Stopped`] as soon as `stop`
    /// is raised.
    async fn score_rows(
        &self,
        cache: &Self::Cache,
        chunks: &[&[u32]],
        sampling: &SamplingParams,
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<Vec<Picked>>> {
        let _ = (cache, chunks, sampling, stop);
        Err(Error::Internal(
            "score_rows called on a model that hands back logits rows",
        ))
    }
}

/// The tokens a row was continued by ([`LanguageModel::continue_rows`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The new tokens with their statistics.
    pub picked: Vec<Picked>,
    /// The model ended the sequence (an end token, or its context is full).
    pub finished: bool,
}

/// One row of a cache to continue by a block ([`LanguageModel::continue_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// The cache row.
    pub row: usize,
    /// At most this many new tokens.
    pub max_new: usize,
    /// The seed of the row's draws (31 bits: servers take a signed or unsigned 32-bit seed).
    pub seed: u32,
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

    /// The run's stop flag, if it has one.
    pub fn stop(&self) -> Option<&'s AtomicBool> {
        self.stop
    }

    /// Fails with [`Error::Stopped`] once the stop flag is raised.
    pub fn check_stop(&self) -> Result<()> {
        if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Stopped);
        }
        Ok(())
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
    meter.check_stop()?;
    meter.add(chunks);
    model.forward(chunks, cache, logits_for).await
}
