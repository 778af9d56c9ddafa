//! Chat templates, rendered with minijinja as transformers renders them with Jinja2.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use trl_core::Tokenizer;

use crate::data::Message;
use crate::error::{Result, RewardError};

/// Renders `messages` with `template` (no generation prompt), exposing `bos_token`,
/// `eos_token` and `raise_exception` as transformers does.
pub fn apply_chat_template(template: &str, messages: &[Message], tok: &Tokenizer) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| RewardError::Template(e.to_string()))?;
    let t = env.get_template("chat").map_err(|e| RewardError::Template(e.to_string()))?;
    t.render(context! {
        messages => messages,
        add_generation_prompt => false,
        bos_token => tok.bos_token.clone().unwrap_or_default(),
        eos_token => tok.eos_token.clone().unwrap_or_default(),
    })
    .map_err(|e| RewardError::Template(e.to_string()))
}
