//! Text ↔ token ids through the `tokenizers` crate, the model's chat template rendered with
//! minijinja, and the stop tokens from `generation_config.json` — or all of it from a GGUF
//! file's metadata ([`gguf`]).

mod gguf;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::token_ids;
use crate::model::files::ModelFiles;

/// Instructions a chat template may run for one prompt (minijinja's fuel): real templates
/// use hundreds to a few thousand; nested loops in a hostile one stop here.
const TEMPLATE_FUEL: u64 = 200_000;

/// The most text a chat template may write for one prompt, bytes (about 250,000 tokens, beyond any supported model's
/// context; a template printing a list repeated 10^8 times stops here).
const MAX_TEMPLATE_OUTPUT: usize = 1 << 20;

/// The longest sequence a chat template may print whole.
const MAX_PRINTED_ITEMS: usize = 10_000;

/// A template's output, refusing to grow past [`MAX_TEMPLATE_OUTPUT`].
#[derive(Default)]
struct BoundedText {
    text: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("the template's output is too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
        // tokenizers 0.23 panics where its parser fails inside `decoder` (an `expect`, found
        // by tests/fuzz.rs: a syntax error, a bad \u escape, nesting past serde_json's
        // limit): the JSON is parsed here first, so that tokenizers only meets JSON that
        // parses.
        drop(
            serde_json::from_slice::<Value>(bytes)
                .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not JSON: {e}")))?,
        );
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

    /// The text of `ids` with special tokens spelt out (a chat template's markers included).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
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
        env.set_fuel(Some(TEMPLATE_FUEL));
        // Printing a sequence walks all of it inside minijinja, fuel or not (`{{ messages *
        // 10**8 }}` ran for minutes): a long one is refused before it is printed.
        env.set_formatter(|out, state, value| {
            if value.as_object().is_some() && value.len().is_none_or(|n| n > MAX_PRINTED_ITEMS) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "the template prints a sequence of more than {MAX_PRINTED_ITEMS} items"
                    ),
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
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
        let mut out = BoundedText::default();
        let rendered = env
            .get_template("chat")
            .and_then(|t| t.render_captured_to(context, &mut out).map(|_| ()));
        match rendered {
            Ok(_) => String::from_utf8(out.text)
                .map_err(|_| Error::ChatTemplate("the template wrote invalid UTF-8".into())),
            Err(_) if out.overflowed => Err(Error::ChatTemplate(format!(
                "the template writes more than {} MiB for one prompt",
                MAX_TEMPLATE_OUTPUT >> 20
            ))),
            Err(e) => Err(Error::ChatTemplate(e.to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference models' tokenizer with `template` as its chat template.
    fn with_template(template: &str) -> TextTokenizer {
        let files = ModelFiles::from_memory([
            (
                "tokenizer.json".to_string(),
                crate::task::bpe::tokenizer_json().into_bytes(),
            ),
            (
                "chat_template.jinja".to_string(),
                template.as_bytes().to_vec(),
            ),
        ]);
        TextTokenizer::from_files(&files, &[]).unwrap()
    }

    fn render(template: &str) -> Result<String> {
        with_template(template).apply_chat_template(&[ChatMessage::user("2 + 3?")], true)
    }

    #[test]
    fn a_hostile_template_is_stopped_with_an_error() {
        assert_eq!(
            render("{% for m in messages %}<{{ m.content }}>{% endfor %}").unwrap(),
            "<2 + 3?>"
        );
        let too_long = render("{% for i in range(1000000000) %}x{% endfor %}").unwrap_err();
        assert!(too_long.to_string().contains("too many"), "{too_long}");
        let endless = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap_err();
        assert!(endless.to_string().contains("fuel"), "{endless}");
        let huge = render("{{ messages * 100000000 }}").unwrap_err();
        assert!(huge.to_string().contains("more than 10000 items"), "{huge}");
        let long = render("{% for i in range(2000) %}{{ 'x' * 1000 }}{% endfor %}").unwrap_err();
        assert!(long.to_string().contains("more than 1 MiB"), "{long}");
        let deep = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
        assert!(matches!(deep, Error::ChatTemplate(_)), "{deep}");
    }

    #[test]
    fn malformed_tokenizer_json_is_an_error() {
        // A syntax error inside `decoder` made tokenizers 0.23 panic.
        let text = crate::task::bpe::tokenizer_json();
        let at = text.find("\"decoder\"").unwrap();
        let cut = format!("{}\"decoder\":{{\"type\":\"ByteLevel\"5}}}}", &text[..at]);
        let deep = format!(
            "{}\"decoder\":{}{}}}",
            &text[..at],
            "[".repeat(200),
            "]".repeat(200)
        );
        let surrogate = format!("{}\"decoder\":\"\\ud800\"}}", &text[..at]);
        for bad in [cut, deep, surrogate] {
            let files = ModelFiles::from_memory([("tokenizer.json".to_string(), bad.into_bytes())]);
            let err = TextTokenizer::from_files(&files, &[]).err().unwrap();
            assert!(
                matches!(err, Error::Tokenizer(ref m) if m.contains("not JSON")),
                "{err}"
            );
        }
    }
}
