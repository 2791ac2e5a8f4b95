//! Chat templates: a model's Jinja template (a GGUF file's `tokenizer.chat_template`) rendered
//! with `minijinja` as Hugging Face's transformers renders it (blocks trimmed and left-stripped,
//! `raise_exception`, `bos_token` and `eos_token` defined).

use minijinja::{context, Environment, Error as TemplateError, ErrorKind};
use serde::{Deserialize, Serialize};

use super::gguf::GgufFile;
use crate::error::{Error, Result};

/// The longest template read: 1 MiB.
const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template, checked when made.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_error(what: &str, e: TemplateError) -> Error {
    Error::InvalidArgument {
        op: "ChatTemplate",
        details: format!("{what}: {e}"),
    }
}

impl ChatTemplate {
    /// `source` (Jinja, at most 1 MiB) with the beginning- and end-of-sequence tokens' text.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::InvalidArgument {
                op: "ChatTemplate",
                details: format!(
                    "a template of {} bytes, past the limit of {MAX_TEMPLATE_BYTES}",
                    source.len()
                ),
            });
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, TemplateError> {
                Err(TemplateError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| template_error("the template does not parse", e))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), its BOS and EOS tokens' text from
    /// the file's vocabulary.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let source = file.str("tokenizer.chat_template")?;
        let tokens = file
            .value("tokenizer.ggml.tokens")?
            .as_array()
            .unwrap_or(&[]);
        let text = |key: &str| {
            file.u64(key)
                .ok()
                .and_then(|i| tokens.get(usize::try_from(i).ok()?))
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Self::new(
            source,
            &text("tokenizer.ggml.bos_token_id"),
            &text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// The conversation as the model's prompt; with `add_generation_prompt`, ending where the
    /// assistant's answer starts.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| template_error("the template", e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| template_error("rendering", e))
    }
}
