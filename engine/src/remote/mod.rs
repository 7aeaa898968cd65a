//! A language model served elsewhere, over the OpenAI-compatible completions API of vLLM,
//! SGLang, llama.cpp's server or llama-cpp-python's: a [`LanguageModel`] that
//! [decodes whole blocks](LanguageModel::decodes_blocks), so the strategies that draw blocks
//! and score them (sampling, Best-of-N, majority, particle filtering, ETS) run on it unchanged.
//!
//! The sequences stay token ids here, tokenized with the model's own tokenizer (its GGUF file
//! or tokenizer.json, read without the weights). Each running sequence's block is one request
//! ([`completion_request`]): its whole text so far as the prompt (`prompt_ids`: its ids, for
//! servers that take them), `max_tokens` = the block, and sampling fields that turn every
//! server's own defaults off (top-k 40, min-p 0.05, a repeat penalty of 1.1 in some) so that
//! it draws from softmax(logits / T) as the local engine does. Identical sequences continued
//! by as many tokens (ETS's candidates of one prefix, a candidate's rollouts) are one request
//! with `n` on servers that take it ([`Endpoint::use_n`]). The requests of a step go out
//! together, a bounded number at a time ([`client`]); a server's prefix cache (vLLM's
//! automatic prefix caching, SGLang's radix cache, llama.cpp's `cache_prompt`) serves the
//! shared prompt.
//!
//! The block's token ids come from the answer where the server sends them (vLLM and SGLang
//! with `return_token_ids`, llama.cpp's server in its log-probabilities); otherwise its text
//! is tokenized again here, which may split a block differently than the server sampled it
//! (the text is the same). A block the server ended at an end-of-generation token it leaves
//! out of the answer (`finish_reason: "stop"`) gets the model's stop token appended.
//!
//! ETS-IS scores given tokens (the draft's rollouts under the target,
//! [`LanguageModel::score_rows`]): the server echoes the prompt with each token's
//! log-probability ([`scoring_request`], [`parse_echo`]), which vLLM, SGLang and
//! llama-cpp-python do and llama.cpp's server refuses.

pub mod client;

use std::cell::Cell;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use crate::decode::lm::{Block, BlockRequest, LanguageModel};
use crate::decode::logits::{Logits, check_selection};
pub use crate::error::RemoteError;
use crate::error::{Error, Result};
use crate::model::config::Objective;
use crate::model::transformer::LogitsFor;
use crate::sampling::{Picked, RowPick, SamplingParams};
use crate::tokenize::TextTokenizer;
pub use client::{Client, HttpOptions};

/// Where a remote model runs and how to talk to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The server's OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1` (`/v1` is
    /// added to an address without a path).
    pub url: String,
    /// Sent as `Authorization: Bearer …` when given.
    pub api_key: Option<String>,
    /// The `model` field of each request (None: the first model the server lists).
    pub model: Option<String>,
    /// Send prompts as token ids (true) or text (false); None: ids where the server is one
    /// that takes them (vLLM, SGLang, llama.cpp's server, told by `GET /v1/models`), else text.
    pub prompt_ids: Option<bool>,
    /// The longest sequence in tokens the server holds (None: the tokenizer's model's).
    pub context: Option<usize>,
    /// Ask for the continuations of identical sequences (ETS's M candidates of one prefix, a
    /// candidate's K rollouts) in one request with `n` (true) or one request each (false);
    /// None: `n` where the server is one that takes it (vLLM, SGLang).
    pub use_n: Option<bool>,
    pub http: HttpOptions,
}

impl Endpoint {
    /// An endpoint at `url` with the defaults: the server's first model, prompts as the server
    /// takes them.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            api_key: None,
            model: None,
            prompt_ids: None,
            context: None,
            use_n: None,
            http: HttpOptions::default(),
        }
    }

    /// The base URL: `/v1` appended when the address has no path.
    pub fn base_url(&self) -> String {
        let url = self.url.trim().trim_end_matches('/');
        match url.split_once("://") {
            Some((_, rest)) if !rest.contains('/') => format!("{url}/v1"),
            _ => url.to_string(),
        }
    }
}

/// A model served over the completions API.
pub struct RemoteModel {
    client: Client,
    /// The `model` field of each request.
    name: String,
    tokenizer: TextTokenizer,
    /// Longest sequence in tokens.
    context: usize,
    prompt_ids: bool,
    /// Identical sequences continue in one request with `n` (see [`Endpoint::use_n`]).
    use_n: bool,
    /// The server, as far as `GET /v1/models` tells.
    server: Server,
    /// The token the tokenizer puts ahead of a text (its BOS), if it puts one.
    bos_added: Option<u32>,
    /// Ask for each token's log-probability (only what reads it needs it: it costs the
    /// server time, a sort of the vocabulary per token in llama-cpp-python).
    log_probs: Cell<bool>,
    /// Completion requests answered.
    requests: Cell<u64>,
}

impl std::fmt::Debug for RemoteModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteModel")
            .field("client", &self.client)
            .field("name", &self.name)
            .field("context", &self.context)
            .field("prompt_ids", &self.prompt_ids)
            .field("use_n", &self.use_n)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl RemoteModel {
    /// Connects to `endpoint` (asking for its model list when no model is named) for a model
    /// with `tokenizer` and a context of `model_context` tokens (the endpoint's own setting
    /// wins).
    pub async fn connect(
        endpoint: &Endpoint,
        tokenizer: TextTokenizer,
        model_context: usize,
        stop: Option<&AtomicBool>,
    ) -> Result<Self> {
        let client = Client::new(
            &endpoint.base_url(),
            endpoint.api_key.clone(),
            endpoint.http.clone(),
        )?;
        let listed = client.get("models", listed_models, stop).await?;
        let (name, server) = match &endpoint.model {
            Some(name) => {
                // The named model's owner, else the server's first model's.
                let entry = listed.iter().find(|(id, _)| id == name).or(listed.first());
                (
                    name.clone(),
                    entry.map_or(Server::Other, |(_, server)| *server),
                )
            }
            None => listed.first().cloned().ok_or_else(|| {
                Error::Remote(RemoteError::Unsupported {
                    url: client.base().to_string(),
                    message: "the server lists no model (GET /v1/models)".into(),
                })
            })?,
        };
        let context = endpoint.context.unwrap_or(model_context);
        let bare = tokenizer.encode("", false)?;
        let bos_added = tokenizer.encode("", true)?.get(bare.len()).copied();
        if context == 0 {
            return Err(Error::Sampling(
                "a remote model needs a context above 0 tokens".into(),
            ));
        }
        Ok(Self {
            client,
            name,
            tokenizer,
            context,
            prompt_ids: endpoint.prompt_ids.unwrap_or(server.takes_token_ids()),
            use_n: endpoint.use_n.unwrap_or(server.takes_n()),
            server,
            bos_added,
            log_probs: Cell::new(false),
            requests: Cell::new(0),
        })
    }

    /// The model's name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        self.client.base()
    }

    /// The server, as far as its model list tells.
    pub fn server(&self) -> Server {
        self.server
    }

    /// Whether prompts go as token ids (else as text).
    pub fn prompt_ids(&self) -> bool {
        self.prompt_ids
    }

    /// Whether identical sequences continue in one request with `n`.
    pub fn uses_n(&self) -> bool {
        self.use_n
    }

    /// The tokenizer sequences are kept in.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Asks for (or stops asking for) each generated token's log-probability.
    pub fn want_log_probs(&self, on: bool) {
        self.log_probs.set(on);
    }

    /// Completion requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The body of one completion request: `prompt` continued `n` times by up to `max_new`
    /// tokens.
    fn request(
        &self,
        prompt: &[u32],
        n: usize,
        max_new: usize,
        seed: u32,
        sampling: &SamplingParams,
    ) -> Result<Value> {
        let prompt = if self.prompt_ids {
            json!(prompt)
        } else {
            json!(self.prompt_text(prompt)?)
        };
        let ask = Ask {
            prompt,
            n,
            max_new,
            seed,
        };
        Ok(completion_request(
            &self.name,
            self.server,
            ask,
            sampling,
            self.log_probs.get(),
        ))
    }

    /// The text of `ids` with special tokens spelt out (the chat template's markers), without
    /// the BOS token the tokenizer puts first: a server that reads text adds its model's own.
    fn prompt_text(&self, ids: &[u32]) -> Result<String> {
        let ids = match (self.bos_added, ids.split_first()) {
            (Some(bos), Some((&first, rest))) if first == bos => rest,
            _ => ids,
        };
        self.tokenizer.decode_with_special(ids)
    }

    /// A completion as the block of tokens the sequence takes, and whether its last token is
    /// an end token the server left out (appended here, with no log-probability).
    fn block(
        &self,
        completion: Completion,
        stop_ids: &[u32],
        sampling: &SamplingParams,
    ) -> Result<(Block, bool)> {
        let ids = match completion.token_ids {
            Some(ids) => ids,
            None => self.tokenizer.encode(&completion.text, false)?,
        };
        self.check_ids(&ids)?;
        let picked: Vec<Picked> = match completion.log_probs {
            Some(log_probs) => spread(&ids, &log_probs)
                .into_iter()
                .zip(&ids)
                .map(|(log_prob, &id)| Picked::served(id, log_prob, sampling))
                .collect(),
            None => ids.iter().map(|&id| Picked::unscored(id)).collect(),
        };
        let mut picked = picked;
        let ended_at_stop = ids.last().is_some_and(|t| stop_ids.contains(t));
        let mut appended = false;
        if completion.finished
            && !ended_at_stop
            && let Some(&stop) = stop_ids.first()
        {
            picked.push(Picked::unscored(stop));
            appended = true;
        }
        Ok((
            Block {
                picked,
                finished: completion.finished,
            },
            appended,
        ))
    }

    /// Refuses token ids outside the vocabulary.
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.tokenizer.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(&id) => Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            }),
            None => Ok(()),
        }
    }

    /// The log-probabilities of each chunk's tokens after its row (see
    /// [`LanguageModel::score_rows`]): one request per row that sends the row and its chunk as
    /// the prompt and has the server echo the prompt's log-probabilities ([`scoring_request`]).
    /// With token-id prompts they are the chunk's own; with text prompts the server tokenizes
    /// the text again, and where its tokens of the chunk differ from the chunk's, their sum is
    /// put on the chunk's first token.
    async fn score(
        &self,
        rows: &[&[u32]],
        chunks: &[&[u32]],
        sampling: &SamplingParams,
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<Vec<Picked>>> {
        if !self.server.scores_given_tokens() {
            return Err(self.unsupported(format!(
                "{} does not score given tokens (it refuses echo with log-probabilities): \
                 serve the model with vLLM, SGLang or llama-cpp-python for ets-is",
                self.server.name()
            )));
        }
        let mut prompts = Vec::with_capacity(rows.len());
        for (row, chunk) in rows.iter().zip(chunks) {
            self.check_ids(chunk)?;
            let full: Vec<u32> = row.iter().chain(chunk.iter()).copied().collect();
            if full.len() > self.context {
                return Err(Error::ContextTooLong {
                    needed: full.len(),
                    max: self.context,
                });
            }
            prompts.push(full);
        }
        let bodies = prompts
            .iter()
            .map(|full| {
                let prompt = if self.prompt_ids {
                    json!(full)
                } else {
                    json!(self.prompt_text(full)?)
                };
                Ok(scoring_request(&self.name, self.server, prompt))
            })
            .collect::<Result<Vec<_>>>()?;
        let answers = self
            .client
            .post_all("completions", &bodies, parse_echo, stop)
            .await?;
        self.requests
            .set(self.requests.get() + answers.len() as u64);
        let mut out = Vec::with_capacity(chunks.len());
        for ((full, chunk), echo) in prompts.iter().zip(chunks).zip(answers) {
            let log_probs = self.chunk_log_probs(full, chunk.len(), &echo)?;
            out.push(
                spread(chunk, &log_probs)
                    .into_iter()
                    .zip(chunk.iter())
                    .map(|(log_prob, &id)| Picked::served(id, log_prob, sampling))
                    .collect(),
            );
        }
        Ok(out)
    }

    /// The log-probabilities of the last `chunk` tokens of the prompt `full` in a scoring
    /// answer: one each where the server's prompt tokens are `full`'s (token-id prompts, or a
    /// text the server splits as it was split here), else the server's tokens past the longest
    /// stretch it shares with `full`'s start.
    fn chunk_log_probs(&self, full: &[u32], chunk: usize, echo: &Echo) -> Result<Vec<f64>> {
        let echoed = &echo.prompt_log_probs;
        let (sent, start) = if self.prompt_ids {
            (full.len(), full.len() - chunk)
        } else {
            // The server puts its own BOS ahead of a text prompt and leaves it out of the echo.
            let bare = match (self.bos_added, full.split_first()) {
                (Some(bos), Some((&first, rest))) if first == bos => rest,
                _ => full,
            };
            let split = self.tokenizer.encode(&self.prompt_text(full)?, false)?;
            if split == bare {
                (bare.len(), bare.len() - chunk)
            } else {
                let shared = split.iter().zip(bare).take_while(|(a, b)| a == b).count();
                (split.len(), shared.min(bare.len() - chunk))
            }
        };
        if echoed.len() != sent {
            return Err(self.unsupported(format!(
                "the server echoed {} prompt tokens with log-probabilities for the {sent} sent",
                echoed.len()
            )));
        }
        echoed[start..]
            .iter()
            .map(|lp| {
                lp.ok_or_else(|| {
                    self.unsupported(
                        "the server sent no log-probability for a scored token (echo)".into(),
                    )
                })
            })
            .collect()
    }

    /// The error for what this server cannot do.
    fn unsupported(&self, message: String) -> Error {
        Error::Remote(RemoteError::Unsupported {
            url: self.client.base().to_string(),
            message,
        })
    }
}

/// One log-probability per token of `ids`: `log_probs` as they are when there is one each,
/// else (the server split the text otherwise) their sum on the first token and 0 on the rest.
fn spread(ids: &[u32], log_probs: &[f64]) -> Vec<f64> {
    if log_probs.len() == ids.len() {
        return log_probs.to_vec();
    }
    let mut out = vec![0.0; ids.len()];
    if let Some(first) = out.first_mut() {
        *first = log_probs.iter().sum();
    }
    out
}

/// Which server answers, as `GET /v1/models` tells (each entry's `owned_by`): what differs
/// between them is whether they take token-id prompts and how top-k is switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Vllm,
    Sglang,
    /// llama.cpp's own `llama-server`.
    LlamaCpp,
    /// Any other (llama-cpp-python says "me").
    Other,
}

impl Server {
    /// The server an `owned_by` names.
    pub fn from_owner(owned_by: &str) -> Self {
        match owned_by.to_ascii_lowercase().as_str() {
            "vllm" => Self::Vllm,
            "sglang" => Self::Sglang,
            "llamacpp" => Self::LlamaCpp,
            _ => Self::Other,
        }
    }

    /// Its name for people: `vLLM`, `SGLang`, `llama.cpp`, or `an OpenAI-compatible server`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vLLM",
            Self::Sglang => "SGLang",
            Self::LlamaCpp => "llama.cpp",
            Self::Other => "an OpenAI-compatible server",
        }
    }

    /// Whether it samples `n` continuations of one prompt in one request (llama.cpp's server
    /// refuses `n > 1`; llama-cpp-python is not asked).
    pub fn takes_n(self) -> bool {
        matches!(self, Self::Vllm | Self::Sglang)
    }

    /// Whether its completions endpoint echoes a prompt with each token's log-probability
    /// (`echo` with `logprobs`; llama.cpp's server refuses echo).
    pub fn scores_given_tokens(self) -> bool {
        !matches!(self, Self::LlamaCpp)
    }

    /// Whether its completions endpoint takes a prompt of token ids.
    pub fn takes_token_ids(self) -> bool {
        !matches!(self, Self::Other)
    }

    /// The `top_k` that keeps every token: −1 for vLLM and SGLang, 0 for llama.cpp and
    /// llama-cpp-python (which refuses −1).
    fn top_k_off(self) -> i64 {
        match self {
            Self::Vllm | Self::Sglang => -1,
            Self::LlamaCpp | Self::Other => 0,
        }
    }
}

/// What one completion request asks for: `n` continuations of `prompt` (token ids or text) by
/// up to `max_new` tokens each, drawn with `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ask {
    pub prompt: Value,
    pub n: usize,
    pub max_new: usize,
    pub seed: u32,
}

/// The body of a completions request that samples from softmax(logits / T) with the spec's
/// top-k and top-p only: every server's other transforms are turned off explicitly
/// (llama.cpp's top-k 40, min-p 0.05 and, in llama-cpp-python, a repeat penalty of 1.1 are on
/// by default). Fields a server does not know are ignored by all of vLLM, SGLang, llama.cpp's
/// server and llama-cpp-python.
pub fn completion_request(
    model: &str,
    server: Server,
    ask: Ask,
    sampling: &SamplingParams,
    log_probs: bool,
) -> Value {
    let Ask {
        prompt,
        n,
        max_new,
        seed,
    } = ask;
    let mut body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_new,
        "n": n,
        "stream": false,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p.unwrap_or(1.0),
        "top_k": sampling.top_k.filter(|&k| k > 0).map_or(server.top_k_off(), |k| k as i64),
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": seed,
        "return_token_ids": true,
    });
    if log_probs {
        body["logprobs"] = json!(1);
    }
    body
}

/// The body of a completions request that scores `prompt`: the server echoes it with each
/// token's log-probability under the model (`echo` with `logprobs`, the shape lm-evaluation-
/// harness sends to vLLM and SGLang) and draws one token more (`max_tokens` 0 means no limit
/// in llama-cpp-python), which is not read.
pub fn scoring_request(model: &str, server: Server, prompt: Value) -> Value {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "n": 1,
        "stream": false,
        "echo": true,
        "logprobs": 1,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": server.top_k_off(),
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "repetition_penalty": 1.0,
    })
}

/// What a scoring answer ([`scoring_request`]) holds: the echoed prompt tokens'
/// log-probabilities (None where the server sends none: the first token).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Echo {
    pub prompt_log_probs: Vec<Option<f64>>,
}

/// Reads a scoring answer: `choices[0].logprobs.token_logprobs` holds the prompt's tokens and
/// then the generated ones (`usage.completion_tokens` of them; without usage, one unless the
/// server stopped at an end token it leaves out).
pub fn parse_echo(body: &str) -> std::result::Result<Echo, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let choice = value
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("no choices[0] in the answer")?;
    let values = choice
        .get("logprobs")
        .and_then(|l| l.get("token_logprobs"))
        .and_then(Value::as_array)
        .ok_or("no logprobs.token_logprobs in the answer: the server did not echo the prompt")?;
    let log_probs = values
        .iter()
        .map(|v| match v {
            Value::Null => Ok(None),
            v => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("a log-probability {v} is not a number")),
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let generated = match value
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
    {
        Some(n) => n as usize,
        None => match choice.get("finish_reason").and_then(Value::as_str) {
            Some("stop" | "eos") => 0,
            _ => 1,
        },
    };
    let prompt = log_probs
        .len()
        .checked_sub(generated)
        .ok_or("fewer log-probabilities than generated tokens")?;
    let mut prompt_log_probs = log_probs;
    prompt_log_probs.truncate(prompt);
    Ok(Echo { prompt_log_probs })
}

/// What a completion answer holds that a block needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// The generated text (without an end token the server stopped at).
    pub text: String,
    /// The generated token ids, where the server sends them.
    pub token_ids: Option<Vec<u32>>,
    /// Each generated token's log-probability under the model (nats), where asked for.
    pub log_probs: Option<Vec<f64>>,
    /// The server stopped at an end-of-generation token (`finish_reason: "stop"`), not at the
    /// token limit.
    pub finished: bool,
}

/// Reads a completions answer: `choices[0]`'s text, finish reason, and token ids and
/// log-probabilities in whichever of the servers' shapes they come.
pub fn parse_completion(body: &str) -> std::result::Result<Completion, String> {
    let mut all = parse_completions(body)?;
    Ok(all.swap_remove(0))
}

/// Reads every completion of an answer (several for a request with `n`), in the order of
/// their `index`, as [`parse_completion`] reads one; at least one.
pub fn parse_completions(body: &str) -> std::result::Result<Vec<Completion>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let choices = value
        .get("choices")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("no choices[0] in the answer")?;
    let mut ordered: Vec<(u64, &Value)> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.get("index").and_then(Value::as_u64).unwrap_or(i as u64),
                c,
            )
        })
        .collect();
    ordered.sort_by_key(|(index, _)| *index);
    ordered.into_iter().map(|(_, c)| parse_choice(c)).collect()
}

/// One choice of a completions answer.
fn parse_choice(choice: &Value) -> std::result::Result<Completion, String> {
    let text = choice
        .get("text")
        .and_then(Value::as_str)
        .ok_or("a choice has no text")?
        .to_string();
    let finished = match choice.get("finish_reason") {
        Some(Value::String(reason)) => reason == "stop" || reason == "eos",
        _ => false,
    };
    let logprobs = choice.get("logprobs").filter(|l| !l.is_null());
    // llama.cpp's server: logprobs.content[] = {id, token, logprob, …}.
    let content = logprobs
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array);
    let ids_of = |values: &[Value]| -> std::result::Result<Vec<u32>, String> {
        values
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| format!("a token id {v} is not a 32-bit unsigned number"))
            })
            .collect()
    };
    let mut token_ids = match choice.get("token_ids").and_then(Value::as_array) {
        Some(ids) => Some(ids_of(ids)?),
        None => match content {
            Some(content) => {
                let ids: Vec<Value> = content
                    .iter()
                    .map(|c| c.get("id").cloned().unwrap_or(Value::Null))
                    .collect();
                Some(ids_of(&ids)?)
            }
            None => None,
        },
    };
    // vLLM with --return-tokens-as-token-ids: logprobs.tokens = ["token_id:123", …].
    if token_ids.is_none()
        && let Some(tokens) = logprobs
            .and_then(|l| l.get("tokens"))
            .and_then(Value::as_array)
        && !tokens.is_empty()
        && tokens
            .iter()
            .all(|t| t.as_str().is_some_and(|s| s.starts_with("token_id:")))
    {
        let ids: std::result::Result<Vec<u32>, String> = tokens
            .iter()
            .map(|t| {
                let s = t.as_str().unwrap_or_default();
                s["token_id:".len()..]
                    .parse()
                    .map_err(|_| format!("bad token {s:?}"))
            })
            .collect();
        token_ids = Some(ids?);
    }
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NEG_INFINITY);
    let log_probs = match (
        logprobs
            .and_then(|l| l.get("token_logprobs"))
            .and_then(Value::as_array),
        content,
    ) {
        (Some(values), _) => Some(values.iter().map(number).collect()),
        (None, Some(content)) => Some(
            content
                .iter()
                .map(|c| c.get("logprob").map_or(f64::NEG_INFINITY, number))
                .collect(),
        ),
        (None, None) => None,
    };
    Ok(Completion {
        text,
        token_ids,
        log_probs,
        finished,
    })
}

/// The models a `/v1/models` answer lists, with the server each names as its owner.
fn listed_models(body: &str) -> std::result::Result<Vec<(String, Server)>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no data list of models")?;
    Ok(data
        .iter()
        .filter_map(|m| {
            let id = m.get("id")?.as_str()?.to_string();
            let owner = m.get("owned_by").and_then(Value::as_str).unwrap_or("");
            Some((id, Server::from_owner(owner)))
        })
        .collect())
}

/// The sequences of a remote model: each row's token ids so far (prompt included).
pub type RemoteCache = Vec<Vec<u32>>;

/// Logits rows a remote model never hands back: only how many there would be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoLogits {
    rows: usize,
}

/// The error of every strategy step that reads logits rows of a remote model.
fn needs_logits() -> Error {
    Error::Strategy(
        "this strategy reads the model's next-token distributions, which a server does not \
         send: on a remote model use sample, greedy, best-of-n, majority, ets, particle or \
         ets-is with a served draft"
            .into(),
    )
}

impl Logits for NoLogits {
    fn rows(&self) -> usize {
        self.rows
    }
    fn select(&self, rows: &[usize]) -> Result<Self> {
        check_selection(rows, self.rows)?;
        Ok(Self { rows: rows.len() })
    }
    fn concat(parts: Vec<Self>) -> Result<Self> {
        Ok(Self {
            rows: parts.iter().map(|p| p.rows).sum(),
        })
    }
    async fn take(&self, _picks: &[RowPick], _sampling: &SamplingParams) -> Result<Vec<Picked>> {
        Err(needs_logits())
    }
    async fn top_log_probs(&self, _n: usize) -> Result<Vec<Vec<(u32, f64)>>> {
        Err(needs_logits())
    }
}

impl LanguageModel for RemoteModel {
    type Cache = RemoteCache;
    type Logits = NoLogits;

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn objective(&self) -> Objective {
        Objective::Causal
    }

    fn max_positions(&self) -> usize {
        self.context
    }

    fn new_cache(&self, batch: usize) -> RemoteCache {
        vec![Vec::new(); batch]
    }

    async fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut RemoteCache,
        logits_for: LogitsFor,
    ) -> Result<NoLogits> {
        if chunks.len() != cache.len() {
            return Err(Error::Internal("chunks for another number of sequences"));
        }
        let vocab = self.vocab_size();
        for (row, chunk) in cache.iter_mut().zip(chunks) {
            if let Some(&id) = chunk.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab_size: vocab,
                });
            }
            if row.len() + chunk.len() > self.context {
                return Err(Error::ContextTooLong {
                    needed: row.len() + chunk.len(),
                    max: self.context,
                });
            }
            row.extend_from_slice(chunk);
        }
        let width = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
        let per_row = match logits_for {
            LogitsFor::Last => 1,
            LogitsFor::All => width,
            LogitsFor::Tail(n) => n.clamp(1, width.max(1)),
        };
        Ok(NoLogits {
            rows: chunks.len() * per_row,
        })
    }

    fn select(&self, cache: &RemoteCache, rows: &[usize]) -> Result<RemoteCache> {
        rows.iter()
            .map(|&r| {
                cache
                    .get(r)
                    .cloned()
                    .ok_or(Error::Internal("a remote cache row that does not exist"))
            })
            .collect()
    }

    fn concat(&self, caches: Vec<RemoteCache>) -> Result<RemoteCache> {
        Ok(caches.into_iter().flatten().collect())
    }

    fn decodes_blocks(&self) -> bool {
        true
    }

    async fn continue_rows(
        &self,
        cache: &RemoteCache,
        requests: &[BlockRequest],
        sampling: &SamplingParams,
        stop_ids: &[u32],
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<Block>> {
        let row = |r: &BlockRequest| {
            cache
                .get(r.row)
                .ok_or(Error::Internal("a remote cache row that does not exist"))
        };
        // The requests that ask for tokens, grouped: with `n`, those continuing identical
        // sequences by as many tokens go as one request (the first one's seed); else one each.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, r) in requests.iter().enumerate().filter(|(_, r)| r.max_new > 0) {
            let same = |g: &Vec<usize>| {
                let first = &requests[g[0]];
                first.max_new == r.max_new && row(first).ok() == row(r).ok()
            };
            match groups.iter_mut().find(|g| self.use_n && same(g)) {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let bodies = groups
            .iter()
            .map(|g| {
                let first = &requests[g[0]];
                self.request(row(first)?, g.len(), first.max_new, first.seed, sampling)
            })
            .collect::<Result<Vec<_>>>()?;
        let answers = self
            .client
            .post_all("completions", &bodies, parse_completions, stop)
            .await?;
        self.requests
            .set(self.requests.get() + answers.len() as u64);
        let mut completions: Vec<Option<Completion>> = requests.iter().map(|_| None).collect();
        for (group, answer) in groups.iter().zip(answers) {
            if answer.len() != group.len() {
                return Err(Error::Remote(RemoteError::Unsupported {
                    url: self.client.base().to_string(),
                    message: format!(
                        "asked for n = {} continuations in one request, the server sent {}: \
                         turn n off (--use-n false)",
                        group.len(),
                        answer.len()
                    ),
                }));
            }
            for (&i, completion) in group.iter().zip(answer) {
                completions[i] = Some(completion);
            }
        }
        let mut blocks = Vec::with_capacity(requests.len());
        // Blocks ending at an end token the server left out: (block, its row's tokens).
        let mut unscored_ends = Vec::new();
        for (i, (r, completion)) in requests.iter().zip(completions).enumerate() {
            let block = match (r.max_new, completion) {
                (0, _) => Block {
                    picked: Vec::new(),
                    finished: true,
                },
                (_, Some(completion)) => {
                    let (block, appended) = self.block(completion, stop_ids, sampling)?;
                    if appended && self.log_probs.get() && self.server.scores_given_tokens() {
                        unscored_ends.push((i, row(r)?));
                    }
                    block
                }
                (_, None) => return Err(Error::Internal("fewer completions than requests")),
            };
            blocks.push(block);
        }
        // Where log-probabilities are read, an end token the server left out is scored (by a
        // server that can: else it counts with none).
        if !unscored_ends.is_empty() {
            let heads: Vec<Vec<u32>> = unscored_ends
                .iter()
                .map(|&(i, row)| {
                    let picked = &blocks[i].picked;
                    let before = picked[..picked.len() - 1].iter().map(|p| p.token);
                    row.iter().copied().chain(before).collect()
                })
                .collect();
            let ends: Vec<[u32; 1]> = unscored_ends
                .iter()
                .map(|&(i, _)| [blocks[i].picked.last().map_or(0, |p| p.token)])
                .collect();
            let rows: Vec<&[u32]> = heads.iter().map(Vec::as_slice).collect();
            let chunks: Vec<&[u32]> = ends.iter().map(|e| e.as_slice()).collect();
            let scored = self.score(&rows, &chunks, sampling, stop).await?;
            for (&(i, _), mut end) in unscored_ends.iter().zip(scored) {
                if let (Some(last), Some(scored)) = (blocks[i].picked.last_mut(), end.pop()) {
                    *last = scored;
                }
            }
        }
        Ok(blocks)
    }

    async fn score_rows(
        &self,
        cache: &RemoteCache,
        chunks: &[&[u32]],
        sampling: &SamplingParams,
        stop: Option<&AtomicBool>,
    ) -> Result<Vec<Vec<Picked>>> {
        if chunks.len() != cache.len() {
            return Err(Error::Internal("chunks for another number of sequences"));
        }
        let rows: Vec<&[u32]> = cache.iter().map(Vec::as_slice).collect();
        self.score(&rows, chunks, sampling, stop).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(prompt: Value, n: usize, max_new: usize, seed: u32) -> Ask {
        Ask {
            prompt,
            n,
            max_new,
            seed,
        }
    }

    #[test]
    fn answers_of_each_server_shape_are_read() {
        // llama-cpp-python: text and string tokens only; an end token left out.
        let llama_cpp_python = r#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":" 17","index":0,
            "logprobs":{"tokens":[" 1","7"],"text_offset":[0,2],"token_logprobs":[-0.5,-0.25],"top_logprobs":[{" 1":-0.5},{"7":-0.25}]},
            "finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let c = parse_completion(llama_cpp_python).unwrap();
        assert_eq!(c.text, " 17");
        assert_eq!(c.token_ids, None);
        assert_eq!(c.log_probs, Some(vec![-0.5, -0.25]));
        assert!(c.finished);
        // vLLM / SGLang with return_token_ids.
        let vllm = r#"{"choices":[{"text":"ab","token_ids":[5,6],"finish_reason":"length","logprobs":null}]}"#;
        let c = parse_completion(vllm).unwrap();
        assert_eq!(c.token_ids, Some(vec![5, 6]));
        assert!(!c.finished);
        assert_eq!(c.log_probs, None);
        // vLLM with --return-tokens-as-token-ids.
        let ids_as_tokens = r#"{"choices":[{"text":"ab","finish_reason":"length",
            "logprobs":{"tokens":["token_id:5","token_id:6"],"token_logprobs":[-1.0,-2.0]}}]}"#;
        let c = parse_completion(ids_as_tokens).unwrap();
        assert_eq!(c.token_ids, Some(vec![5, 6]));
        assert_eq!(c.log_probs, Some(vec![-1.0, -2.0]));
        // llama.cpp's server: chat-style log-probabilities with ids.
        let llama_server = r#"{"choices":[{"text":"ab","finish_reason":"stop",
            "logprobs":{"content":[{"id":5,"token":"a","logprob":-0.1},{"id":6,"token":"b","logprob":-0.2}]}}]}"#;
        let c = parse_completion(llama_server).unwrap();
        assert_eq!(c.token_ids, Some(vec![5, 6]));
        assert_eq!(c.log_probs, Some(vec![-0.1, -0.2]));
        assert!(c.finished);
    }

    #[test]
    fn malformed_answers_are_refused_with_a_reason() {
        for (body, reason) in [
            ("not json", "expected"),
            ("{}", "no choices[0]"),
            (r#"{"choices":[]}"#, "no choices[0]"),
            (r#"{"choices":[{"index":0}]}"#, "no text"),
            (r#"{"choices":[{"text":"a","token_ids":[-1]}]}"#, "32-bit"),
            (
                r#"{"choices":[{"text":"a","token_ids":[4294967296]}]}"#,
                "32-bit",
            ),
        ] {
            let e = parse_completion(body).unwrap_err();
            assert!(e.contains(reason), "{body}: {e}");
        }
        assert_eq!(
            listed_models(r#"{"data":[{"id":"smol","owned_by":"vllm"},{"id":"x"}]}"#).unwrap(),
            vec![
                ("smol".to_string(), Server::Vllm),
                ("x".to_string(), Server::Other)
            ]
        );
        assert!(
            listed_models(r#"{"models":[]}"#)
                .unwrap_err()
                .contains("no data")
        );
        assert_eq!(listed_models(r#"{"data":[]}"#).unwrap(), vec![]);
    }

    #[test]
    fn requests_turn_every_server_default_transform_off() {
        let sampling = SamplingParams {
            temperature: 0.7,
            top_k: None,
            top_p: None,
        };
        let body = completion_request(
            "m",
            Server::Other,
            ask(json!("hi"), 1, 16, 42),
            &sampling,
            false,
        );
        assert_eq!(body["max_tokens"], 16);
        // llama-cpp-python refuses −1; vLLM and SGLang take −1 for "off".
        assert_eq!(body["top_k"], 0);
        let vllm = completion_request(
            "m",
            Server::Vllm,
            ask(json!("hi"), 1, 16, 42),
            &sampling,
            false,
        );
        assert_eq!(vllm["top_k"], -1);
        assert_eq!(body["top_p"], 1.0);
        assert_eq!(body["min_p"], 0.0);
        assert_eq!(body["repeat_penalty"], 1.0);
        assert_eq!(body["seed"], 42);
        assert!(body.get("logprobs").is_none());
        let top = SamplingParams {
            temperature: 1.0,
            top_k: Some(5),
            top_p: Some(0.9),
        };
        let body = completion_request("m", Server::Sglang, ask(json!([1, 2]), 3, 4, 0), &top, true);
        assert_eq!(body["top_k"], 5);
        assert!((body["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(body["logprobs"], 1);
        assert_eq!(body["prompt"], json!([1, 2]));
        assert_eq!(body["n"], 3);
        assert!(Server::Vllm.takes_n() && Server::Sglang.takes_n());
        assert!(!Server::LlamaCpp.takes_n() && !Server::Other.takes_n());
    }

    #[test]
    fn echoed_prompt_log_probabilities_are_read_without_the_generated_tokens() {
        // vLLM / SGLang: the prompt's entries (the first null), then the one generated token.
        let vllm = r#"{"choices":[{"index":0,"text":"x","finish_reason":"length",
            "logprobs":{"tokens":["a","b","c","x"],"token_logprobs":[null,-1.5,-0.25,-3.0]}}],
            "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        assert_eq!(
            parse_echo(vllm).unwrap().prompt_log_probs,
            vec![None, Some(-1.5), Some(-0.25)]
        );
        // llama-cpp-python stopped at an end token it leaves out: nothing generated to drop.
        let stopped = r#"{"choices":[{"index":0,"text":"ab","finish_reason":"stop",
            "logprobs":{"token_logprobs":[null,-1.5]}}],"usage":{"completion_tokens":0}}"#;
        assert_eq!(
            parse_echo(stopped).unwrap().prompt_log_probs,
            vec![None, Some(-1.5)]
        );
        // Without usage, the finish reason tells.
        let bare = r#"{"choices":[{"text":"","finish_reason":"length","logprobs":{"token_logprobs":[null,-2.0,-1.0]}}]}"#;
        assert_eq!(
            parse_echo(bare).unwrap().prompt_log_probs,
            vec![None, Some(-2.0)]
        );
        for (body, reason) in [
            (
                r#"{"choices":[{"text":"a","logprobs":null}]}"#,
                "did not echo",
            ),
            (
                r#"{"choices":[{"text":"a","logprobs":{"token_logprobs":[null,"x"]}}]}"#,
                "not a number",
            ),
            (
                r#"{"choices":[{"text":"a","logprobs":{"token_logprobs":[]}}],"usage":{"completion_tokens":1}}"#,
                "fewer",
            ),
        ] {
            let e = parse_echo(body).unwrap_err();
            assert!(e.contains(reason), "{body}: {e}");
        }
        let body = scoring_request("m", Server::Other, json!("hi"));
        assert_eq!(
            (body["echo"].clone(), body["logprobs"].clone()),
            (json!(true), json!(1))
        );
        assert_eq!(body["max_tokens"], 1, "0 is no limit in llama-cpp-python");
        assert!(Server::Vllm.scores_given_tokens() && !Server::LlamaCpp.scores_given_tokens());
    }

    #[test]
    fn log_probabilities_the_server_split_otherwise_are_summed_on_the_first_token() {
        assert_eq!(spread(&[1, 2], &[-1.0, -2.0]), vec![-1.0, -2.0]);
        assert_eq!(spread(&[1, 2, 3], &[-1.0, -2.0]), vec![-3.0, 0.0, 0.0]);
        assert_eq!(spread(&[], &[-1.0]), Vec::<f64>::new());
    }

    #[test]
    fn a_bare_address_gets_v1() {
        assert_eq!(
            Endpoint::new("http://127.0.0.1:8000").base_url(),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(Endpoint::new("http://h:1/v1/").base_url(), "http://h:1/v1");
        assert_eq!(
            Endpoint::new("http://h:1/openai/v1").base_url(),
            "http://h:1/openai/v1"
        );
    }
}
