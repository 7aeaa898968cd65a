//! The KV cache of a batch of sequences: per layer, keys and values [batch, kv_heads, slots,
//! head_dim], plus which slots each sequence really uses (shorter chunks leave masked padding
//! slots) and each sequence's next position.

use burn::prelude::*;

use crate::error::{Error, Result};

/// Keys and values of every layer for a batch of sequences.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per layer: (keys, values), each [batch, kv_heads, slots, head_dim]; None before the first step.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// [batch][slot]: whether the slot holds one of the sequence's tokens (false: padding).
    valid: Vec<Vec<bool>>,
    /// [batch]: the position the sequence's next token takes (= tokens held).
    next_position: Vec<usize>,
}

/// What one forward step adds to the cache.
#[derive(Clone, Debug)]
pub struct CacheStep {
    /// [batch][chunk slot]: the rotary position of each new slot (0 for padding).
    pub positions: Vec<Vec<usize>>,
    /// Slots in the cache after the step.
    pub total_slots: usize,
}

impl KvCache {
    /// An empty cache for `batch` sequences of a model with `num_layers` layers.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            valid: vec![Vec::new(); batch],
            next_position: vec![0; batch],
        }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.valid.len()
    }

    /// Slots per sequence (tokens plus padding).
    pub fn slots(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    /// Tokens held by sequence `b`, which is also the position of its next token.
    pub fn position(&self, b: usize) -> usize {
        self.next_position[b]
    }

    /// Whether `slot` of sequence `b` holds a token.
    pub fn is_valid(&self, b: usize, slot: usize) -> bool {
        self.valid[b][slot]
    }

    /// Bytes the keys and values occupy on the device (f32).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| 4 * (k.shape().num_elements() + v.shape().num_elements()))
            .sum()
    }

    /// Reserves `chunk` new slots; sequence b's last `lengths[b]` of them hold its new tokens
    /// (the chunk is left-padded). Returns the new slots' positions.
    pub(crate) fn append(&mut self, lengths: &[usize], chunk: usize) -> CacheStep {
        let mut positions = Vec::with_capacity(lengths.len());
        for (b, &len) in lengths.iter().enumerate() {
            let pad = chunk - len;
            let start = self.next_position[b];
            self.valid[b].extend((0..chunk).map(|s| s >= pad));
            positions.push(
                (0..chunk)
                    .map(|s| if s >= pad { start + s - pad } else { 0 })
                    .collect(),
            );
            self.next_position[b] += len;
        }
        CacheStep {
            positions,
            total_slots: self.slots(),
        }
    }

    /// Appends a layer's new keys and values ([batch, kv_heads, chunk, d]) and returns the
    /// layer's whole cache.
    pub(crate) fn update(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let entry = match self.layers[layer].take() {
            None => (k, v),
            Some((k0, v0)) => (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2)),
        };
        self.layers[layer] = Some(entry.clone());
        entry
    }

    /// The sequences of several caches in one, in order; every cache must hold the same
    /// number of slots (sequences decoded in step from a common fork do).
    pub fn concat(parts: Vec<Self>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::EmptyInput("no caches to join"));
        };
        let slots = first.slots();
        if let Some(bad) = parts.iter().find(|p| p.slots() != slots) {
            return Err(Error::Backend(format!(
                "cannot join KV caches of {} and {slots} slots",
                bad.slots()
            )));
        }
        let num_layers = first.layers.len();
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let entries: Option<Vec<(Tensor<4>, Tensor<4>)>> =
                parts.iter().map(|p| p.layers[layer].clone()).collect();
            layers.push(entries.map(|entries| {
                let (ks, vs): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
                (Tensor::cat(ks, 0), Tensor::cat(vs, 0))
            }));
        }
        Ok(Self {
            layers,
            valid: parts.iter().flat_map(|p| p.valid.clone()).collect(),
            next_position: parts.iter().flat_map(|p| p.next_position.clone()).collect(),
        })
    }

    /// A cache whose sequence i is this cache's sequence `rows[i]`: forks (a row repeated),
    /// drops (a row left out) and reorders (beam search) in one step.
    pub fn select(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch_size()) {
            return Err(Error::Backend(format!(
                "sequence {bad} does not exist in a batch of {}",
                self.batch_size()
            )));
        }
        if rows.is_empty() {
            return Err(Error::EmptyInput("no sequences selected"));
        }
        // One index tensor for every layer, uploaded once.
        let index = self.layers.iter().flatten().next().map(|(k, _)| {
            let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let len = rows.len();
            Tensor::<1, Int>::from_data(TensorData::new(rows, [len]), &k.device())
        });
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.as_ref()?;
                let index = index.clone()?;
                Some((
                    k.clone().select(0, index.clone()),
                    v.clone().select(0, index),
                ))
            })
            .collect();
        Ok(Self {
            layers,
            valid: rows.iter().map(|&r| self.valid[r].clone()).collect(),
            next_position: rows.iter().map(|&r| self.next_position[r]).collect(),
        })
    }
}
