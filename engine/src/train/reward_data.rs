//! Data for an outcome reward model: responses sampled from policies on the task's problems,
//! each labelled by the verifier (right or wrong final answer), stored as JSONL; and the
//! tokenized, class-balanced draws a reward model trains on.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SamplingParams;
use crate::bundle::Model;
use crate::error::{Error, Result};
use crate::reward::RewardKind;
use crate::rng::CounterRng;
use crate::solve::SolveOptions;
use crate::strategy::{SolveSpec, Strategy};
use crate::task::answer::{Extraction, is_correct};
use crate::task::arith::Problem;
use crate::tokenize::TextTokenizer;

/// One sampled response with its label: one line of a reward-data JSONL file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelledResponse {
    pub question: String,
    /// The response's text as the policy wrote it (stop token excluded).
    pub response: String,
    /// The problem's true answer.
    pub truth: String,
    /// Whether the response's answer (read strictly from `#### n`) is the true one.
    pub correct: bool,
    /// Which policy wrote it (its directory's name).
    pub policy: String,
}

/// How a policy's responses are drawn for reward data.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Responses per problem.
    pub samples: usize,
    pub params: SamplingParams,
    /// Most new tokens per response.
    pub max_tokens: usize,
    pub seed: u64,
}

/// `how.samples` responses of `policy` to each problem, labelled by the verifier; problem i's
/// sample s draws from stream i·samples + s of the seed. `progress` sees (problems done, of how
/// many) after each problem.
pub async fn sample_labelled(
    policy: &Model,
    policy_name: &str,
    problems: &[Problem],
    how: Sampling,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LabelledResponse>> {
    let Sampling {
        samples,
        params: sampling,
        max_tokens,
        seed,
    } = how;
    let spec = SolveSpec {
        strategy: Strategy::Sample,
        sampling,
        max_tokens,
        diffusion: Default::default(),
        reward: RewardKind::SelfConsistency,
        extraction: Extraction::Strict,
        seed,
    }
    .validate()?;
    let mut out = Vec::with_capacity(problems.len() * samples);
    for (i, problem) in problems.iter().enumerate() {
        let truth = problem.answer.to_string();
        for s in 0..samples {
            let options = SolveOptions {
                stream: (i * samples + s) as u64,
                ..SolveOptions::default()
            };
            let solution = policy
                .solve(&problem.question, &spec, options, &mut |_| {})
                .await?;
            out.push(LabelledResponse {
                question: problem.question.clone(),
                correct: is_correct(&solution.text, &truth, Extraction::Strict),
                response: solution.text,
                truth: truth.clone(),
                policy: policy_name.to_string(),
            });
        }
        progress(i + 1, problems.len());
    }
    Ok(out)
}

/// Reads a reward-data JSONL file (blank lines skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<LabelledResponse>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| Error::Json {
            file: format!("{} line {}", path.display(), n + 1),
            reason: e.to_string(),
        })?);
    }
    Ok(out)
}

/// A reward model's training set: token ids of question + response (the layout
/// [`crate::reward::model`] reads for a model without a chat template), by class.
#[derive(Clone, Debug, Default)]
pub struct RewardSet {
    pub positives: Vec<Vec<u32>>,
    pub negatives: Vec<Vec<u32>>,
}

impl RewardSet {
    /// Tokenizes `data` with `tokenizer`; sequences longer than `max_len` are left out.
    pub fn new(
        tokenizer: &TextTokenizer,
        data: &[LabelledResponse],
        max_len: usize,
    ) -> Result<Self> {
        let mut set = Self::default();
        for d in data {
            let mut ids = tokenizer.encode(&d.question, true)?;
            ids.extend(tokenizer.encode(&d.response, false)?);
            if ids.len() > max_len {
                continue;
            }
            match d.correct {
                true => set.positives.push(ids),
                false => set.negatives.push(ids),
            }
        }
        if set.positives.is_empty() || set.negatives.is_empty() {
            return Err(Error::Train(format!(
                "a reward model needs right and wrong responses; the data has {} right and {} wrong",
                set.positives.len(),
                set.negatives.len()
            )));
        }
        Ok(set)
    }

    /// A class-balanced draw of `n` sequences with their labels (1 right, 0 wrong): the first
    /// half right, the rest wrong, each drawn uniformly (with replacement) from stream `stream`.
    pub fn draw(&self, n: usize, rng: CounterRng, stream: u64) -> Vec<(&[u32], f32)> {
        (0..n)
            .map(|i| {
                let (pool, label) = match i < n / 2 {
                    true => (&self.positives, 1.0),
                    false => (&self.negatives, 0.0),
                };
                let u = rng.uniform(stream, i as u64);
                let at = ((u * pool.len() as f64) as usize).min(pool.len() - 1);
                (pool[at].as_slice(), label)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_balanced_and_reproducible() {
        let set = RewardSet {
            positives: vec![vec![1], vec![2]],
            negatives: vec![vec![3], vec![4], vec![5]],
        };
        let rng = CounterRng { seed: 7 };
        let draw = set.draw(8, rng, 3);
        assert_eq!(draw, set.draw(8, rng, 3));
        assert_ne!(draw, set.draw(8, rng, 4));
        assert_eq!(draw.iter().filter(|(_, y)| *y == 1.0).count(), 4);
        for (ids, y) in draw {
            assert_eq!(y == 1.0, ids[0] <= 2, "{ids:?} labelled {y}");
        }
    }
}
