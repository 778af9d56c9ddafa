//! Chat templates, rendered with minijinja the way transformers (5.x) renders them with Jinja2.
//!
//! transformers compiles a template in an `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])` and adds `raise_exception`,
//! `strftime_now`, `namespace`, `dict` and its own `tojson` (`json.dumps(ensure_ascii=False)`,
//! not Jinja's HTML-escaping one). The template sees `messages`, `tools`, `documents`,
//! `add_generation_prompt` and every special token the tokenizer has (`bos_token`,
//! `eos_token`, `pad_token`). What differs between minijinja and Jinja2 and is made to agree here:
//!
//! * Python methods on values (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`…):
//!   minijinja-contrib's `pycompat` callback;
//! * `{{ value }}` of a non-string prints Python's `str()`: `1e-05`, `1e+20`, `{'role': 'user'}`,
//!   `[1, 'a', True, None]` (minijinja alone prints floats in Rust's way and containers as
//!   JSON-ish `{"role": "user"}`);
//! * `tojson` is Python's `json.dumps`: `", "` and `": "` separators, no HTML escaping, Python
//!   float repr, `indent`/`separators`/`sort_keys`/`ensure_ascii` arguments;
//! * mappings keep their insertion order (minijinja's `preserve_order` feature);
//! * `{% generation %}…{% endgeneration %}` (transformers' assistant-mask extension) renders
//!   its body;
//! * messages are passed as transformers passes them: keys whose value is null dropped, and
//!   `reasoning_content` / `thinking` filled from any of `reasoning_content`, `thinking`,
//!   `reasoning`.
//!
//! Templates and conversations are untrusted data, so a render is bounded: at most
//! [`TEMPLATE_FUEL`] instructions, [`TEMPLATE_MAX_OUTPUT`] bytes of output, values of at most
//! 1 000 000 items and 256 levels printed, minijinja's recursion limit (500) for macros, a
//! large stack for deeply nested values, and a panic inside minijinja becomes an error.
//! `pprint` prints Python's `repr` (Jinja2 wraps it at 80 columns).
//!
//! Not reproduced: `~` and `|string` of floats, lists and mappings use minijinja's formatting
//! (only `{{ … }}` output is Python-formatted; booleans and `none` already print `True` /
//! `None`), `strftime_now` uses UTC, the `unk_token` and additional special tokens are not
//! passed (trl-core's `Tokenizer` does not keep them), and `tools` / `documents` are always
//! `None` (rows cannot carry TRL's `tools` / `chat_template_kwargs` columns yet).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::Value as Json;

use trl_core::Tokenizer;

use crate::chat_limits::{too_much_output, CappedOutput, Printed};
pub use crate::chat_limits::{TEMPLATE_FUEL, TEMPLATE_MAX_OUTPUT};
use crate::error::{Result, RewardError};
use crate::pyfmt::{pprint, py_str, strftime_now, tojson};
use crate::rows::Message;

/// The stack of the thread renders run on. minijinja drops, prints and compares values
/// recursively, and a template can nest a list in itself once per loop iteration
/// (`{% set ns.l = [ns.l] %}`): with [`TEMPLATE_FUEL`] that is at most ~300 000 levels, which
/// take up to ~100 MiB of stack (measured), not the 2–8 MiB a thread has. Only the pages used
/// are ever committed.
const RENDER_STACK: usize = 256 << 20;

/// A compiled chat template plus the special tokens it is rendered with. Renders run on a
/// thread of its own with a [`RENDER_STACK`] stack, started once per template.
pub struct ChatTemplate<'s> {
    worker: Option<(mpsc::Sender<RenderJob>, std::thread::JoinHandle<()>)>,
    specials: Vec<(&'static str, String)>,
    _source: PhantomData<&'s str>,
}

/// Messages as the template sees them, and where to send the text.
type RenderJob = (Vec<Json>, mpsc::SyncSender<Result<String>>);

impl std::fmt::Debug for ChatTemplate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("specials", &self.specials).finish()
    }
}

impl Drop for ChatTemplate<'_> {
    fn drop(&mut self) {
        if let Some((jobs, thread)) = self.worker.take() {
            drop(jobs); // the worker's loop ends
            let _ = thread.join();
        }
    }
}

impl<'s> ChatTemplate<'s> {
    /// Compiles `source` (a syntax error is a [`RewardError::Template`]).
    pub fn new(source: &'s str, tok: &Tokenizer) -> Result<Self> {
        let mut env: Environment<'static> = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Bounds for templates from untrusted models: fuel for loops, the default recursion
        // limit (500) for macros calling themselves, the parser's for nesting.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, state, value| {
            let formatted;
            let s = match value.as_str() {
                Some(s) => s,
                None => {
                    formatted = py_str(value)?;
                    &formatted
                }
            };
            // Everything `{{ }}` prints counts, captured (`{% set x %}`, macros) or not.
            let counter = state.get_or_set_temp_object("trl_rs_printed", Printed::default);
            if counter.0.fetch_add(s.len(), Ordering::Relaxed) + s.len() > TEMPLATE_MAX_OUTPUT {
                return Err(JinjaError::new(ErrorKind::InvalidOperation, too_much_output()));
            }
            out.write_str(s).map_err(JinjaError::from)
        });
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter("tojson", tojson);
        // Python's `pprint.pformat` (Jinja2's `pprint`) without line wrapping; minijinja's own
        // indents every level of nesting anew, which makes its output quadratic in the depth.
        env.add_filter("pprint", pprint);
        let source = strip_generation_tags(source).into_owned();
        engine_guard(|| env.add_template_owned("chat_template", source))?
            .map_err(|e| RewardError::Template(describe(&e)))?;
        let specials: Vec<(&'static str, String)> =
            [("bos_token", &tok.bos_token), ("eos_token", &tok.eos_token), ("pad_token", &tok.pad_token)]
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
                .collect();
        let (jobs, inbox) = mpsc::channel::<RenderJob>();
        let theirs = specials.clone();
        let thread = std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(RENDER_STACK)
            .spawn(move || {
                for (messages, reply) in inbox {
                    let _ = reply.send(render_on(&env, &theirs, messages));
                }
            })
            .map_err(|e| RewardError::Template(format!("cannot start the thread that renders the template: {e}")))?;
        Ok(Self { worker: Some((jobs, thread)), specials, _source: PhantomData })
    }

    /// Renders `messages` as `apply_chat_template(messages, tokenize=False)` does (no generation
    /// prompt). An empty conversation is an error, as in transformers.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        if messages.is_empty() {
            return Err(RewardError::Template(
                "cannot apply the chat template to an empty conversation (a row has no messages)".into(),
            ));
        }
        let messages: Vec<Json> = messages.iter().map(template_message).collect();
        let (reply, answer) = mpsc::sync_channel(1);
        let failed = || RewardError::Template("the thread that renders the template has stopped".into());
        let (jobs, _) = self.worker.as_ref().ok_or_else(failed)?;
        jobs.send((messages, reply)).map_err(|_| failed())?;
        answer.recv().map_err(|_| failed())?
    }
}

/// One render, on the worker thread.
fn render_on(env: &Environment<'_>, specials: &[(&'static str, String)], messages: Vec<Json>) -> Result<String> {
    let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
    for (k, v) in specials {
        ctx.insert(k, Value::from(v.as_str()));
    }
    ctx.insert("messages", Value::from_serialize(&messages));
    ctx.insert("tools", Value::from(()));
    ctx.insert("documents", Value::from(()));
    ctx.insert("add_generation_prompt", Value::from(false));
    let t = env.get_template("chat_template").map_err(|e| RewardError::Template(describe(&e)))?;
    let mut out = CappedOutput { text: Vec::new(), exceeded: false };
    match engine_guard(|| t.render_captured_to(ctx, &mut out))? {
        Ok(_) => String::from_utf8(out.text)
            .map_err(|e| RewardError::Template(format!("the rendered text is not UTF-8 ({e})"))),
        Err(_) if out.exceeded => Err(RewardError::Template(too_much_output())),
        Err(e) => Err(RewardError::Template(describe(&e))),
    }
}

/// Runs minijinja, turning a panic inside it into a template error. minijinja 2.24 panics on
/// some inputs (a negative-step slice of an empty string or list, `{{ ''[::-1] }}`, indexes
/// out of bounds), and a chat template and the conversations it renders are data: they must
/// not abort a run. Rendering takes the environment by `&`, so nothing is left half-changed.
fn engine_guard<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        RewardError::Template(format!(
            "the template engine (minijinja) failed on this template or conversation ({what}); \
             an empty string or list sliced with a negative step (`x[::-1]`) is a known trigger"
        ))
    })
}

/// Renders `messages` with `template` (no generation prompt), as transformers'
/// `apply_chat_template(…, tokenize=False)`. Compiles the template on every call: use
/// [`ChatTemplate`] for many conversations.
pub fn apply_chat_template(template: &str, messages: &[Message], tok: &Tokenizer) -> Result<String> {
    ChatTemplate::new(template, tok)?.render(messages)
}

/// A minijinja error as one line: what went wrong and where (`raise_exception` messages verbatim).
fn describe(e: &JinjaError) -> String {
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::OutOfFuel, _) => format!(
            "the template ran more than {TEMPLATE_FUEL} instructions without finishing (an endless or huge loop?)"
        ),
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        (k, Some(d)) => format!("{k}: {d}"),
        (k, None) => k.to_string(),
    };
    match e.line() {
        Some(line) => format!("{what} (template line {line})"),
        None => what,
    }
}

/// One message as transformers hands it to the template: null-valued keys dropped
/// (`_normalize_chat_messages`), reasoning aliased (`_alias_reasoning_fields`).
fn template_message(m: &Message) -> Json {
    let mut map = serde_json::Map::new();
    map.insert("role".into(), Json::String(m.role.clone()));
    map.insert("content".into(), Json::String(m.content.clone()));
    for (k, v) in &m.extra {
        if !v.is_null() {
            map.insert(k.clone(), v.clone());
        }
    }
    let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| map.get(*k).cloned());
    if let Some(r) = reasoning {
        let mut aliased = serde_json::Map::new();
        aliased.insert("thinking".into(), r.clone());
        for (k, v) in map {
            aliased.insert(k, v);
        }
        aliased.insert("reasoning_content".into(), r);
        map = aliased;
    }
    Json::Object(map)
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker) become a block
/// that always renders, keeping their whitespace-control markers.
fn strip_generation_tags(source: &str) -> std::borrow::Cow<'_, str> {
    if !source.contains("generation") {
        return std::borrow::Cow::Borrowed(source);
    }
    let re = regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("valid regex");
    re.replace_all(source, |c: &regex::Captures<'_>| {
        let body = if c.get(2).is_some() { "endif" } else { "if true" };
        format!("{{%{} {body} {}%}}", &c[1], &c[3])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_render_their_body() {
        let s = strip_generation_tags("{%- generation -%}x{% endgeneration %}");
        assert_eq!(s, "{%- if true -%}x{% endif %}");
    }
}
