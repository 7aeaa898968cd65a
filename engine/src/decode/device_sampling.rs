//! Sampling on the device: [`SamplingParams::take`] computed with tensor ops over a [rows,
//! vocab] logits tensor, so that a decoding step reads back five numbers per row (the token,
//! log p, log q, the entropy and the mean log-probability) instead of the row itself.
//!
//! A draw is the inverse CDF over the kept weights in token-id order, in two levels so that
//! no cumulative sum runs over a whole row: the row is cut into chunks of about √vocab
//! tokens, the chunk holding u · total is found from the chunks' running sums, then the token
//! inside it. A top-p cut is found by bisection on the scaled logit (the kept mass falls as
//! the cut rises), a top-k cut from the k-th largest value; both keep ties at the cut, as the
//! host reference does.
//!
//! [`Logits::take`] runs this path only where nothing better fits. On a wgpu device it runs
//! the fused kernel of [`crate::kernels::sampling`] (one launch instead of some 60 tensor ops,
//! each its own dispatch, and 400 more with a top-p cut); on the CPU backend the rows already
//! sit in host memory: reading them back is a copy, and the host loop (one pass per row, rows
//! split over the cores) beats the tensor ops, so it runs the host reference there.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::backend::{cpu_device, read_f32_async};
use crate::decode::logits::{HostLogits, Logits, check_picks, check_selection};
use crate::error::{Error, Result};
use crate::kernels::sampling::{LOG_ZERO, OUT_PER_ROW, take_by_kernel};
use crate::rng::CounterRng;
use crate::sampling::{Picked, RowPick, SamplingParams, TokenStats};

/// Logits rows kept on the model's device, [rows, vocab].
#[derive(Clone, Debug)]
pub struct DeviceLogits(pub Tensor<2>);

/// Bisection steps of the top-p cut: the interval shrinks by 2^40, past f32 resolution.
const CUT_STEPS: usize = 40;
/// The lowest top-p cut searched: exp(−104) is 0 in f32, so nothing below it has weight.
const CUT_FLOOR: f32 = -104.0;

impl Logits for DeviceLogits {
    fn rows(&self) -> usize {
        self.0.dims()[0]
    }

    fn select(&self, rows: &[usize]) -> Result<Self> {
        check_selection(rows, self.rows())?;
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index =
            Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &self.0.device());
        Ok(Self(self.0.clone().select(0, index)))
    }

    fn concat(parts: Vec<Self>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::EmptyInput("no logits to join"));
        }
        Ok(Self(Tensor::cat(
            parts.into_iter().map(|p| p.0).collect(),
            0,
        )))
    }

    /// On a wgpu device by the fused kernel ([`DeviceLogits::take_by_kernel`]); on the CPU
    /// backend the rows are already in host memory, so the host's one-pass loop takes them
    /// ([`HostLogits`]'s, rows split over the cores); elsewhere by tensor ops
    /// ([`DeviceLogits::take_by_tensor_ops`]).
    async fn take(&self, picks: &[RowPick], sampling: &SamplingParams) -> Result<Vec<Picked>> {
        if self.0.device() != cpu_device() {
            if kernel_passed_its_check(&self.0.device()).await
                && let Some(picked) = self.take_by_kernel(picks, sampling).await?
            {
                return Ok(picked);
            }
            return self.take_by_tensor_ops(picks, sampling).await;
        }
        let host = HostLogits {
            values: read_f32_async(self.0.clone()).await?,
            vocab: self.0.dims()[1],
        };
        host.take(picks, sampling).await
    }

    async fn top_log_probs(&self, n: usize) -> Result<Vec<Vec<(u32, f64)>>> {
        let [rows, vocab] = self.0.dims();
        let n = n.min(vocab);
        if n == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let (values, indices) = log_softmax(self.0.clone(), 1).topk_with_indices(n, 1);
        let read = read_f32_async(Tensor::cat(vec![indices.float(), values], 1)).await?;
        Ok(read
            .chunks_exact(2 * n)
            .map(|row| {
                let (ids, log_probs) = row.split_at(n);
                ids.iter()
                    .zip(log_probs)
                    .map(|(&id, &lp)| (id as u32, lp as f64))
                    .collect()
            })
            .collect())
    }
}

impl DeviceLogits {
    /// [`Logits::take`] by tensor ops on whatever device holds the rows: five numbers read
    /// back per row.
    pub async fn take_by_tensor_ops(
        &self,
        picks: &[RowPick],
        sampling: &SamplingParams,
    ) -> Result<Vec<Picked>> {
        check_picks(picks, self.rows(), self.0.dims()[1])?;
        sampling.validate()?;
        let taken = take_on_device(self.0.clone(), picks, sampling);
        self.read_taken(taken).await
    }

    /// [`Logits::take`] by one fused CubeCL kernel launch: five numbers read back per row;
    /// `None` where the rows are not on a CubeCL (wgpu) device or there are none.
    pub async fn take_by_kernel(
        &self,
        picks: &[RowPick],
        sampling: &SamplingParams,
    ) -> Result<Option<Vec<Picked>>> {
        check_picks(picks, self.rows(), self.0.dims()[1])?;
        sampling.validate()?;
        match take_by_kernel(&self.0, picks, sampling) {
            Some(taken) => Ok(Some(self.read_taken(taken).await?)),
            None => Ok(None),
        }
    }

    /// The picks from [rows, 5] results (token, log p, log q, entropy, mean log p).
    async fn read_taken(&self, taken: Tensor<2>) -> Result<Vec<Picked>> {
        let read = read_f32_async(taken).await?;
        let ln_vocab = (self.0.dims()[1] as f64).ln();
        Ok(read
            .chunks_exact(OUT_PER_ROW)
            .map(|row| Picked {
                token: row[0] as u32,
                stats: TokenStats {
                    tokens: 1,
                    log_prob: row[1] as f64,
                    sampling_log_prob: match row[2] {
                        q if q <= LOG_ZERO => f64::NEG_INFINITY,
                        q => q as f64,
                    },
                    entropy: row[3] as f64,
                    self_certainty: -ln_vocab - row[4] as f64,
                },
            })
            .collect())
    }
}

/// Whether the fused kernel gives the host reference's answers on `device`, checked once per
/// process (one wgpu device per process). A shader compiler that rejects the kernel fails
/// silently in a browser (the outputs are garbage), so `take` keeps to tensor ops there.
async fn kernel_passed_its_check(device: &Device) -> bool {
    const UNCHECKED: u8 = 0;
    const PASSED: u8 = 1;
    const FAILED: u8 = 2;
    static STATE: AtomicU8 = AtomicU8::new(UNCHECKED);
    match STATE.load(Ordering::Relaxed) {
        PASSED => true,
        FAILED => false,
        _ => {
            let passed = kernel_agrees_with_host(device).await;
            STATE.store(if passed { PASSED } else { FAILED }, Ordering::Relaxed);
            passed
        }
    }
}

/// Three rows of 700 pseudo-random logits, greedy and a draw through both cuts, drawn and
/// forced: the kernel takes the host's tokens, with its statistics within 1e-3.
async fn kernel_agrees_with_host(device: &Device) -> bool {
    let (rows, vocab) = (3, 700);
    let rng = CounterRng { seed: 7 };
    let values: Vec<f32> = (0..rows * vocab)
        .map(|i| (rng.uniform(0, i as u64) * 12.0 - 6.0) as f32)
        .collect();
    let host = HostLogits {
        values: values.clone(),
        vocab,
    };
    let on_device = DeviceLogits(Tensor::from_data(
        TensorData::new(values, [rows, vocab]),
        device,
    ));
    let picks = [RowPick::Draw(0.3), RowPick::Forced(11), RowPick::Draw(0.9)];
    let cuts = SamplingParams {
        temperature: 0.8,
        top_k: Some(40),
        top_p: Some(0.9),
    };
    for sampling in [SamplingParams::greedy(), cuts] {
        let (Ok(expected), Ok(Some(got))) = (
            host.take(&picks, &sampling).await,
            on_device.take_by_kernel(&picks, &sampling).await,
        ) else {
            return false;
        };
        let close = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-3 * (1.0 + a.abs());
        let agrees = expected.iter().zip(&got).all(|(e, g)| {
            e.token == g.token
                && close(e.stats.log_prob, g.stats.log_prob)
                && close(e.stats.sampling_log_prob, g.stats.sampling_log_prob)
                && close(e.stats.entropy, g.stats.entropy)
                && close(e.stats.self_certainty, g.stats.self_certainty)
        });
        if !agrees {
            return false;
        }
    }
    true
}

/// Per row of `logits` [rows, vocab]: [token, log p(token), log q(token), entropy of p, mean
/// log p], [rows, 5], where p = softmax(logits) and q is the distribution `sampling` draws from.
fn take_on_device(logits: Tensor<2>, picks: &[RowPick], sampling: &SamplingParams) -> Tensor<2> {
    let device = logits.device();
    let rows = logits.dims()[0];
    let uniforms: Vec<f32> = picks
        .iter()
        .map(|p| match p {
            RowPick::Draw(u) => *u as f32,
            RowPick::Forced(_) => 0.0,
        })
        .collect();
    let forced: Vec<i64> = picks
        .iter()
        .map(|p| match p {
            RowPick::Forced(token) => *token as i64,
            RowPick::Draw(_) => -1,
        })
        .collect();
    let u = Tensor::<2>::from_data(TensorData::new(uniforms, [rows, 1]), &device);
    let forced = Tensor::<2, Int>::from_data(TensorData::new(forced, [rows, 1]), &device);

    // The raw distribution p = softmax(logits) and its statistics.
    let shifted = logits.clone() - logits.clone().max_dim(1);
    let log_p = shifted.clone() - shifted.exp().sum_dim(1).log(); // [rows, vocab]
    let entropy = (log_p.clone().exp() * log_p.clone()).sum_dim(1).neg();
    let mean_log_p = log_p.clone().mean_dim(1);

    let best = logits.clone().argmax(1); // [rows, 1]
    let (drawn, log_q_all) = if sampling.temperature == 0.0 {
        (best.clone(), None)
    } else {
        let (weights, log_q_all) = kept_weights(logits, sampling);
        let total = weights.clone().sum_dim(1);
        let drawn = inverse_cdf(weights.clone(), u * total);
        // Rounding can leave u · total past the last weight: the most likely token then.
        let missed = weights.gather(1, drawn.clone()).lower_equal_elem(0.0);
        (drawn.mask_where(missed, best.clone()), Some(log_q_all))
    };
    let token = drawn.mask_where(forced.clone().greater_equal_elem(0), forced);
    let log_q = match log_q_all {
        Some(all) => all.gather(1, token.clone()),
        None => Tensor::zeros([rows, 1], &device)
            .mask_fill(token.clone().not_equal(best), f32::NEG_INFINITY),
    };
    let log_p_token = log_p.gather(1, token.clone());
    Tensor::cat(
        vec![token.float(), log_p_token, log_q, entropy, mean_log_p],
        1,
    )
}

/// The kept weights exp(z), z = logits/T − max, 0 where the top-k / top-p cut removes a token,
/// and log q for every token (−∞ where cut); both [rows, vocab].
fn kept_weights(logits: Tensor<2>, sampling: &SamplingParams) -> (Tensor<2>, Tensor<2>) {
    let [rows, vocab] = logits.dims();
    let device = logits.device();
    let scaled = logits.div_scalar(sampling.temperature);
    let z = scaled.clone() - scaled.max_dim(1);
    let exp_z = z.clone().exp();
    let mut cut = Tensor::<2>::full([rows, 1], f32::NEG_INFINITY, &device);
    if let Some(k) = sampling.top_k.filter(|&k| k > 0 && k < vocab) {
        cut = z.clone().topk(k, 1).narrow(1, k - 1, 1);
    }
    if let Some(p) = sampling.top_p.filter(|&p| p < 1.0) {
        cut = top_p_cut(&z, &exp_z, cut, p);
    }
    let cut_off = below(&z, &cut);
    let weights = exp_z.mask_fill(cut_off.clone(), 0.0);
    let log_total = weights.clone().sum_dim(1).log();
    let log_q = (z - log_total).mask_fill(cut_off, f32::NEG_INFINITY);
    (weights, log_q)
}

/// Where z lies below the per-row cut ([rows, 1]).
fn below(z: &Tensor<2>, cut: &Tensor<2>) -> Tensor<2, Bool> {
    (z.clone() - cut.clone()).lower_elem(0.0)
}

/// The largest cut τ (per row, [rows, 1]) whose tokens z ≥ τ, among those at or above
/// `cut`, hold at least mass `p` of them; `exp_z` is exp(z).
fn top_p_cut(z: &Tensor<2>, exp_z: &Tensor<2>, cut: Tensor<2>, p: f32) -> Tensor<2> {
    let weights = exp_z.clone().mask_fill(below(z, &cut), 0.0);
    let need = weights.clone().sum_dim(1).mul_scalar(p);
    let reaches = |tau: &Tensor<2>| {
        let mass = weights.clone().mask_fill(below(z, tau), 0.0).sum_dim(1);
        (mass - need.clone()).greater_equal_elem(0.0)
    };
    // Invariant: `low` reaches p; the top (0, the row's maximum) may too.
    let mut low = cut.clamp_min(CUT_FLOOR);
    let mut high = Tensor::<2>::zeros(low.dims(), &low.device());
    for _ in 0..CUT_STEPS {
        let mid = (low.clone() + high.clone()).div_scalar(2.0);
        let ok = reaches(&mid);
        low = low.mask_where(ok.clone(), mid.clone());
        high = mid.mask_where(ok, high);
    }
    let top_reaches = reaches(&high);
    low.mask_where(top_reaches, high)
}

/// Per row, the first token whose cumulative weight exceeds `target` ([rows, 1]), as [rows, 1]
/// ids; weights [rows, vocab] are ≥ 0.
fn inverse_cdf(weights: Tensor<2>, target: Tensor<2>) -> Tensor<2, Int> {
    let [rows, vocab] = weights.dims();
    let device = weights.device();
    let width = (vocab as f64).sqrt().ceil() as usize;
    let chunks = vocab.div_ceil(width);
    let padded = match chunks * width - vocab {
        0 => weights,
        pad => Tensor::cat(vec![weights, Tensor::zeros([rows, pad], &device)], 1),
    };
    let blocks = padded.reshape([rows, chunks, width]);
    let sums = blocks.clone().sum_dim(2).reshape([rows, chunks]);
    let ends = sums.clone().cumsum(1);
    // The chunk holding the target: chunks ending at or below it are passed.
    let chunk = (ends.clone() - target.clone())
        .lower_equal_elem(0.0)
        .int()
        .sum_dim(1)
        .clamp_max(chunks as i64 - 1);
    let before = (ends - sums).gather(1, chunk.clone());
    let index = chunk.clone().unsqueeze_dim::<3>(2).repeat_dim(2, width);
    let block = blocks.gather(1, index).reshape([rows, width]);
    // Inside it, tokens whose running weight stays at or below the rest of the target are
    // passed (zero weights never end the walk).
    let rest = (target - before).clamp_min(0.0);
    let inside = (block.cumsum(1) - rest)
        .lower_equal_elem(0.0)
        .int()
        .sum_dim(1)
        .clamp_max(width as i64 - 1);
    (chunk.mul_scalar(width as i64) + inside).clamp_max(vocab as i64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu_device;
    use crate::rng::CounterRng;
    use crate::sampling::Sampler;
    use pollster::block_on;

    #[test]
    fn draws_follow_the_kept_distribution() {
        // Many rows of one small distribution: token frequencies match q.
        let (n, logits) = (4000, [1.0f32, 0.0, 2.0, -1.0, 1.5]);
        let sampling = SamplingParams {
            temperature: 1.0,
            top_k: Some(4),
            top_p: None,
        };
        let values: Vec<f32> = (0..n).flat_map(|_| logits).collect();
        let t = DeviceLogits(Tensor::from_data(
            TensorData::new(values, [n, 5]),
            &cpu_device(),
        ));
        let rng = CounterRng { seed: 5 };
        let picks: Vec<RowPick> = (0..n as u64)
            .map(|i| RowPick::Draw(rng.uniform(0, i)))
            .collect();
        let got = block_on(t.take_by_tensor_ops(&picks, &sampling)).unwrap();
        let weights = sampling.weights(&logits);
        let total: f64 = weights.iter().sum();
        for (token, w) in weights.iter().enumerate() {
            let share = got.iter().filter(|p| p.token == token as u32).count() as f64 / n as f64;
            assert!(
                (share - w / total).abs() < 0.025,
                "{token}: {share} vs {}",
                w / total
            );
        }
    }

    #[test]
    fn bad_picks_are_refused() {
        let t = DeviceLogits(Tensor::zeros([2, 4], &cpu_device()));
        for err in [
            block_on(t.take(&[RowPick::Draw(0.5)], &SamplingParams::default())),
            block_on(t.take_by_tensor_ops(&[RowPick::Draw(0.5)], &SamplingParams::default())),
        ] {
            assert!(matches!(err, Err(Error::Sampling(_))));
        }
        let out_of_vocabulary = [RowPick::Forced(4), RowPick::Draw(0.5)];
        for err in [
            block_on(t.take(&out_of_vocabulary, &SamplingParams::default())),
            block_on(t.take_by_tensor_ops(&out_of_vocabulary, &SamplingParams::default())),
        ] {
            assert!(matches!(err, Err(Error::Sampling(_))));
        }
        assert!(t.select(&[2]).is_err());
        assert!(t.select(&[]).is_err());
    }
}
