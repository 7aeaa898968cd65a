//! Text ↔ token ids through the `tokenizers` crate, the model's chat template rendered with
//! minijinja, and the stop tokens from `generation_config.json` — or all of it from a GGUF
//! file's metadata ([`gguf`]).

mod gguf;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::token_ids;
use crate::model::files::ModelFiles;

/// One turn of a conversation, as chat templates expect it.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message from the user.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// The assistant's turn: a response.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
        }
    }

    /// The system message: instructions for the assistant ahead of the conversation.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
}

/// A model's tokenizer with its special tokens, chat template and stop tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

/// A special token in `tokenizer_config.json`: a string or an AddedToken object.
fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template: `tokenizer_config.json`'s `chat_template` (a string, or a list of named
/// templates of which "default" is taken), else the `chat_template.jinja` file.
fn chat_template(config: Option<&Value>, files: &ModelFiles) -> Result<Option<String>> {
    match config.and_then(|c| c.get("chat_template")) {
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(Value::Array(named)) => Ok(named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| named.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string)),
        _ => Ok(files.text("chat_template.jinja")?.map(str::to_string)),
    }
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.json`, `tokenizer_config.json` (optional) and
    /// `generation_config.json` (optional); `config_eos` are the eos ids of `config.json`.
    pub fn from_files(files: &ModelFiles, config_eos: &[u32]) -> Result<Self> {
        let bytes = files
            .get("tokenizer.json")
            .ok_or_else(|| Error::MissingFile("tokenizer.json".into()))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let tok_config = files.json("tokenizer_config.json")?;
        let chat_template = chat_template(tok_config.as_ref(), files)?;
        let bos_token = tok_config
            .as_ref()
            .and_then(|c| special_token(c, "bos_token"));
        let eos_token = tok_config
            .as_ref()
            .and_then(|c| special_token(c, "eos_token"));
        let mut eos_ids = config_eos.to_vec();
        if let Some(generation) = files.json("generation_config.json")?
            && let Some(ids) = generation.get("eos_token_id")
        {
            eos_ids.extend(token_ids(ids));
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            chat_template,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (BOS…).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Ids that end generation (config, generation config and the tokenizer's eos token).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Number of tokens the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the model ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template for `messages` (the prompt text, special tokens included).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::ChatTemplate(
                "the model has no chat template (tokenizer_config.json or chat_template.jinja)"
                    .into(),
            )
        })?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
        };
        env.get_template("chat")
            .and_then(|t| t.render(context))
            .map_err(|e| Error::ChatTemplate(e.to_string()))
    }

    /// Prompt ids for a single user question through the chat template, after a system
    /// message when `system` is given and not blank (no extra BOS: the template writes its own
    /// special tokens). Without one the template's own default applies (some templates write
    /// a default system message).
    pub fn encode_chat(&self, question: &str, system: Option<&str>) -> Result<Vec<u32>> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system.filter(|s| !s.trim().is_empty()) {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(question));
        let text = self.apply_chat_template(&messages, true)?;
        self.encode(&text, false)
    }
}
