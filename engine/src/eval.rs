//! Measuring a model on questions: a strategy's answer to each question ([`evaluate`]: accuracy,
//! forward tokens and time per question), or several sampled completions per question
//! (autoregressive or masked diffusion, as the model is; [`complete`] and [`score`]) with answers
//! read strictly from `#### n` and accuracies with 95% intervals for one sample (pass@1), the
//! majority vote and any-correct (pass@k).

use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::bundle::Model;
use crate::decode::diffusion::{DiffusionOptions, generate_diffusion};
use crate::decode::generate::{GenerateOptions, generate};
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::rng::CounterRng;
use crate::sampling::SamplingParams;
use crate::solve::{SolveOptions, Solves};
use crate::strategy::ValidSpec;
use crate::task::answer::{
    Extraction, extract_answer, is_correct, majority_vote, normalize_number,
};

/// One strategy's result over a set of questions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StrategyResult {
    /// The strategy's name.
    pub strategy: String,
    /// M (ets), samples (best-of-n, majority) or beams (beam); 1 for sample and greedy.
    pub budget: usize,
    /// Questions answered.
    pub n: usize,
    /// Share of questions answered correctly, with its 95% Wilson interval.
    pub accuracy: f64,
    pub ci95: (f64, f64),
    /// Forward tokens per question: target, draft (ETS-IS) and reward model.
    pub tokens_mean: f64,
    pub draft_tokens_mean: f64,
    pub reward_tokens_mean: f64,
    /// Wall time per question, in ms.
    pub wall_ms_mean: f64,
    pub spec: ValidSpec,
}

/// Where an evaluation stands after a question: questions done, of how many, answered correctly
/// so far, and seconds since it began.
#[derive(Clone, Copy, Debug)]
pub struct EvalProgress {
    pub done: usize,
    pub total: usize,
    pub correct: usize,
    pub elapsed_s: f64,
}

/// Answers every question with `spec` (`model.solve` with `base`'s draft and reward model;
/// question i draws from stream i, and the verifier reward reads its true answer) and scores
/// the answers against `truths`; `progress` is called after each question.
pub async fn evaluate<S: Solves>(
    model: &S,
    base: SolveOptions<'_>,
    questions: &[String],
    truths: &[String],
    spec: &ValidSpec,
    progress: &mut dyn FnMut(EvalProgress),
) -> Result<StrategyResult> {
    if questions.is_empty() {
        return Err(Error::Dataset("no questions to evaluate".into()));
    }
    if truths.len() != questions.len() {
        return Err(Error::Dataset(format!(
            "{} true answers for {} questions",
            truths.len(),
            questions.len()
        )));
    }
    let n = questions.len();
    let (mut scores, mut correct) = (Vec::with_capacity(n), 0);
    let (mut tokens, mut draft_tokens, mut reward_tokens, mut wall) = (0u64, 0u64, 0u64, 0.0);
    let start = Instant::now();
    for (q, (question, truth)) in questions.iter().zip(truths).enumerate() {
        let options = SolveOptions {
            truth: Some(truth),
            stream: q as u64,
            ..base
        };
        let solution = model
            .solve(question, spec, options, &mut |_| {})
            .await
            .map_err(|e| Error::AtQuestion {
                index: q + 1,
                source: Box::new(e),
            })?;
        let right = is_correct(&solution.text, truth, spec.extraction);
        correct += usize::from(right);
        scores.push(f64::from(u8::from(right)));
        tokens += solution.tokens;
        draft_tokens += solution.draft_tokens;
        reward_tokens += solution.reward_tokens;
        wall += solution.wall_ms;
        progress(EvalProgress {
            done: q + 1,
            total: n,
            correct,
            elapsed_s: start.elapsed().as_secs_f64(),
        });
    }
    let accuracy = Accuracy::of(&scores);
    Ok(StrategyResult {
        strategy: spec.strategy.name().into(),
        budget: spec.strategy.budget().unwrap_or(1),
        n,
        accuracy: accuracy.accuracy,
        ci95: accuracy.ci95,
        tokens_mean: tokens as f64 / n as f64,
        draft_tokens_mean: draft_tokens as f64 / n as f64,
        reward_tokens_mean: reward_tokens as f64 / n as f64,
        wall_ms_mean: wall / n as f64,
        spec: spec.clone(),
    })
}

/// How completions are drawn.
#[derive(Clone, Debug)]
pub enum Decoding {
    /// Token by token, for causal models.
    Autoregressive {
        sampling: SamplingParams,
        max_new_tokens: usize,
    },
    /// LLaDA's sampler, for masked diffusion models (its seed is replaced by the run's).
    Diffusion(DiffusionOptions),
}

impl Decoding {
    /// Checks that this decoding suits `model`'s objective.
    pub fn check(&self, model: &Model) -> Result<()> {
        let causal = model.transformer.config().objective == Objective::Causal;
        match (self, causal) {
            (Decoding::Autoregressive { .. }, true) | (Decoding::Diffusion(_), false) => Ok(()),
            (Decoding::Autoregressive { .. }, false) => Err(Error::Sampling(
                "this is a masked diffusion model: decode it with the diffusion sampler".into(),
            )),
            (Decoding::Diffusion(_), true) => Err(Error::Sampling(
                "this is a causal model: the diffusion sampler needs a masked diffusion model"
                    .into(),
            )),
        }
    }
}

/// The random stream of sample `sample` of question `question`: fixed by the pair, so results
/// do not depend on batching.
pub fn sample_stream(question: usize, sample: usize) -> u64 {
    CounterRng::child_stream(question as u64, sample as u64)
}

/// `samples` completions (decoded text, cut after the first stop token) of each question,
/// run `batch` sequences at a time; `progress(done, total)` is called after each batch.
pub async fn complete(
    model: &Model,
    questions: &[String],
    samples: usize,
    decoding: &Decoding,
    seed: u64,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<String>>> {
    decoding.check(model)?;
    if samples == 0 || batch == 0 {
        return Err(Error::Sampling(
            "samples and batch size must be positive".into(),
        ));
    }
    let tokenizer = model.tokenizer()?;
    let stop = model.stop_ids();
    let prompts = questions
        .iter()
        .map(|q| {
            if q.trim().is_empty() {
                return Err(Error::EmptyInput("a question is empty"));
            }
            tokenizer.encode(q, true)
        })
        .collect::<Result<Vec<_>>>()?;
    let jobs: Vec<(usize, usize)> = (0..questions.len())
        .flat_map(|q| (0..samples).map(move |s| (q, s)))
        .collect();
    let mut texts = vec![Vec::with_capacity(samples); questions.len()];
    for (done, group) in jobs.chunks(batch).enumerate() {
        let group_prompts: Vec<Vec<u32>> = group.iter().map(|&(q, _)| prompts[q].clone()).collect();
        let streams: Vec<u64> = group.iter().map(|&(q, s)| sample_stream(q, s)).collect();
        let outputs = match decoding {
            Decoding::Autoregressive {
                sampling,
                max_new_tokens,
            } => {
                generate(
                    &model.transformer,
                    &group_prompts,
                    &streams,
                    &GenerateOptions {
                        max_new_tokens: *max_new_tokens,
                        sampling: *sampling,
                        seed,
                        stop_ids: stop.clone(),
                    },
                )
                .await?
            }
            Decoding::Diffusion(options) => {
                generate_diffusion(
                    &model.transformer,
                    &group_prompts,
                    &streams,
                    &DiffusionOptions {
                        seed,
                        ..options.clone()
                    },
                    &stop,
                )
                .await?
            }
        };
        for (&(q, _), mut ids) in group.iter().zip(outputs) {
            if let Some(end) = ids.iter().position(|t| stop.contains(t)) {
                ids.truncate(end);
            }
            texts[q].push(tokenizer.decode(&ids)?);
        }
        progress(((done + 1) * batch).min(jobs.len()), jobs.len());
    }
    Ok(texts)
}

/// An accuracy with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Accuracy {
    pub accuracy: f64,
    pub ci95: (f64, f64),
}

impl Accuracy {
    /// The mean of per-question scores in [0, 1]: Wilson's interval when every score is 0 or 1,
    /// else the normal approximation over questions.
    pub fn of(scores: &[f64]) -> Self {
        let n = scores.len() as f64;
        if scores.is_empty() {
            return Self {
                accuracy: 0.0,
                ci95: (0.0, 1.0),
            };
        }
        let mean = scores.iter().sum::<f64>() / n;
        let z = 1.96;
        let ci95 = if scores.iter().all(|&s| s == 0.0 || s == 1.0) {
            let centre = (mean + z * z / (2.0 * n)) / (1.0 + z * z / n);
            let half =
                z / (1.0 + z * z / n) * (mean * (1.0 - mean) / n + z * z / (4.0 * n * n)).sqrt();
            (centre - half, centre + half)
        } else {
            let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            let half = z * (var / n).sqrt();
            (mean - half, mean + half)
        };
        Self {
            accuracy: mean,
            ci95: (ci95.0.max(0.0), ci95.1.min(1.0)),
        }
    }
}

/// The area under the ROC curve of `scores` for telling `labels` true from false: the chance
/// that a random true example scores above a random false one (ties count half), with its 95%
/// interval (Hanley and McNeil's standard error); None without examples of both kinds.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<(f64, (f64, f64))> {
    let mut ranked: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = ranked.iter().filter(|(_, l)| *l).count() as f64;
    let negatives = ranked.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Mann–Whitney: the positives' rank sum (ties get their mean rank).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < ranked.len() {
        let mut j = i;
        while j < ranked.len() && ranked[j].0 == ranked[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * ranked[i..j].iter().filter(|(_, l)| *l).count() as f64;
        i = j;
    }
    let a = (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives);
    let (q1, q2) = (a / (2.0 - a), 2.0 * a * a / (1.0 + a));
    let var = (a * (1.0 - a) + (positives - 1.0) * (q1 - a * a) + (negatives - 1.0) * (q2 - a * a))
        / (positives * negatives);
    let half = 1.96 * var.max(0.0).sqrt();
    Some((a, ((a - half).max(0.0), (a + half).min(1.0))))
}

/// How often a true example outscores a false one of the same group (ties count half), over
/// every such pair in `groups` (indices into `scores` and `labels`), and the number of pairs:
/// what choosing among one question's responses needs, where [`auc`] pools all questions.
pub fn ordered_within_groups(scores: &[f64], labels: &[bool], groups: &[&[usize]]) -> (f64, usize) {
    let (mut ordered, mut pairs) = (0.0, 0usize);
    for group in groups {
        for &a in group.iter().filter(|&&i| labels[i]) {
            for &b in group.iter().filter(|&&i| !labels[i]) {
                pairs += 1;
                ordered += match scores[a].total_cmp(&scores[b]) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                };
            }
        }
    }
    (ordered / pairs.max(1) as f64, pairs)
}

/// Accuracies of a set of completions against the true answers.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    /// Questions.
    pub n: usize,
    /// Completions per question.
    pub samples: usize,
    /// One completion's accuracy, averaged over all of them (pass@1).
    pub pass1: Accuracy,
    /// The majority answer's accuracy (maj@samples).
    pub majority: Accuracy,
    /// Share of questions with at least one correct completion (pass@samples).
    pub any: Accuracy,
}

/// Scores `completions[q]` against `truths[q]` (answers read strictly from `#### n`).
pub fn score(completions: &[Vec<String>], truths: &[String]) -> Scores {
    let mut pass1 = Vec::with_capacity(truths.len());
    let mut majority = Vec::with_capacity(truths.len());
    let mut any = Vec::with_capacity(truths.len());
    for (texts, truth) in completions.iter().zip(truths) {
        let truth = normalize_number(truth);
        let answers: Vec<Option<String>> = texts
            .iter()
            .map(|t| extract_answer(t, Extraction::Strict))
            .collect();
        let right = |a: &Option<String>| a.is_some() && *a == truth;
        let hits = answers.iter().filter(|a| right(a)).count();
        pass1.push(hits as f64 / texts.len().max(1) as f64);
        majority.push(f64::from(u8::from(right(&majority_vote(&answers)))));
        any.push(f64::from(u8::from(hits > 0)));
    }
    Scores {
        n: truths.len(),
        samples: completions.first().map_or(0, Vec::len),
        pass1: Accuracy::of(&pass1),
        majority: Accuracy::of(&majority),
        any: Accuracy::of(&any),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_pass1_majority_and_any() {
        let c = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let completions = vec![
            c(&["#### 5", "#### 5", "#### 4"]),
            c(&["#### 1", "#### 2", "#### 2"]),
            c(&["no answer", "#### 9", "#### 8"]),
        ];
        let truths = c(&["5", "1", "7"]);
        let s = score(&completions, &truths);
        assert_eq!((s.n, s.samples), (3, 3));
        assert!((s.pass1.accuracy - (2.0 / 3.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((s.majority.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.any.accuracy - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auc_counts_ordered_pairs_and_ties() {
        // Positives 0.9 and 0.4, negatives 0.5 and 0.1: 3 of 4 pairs ordered.
        let (a, (lo, hi)) = auc(&[0.9, 0.5, 0.4, 0.1], &[true, false, true, false]).unwrap();
        assert!(
            (a - 0.75).abs() < 1e-12 && lo < a && a < hi,
            "{a} [{lo}, {hi}]"
        );
        assert_eq!(auc(&[1.0, 2.0], &[false, true]).unwrap().0, 1.0);
        assert_eq!(auc(&[1.0, 1.0], &[false, true]).unwrap().0, 0.5);
        assert!(auc(&[1.0, 2.0], &[true, true]).is_none());
    }

    #[test]
    fn pairs_are_ordered_within_their_group_only() {
        // Group 0: true 0.9 above false 0.1; group 1: true 0.2 below false 0.8, tie with 0.2.
        let scores = [0.9, 0.1, 0.2, 0.8, 0.2];
        let labels = [true, false, true, false, false];
        let groups: [&[usize]; 2] = [&[0, 1], &[2, 3, 4]];
        assert_eq!(
            ordered_within_groups(&scores, &labels, &groups),
            (1.5 / 3.0, 3)
        );
        assert_eq!(ordered_within_groups(&scores, &labels, &[]), (0.0, 0));
    }

    #[test]
    fn wilson_interval_matches_the_formula() {
        // 40 of 100: Wilson's 95% interval is about [0.309, 0.498].
        let scores: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i < 40))).collect();
        let a = Accuracy::of(&scores);
        assert!(
            (a.ci95.0 - 0.3094).abs() < 1e-3 && (a.ci95.1 - 0.4980).abs() < 1e-3,
            "{a:?}"
        );
        assert_eq!(Accuracy::of(&[1.0; 5]).ci95.1, 1.0);
    }
}
