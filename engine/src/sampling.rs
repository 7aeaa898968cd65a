//! Choosing the next token from a row of logits: greedy, temperature, top-k, top-p, driven by a
//! counter-based random generator so that a sequence's draws depend only on (seed, the
//! sequence's stream, the draw's index), never on what else shares the batch.

use serde::{Deserialize, Serialize};

pub use ets_spec::sampling::SamplingParams;

/// Drawing tokens by a [`SamplingParams`] on the host (the engine's side of the spec's
/// sampling settings).
pub trait Sampler {
    /// The unnormalised weights the draw follows, in token-id order (see the impl).
    fn weights(&self, logits: &[f32]) -> Vec<f64>;
    /// Takes one token from a row of logits, drawn or forced, with the statistics of taking it.
    fn take(&self, logits: &[f32], pick: RowPick) -> Picked;
}

impl Sampler for SamplingParams {
    /// The unnormalised weights the draw follows, in token-id order: exp(logit/T − max/T) for
    /// the tokens the transform keeps, 0 for the others. Top-k keeps every token whose logit
    /// reaches the k-th largest (ties at the cut are kept); top-p then keeps every token whose
    /// probability reaches that of the last token needed, most likely first, for mass p. Greedy
    /// keeps the argmax alone. [`crate::decode::device_sampling`] computes the same on a device.
    fn weights(&self, logits: &[f32]) -> Vec<f64> {
        if self.temperature == 0.0 {
            let mut w = vec![0.0; logits.len()];
            w[argmax(logits) as usize] = 1.0;
            return w;
        }
        let inv_t = 1.0 / self.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 * inv_t;
        let scaled = |&l: &f32| l as f64 * inv_t - max;
        let (top_k, top_p) = self.cuts(logits.len());
        if top_k.is_none() && top_p.is_none() {
            return logits.iter().map(|l| scaled(l).exp()).collect();
        }
        let z: Vec<f64> = logits.iter().map(scaled).collect();
        let mut sorted = z.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut cut = f64::NEG_INFINITY;
        if let Some(k) = top_k {
            cut = sorted[k - 1];
        }
        if let Some(top_p) = top_p {
            let kept = sorted.iter().take_while(|&&v| v >= cut);
            let total: f64 = kept.clone().map(|v| v.exp()).sum();
            let mut mass = 0.0;
            for &v in kept {
                mass += v.exp() / total;
                if mass >= top_p as f64 {
                    cut = v;
                    break;
                }
            }
        }
        z.iter()
            .map(|&v| if v >= cut { v.exp() } else { 0.0 })
            .collect()
    }

    /// Takes one token from a row of logits, drawn or forced, with the statistics of taking
    /// it. A draw walks the kept weights in token-id order to the first cumulative weight above
    /// u · total (inverse CDF).
    fn take(&self, logits: &[f32], pick: RowPick) -> Picked {
        let weights = self.weights(logits);
        let total: f64 = weights.iter().sum();
        let token = match pick {
            RowPick::Forced(token) => token,
            RowPick::Draw(u) => {
                let target = u * total;
                let mut cumulative = 0.0;
                let mut chosen = None;
                for (v, &w) in weights.iter().enumerate() {
                    cumulative += w;
                    if w > 0.0 && cumulative > target {
                        chosen = Some(v);
                        break;
                    }
                }
                // Rounding can leave u · total past the last weight: the most likely token.
                chosen.map_or_else(|| argmax(logits), |v| v as u32)
            }
        };
        let log_q = match weights.get(token as usize) {
            Some(&w) if w > 0.0 => (w / total).ln(),
            _ => f64::NEG_INFINITY,
        };
        // At temperature 1 with no cut the weights are exp(logit − max), the very numbers the
        // statistics sum: computed once (half of a row's exponentials).
        let plain = self.temperature == 1.0 && self.cuts(logits.len()) == (None, None);
        let stats = if plain {
            TokenStats::of_token_with(logits, token, log_q, |i, _| weights[i])
        } else {
            TokenStats::of_token(logits, token, log_q)
        };
        Picked { token, stats }
    }
}

/// What to do with one row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowPick {
    /// Draw a token with this uniform number in [0, 1).
    Draw(f64),
    /// Take this token (teacher forcing, a beam's expansion) and score it.
    Forced(u32),
}

/// The token taken from a row, with the statistics of taking it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Picked {
    pub token: u32,
    pub stats: TokenStats,
}

impl Picked {
    /// A token whose statistics are not known (a served model's token fed without scoring):
    /// counted, with no log-probability (its sampling log-probability is NaN).
    pub fn unscored(token: u32) -> Self {
        Self {
            token,
            stats: TokenStats {
                tokens: 1,
                sampling_log_prob: f64::NAN,
                ..TokenStats::default()
            },
        }
    }

    /// A served model's token with its log-probability under the model (nats): its sampling
    /// log-probability too when `sampling` draws from the model's own distribution, else
    /// unknown (NaN); entropy and self-certainty are not sent (0).
    pub fn served(token: u32, log_prob: f64, sampling: &SamplingParams) -> Self {
        Self {
            token,
            stats: TokenStats {
                tokens: 1,
                log_prob,
                sampling_log_prob: if sampling.is_plain() {
                    log_prob
                } else {
                    f64::NAN
                },
                entropy: 0.0,
                self_certainty: 0.0,
            },
        }
    }
}

/// Running sums over a sequence's generated tokens of what rewards and importance weights read,
/// all from the model's raw distribution p = softmax(logits) except `sampling_log_prob`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    /// Tokens counted.
    pub tokens: usize,
    /// Σ log p(token) (nats).
    pub log_prob: f64,
    /// Σ log q(token) under the sampling transform (temperature, top-k, top-p) that drew it.
    pub sampling_log_prob: f64,
    /// Σ entropy of p (nats).
    pub entropy: f64,
    /// Σ self-certainty KL(U ‖ p) = −log V − mean_v log p(v) (nats).
    pub self_certainty: f64,
}

impl TokenStats {
    /// The statistics of `token` after `logits`, given the log-probability the sampler drew it
    /// with.
    ///
    /// One pass of exponentials: with s = l − max, Z' = Σ exp(s) and log Z = max + ln Z', the
    /// entropy −Σ p log p is ln Z' − Σ exp(s)·s / Z' and the mean log p is mean(s) − ln Z'.
    pub fn of_token(logits: &[f32], token: u32, sampling_log_prob: f64) -> Self {
        Self::of_token_with(logits, token, sampling_log_prob, |_, s| s.exp())
    }

    /// [`Self::of_token`] with exp(s) of logit i given by `exp(i, s)` (exponentials already
    /// computed).
    fn of_token_with(
        logits: &[f32],
        token: u32,
        sampling_log_prob: f64,
        exp: impl Fn(usize, f64) -> f64,
    ) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let (mut z, mut weighted, mut sum) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &l) in logits.iter().enumerate() {
            let s = l as f64 - max;
            let e = exp(i, s);
            z += e;
            weighted += e * s;
            sum += s;
        }
        let v = logits.len() as f64;
        let ln_z = z.ln();
        Self {
            tokens: 1,
            log_prob: logits[token as usize] as f64 - max - ln_z,
            sampling_log_prob,
            entropy: ln_z - weighted / z,
            self_certainty: -v.ln() - (sum / v - ln_z),
        }
    }

    /// The sums of two spans.
    pub fn plus(self, other: Self) -> Self {
        Self {
            tokens: self.tokens + other.tokens,
            log_prob: self.log_prob + other.log_prob,
            sampling_log_prob: self.sampling_log_prob + other.sampling_log_prob,
            entropy: self.entropy + other.entropy,
            self_certainty: self.self_certainty + other.self_certainty,
        }
    }
}

/// log Σ exp(logits): the log-normaliser of softmax(logits), computed stably.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::CounterRng;

    fn draw(p: &SamplingParams, logits: &[f32], u: f64) -> u32 {
        p.take(logits, RowPick::Draw(u)).token
    }

    fn log_q(p: &SamplingParams, logits: &[f32], token: u32) -> f64 {
        p.take(logits, RowPick::Forced(token))
            .stats
            .sampling_log_prob
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(
            draw(&SamplingParams::greedy(), &[0.1, 3.0, -1.0, 3.0], 0.99),
            1
        );
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let p = SamplingParams {
            temperature: 5.0,
            top_k: Some(1),
            top_p: None,
        };
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(draw(&p, &[0.0, 1.0, 2.0, 0.5], u), 2);
        }
    }

    #[test]
    fn top_k_keeps_ties_at_the_cut() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
        };
        let w = p.weights(&[1.0, 3.0, 1.0, 0.0]);
        assert_eq!(w.iter().filter(|&&w| w > 0.0).count(), 3, "{w:?}");
        assert_eq!(w[3], 0.0);
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]; top-p 0.8 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.8),
        };
        let mut seen = [0usize; 4];
        let rng = CounterRng { seed: 7 };
        for i in 0..2000 {
            seen[draw(&p, &logits, rng.uniform(0, i)) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0);
        assert_eq!(seen[2] + seen[3], 0);
        // Renormalised: 0.64 / 0.88 ≈ 0.73.
        let share = seen[0] as f64 / 2000.0;
        assert!((share - 0.73).abs() < 0.04, "{share}");
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln()];
        let rng = CounterRng { seed: 1 };
        let n = 30_000;
        let ones = (0..n)
            .filter(|&i| draw(&SamplingParams::default(), &logits, rng.uniform(3, i)) == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.015, "{share}");
    }

    #[test]
    fn log_probs_describe_the_draw_distribution() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 0.0];
        let p = SamplingParams {
            temperature: 0.7,
            top_k: Some(4),
            top_p: Some(0.9),
        };
        let mass: f64 = (0..5).map(|t| log_q(&p, &logits, t).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-12, "{mass}");
        assert_eq!(log_q(&p, &logits, 3), f64::NEG_INFINITY, "cut by top-k");
        // Frequencies of draws match exp(log q).
        let rng = CounterRng { seed: 2 };
        let n = 20_000;
        let zeros = (0..n)
            .filter(|&i| draw(&p, &logits, rng.uniform(0, i)) == 0)
            .count();
        let expected = log_q(&p, &logits, 0).exp();
        assert!((zeros as f64 / n as f64 - expected).abs() < 0.015);
        assert_eq!(log_q(&SamplingParams::greedy(), &logits, 0), 0.0);
        assert_eq!(
            log_q(&SamplingParams::greedy(), &logits, 1),
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn token_stats_of_a_uniform_row() {
        let v = 8usize;
        let raw = SamplingParams::default();
        let s = raw.take(&vec![0.3f32; v], RowPick::Forced(2)).stats;
        let ln_v = (v as f64).ln();
        assert_eq!(s.tokens, 1);
        assert!((s.log_prob + ln_v).abs() < 1e-9);
        assert!((s.sampling_log_prob + ln_v).abs() < 1e-9);
        assert!((s.entropy - ln_v).abs() < 1e-9);
        assert!(s.self_certainty.abs() < 1e-9, "KL(U ‖ U) = 0");
        let peaked = raw.take(&[5.0, 0.0, 0.0], RowPick::Forced(0)).stats;
        assert!(peaked.self_certainty > 0.5 && peaked.entropy < 0.2);
        assert_eq!(s.plus(s).tokens, 2);
    }

    #[test]
    fn the_draw_reuses_its_exponentials_without_changing_a_bit() {
        // The statistics of a draw at temperature 1 with no cut sum the draw's own weights;
        // they must be exactly what the statistics compute on their own.
        let logits: Vec<f32> = (0..997)
            .map(|i| ((i * 7919) % 211) as f32 * 0.05 - 4.0)
            .collect();
        for sampling in [
            SamplingParams::default(),
            SamplingParams {
                temperature: 0.7,
                ..Default::default()
            },
            SamplingParams {
                top_k: Some(40),
                ..Default::default()
            },
        ] {
            for u in [0.01, 0.5, 0.99] {
                let picked = sampling.take(&logits, RowPick::Draw(u));
                let alone =
                    TokenStats::of_token(&logits, picked.token, picked.stats.sampling_log_prob);
                assert_eq!(picked.stats, alone);
            }
        }
    }
}
