//! Choosing the next token from a row of logits: greedy, temperature, top-k, top-p, driven by a
//! counter-based random generator so that a sequence's draws depend only on (seed, the
//! sequence's stream, the draw's index), never on what else shares the batch.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p (None: all).
    pub top_p: Option<f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks the ranges: temperature ≥ 0 and finite, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Sampling(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::Sampling(format!(
                "top-p must lie in (0, 1], got {p}"
            )));
        }
        Ok(())
    }

    /// The distribution a draw follows: the kept tokens, most likely first, with their
    /// probabilities (summing to 1). Greedy keeps the argmax alone.
    pub fn distribution(&self, logits: &[f32]) -> (Vec<u32>, Vec<f64>) {
        if self.temperature == 0.0 {
            return (vec![argmax(logits)], vec![1.0]);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Sort by descending logit, ties broken by lower id (deterministic).
        order.sort_unstable_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if let Some(k) = self.top_k.filter(|&k| k > 0) {
            order.truncate(k);
        }
        let max = logits[order[0] as usize];
        let inv_t = 1.0 / self.temperature as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i as usize] - max) as f64 * inv_t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.top_p {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        (order, probs)
    }

    /// Picks a token from one row of logits; `u` is a uniform draw in [0, 1).
    pub fn pick(&self, logits: &[f32], u: f64) -> u32 {
        self.draw(logits, u).0
    }

    /// Picks a token as [`SamplingParams::pick`] does and returns it with the log-probability
    /// of drawing it, from one pass over the row.
    pub fn draw(&self, logits: &[f32], u: f64) -> (u32, f64) {
        let (order, probs) = self.distribution(logits);
        let mut cumulative = 0.0;
        for (&token, &p) in order.iter().zip(&probs) {
            cumulative += p;
            if u < cumulative {
                return (token, p.ln());
            }
        }
        let last = order.len() - 1;
        (order[last], probs[last].ln())
    }

    /// The log-probability of drawing `token` from this row (−∞ when it is cut off).
    pub fn log_prob(&self, logits: &[f32], token: u32) -> f64 {
        let (order, probs) = self.distribution(logits);
        order
            .iter()
            .position(|&t| t == token)
            .map_or(f64::NEG_INFINITY, |i| probs[i].ln())
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
    /// The statistics of drawing `token` from `logits` with `sampling`.
    pub fn of_draw(logits: &[f32], token: u32, sampling: &SamplingParams) -> Self {
        Self::of_token(logits, token, sampling.log_prob(logits, token))
    }

    /// The statistics of `token` after `logits`, given the log-probability the sampler drew it
    /// with.
    pub fn of_token(logits: &[f32], token: u32, sampling_log_prob: f64) -> Self {
        let log_z = log_sum_exp(logits);
        let v = logits.len() as f64;
        let (mut entropy, mut mean_log_p) = (0.0, 0.0);
        for &l in logits {
            let log_p = l as f64 - log_z;
            entropy -= log_p.exp() * log_p;
            mean_log_p += log_p / v;
        }
        Self {
            tokens: 1,
            log_prob: logits[token as usize] as f64 - log_z,
            sampling_log_prob,
            entropy,
            self_certainty: -v.ln() - mean_log_p,
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

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A counter-based generator: the draw for (seed, stream, counter) is a pure function of the
/// three, so sequences in a batch draw the same numbers whatever their order or company.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterRng {
    pub seed: u64,
}

impl CounterRng {
    /// A uniform number in [0, 1) for draw `counter` of `stream`.
    pub fn uniform(&self, stream: u64, counter: u64) -> f64 {
        let a = mix64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        let b = mix64(a ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let bits = mix64(b ^ counter.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The stream of the `index`-th child forked from `parent` (fixed by the two alone).
    pub fn child_stream(parent: u64, index: u64) -> u64 {
        mix64(mix64(parent ^ 0x5851_f42d_4c95_7f2d) ^ index.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(
            SamplingParams::greedy().pick(&[0.1, 3.0, -1.0, 3.0], 0.99),
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
            assert_eq!(p.pick(&[0.0, 1.0, 2.0, 0.5], u), 2);
        }
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
            seen[p.pick(&logits, rng.uniform(0, i)) as usize] += 1;
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
            .filter(|&i| SamplingParams::default().pick(&logits, rng.uniform(3, i)) == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.015, "{share}");
    }

    #[test]
    fn draws_depend_only_on_seed_stream_and_counter() {
        let rng = CounterRng { seed: 42 };
        assert_eq!(rng.uniform(5, 9), CounterRng { seed: 42 }.uniform(5, 9));
        assert_ne!(rng.uniform(5, 9), rng.uniform(6, 9));
        assert_ne!(rng.uniform(5, 9), rng.uniform(5, 10));
        assert_ne!(rng.uniform(5, 9), CounterRng { seed: 43 }.uniform(5, 9));
        let mean = (0..10_000).map(|i| rng.uniform(1, i)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn log_probs_describe_the_draw_distribution() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 0.0];
        let p = SamplingParams {
            temperature: 0.7,
            top_k: Some(4),
            top_p: Some(0.9),
        };
        let mass: f64 = (0..5).map(|t| p.log_prob(&logits, t).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-12, "{mass}");
        assert_eq!(p.log_prob(&logits, 3), f64::NEG_INFINITY, "cut by top-k");
        // Frequencies of pick() match exp(log_prob).
        let rng = CounterRng { seed: 2 };
        let n = 20_000;
        let zeros = (0..n)
            .filter(|&i| p.pick(&logits, rng.uniform(0, i)) == 0)
            .count();
        let expected = p.log_prob(&logits, 0).exp();
        assert!((zeros as f64 / n as f64 - expected).abs() < 0.015);
        assert_eq!(SamplingParams::greedy().log_prob(&logits, 0), 0.0);
    }

    #[test]
    fn token_stats_of_a_uniform_row() {
        let v = 8usize;
        let s = TokenStats::of_draw(&vec![0.3f32; v], 2, &SamplingParams::default());
        let ln_v = (v as f64).ln();
        assert_eq!(s.tokens, 1);
        assert!((s.log_prob + ln_v).abs() < 1e-9);
        assert!((s.sampling_log_prob + ln_v).abs() < 1e-9);
        assert!((s.entropy - ln_v).abs() < 1e-9);
        assert!(s.self_certainty.abs() < 1e-9, "KL(U ‖ U) = 0");
        let peaked = TokenStats::of_draw(&[5.0, 0.0, 0.0], 0, &SamplingParams::default());
        assert!(peaked.self_certainty > 0.5 && peaked.entropy < 0.2);
        assert_eq!(s.plus(s).tokens, 2);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: Some(0.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: Some(1.5),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
