//! The engine's random numbers: a counter-based generator whose every draw is a pure function of
//! (seed, stream, counter). A leaf: sampling, the strategies, the task generator, random
//! checkpoints and training all draw from it.

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
    fn draws_depend_only_on_seed_stream_and_counter() {
        let rng = CounterRng { seed: 42 };
        assert_eq!(rng.uniform(5, 9), CounterRng { seed: 42 }.uniform(5, 9));
        assert_ne!(rng.uniform(5, 9), rng.uniform(6, 9));
        assert_ne!(rng.uniform(5, 9), rng.uniform(5, 10));
        assert_ne!(rng.uniform(5, 9), CounterRng { seed: 43 }.uniform(5, 9));
        let mean = (0..10_000).map(|i| rng.uniform(1, i)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
