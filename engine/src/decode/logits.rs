//! The logits rows a forward pass hands back, kept where the model computed them. What decoding
//! does with them (take one token per row, list a row's most likely tokens, select and join
//! rows) reads back only tokens and their statistics, never whole rows. [`HostLogits`] holds
//! rows in memory (test models, and the reference the device path is tested against);
//! [`DeviceLogits`](crate::decode::device_sampling::DeviceLogits) keeps a tensor on the
//! model's device.

use crate::error::{Error, Result};
use crate::sampling::{Picked, RowPick, Sampler, SamplingParams, log_sum_exp};

/// A batch of logits rows, [rows, vocab].
// One engine thread (a browser worker has one): the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Logits: Clone + Sized {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Rows whose row i is this batch's row `rows[i]` (repeats allowed, at least one row).
    fn select(&self, rows: &[usize]) -> Result<Self>;
    /// The rows of several batches, in order.
    fn concat(parts: Vec<Self>) -> Result<Self>;
    /// One token per row, `picks[row]`, with the statistics of taking it under `sampling`.
    async fn take(&self, picks: &[RowPick], sampling: &SamplingParams) -> Result<Vec<Picked>>;
    /// Per row, the `n` most likely tokens with their log-probabilities (nats), most likely
    /// first.
    async fn top_log_probs(&self, n: usize) -> Result<Vec<Vec<(u32, f64)>>>;
}

/// Checks a selection against a batch of `len` rows.
pub(crate) fn check_selection(rows: &[usize], len: usize) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::EmptyInput("no logits rows selected"));
    }
    match rows.iter().find(|&&r| r >= len) {
        Some(bad) => Err(Error::Sampling(format!(
            "logits row {bad} does not exist in a batch of {len}"
        ))),
        None => Ok(()),
    }
}

/// Checks that a batch of `len` rows of `vocab` logits gets one pick per row, and that forced
/// tokens are in the vocabulary.
pub(crate) fn check_picks(picks: &[RowPick], len: usize, vocab: usize) -> Result<()> {
    if picks.len() != len {
        return Err(Error::Sampling(format!(
            "{} picks for {len} logits rows",
            picks.len()
        )));
    }
    if let Some(token) = picks.iter().find_map(|p| match p {
        RowPick::Forced(token) if *token as usize >= vocab => Some(token),
        _ => None,
    }) {
        return Err(Error::Sampling(format!(
            "forced token {token} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// Logits rows in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostLogits {
    /// [rows, vocab], row-major.
    pub values: Vec<f32>,
    pub vocab: usize,
}

impl HostLogits {
    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.vocab..(r + 1) * self.vocab]
    }
}

impl Logits for HostLogits {
    fn rows(&self) -> usize {
        self.values.len() / self.vocab.max(1)
    }

    fn select(&self, rows: &[usize]) -> Result<Self> {
        check_selection(rows, self.rows())?;
        Ok(Self {
            values: rows.iter().flat_map(|&r| self.row(r).to_vec()).collect(),
            vocab: self.vocab,
        })
    }

    fn concat(parts: Vec<Self>) -> Result<Self> {
        let vocab = parts.first().map_or(0, |p| p.vocab);
        if parts.iter().any(|p| p.vocab != vocab) {
            return Err(Error::Sampling(
                "cannot join logits of different vocabularies".into(),
            ));
        }
        Ok(Self {
            values: parts.into_iter().flat_map(|p| p.values).collect(),
            vocab,
        })
    }

    async fn take(&self, picks: &[RowPick], sampling: &SamplingParams) -> Result<Vec<Picked>> {
        check_picks(picks, self.rows(), self.vocab)?;
        sampling.validate()?;
        let take = |(r, &pick): (usize, &RowPick)| sampling.take(self.row(r), pick);
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            Ok(picks.par_iter().enumerate().map(take).collect())
        }
        #[cfg(target_family = "wasm")]
        Ok(picks.iter().enumerate().map(take).collect())
    }

    async fn top_log_probs(&self, n: usize) -> Result<Vec<Vec<(u32, f64)>>> {
        Ok((0..self.rows())
            .map(|r| {
                let row = self.row(r);
                let log_z = log_sum_exp(row);
                let mut order: Vec<u32> = (0..row.len() as u32).collect();
                // Descending logit, ties to the lower id.
                order.sort_unstable_by(|&a, &b| {
                    row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                });
                order
                    .into_iter()
                    .take(n)
                    .map(|t| (t, row[t as usize] as f64 - log_z))
                    .collect()
            })
            .collect())
    }
}
