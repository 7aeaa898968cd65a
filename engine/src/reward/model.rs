//! A reward model as the reward: a transformer with a scalar score head (Hugging Face's
//! `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` layout, one label) reads
//! the question and a response and scores them at the last token, as transformers does for an
//! unpadded sequence.
//!
//! What it reads, in its own tokenizer: with a chat template, the conversation (the system
//! message if any, the question as the user's turn, the response as the assistant's), rendered
//! without a generation prompt; without one, the question's tokens (BOS first) followed by the
//! response text's tokens, the layout `ets train` uses. The question's part is run once per
//! question into a KV cache that every response's pass shares: responses are scored in batches
//! of [`SCORE_BATCH`], each selecting that cache's row.

use super::{Response, Reward, Scores};
use crate::backend::read_f32_async;
use crate::bundle::Model;
use crate::error::{Error, Result};
use crate::model::config::Head;
use crate::model::kv_cache::KvCache;
use crate::model::transformer::{LogitsFor, Transformer};
use crate::tokenize::{ChatMessage, TextTokenizer};

/// Most responses one forward pass of the reward model scores.
pub const SCORE_BATCH: usize = 32;

/// The reward model's reading of one question: its tokens, and once run, their KV cache and
/// the score of the question alone (an empty response's).
pub struct ModelReward<'m> {
    transformer: &'m Transformer,
    tokenizer: &'m TextTokenizer,
    question: String,
    system: Option<String>,
    /// The question's tokens, shared by every response.
    prefix: Vec<u32>,
    prefix_run: Option<(KvCache, f64)>,
    /// Tokens its forward passes have read.
    tokens: u64,
}

/// A response's tokens: after the shared prefix, or whole (a tokenization that does not
/// continue the prefix's).
enum Input {
    Continuing(Vec<u32>),
    Whole(Vec<u32>),
}

impl<'m> ModelReward<'m> {
    /// The reward of `model` (a score head and a tokenizer) for `question`, asked after
    /// `system` when given.
    pub fn new(model: &'m Model, question: &str, system: Option<&str>) -> Result<Self> {
        let transformer = &model.transformer;
        if transformer.config().head != Head::Score {
            return Err(Error::Config(
                "a reward model has a score head (`*ForSequenceClassification` with one label); \
                 this model predicts tokens"
                    .into(),
            ));
        }
        let tokenizer = model.tokenizer()?;
        let mut reward = Self {
            transformer,
            tokenizer,
            question: question.to_string(),
            system: system.filter(|s| !s.trim().is_empty()).map(str::to_string),
            prefix: Vec::new(),
            prefix_run: None,
            tokens: 0,
        };
        reward.prefix = reward.encode(None)?;
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
        if !self.tokenizer.has_chat_template() {
            return Ok(Input::Continuing(self.tokenizer.encode(response, false)?));
        }
        let ids = self.encode(Some(response))?;
        Ok(match ids.strip_prefix(self.prefix.as_slice()) {
            Some(rest) => Input::Continuing(rest.to_vec()),
            None => Input::Whole(ids),
        })
    }

    /// Runs the question once: its cache and its own score.
    async fn prefix_run(&mut self) -> Result<(KvCache, f64)> {
        if let Some(run) = &self.prefix_run {
            return Ok(run.clone());
        }
        let mut cache = self.transformer.new_cache(1);
        self.tokens += self.prefix.len() as u64;
        let scores = last_scores(self.transformer, &[&self.prefix], &mut cache).await?;
        let run = (cache, scores[0]);
        self.prefix_run = Some(run.clone());
        Ok(run)
    }

    /// The score of every response.
    async fn score_all(&mut self, responses: &[Response<'_>]) -> Result<Vec<f64>> {
        let inputs = responses
            .iter()
            .map(|r| self.input(r.text))
            .collect::<Result<Vec<_>>>()?;
        let (prefix_cache, prefix_score) = self.prefix_run().await?;
        // An empty continuation scores as the question alone.
        let mut out = vec![prefix_score; inputs.len()];
        let (mut continuing, mut whole) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            match input {
                Input::Continuing(rest) if rest.is_empty() => {}
                Input::Continuing(rest) => continuing.push((i, rest.as_slice())),
                Input::Whole(ids) => whole.push((i, ids.as_slice())),
            }
        }
        self.score_batches(&continuing, Some(&prefix_cache), &mut out)
            .await?;
        self.score_batches(&whole, None, &mut out).await?;
        Ok(out)
    }

    /// Scores `items` ((response index, tokens)) into `out`, [`SCORE_BATCH`] to a pass, each
    /// continuing `prefix` (its one row) or starting from an empty cache.
    async fn score_batches(
        &mut self,
        items: &[(usize, &[u32])],
        prefix: Option<&KvCache>,
        out: &mut [f64],
    ) -> Result<()> {
        for batch in items.chunks(SCORE_BATCH) {
            let mut cache = match prefix {
                Some(prefix) => prefix.select(&vec![0; batch.len()])?,
                None => self.transformer.new_cache(batch.len()),
            };
            let chunks: Vec<&[u32]> = batch.iter().map(|&(_, ids)| ids).collect();
            self.tokens += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            let scores = last_scores(self.transformer, &chunks, &mut cache).await?;
            for (&(i, _), score) in batch.iter().zip(scores) {
                out[i] = score;
            }
        }
        Ok(())
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
