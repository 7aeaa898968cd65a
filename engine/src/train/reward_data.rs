//! Data for an outcome reward model: responses sampled from policies on the task's problems,
//! each labelled by the verifier (right or wrong final answer), stored as JSONL; and the
//! tokenized, class-balanced draws a reward model trains on.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::Model;
use crate::error::{Error, Result};
use crate::reward::RewardKind;
use crate::rng::CounterRng;
use crate::sampling::SamplingParams;
use crate::solve::SolveOptions;
use crate::strategy::{SolveSpec, Strategy};
use crate::task::answer::{Extraction, is_correct};
use crate::task::arith::Problem;
use crate::tokenize::TextTokenizer;
use crate::train::data::response_text;

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
    /// The reference solution as a model writes it (a newline, the worked solution): what
    /// per-token labels compare the response with.
    #[serde(default)]
    pub reference: String,
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
                reference: response_text(&problem.solution),
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

/// One response as a reward model trains on it: token ids of question + response (the layout
/// [`crate::reward::model`] reads for a model without a chat template) and the labels of some
/// positions (index into `ids`, 1 right, 0 wrong).
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub ids: Vec<u32>,
    pub labels: Vec<(usize, f32)>,
}

/// Which positions of a response carry a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Labels {
    /// The last token only: whether the answer is right (an outcome reward model).
    #[default]
    Outcome,
    /// Also every response token before it: whether the response so far is a prefix of the
    /// reference solution (automatic process supervision; the last token keeps the outcome).
    PerToken,
}

impl Scored {
    /// `response` to `question` tokenized, labelled as `labels` says.
    pub fn new(tokenizer: &TextTokenizer, d: &LabelledResponse, labels: Labels) -> Result<Self> {
        let mut ids = tokenizer.encode(&d.question, true)?;
        let prompt = ids.len();
        let response = tokenizer.encode(&d.response, false)?;
        ids.extend_from_slice(&response);
        let outcome = f32::from(u8::from(d.correct));
        let mut out = Vec::new();
        if labels == Labels::PerToken {
            for j in 0..response.len().saturating_sub(1) {
                let text = tokenizer.decode(&response[..=j])?;
                let on_track = !d.reference.is_empty() && d.reference.starts_with(&text);
                out.push((prompt + j, f32::from(u8::from(on_track))));
            }
        }
        out.push((ids.len() - 1, outcome));
        Ok(Self { ids, labels: out })
    }
}

/// A reward model's training set, grouped by question. Only questions with both right and
/// wrong responses are kept: each draw pairs a right and a wrong response to the same question,
/// so nothing about the question itself (how hard it looks) tells them apart, only the
/// responses do, which is what choosing among one question's responses needs.
#[derive(Clone, Debug, Default)]
pub struct RewardSet {
    /// Per question: its right responses and its wrong ones.
    pub questions: Vec<(Vec<Scored>, Vec<Scored>)>,
}

impl RewardSet {
    /// Tokenizes and labels `data` with `tokenizer`, grouped by question (in order of first
    /// appearance); sequences longer than `max_len` are left out.
    pub fn new(
        tokenizer: &TextTokenizer,
        data: &[LabelledResponse],
        labels: Labels,
        max_len: usize,
    ) -> Result<Self> {
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let mut questions: Vec<(Vec<Scored>, Vec<Scored>)> = Vec::new();
        for d in data {
            if labels == Labels::PerToken && d.reference.is_empty() {
                return Err(Error::Train(
                    "per-token labels need each response's reference solution (data from this version of `ets reward-data`)".into(),
                ));
            }
            let scored = Scored::new(tokenizer, d, labels)?;
            if scored.ids.len() > max_len {
                continue;
            }
            let at = *index.entry(&d.question).or_insert_with(|| {
                questions.push(Default::default());
                questions.len() - 1
            });
            match d.correct {
                true => questions[at].0.push(scored),
                false => questions[at].1.push(scored),
            }
        }
        questions.retain(|(right, wrong)| !right.is_empty() && !wrong.is_empty());
        if questions.is_empty() {
            return Err(Error::Train(
                "a reward model needs questions with both right and wrong responses; the data has none"
                    .into(),
            ));
        }
        Ok(Self { questions })
    }

    /// Right and wrong responses in the set.
    pub fn counts(&self) -> (usize, usize) {
        self.questions
            .iter()
            .fold((0, 0), |(r, w), (right, wrong)| {
                (r + right.len(), w + wrong.len())
            })
    }

    /// `n / 2` pairs (an odd `n` draws one pair more) of a right and a wrong response to one
    /// question: the question, then each response, drawn uniformly (with replacement) from
    /// stream `stream`.
    pub fn draw(&self, n: usize, rng: CounterRng, stream: u64) -> Vec<&Scored> {
        let pick = |len: usize, counter: u64| {
            ((rng.uniform(stream, counter) * len as f64) as usize).min(len - 1)
        };
        let mut out = Vec::with_capacity(n + 1);
        for pair in 0..n.div_ceil(2) as u64 {
            let (right, wrong) = &self.questions[pick(self.questions.len(), 3 * pair)];
            out.push(&right[pick(right.len(), 3 * pair + 1)]);
            out.push(&wrong[pick(wrong.len(), 3 * pair + 2)]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_pair_a_right_and_a_wrong_response_to_one_question() {
        // Question q's responses are [10q + i]: right ones i < 5, wrong ones i ≥ 5.
        let s = |id: u32| Scored {
            ids: vec![id],
            labels: vec![(0, f32::from(u8::from(id % 10 < 5)))],
        };
        let set = RewardSet {
            questions: vec![
                (vec![s(1), s(2)], vec![s(5), s(6), s(7)]),
                (vec![s(11)], vec![s(15)]),
            ],
        };
        assert_eq!(set.counts(), (3, 4));
        let rng = CounterRng { seed: 7 };
        let draw = set.draw(16, rng, 3);
        assert_eq!(draw, set.draw(16, rng, 3));
        assert_ne!(draw, set.draw(16, rng, 4));
        assert_eq!(draw.len(), 16);
        for pair in draw.chunks(2) {
            let (right, wrong) = (pair[0].ids[0], pair[1].ids[0]);
            assert_eq!(right / 10, wrong / 10, "one question per pair");
            assert!(right % 10 < 5 && wrong % 10 >= 5, "{right} {wrong}");
        }
        assert_eq!(set.draw(3, rng, 3).len(), 4);
    }

    #[test]
    fn per_token_labels_mark_where_a_response_leaves_the_reference() {
        let files = crate::model::files::ModelFiles::from_memory([(
            "tokenizer.json".to_string(),
            crate::task::bpe::tokenizer_json().into_bytes(),
        )]);
        let tokenizer = TextTokenizer::from_files(&files, &[crate::task::bpe::EOS_ID]).unwrap();
        let d = |response: &str, correct| LabelledResponse {
            question: "Mia has 2 shells. She finds 3 more. How many now?".into(),
            response: response.into(),
            truth: "5".into(),
            correct,
            policy: "test".into(),
            reference: "\n2 + 3 = 5\n#### 5".into(),
        };
        let right = Scored::new(
            &tokenizer,
            &d("\n2 + 3 = 5\n#### 5", true),
            Labels::PerToken,
        )
        .unwrap();
        assert!(right.labels.iter().all(|&(_, y)| y == 1.0), "{right:?}");
        let wrong = Scored::new(
            &tokenizer,
            &d("\n2 + 3 = 6\n#### 6", false),
            Labels::PerToken,
        )
        .unwrap();
        let labels: Vec<f32> = wrong.labels.iter().map(|&(_, y)| y).collect();
        // On track until the wrong digit, then off; the last label is the outcome.
        let first_off = labels.iter().position(|&y| y == 0.0).unwrap();
        assert!(
            first_off > 2 && labels[first_off..].iter().all(|&y| y == 0.0),
            "{labels:?}"
        );
        let last = wrong.labels.last().unwrap();
        assert_eq!(last.0, wrong.ids.len() - 1);
        let outcome = Scored::new(
            &tokenizer,
            &d("\n2 + 3 = 6\n#### 6", false),
            Labels::Outcome,
        )
        .unwrap();
        assert_eq!(outcome.labels, vec![(outcome.ids.len() - 1, 0.0)]);
    }
}
