//! The KV cache of a batch of sequences, shared along the prefix tree that forking builds.
//!
//! Keys and values live in segments: frozen *shared* segments, oldest first, each holding
//! [groups, kv_heads, len, head_dim] per layer that several sequences read (sequence b reads
//! group `group_of[b]`), then the sequences' *own* slots since the last fork, [batch, kv_heads,
//! own, head_dim], in buffers with room for more so that a decoding step writes its keys and
//! values in place instead of copying the cache. Forking M·K rollouts from one prompt freezes
//! the prompt once and maps every rollout onto it: nothing is copied, and the segment's
//! tensors are reference-counted handles shared by every cache forked from it. Attention reads a segment whose groups serve equal runs
//! of consecutive sequences as one product per group (all those sequences' queries against the
//! group's keys), so a shared prompt is also read once per step, not once per sequence.
//!
//! Besides the tensors the cache records which slots each sequence really uses (shorter chunks
//! leave masked padding slots) and each sequence's next position.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::error::{Error, Result};

/// Own slots below this many are copied on a fork rather than frozen into a segment (a
/// segment costs two products per layer and step; a short copy costs less).
const FREEZE_MIN_SLOTS: usize = 8;

/// Own buffers grow to the next multiple of this many slots: one copy of the own slots per
/// this many decoding steps, at most this many slots unused per sequence.
const OWN_GROWTH: usize = 32;

/// Keys and values of every layer for a batch of sequences.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Frozen segments shared along the prefix tree, oldest first.
    shared: Vec<Segment>,
    /// Per layer: the sequences' own keys and values since the last fork; None before the
    /// first step after a fork.
    own: Vec<Option<OwnSlots>>,
    /// [batch][slot]: whether the slot holds one of the sequence's tokens (false: padding).
    valid: Vec<Vec<bool>>,
    /// [batch]: the position the sequence's next token takes (= tokens held).
    next_position: Vec<usize>,
}

/// One layer's keys and values of every sequence since the last fork: buffers [batch,
/// kv_heads, capacity, head_dim] whose first `len` slots are filled.
#[derive(Clone, Debug)]
struct OwnSlots {
    k: Tensor<4>,
    v: Tensor<4>,
    len: usize,
}

impl OwnSlots {
    /// Filled buffers (no spare capacity): k, v [batch, kv_heads, len, head_dim].
    fn new(k: Tensor<4>, v: Tensor<4>) -> Self {
        let len = k.dims()[2];
        Self { k, v, len }
    }

    /// The filled slots, [batch, kv_heads, len, head_dim] each (views of the buffers).
    fn filled(&self) -> (Tensor<4>, Tensor<4>) {
        (
            self.k.clone().narrow(2, 0, self.len),
            self.v.clone().narrow(2, 0, self.len),
        )
    }

    /// The filled slots in tensors of their own (a copy when the buffers have spare room).
    fn trimmed(&self) -> (Tensor<4>, Tensor<4>) {
        if self.len == self.k.dims()[2] {
            return (self.k.clone(), self.v.clone());
        }
        let slots: Vec<usize> = (0..self.len).collect();
        let index = index_tensor(&slots, &self.k.device());
        (
            self.k.clone().select(2, index.clone()),
            self.v.clone().select(2, index),
        )
    }

    /// Appends new slots (k, v: [batch, kv_heads, new, head_dim]): written in place when the
    /// buffers have room and nothing else holds them, into grown buffers otherwise.
    fn append(self, k: Tensor<4>, v: Tensor<4>) -> Self {
        let [batch, heads, new, d] = k.dims();
        let len = self.len + new;
        let (k_buf, v_buf) = if len <= self.k.dims()[2] {
            (self.k, self.v)
        } else {
            let capacity = len.next_multiple_of(OWN_GROWTH);
            let (k_old, v_old) = self.filled();
            let spare = |t: &Tensor<4>| {
                Tensor::zeros(
                    [batch, heads, capacity - self.len, d],
                    (&t.device(), t.dtype()),
                )
            };
            let (k_spare, v_spare) = (spare(&k_old), spare(&v_old));
            (
                Tensor::cat(vec![k_old, k_spare], 2),
                Tensor::cat(vec![v_old, v_spare], 2),
            )
        };
        let at = [0..batch, 0..heads, self.len..len, 0..d];
        Self {
            k: k_buf.slice_assign(at.clone(), k),
            v: v_buf.slice_assign(at, v),
            len,
        }
    }

    /// Bytes of both buffers, spare room included.
    fn bytes(&self) -> usize {
        tensor_bytes(&self.k) + tensor_bytes(&self.v)
    }
}

/// Keys and values frozen at a fork, read by several sequences.
#[derive(Clone, Debug)]
struct Segment {
    /// Per layer: (keys, values), each [groups, kv_heads, len, head_dim].
    layers: Arc<Vec<(Tensor<4>, Tensor<4>)>>,
    /// Per sequence of the batch: the group it reads.
    group_of: Vec<usize>,
}

impl Segment {
    fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| tensor_bytes(k) + tensor_bytes(v))
            .sum()
    }

    /// Whether every group is read by exactly one sequence.
    fn is_per_sequence(&self) -> bool {
        let groups = self.layers.first().map_or(0, |(k, _)| k.dims()[0]);
        let mut seen = vec![false; groups];
        self.group_of.len() == groups
            && self
                .group_of
                .iter()
                .all(|&g| !std::mem::replace(&mut seen[g], true))
    }

    /// The segment's tensors of `layer` laid out per sequence, [batch, kv_heads, len, d].
    fn per_sequence(&self, layer: usize) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = &self.layers[layer];
        let index = index_tensor(&self.group_of, &k.device());
        (
            k.clone().select(0, index.clone()),
            v.clone().select(0, index),
        )
    }
}

/// What one forward step adds to the cache.
#[derive(Clone, Debug)]
pub struct CacheStep {
    /// [batch][chunk slot]: the rotary position of each new slot (0 for padding).
    pub positions: Vec<Vec<usize>>,
    /// Slots in the cache after the step.
    pub total_slots: usize,
}

fn tensor_bytes(t: &Tensor<4>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

fn index_tensor(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let len = rows.len();
    Tensor::from_data(TensorData::new(rows, [len]), device)
}

/// Slots in the own keys and values of every layer (0 before the first step after a fork).
fn own_len(own: &[Option<OwnSlots>]) -> usize {
    own.iter().flatten().next().map_or(0, |o| o.len)
}

/// If sequence b reads group b / n for one n (equal runs of consecutive sequences per group),
/// that n.
fn run_length(group_of: &[usize], groups: usize) -> Option<usize> {
    let batch = group_of.len();
    if groups == 0 || !batch.is_multiple_of(groups) {
        return None;
    }
    let n = batch / groups;
    group_of
        .iter()
        .enumerate()
        .all(|(b, &g)| g == b / n)
        .then_some(n)
}

/// For each sequence b, `a[b] · t[group_of[b]]`: a [batch, kv_heads, rows, x], t [groups,
/// kv_heads, x, y] → [batch, kv_heads, rows, y]. Equal runs of sequences per group become the
/// rows of one product per group; any other map gathers the groups first.
fn grouped_matmul(a: Tensor<4>, t: Tensor<4>, group_of: &[usize]) -> Tensor<4> {
    let [batch, heads, rows, x] = a.dims();
    let [groups, _, _, y] = t.dims();
    match run_length(group_of, groups) {
        Some(1) => a.matmul(t),
        Some(n) => a
            .reshape([groups, n, heads, rows, x])
            .swap_dims(1, 2)
            .reshape([groups, heads, n * rows, x])
            .matmul(t)
            .reshape([groups, heads, n, rows, y])
            .swap_dims(1, 2)
            .reshape([batch, heads, rows, y]),
        None => {
            let index = index_tensor(group_of, &t.device());
            a.matmul(t.select(0, index))
        }
    }
}

impl KvCache {
    /// An empty cache for `batch` sequences of a model with `num_layers` layers.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            shared: Vec::new(),
            own: vec![None; num_layers],
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

    /// Shared segments the sequences read before their own slots.
    pub fn shared_segments(&self) -> usize {
        self.shared.len()
    }

    /// Bytes of keys and values this cache holds on the device, each shared segment counted
    /// once.
    pub fn bytes(&self) -> usize {
        let mut seen: Vec<*const Vec<(Tensor<4>, Tensor<4>)>> = Vec::new();
        let mut total = 0;
        for segment in &self.shared {
            let ptr = Arc::as_ptr(&segment.layers);
            if !seen.contains(&ptr) {
                seen.push(ptr);
                total += segment.bytes();
            }
        }
        total
            + self
                .own
                .iter()
                .flatten()
                .map(OwnSlots::bytes)
                .sum::<usize>()
    }

    /// Bytes the same keys and values would take with every sequence holding its own copy.
    pub fn unshared_bytes(&self) -> usize {
        let own = self.own.iter().flatten().map(|o| &o.k);
        let shared = self
            .shared
            .iter()
            .flat_map(|s| s.layers.iter().map(|(k, _)| k));
        let Some(k) = own.chain(shared).next() else {
            return 0;
        };
        let [groups, _, len, _] = k.dims();
        let per_slot = tensor_bytes(k) / (groups * len).max(1);
        2 * per_slot * self.own.len() * self.slots() * self.batch_size()
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

    /// Appends a layer's new keys and values (k, v: [batch, kv_heads, chunk, d]) and attends
    /// over the whole cache: q [batch, kv_heads, rep·chunk, d] holds the query heads grouped
    /// by the kv head they share, `mask` [batch, 1, rep·chunk, slots] is added to the scores.
    /// Returns [batch, kv_heads, rep·chunk, d].
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Tensor<4>,
    ) -> Tensor<4> {
        let own = match self.own[layer].take() {
            None => OwnSlots::new(k, v),
            Some(own) => own.append(k, v),
        };
        let (own_k, own_v) = own.filled();
        self.own[layer] = Some(own);
        let scale = 1.0 / (q.dims()[3] as f64).sqrt();
        // The softmax runs in f32 whatever the activations' float type (the mask is f32).
        let dtype = q.dtype();
        let probs = |scores: Tensor<4>| {
            softmax(scores.cast(DType::F32).mul_scalar(scale) + mask, 3).cast(dtype)
        };
        if self.shared.is_empty() {
            return probs(q.matmul(own_k.transpose())).matmul(own_v);
        }
        // Scores against every segment, side by side in slot order, share one softmax.
        let mut scores = Vec::with_capacity(self.shared.len() + 1);
        for segment in &self.shared {
            let (sk, _) = &segment.layers[layer];
            scores.push(grouped_matmul(
                q.clone(),
                sk.clone().transpose(),
                &segment.group_of,
            ));
        }
        let own_len = own_k.dims()[2];
        scores.push(q.matmul(own_k.transpose()));
        let probs = probs(Tensor::cat(scores, 3));
        let mut start = 0;
        let mut out = None;
        for segment in &self.shared {
            let (_, sv) = &segment.layers[layer];
            let len = segment.len();
            let part = grouped_matmul(
                probs.clone().narrow(3, start, len),
                sv.clone(),
                &segment.group_of,
            );
            out = Some(match out {
                None => part,
                Some(sum) => sum + part,
            });
            start += len;
        }
        let own = probs.narrow(3, start, own_len).matmul(own_v);
        match out {
            Some(sum) => sum + own,
            None => own,
        }
    }

    /// The sequences of several caches in one, in order; every cache must hold the same
    /// number of slots (sequences decoded in step from a common fork do). Segments the parts
    /// share stay shared; parts laid out differently are joined as per-sequence copies.
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
        let same_segments = parts.iter().all(|p| {
            p.shared.len() == first.shared.len()
                && p.shared
                    .iter()
                    .zip(&first.shared)
                    .all(|(a, b)| Arc::ptr_eq(&a.layers, &b.layers))
        });
        let same_own = parts.iter().all(|p| own_len(&p.own) == own_len(&first.own));
        let parts: Vec<Self> = if same_segments && same_own {
            parts
        } else {
            parts.into_iter().map(Self::flattened).collect()
        };
        let first = &parts[0];
        let shared = (0..first.shared.len())
            .map(|level| Segment {
                layers: first.shared[level].layers.clone(),
                group_of: parts
                    .iter()
                    .flat_map(|p| p.shared[level].group_of.clone())
                    .collect(),
            })
            .collect();
        let own = (0..first.own.len())
            .map(|layer| {
                let entries: Option<Vec<(Tensor<4>, Tensor<4>)>> = parts
                    .iter()
                    .map(|p| p.own[layer].as_ref().map(OwnSlots::filled))
                    .collect();
                entries.map(|entries| {
                    let (ks, vs): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
                    OwnSlots::new(Tensor::cat(ks, 0), Tensor::cat(vs, 0))
                })
            })
            .collect();
        Ok(Self {
            shared,
            own,
            valid: parts.iter().flat_map(|p| p.valid.clone()).collect(),
            next_position: parts.iter().flat_map(|p| p.next_position.clone()).collect(),
        })
    }

    /// This cache with every segment copied into the sequences' own slots.
    fn flattened(mut self) -> Self {
        let shared = std::mem::take(&mut self.shared);
        self.own = self.merged_own(&shared);
        self
    }

    /// Per layer, `segments` laid out per sequence followed by the own slots, in one tensor.
    fn merged_own(&self, segments: &[Segment]) -> Vec<Option<OwnSlots>> {
        (0..self.own.len())
            .map(|layer| {
                let (mut ks, mut vs): (Vec<_>, Vec<_>) =
                    segments.iter().map(|s| s.per_sequence(layer)).unzip();
                if let Some(own) = &self.own[layer] {
                    let (k, v) = own.filled();
                    ks.push(k);
                    vs.push(v);
                }
                (!ks.is_empty()).then(|| OwnSlots::new(Tensor::cat(ks, 2), Tensor::cat(vs, 2)))
            })
            .collect()
    }

    /// A cache whose sequence i is this cache's sequence `rows[i]`: forks (a row repeated),
    /// drops (a row left out) and reorders (beam search) in one step. A fork freezes the
    /// sequences' own slots into a shared segment (unless they are few, then they are copied);
    /// shared segments are never copied, only re-mapped.
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
        let mut sorted = rows.to_vec();
        sorted.sort_unstable();
        let forks = sorted.windows(2).any(|w| w[0] == w[1]);
        let mut shared = self.shared.clone();
        let mut own = self.own.clone();
        if forks {
            // Trailing per-sequence segments and the own slots make one per-sequence run.
            let keep = shared
                .iter()
                .rposition(|s| !s.is_per_sequence())
                .map_or(0, |i| i + 1);
            let tail = shared.split_off(keep);
            if !tail.is_empty() {
                own = self.merged_own(&tail);
            }
            if own_len(&own) >= FREEZE_MIN_SLOTS {
                let layers: Option<Vec<_>> = own
                    .iter_mut()
                    .map(|o| o.take().map(|o| o.trimmed()))
                    .collect();
                if let Some(layers) = layers {
                    shared.push(Segment {
                        layers: Arc::new(layers),
                        group_of: (0..self.batch_size()).collect(),
                    });
                }
            }
        }
        for segment in &mut shared {
            segment.group_of = rows.iter().map(|&r| segment.group_of[r]).collect();
        }
        let own = match own.iter().flatten().next() {
            Some(first) => {
                let index = index_tensor(rows, &first.k.device());
                own.into_iter()
                    .map(|entry| {
                        entry.map(|o| {
                            let (k, v) = o.filled();
                            OwnSlots::new(k.select(0, index.clone()), v.select(0, index.clone()))
                        })
                    })
                    .collect()
            }
            None => own,
        };
        Ok(Self {
            shared,
            own,
            valid: rows.iter().map(|&r| self.valid[r].clone()).collect(),
            next_position: rows.iter().map(|&r| self.next_position[r]).collect(),
        })
    }
}
