//! A model as the reward, read one of two ways ([`Reading`]):
//! - a reward model: a transformer with a scalar score head (Hugging Face's
//!   `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` layout, one label) reads
//!   the question and a response and scores them at the last token, as transformers does for an
//!   unpadded sequence;
//! - a judging language model: a causal LM reads the question as its prompt and the response
//!   as its continuation, and the score is the lowest log-probability it gives any of the
//!   response's tokens, the end of the response included (one token it would not have written
//!   is enough to doubt the whole).
//!
//! What it reads, in its own tokenizer: with a chat template, the conversation (the system
//! message if any, the question as the user's turn, the response as the assistant's) — a score
//! head reads it rendered without a generation prompt, a language model reads the prompt with
//! the generation prompt followed by the response's tokens; without one, the question's tokens
//! (BOS first) followed by the response text's tokens, the layout `ets train` uses. The
//! question's part is run once per question into a KV cache that every response's pass shares:
//! responses are scored in batches of [`SCORE_BATCH`], each selecting that cache's row. Within
//! one call, a response met before is read once, and the tokens all responses start with are
//! run once after the question.

use std::collections::HashMap;

use super::{Response, Reward, Scores};
use crate::backend::read_f32_async;
use crate::bundle::Model;
use crate::decode::device_sampling::DeviceLogits;
use crate::decode::lm::LanguageModel;
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::config::{Head, Objective};
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{LogitsFor, Transformer};
use crate::sampling::{RowPick, SamplingParams};
use crate::tokenize::{ChatMessage, TextTokenizer};

/// Most responses one forward pass of the reward model scores.
pub const SCORE_BATCH: usize = 32;

/// How a model turns a question and a response into a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// A score head's value at the last token.
    Score,
    /// A causal language model's lowest log-probability (nats, ≤ 0) of any of the response's
    /// tokens, its end token included.
    Likelihood,
}

/// The reward model's reading of one question: its tokens, and once run, their KV cache and
/// what responses continue from.
pub struct ModelReward<'m> {
    transformer: &'m Transformer,
    tokenizer: &'m TextTokenizer,
    reading: Reading,
    /// The tokens that end a response (a language model's end-of-text or end-of-turn ids).
    end_ids: Vec<u32>,
    question: String,
    system: Option<String>,
    /// The question's tokens, shared by every response.
    prefix: Vec<u32>,
    prefix_run: Option<PrefixRun>,
    /// Tokens its forward passes have read.
    tokens: u64,
}

/// The question's pass: its KV cache (one row), and what an empty response scores.
#[derive(Clone)]
struct PrefixRun {
    cache: KvCache,
    /// The score of the question alone (a score head's), or of an empty response (a language
    /// model's log-probability of ending at once).
    empty_score: f64,
    /// A language model's next-token logits after the question ([1, vocab]).
    next: Option<DeviceLogits>,
}

/// A response's tokens: after the shared prefix, or whole (a tokenization that does not
/// continue the prefix's).
#[derive(PartialEq, Eq, Hash)]
enum Input {
    Continuing(Vec<u32>),
    Whole(Vec<u32>),
}

impl<'m> ModelReward<'m> {
    /// The reward of `model` read as `reading` (a score head, or a causal language model)
    /// for `question`, asked after `system` when given.
    pub fn new(
        model: &'m Model,
        reading: Reading,
        question: &str,
        system: Option<&str>,
    ) -> Result<Self> {
        let transformer = &model.transformer;
        let config = transformer.config();
        match (reading, config.head) {
            (Reading::Score, Head::Score) => {}
            (Reading::Score, Head::LanguageModel) => {
                return Err(Error::Reward(
                    "a reward model has a score head (`*ForSequenceClassification` with one \
                     label); this model predicts tokens (use lm:DIR to judge by its likelihood)"
                        .into(),
                ));
            }
            (Reading::Likelihood, Head::Score) => {
                return Err(Error::Reward(
                    "a judging language model predicts tokens; this model has a score head \
                     (use model:DIR)"
                        .into(),
                ));
            }
            (Reading::Likelihood, Head::LanguageModel) => {
                if config.objective != Objective::Causal {
                    return Err(Error::Reward(
                        "a judging language model is causal; this one is a masked diffusion \
                         model"
                            .into(),
                    ));
                }
            }
        }
        let end_ids = model.stop_ids();
        if reading == Reading::Likelihood && end_ids.is_empty() {
            return Err(Error::Reward(
                "a judging language model needs an end-of-text token (eos_token_id)".into(),
            ));
        }
        let tokenizer = model.tokenizer()?;
        let mut reward = Self {
            transformer,
            tokenizer,
            reading,
            end_ids,
            question: question.to_string(),
            system: system.filter(|s| !s.trim().is_empty()).map(str::to_string),
            prefix: Vec::new(),
            prefix_run: None,
            tokens: 0,
        };
        reward.prefix = reward.encode(None)?;
        if let Some(&id) = reward
            .end_ids
            .iter()
            .find(|&&id| id as usize >= config.vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: config.vocab_size,
            });
        }
        if reward.prefix.is_empty() {
            return Err(Error::EmptyInput(
                "the reward model reads no question tokens",
            ));
        }
        Ok(reward)
    }

    /// The tokens the model reads for the question and `response` (None: the question alone):
    /// with a chat template, the rendered conversation; without one, BOS and the question.
    fn encode(&self, response: Option<&str>) -> Result<Vec<u32>> {
        let t = self.tokenizer;
        if !t.has_chat_template() {
            return t.encode(&self.question, true);
        }
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = &self.system {
            messages.push(ChatMessage::system(system.as_str()));
        }
        messages.push(ChatMessage::user(self.question.as_str()));
        if let Some(response) = response {
            messages.push(ChatMessage::assistant(response));
        }
        let text = t.apply_chat_template(&messages, response.is_none())?;
        t.encode(&text, false)
    }

    /// What the model reads for `response`, relative to the shared prefix.
    fn input(&self, response: &str) -> Result<Input> {
        if self.reading == Reading::Likelihood || !self.tokenizer.has_chat_template() {
            return Ok(Input::Continuing(self.tokenizer.encode(response, false)?));
        }
        let ids = self.encode(Some(response))?;
        Ok(match ids.strip_prefix(self.prefix.as_slice()) {
            Some(rest) => Input::Continuing(rest.to_vec()),
            None => Input::Whole(ids),
        })
    }

    /// Runs the question once: its cache, and what an empty response scores.
    async fn prefix_run(&mut self) -> Result<PrefixRun> {
        if let Some(run) = &self.prefix_run {
            return Ok(run.clone());
        }
        let mut cache = self.transformer.new_cache(1);
        self.tokens += self.prefix.len() as u64;
        let chunks = [self.prefix.as_slice()];
        let run = match self.reading {
            Reading::Score => {
                let scores = last_scores(self.transformer, &chunks, &mut cache).await?;
                PrefixRun {
                    cache,
                    empty_score: scores[0],
                    next: None,
                }
            }
            Reading::Likelihood => {
                let next =
                    LanguageModel::forward(self.transformer, &chunks, &mut cache, LogitsFor::Last)
                        .await?;
                let empty_score = self.end_log_probs(&next, &[0]).await?[0];
                PrefixRun {
                    cache,
                    empty_score,
                    next: Some(next),
                }
            }
        };
        self.prefix_run = Some(run.clone());
        Ok(run)
    }

    /// log Σ_end p(end) at each of `rows` of `logits` (the probability of ending there).
    async fn end_log_probs(&self, logits: &DeviceLogits, rows: &[usize]) -> Result<Vec<f64>> {
        let ends = self.end_ids.len();
        let index: Vec<usize> = rows
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r, ends))
            .collect();
        let picks: Vec<RowPick> = rows
            .iter()
            .flat_map(|_| self.end_ids.iter().map(|&id| RowPick::Forced(id)))
            .collect();
        let picked = logits
            .select(&index)?
            .take(&picks, &SamplingParams::default())
            .await?;
        Ok(picked
            .chunks(ends)
            .map(|p| log_sum(p.iter().map(|p| p.stats.log_prob)))
            .collect())
    }

    /// The score of every response.
    async fn score_all(&mut self, responses: &[Response<'_>]) -> Result<Vec<f64>> {
        let inputs = responses
            .iter()
            .map(|r| self.input(r.text))
            .collect::<Result<Vec<_>>>()?;
        let prefix = self.prefix_run().await?;
        // An empty continuation scores as the question alone (a language model: its end, or
        // nothing yet to doubt while the response is unfinished).
        let mut out: Vec<f64> = responses
            .iter()
            .map(|r| match (self.reading, r.complete) {
                (Reading::Likelihood, false) => 0.0,
                _ => prefix.empty_score,
            })
            .collect();
        let complete: Vec<bool> = responses.iter().map(|r| r.complete).collect();
        // A response met before in this call (ETS's complete candidate stands for its K
        // completions) is read once and its score copied.
        let mut first_of: HashMap<(&Input, bool), usize> = HashMap::new();
        let mut copy_of = vec![None; inputs.len()];
        let (mut continuing, mut whole) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            if let Some(&first) = first_of.get(&(input, complete[i])) {
                copy_of[i] = Some(first);
                continue;
            }
            first_of.insert((input, complete[i]), i);
            match input {
                Input::Continuing(rest) if rest.is_empty() => {}
                Input::Continuing(rest) => continuing.push((i, rest.as_slice())),
                Input::Whole(ids) => whole.push((i, ids.as_slice())),
            }
        }
        // Tokens every continuing response starts with (the block ETS committed to so far) are
        // read once, after the question, keeping at least one token of each to read on its own.
        let shared = shared_len(&continuing);
        if shared > 0 {
            let (run, floor) = self.extend(&prefix, &continuing[0].1[..shared]).await?;
            for item in &mut continuing {
                item.1 = &item.1[shared..];
            }
            self.score_batches(&continuing, Some(&run), &complete, &mut out)
                .await?;
            if let Some(floor) = floor {
                for &(i, _) in &continuing {
                    out[i] = out[i].min(floor);
                }
            }
        } else {
            self.score_batches(&continuing, Some(&prefix), &complete, &mut out)
                .await?;
        }
        self.score_batches(&whole, None, &complete, &mut out)
            .await?;
        for (i, first) in copy_of.into_iter().enumerate() {
            if let Some(first) = first {
                out[i] = out[first];
            }
        }
        Ok(out)
    }

    /// `run` continued by `tokens`: its cache one row on, and for a language model the lowest
    /// log-probability of those tokens (None for a score head, which reads only the last
    /// token).
    async fn extend(
        &mut self,
        run: &PrefixRun,
        tokens: &[u32],
    ) -> Result<(PrefixRun, Option<f64>)> {
        let mut cache = run.cache.select(&[0])?;
        self.tokens += tokens.len() as u64;
        match (self.reading, &run.next) {
            (Reading::Likelihood, Some(next)) => {
                let (lowest, next) = self
                    .lowest_log_probs(next, &[tokens], &[false], &mut cache)
                    .await?;
                let run = PrefixRun {
                    cache,
                    empty_score: 0.0,
                    next: Some(next),
                };
                Ok((run, Some(lowest[0])))
            }
            _ => {
                self.transformer
                    .forward(&[tokens], &mut cache, LogitsFor::Last)?;
                let run = PrefixRun {
                    cache,
                    empty_score: 0.0,
                    next: None,
                };
                Ok((run, None))
            }
        }
    }

    /// Scores `items` ((response index, tokens)) into `out`, [`SCORE_BATCH`] to a pass, each
    /// continuing `prefix` (its one row) or starting from an empty cache (a score head only);
    /// `complete[i]`: whether response i has ended.
    async fn score_batches(
        &mut self,
        items: &[(usize, &[u32])],
        prefix: Option<&PrefixRun>,
        complete: &[bool],
        out: &mut [f64],
    ) -> Result<()> {
        for batch in items.chunks(SCORE_BATCH) {
            let mut cache = match prefix {
                Some(prefix) => prefix.cache.select(&vec![0; batch.len()])?,
                None => self.transformer.new_cache(batch.len()),
            };
            let chunks: Vec<&[u32]> = batch.iter().map(|&(_, ids)| ids).collect();
            self.tokens += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            let scores = match (self.reading, prefix.and_then(|p| p.next.as_ref())) {
                (Reading::Score, _) => last_scores(self.transformer, &chunks, &mut cache).await?,
                (Reading::Likelihood, Some(next)) => {
                    let ended: Vec<bool> = batch.iter().map(|&(i, _)| complete[i]).collect();
                    self.lowest_log_probs(next, &chunks, &ended, &mut cache)
                        .await?
                        .0
                }
                (Reading::Likelihood, None) => {
                    return Err(Error::Internal(
                        "a judging language model scores responses after the question",
                    ));
                }
            };
            for (&(i, _), score) in batch.iter().zip(scores) {
                out[i] = score;
            }
        }
        Ok(())
    }

    /// One teacher-forced pass of a language model over `chunks` (each continuing the
    /// question, whose next-token logits are `next`): each chunk's lowest token log-probability,
    /// its end included where `ended`, and the next-token logits after each chunk
    /// ([chunks, vocab]).
    async fn lowest_log_probs(
        &self,
        next: &DeviceLogits,
        chunks: &[&[u32]],
        ended: &[bool],
        cache: &mut KvCache,
    ) -> Result<(Vec<f64>, DeviceLogits)> {
        let rows = LanguageModel::forward(self.transformer, chunks, cache, LogitsFor::All).await?;
        // Row 0: after the question; then the pass's rows, [chunks, width], left-padded: token
        // j ≥ 1 of chunk c is predicted on row 1 + c·width + pad + j − 1, its end on that
        // chunk's last row.
        let joined = DeviceLogits::concat(vec![next.clone(), rows])?;
        let width = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
        let lasts: Vec<usize> = (0..chunks.len())
            .map(|c| 1 + c * width + width - 1)
            .collect();
        let (mut index, mut picks, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        for (c, chunk) in chunks.iter().enumerate() {
            let pad = width - chunk.len();
            for (j, &token) in chunk.iter().enumerate() {
                index.push(if j == 0 {
                    0
                } else {
                    1 + c * width + pad + j - 1
                });
                picks.push(RowPick::Forced(token));
            }
            if ended[c] {
                ends.push(lasts[c]);
            }
        }
        let picked = joined
            .select(&index)?
            .take(&picks, &SamplingParams::default())
            .await?;
        let mut ends = if ends.is_empty() {
            Vec::new()
        } else {
            self.end_log_probs(&joined, &ends).await?
        }
        .into_iter();
        let mut picked = picked.into_iter();
        let lowest = chunks
            .iter()
            .zip(ended)
            .map(|(chunk, &ended)| {
                let end = if ended {
                    ends.next().unwrap_or(f64::NEG_INFINITY)
                } else {
                    0.0
                };
                picked
                    .by_ref()
                    .take(chunk.len())
                    .map(|p| p.stats.log_prob)
                    .fold(end, f64::min)
            })
            .collect();
        Ok((lowest, joined.select(&lasts)?))
    }
}

impl Reward for ModelReward<'_> {
    fn score<'a>(&'a mut self, responses: &'a [Response<'a>]) -> Scores<'a> {
        Box::pin(self.score_all(responses))
    }

    fn forward_tokens(&self) -> u64 {
        self.tokens
    }
}

/// One forward pass of a score-head model: each chunk's score at its last token.
async fn last_scores(
    transformer: &Transformer,
    chunks: &[&[u32]],
    cache: &mut KvCache,
) -> Result<Vec<f64>> {
    let scores = transformer.forward(chunks, cache, LogitsFor::Last)?;
    let [batch, ..] = scores.dims();
    let values = read_f32_async(scores.reshape([batch])).await?;
    Ok(values.into_iter().map(f64::from).collect())
}

/// How many leading tokens all `items` share, at most one less than the shortest (each keeps a
/// token of its own to read); 0 for fewer than two items.
fn shared_len(items: &[(usize, &[u32])]) -> usize {
    let [(_, first), rest @ ..] = items else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    let shortest = items.iter().map(|(_, t)| t.len()).min().unwrap_or(0);
    let common = (0..shortest)
        .take_while(|&j| rest.iter().all(|(_, t)| t[j] == first[j]))
        .count();
    common.min(shortest.saturating_sub(1))
}

/// log Σ exp(x) of log-probabilities (−∞ for none).
fn log_sum(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}
