//! What decoding needs from a language model: a batched forward pass over a forkable cache that
//! hands back logits rows on the host. The transformer implements it on any Burn device; tests
//! implement it with tables whose output distribution can be enumerated.

use std::cell::Cell;

use crate::backend::read_f32;
use crate::decode::kv_cache::KvCache;
use crate::error::Result;
use crate::model::config::Objective;
use crate::model::transformer::{LogitsFor, Transformer};

/// A model the decoders and strategies can run.
pub trait LanguageModel {
    /// Per-sequence state kept between forward passes (the KV cache).
    type Cache: Clone;

    /// Tokens in the vocabulary (the length of a logits row).
    fn vocab_size(&self) -> usize;
    /// Causal or masked diffusion.
    fn objective(&self) -> Objective;
    /// The longest sequence the model accepts, in tokens.
    fn max_positions(&self) -> usize;
    /// An empty cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> Self::Cache;
    /// Runs one chunk of new tokens per sequence (chunks may differ in length) and returns the
    /// logits rows `logits_for` asks for, row-major [batch, rows, vocab].
    fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut Self::Cache,
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>>;
    /// A cache whose sequence i is `cache`'s sequence `rows[i]` (fork, drop, reorder).
    fn select(&self, cache: &Self::Cache, rows: &[usize]) -> Result<Self::Cache>;
    /// The sequences of several caches in one, in order (they hold equally many slots).
    fn concat(&self, caches: Vec<Self::Cache>) -> Result<Self::Cache>;
}

impl LanguageModel for Transformer {
    type Cache = KvCache;

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

    fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut KvCache,
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>> {
        read_f32(Transformer::forward(self, chunks, cache, logits_for)?)
    }

    fn select(&self, cache: &KvCache, rows: &[usize]) -> Result<KvCache> {
        cache.select(rows)
    }

    fn concat(&self, caches: Vec<KvCache>) -> Result<KvCache> {
        KvCache::concat(caches)
    }
}

/// Counts the tokens a run passes through a model's forward (the compute it spends).
#[derive(Debug, Default)]
pub struct Meter {
    tokens: Cell<u64>,
}

impl Meter {
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

/// Runs a forward pass and counts its tokens.
pub fn metered_forward<M: LanguageModel>(
    model: &M,
    meter: &Meter,
    chunks: &[&[u32]],
    cache: &mut M::Cache,
    logits_for: LogitsFor,
) -> Result<Vec<f32>> {
    meter.add(chunks);
    model.forward(chunks, cache, logits_for)
}
