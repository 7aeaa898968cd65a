//! ETS samples from π*(x) ∝ p_ref(x)·exp(r(x)/λ): on toy models whose output distributions can
//! be enumerated (a causal one and a masked diffusion one), the total-variation distance
//! between the empirical distribution of ETS's answers and the exact π* falls as M and K grow
//! and is small at large M and K, while plain sampling stays at TV(p_ref, π*). The same holds
//! for ETS-IS with a different draft model (on the diffusion toy where its weights are exact),
//! for rollout recycling, and for particle filtering (whose particles are weighed by the change
//! of the reward of partial responses; on both toys).

use pollster::block_on;
use std::collections::HashMap;

use ets_engine::decode::diffusion::{DiffusionSchedule, Remasking};
use ets_engine::decode::lm::LanguageModel;
use ets_engine::decode::logits::HostLogits;
use ets_engine::model::config::Objective;
use ets_engine::reward::{PlainReward, Response, RewardKind};
use ets_engine::strategy::{EtsParams, SolveSpec, Solver, Strategy};
use ets_engine::task::answer::Extraction;
use ets_engine::{LogitsFor, Result, SamplingParams};

/// A model given by a hash: the logits after a history are pseudo-random numbers fixed by
/// (salt, history). Causal: row t reads tokens ..=t. Diffusion: row t reads the whole sequence
/// and its own position.
struct ToyModel {
    vocab: usize,
    salt: u64,
    objective: Objective,
    /// Answer tokens: at most this many (causal), exactly this many (diffusion).
    answer_len: usize,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ToyModel {
    /// Logits for one context: values in [−2, 2] (a diffusion model never proposes the mask).
    fn row(&self, context: &[u32], position: usize) -> Vec<f32> {
        let mut h = mix(self.salt ^ 0x1234);
        for &t in context {
            h = mix(h ^ (t as u64 + 1));
        }
        h = mix(h ^ (position as u64).wrapping_mul(0x9e37));
        let mut row: Vec<f32> = (0..self.vocab)
            .map(|v| {
                let bits = mix(h ^ (v as u64 + 17)) >> 11;
                (bits as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
            })
            .collect();
        if let Objective::MaskedDiffusion { mask_token_id } = self.objective {
            row[mask_token_id as usize] = -60.0;
        }
        row
    }

    /// softmax of a row.
    fn probs(&self, context: &[u32], position: usize) -> Vec<f64> {
        let row = self.row(context, position);
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f64> = row.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    }
}

impl LanguageModel for ToyModel {
    type Cache = Vec<Vec<u32>>;
    type Logits = HostLogits;

    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn objective(&self) -> Objective {
        self.objective
    }
    fn max_positions(&self) -> usize {
        64
    }
    fn new_cache(&self, batch: usize) -> Self::Cache {
        vec![Vec::new(); batch]
    }
    async fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut Self::Cache,
        logits_for: LogitsFor,
    ) -> Result<HostLogits> {
        let width = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
        let rows = match logits_for {
            LogitsFor::All => width,
            LogitsFor::Last => 1,
            LogitsFor::Tail(n) => n.clamp(1, width),
        };
        let mut out = Vec::new();
        for (history, chunk) in cache.iter_mut().zip(chunks) {
            let pad = width - chunk.len();
            let before = history.len();
            history.extend_from_slice(chunk);
            for slot in width - rows..width {
                if slot < pad {
                    out.extend(std::iter::repeat_n(0.0, self.vocab));
                    continue;
                }
                let position = before + slot - pad;
                match self.objective {
                    Objective::Causal => out.extend(self.row(&history[..=position], 0)),
                    Objective::MaskedDiffusion { .. } => out.extend(self.row(history, position)),
                }
            }
        }
        Ok(HostLogits {
            values: out,
            vocab: self.vocab,
        })
    }
    fn select(&self, cache: &Self::Cache, rows: &[usize]) -> Result<Self::Cache> {
        Ok(rows.iter().map(|&r| cache[r].clone()).collect())
    }
    fn concat(&self, caches: Vec<Self::Cache>) -> Result<Self::Cache> {
        Ok(caches.into_iter().flatten().collect())
    }
}

/// The test's reward: the share of tokens equal to 1, over the answer length.
struct CountOnes {
    length: usize,
}

impl PlainReward for CountOnes {
    fn plain_score(&mut self, responses: &[Response<'_>]) -> Vec<f64> {
        responses
            .iter()
            .map(|r| r.tokens.iter().filter(|&&t| t == 1).count() as f64 / self.length as f64)
            .collect()
    }
}

const LAMBDA: f64 = 0.4;
const EOS: u32 = 2;
/// Causal toy: tokens 0, 1 and EOS (2); answers of at most 3 tokens.
const AR_LEN: usize = 3;
/// Diffusion toy: tokens 0, 1, 2 and the mask (3); answers of exactly 3 tokens (2 where
/// ETS-IS's weights must be exact).
const DLM_LEN: usize = 3;
const MASK: u32 = 3;
const PROMPT: [u32; 1] = [0];

fn detokenize(ids: &[u32]) -> Result<String> {
    Ok(ids
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// Exact p_ref of every causal answer (cut before EOS), keyed by its text.
fn causal_distribution(model: &ToyModel) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    fn walk(m: &ToyModel, seq: &mut Vec<u32>, p: f64, out: &mut HashMap<String, f64>) {
        let answer = detokenize(&seq[PROMPT.len()..]).unwrap();
        if seq.len() - PROMPT.len() == AR_LEN {
            *out.entry(answer).or_default() += p;
            return;
        }
        let probs = m.probs(seq, 0);
        for (v, &pv) in probs.iter().enumerate() {
            if v as u32 == EOS {
                *out.entry(answer.clone()).or_default() += p * pv;
            } else {
                seq.push(v as u32);
                walk(m, seq, p * pv, out);
                seq.pop();
            }
        }
    }
    walk(model, &mut PROMPT.to_vec(), 1.0, &mut out);
    out
}

/// Exact p_ref of every diffusion answer under the sampler with random remasking and one
/// token per step: a uniformly chosen masked position gets a token from its softmax.
fn diffusion_distribution(model: &ToyModel) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    fn walk(m: &ToyModel, answer: &mut Vec<u32>, p: f64, out: &mut HashMap<String, f64>) {
        let masked: Vec<usize> = (0..answer.len()).filter(|&i| answer[i] == MASK).collect();
        if masked.is_empty() {
            *out.entry(detokenize(answer).unwrap()).or_default() += p;
            return;
        }
        let sequence: Vec<u32> = PROMPT.iter().chain(answer.iter()).copied().collect();
        for &pos in &masked {
            let probs = m.probs(&sequence, PROMPT.len() + pos);
            for (v, pv) in probs.iter().enumerate().take(MASK as usize) {
                answer[pos] = v as u32;
                walk(m, answer, p * pv / masked.len() as f64, out);
            }
            answer[pos] = MASK;
        }
    }
    walk(model, &mut vec![MASK; model.answer_len], 1.0, &mut out);
    out
}

/// π* ∝ p_ref · exp(r / λ) with the test's reward.
fn tilt(p_ref: &HashMap<String, f64>, length: usize) -> HashMap<String, f64> {
    let reward = |text: &str| text.split(',').filter(|t| *t == "1").count() as f64 / length as f64;
    let weighted: HashMap<String, f64> = p_ref
        .iter()
        .map(|(x, p)| (x.clone(), p * (reward(x) / LAMBDA).exp()))
        .collect();
    let z: f64 = weighted.values().sum();
    weighted.into_iter().map(|(x, w)| (x, w / z)).collect()
}

fn total_variation(a: &HashMap<String, f64>, b: &HashMap<String, f64>) -> f64 {
    let keys: std::collections::HashSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .map(|k| (a.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0)).abs())
        .sum::<f64>()
        / 2.0
}

/// The empirical distribution of `runs` answers of `strategy`.
fn empirical(
    target: &ToyModel,
    draft: Option<&ToyModel>,
    strategy: Strategy,
    runs: usize,
) -> HashMap<String, f64> {
    let diffusion = target.objective != Objective::Causal;
    let stop: &[u32] = if diffusion { &[] } else { &[EOS] };
    let solver = Solver {
        target,
        draft,
        stop_ids: stop,
        detokenize: &detokenize,
        stop: None,
        drafts: None,
    };
    let spec = SolveSpec {
        strategy,
        sampling: SamplingParams::default(),
        max_tokens: AR_LEN,
        diffusion: DiffusionSchedule {
            gen_length: target.answer_len,
            block_length: target.answer_len,
            steps: target.answer_len,
            remasking: Remasking::Random,
        },
        reward: RewardKind::SelfConsistency, // replaced by the test's reward below
        extraction: Extraction::Strict,
        seed: 7,
    }
    .validate()
    .unwrap();
    let length = target.answer_len;
    let mut counts: HashMap<String, f64> = HashMap::new();
    for run in 0..runs {
        let mut reward = CountOnes { length };
        let solution =
            block_on(solver.solve(&PROMPT, &spec, run as u64, &mut reward, &mut |_| {})).unwrap();
        *counts.entry(solution.text).or_default() += 1.0 / runs as f64;
    }
    counts
}

fn ets(m: usize, k: usize) -> EtsParams {
    EtsParams {
        m,
        k,
        block: 1,
        lambda: LAMBDA,
        recycle: false,
        log_weight_clip: None,
    }
}

const RUNS: usize = 3000;

/// TV to π* of plain sampling and of ETS at growing (M, K); asserts the shape and returns them.
fn check_convergence(
    name: &str,
    target: &ToyModel,
    draft: Option<&ToyModel>,
    p_ref: &HashMap<String, f64>,
    make: impl Fn(EtsParams) -> Strategy,
    recycle: bool,
) {
    let length = target.answer_len;
    let pi = tilt(p_ref, length);
    let gap = total_variation(p_ref, &pi);
    let sample_tv = total_variation(&empirical(target, None, Strategy::Sample, RUNS), &pi);
    let tvs: Vec<f64> = [(2, 1), (4, 2), (16, 8)]
        .iter()
        .map(|&(m, k)| {
            let params = EtsParams {
                recycle,
                ..ets(m, k)
            };
            total_variation(&empirical(target, draft, make(params), RUNS), &pi)
        })
        .collect();
    // Best-of-N climbs the reward instead: it overshoots π* and stays far from it.
    let best_of_n = total_variation(
        &empirical(target, None, Strategy::BestOfN { n: 16 }, RUNS),
        &pi,
    );
    eprintln!(
        "{name}: TV(p_ref, π*) = {gap:.3}; sampling {sample_tv:.3}; best-of-16 {best_of_n:.3}; \
         ETS (2,1) {:.3}, (4,2) {:.3}, (16,8) {:.3}",
        tvs[0], tvs[1], tvs[2]
    );
    assert!(best_of_n > 0.15, "{name}: best-of-16 {best_of_n}");
    assert!(
        gap > 0.15,
        "{name}: the toy must make p_ref and π* differ ({gap})"
    );
    assert!(
        (sample_tv - gap).abs() < 0.05,
        "{name}: sampling TV {sample_tv} vs {gap}"
    );
    assert!(
        tvs[0] > tvs[2] + 0.05,
        "{name}: TV must fall with M and K: {tvs:?}"
    );
    assert!(
        tvs[1] > tvs[2],
        "{name}: TV must fall with M and K: {tvs:?}"
    );
    assert!(
        tvs[2] < 0.06,
        "{name}: TV at M=16, K=8 must be small: {tvs:?}"
    );
}

fn causal_toy(salt: u64) -> ToyModel {
    ToyModel {
        vocab: 3,
        salt,
        objective: Objective::Causal,
        answer_len: AR_LEN,
    }
}

fn diffusion_toy(salt: u64, answer_len: usize) -> ToyModel {
    ToyModel {
        vocab: 4,
        salt,
        objective: Objective::MaskedDiffusion {
            mask_token_id: MASK,
        },
        answer_len,
    }
}

#[test]
fn ets_approaches_the_optimal_policy_on_a_causal_model() {
    let target = causal_toy(1);
    let p_ref = causal_distribution(&target);
    assert!((p_ref.values().sum::<f64>() - 1.0).abs() < 1e-9);
    check_convergence("ETS-AR", &target, None, &p_ref, Strategy::Ets, false);
}

#[test]
fn recycled_rollouts_keep_the_target() {
    let target = causal_toy(1);
    let p_ref = causal_distribution(&target);
    check_convergence(
        "ETS-AR recycled",
        &target,
        None,
        &p_ref,
        Strategy::Ets,
        true,
    );
}

/// ETS-IS's convergence to π* with a draft that differs from the target by TV > 0.1.
fn check_ets_is(
    name: &str,
    target: &ToyModel,
    draft: &ToyModel,
    p_ref: &HashMap<String, f64>,
    q: &HashMap<String, f64>,
) {
    let gap = total_variation(p_ref, q);
    assert!(
        gap > 0.1,
        "{name}: the draft must differ from the target ({gap})"
    );
    check_convergence(name, target, Some(draft), p_ref, Strategy::EtsIs, false);
}

#[test]
fn ets_is_approaches_the_optimal_policy_with_a_different_draft() {
    let (target, draft) = (causal_toy(1), causal_toy(2));
    let (p_ref, q) = (causal_distribution(&target), causal_distribution(&draft));
    check_ets_is("ETS-IS", &target, &draft, &p_ref, &q);
}

#[test]
fn ets_approaches_the_optimal_policy_on_a_diffusion_model() {
    let target = diffusion_toy(3, DLM_LEN);
    let p_ref = diffusion_distribution(&target);
    assert!((p_ref.values().sum::<f64>() - 1.0).abs() < 1e-9);
    check_convergence("ETS-DLM", &target, None, &p_ref, Strategy::Ets, false);
}

/// Particle filtering weighs by the change of the reward of partial responses, so its answers
/// tend to π* as the particles grow: TV falls from N = 2 to 4 to 32 and is small at 32, where
/// Best-of-N overshoots.
fn check_particle_filter(name: &str, target: &ToyModel, pi: &HashMap<String, f64>) {
    let filter = |n| Strategy::ParticleFilter(ets(n, 1));
    let tvs: Vec<f64> = [2, 4, 32]
        .iter()
        .map(|&n| total_variation(&empirical(target, None, filter(n), RUNS), pi))
        .collect();
    eprintln!(
        "{name}: TV to π* at N = 2 {:.3}, 4 {:.3}, 32 {:.3}",
        tvs[0], tvs[1], tvs[2]
    );
    assert!(
        tvs[0] > tvs[2] + 0.03,
        "{name}: TV must fall with N: {tvs:?}"
    );
    assert!(tvs[1] > tvs[2], "{name}: TV must fall with N: {tvs:?}");
    assert!(tvs[2] < 0.06, "{name}: TV at N = 32 must be small: {tvs:?}");
}

#[test]
fn particle_filtering_approaches_the_optimal_policy_on_a_causal_model() {
    let target = causal_toy(1);
    let pi = tilt(&causal_distribution(&target), AR_LEN);
    check_particle_filter("particle filtering", &target, &pi);
}

/// On a diffusion model a particle advances by the denoising steps that reveal one more token
/// (at a random position: the toy's sampler remasks at random) and is judged on its revealed
/// prefix.
#[test]
fn particle_filtering_approaches_the_optimal_policy_on_a_diffusion_model() {
    let target = diffusion_toy(3, DLM_LEN);
    let pi = tilt(&diffusion_distribution(&target), DLM_LEN);
    check_particle_filter("particle filtering, diffusion", &target, &pi);
}

/// ETS-IS on a masked diffusion model weighs a draft's rollout by each model's log-probabilities
/// of its new tokens, read in one forward pass over the candidate it started from. With answers
/// of 2 tokens and one revealed per guidance step, a rollout reveals one token from the state
/// both models read, so the weights are exact and ETS-IS must reach π*. Without the weights
/// (or with their sign flipped) it misses: measured in docs/strategies.md.
#[test]
fn ets_is_approaches_the_optimal_policy_on_a_diffusion_model_with_a_different_draft() {
    let (target, draft) = (diffusion_toy(3, 2), diffusion_toy(5, 2));
    let (p_ref, q) = (
        diffusion_distribution(&target),
        diffusion_distribution(&draft),
    );
    assert!((p_ref.values().sum::<f64>() - 1.0).abs() < 1e-9);
    check_ets_is("ETS-IS-DLM", &target, &draft, &p_ref, &q);
}

/// With answers of 3 tokens a rollout from the first guidance step reveals two, and the weights
/// (which read both where the candidate stood) are not the ratio of the denoising paths'
/// probabilities: ETS-IS does not reach π*. Measured here; asserted only to move from p_ref
/// towards π* (docs/strategies.md gives the figures of the alternatives).
#[test]
fn ets_is_on_longer_diffusion_rollouts_moves_towards_the_optimal_policy() {
    let (target, draft) = (diffusion_toy(3, DLM_LEN), diffusion_toy(5, DLM_LEN));
    let p_ref = diffusion_distribution(&target);
    let pi = tilt(&p_ref, DLM_LEN);
    let draft_tilt = total_variation(&tilt(&diffusion_distribution(&draft), DLM_LEN), &pi);
    let gap = total_variation(&p_ref, &pi);
    let tv = total_variation(
        &empirical(&target, Some(&draft), Strategy::EtsIs(ets(16, 8)), RUNS),
        &pi,
    );
    eprintln!(
        "ETS-IS-DLM, 3-token answers: TV(p_ref, π*) = {gap:.3}, TV(draft's tilt, π*) = \
         {draft_tilt:.3}; ETS-IS (16,8) {tv:.3}"
    );
    assert!(
        tv < gap - 0.05 && tv < draft_tilt - 0.05,
        "ETS-IS TV {tv} vs TV(p_ref, π*) {gap} and the draft's tilt {draft_tilt}"
    );
}
