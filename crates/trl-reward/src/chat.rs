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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::Value as Json;

use trl_core::Tokenizer;

use crate::error::{Result, RewardError};
use crate::rows::Message;

/// Instructions one render may run (minijinja fuel). Real templates take 30–60 per message
/// (ChatML with tools, Llama 3, Mistral, Qwen3 thinking: measured), so this is ~40 000
/// messages; it stops endless or astronomically long loops
/// (`{% for i in range(100000) %}{% for j in range(100000) %}`) within a fraction of a second.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// The stack of the thread renders run on. minijinja drops, prints and compares values
/// recursively, and a template can nest a list in itself once per loop iteration
/// (`{% set ns.l = [ns.l] %}`): with [`TEMPLATE_FUEL`] that is at most ~300 000 levels, which
/// take up to ~100 MiB of stack (measured), not the 2–8 MiB a thread has. Only the pages used
/// are ever committed.
const RENDER_STACK: usize = 256 << 20;

/// The most text one render may produce: far beyond any conversation a model can take, so this
/// only stops a template from filling memory with output.
pub const TEMPLATE_MAX_OUTPUT: usize = 64 << 20;

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
        env.add_filter("pprint", |value: Value| match value.as_str() {
            Some(s) => {
                let mut out = String::new();
                py_repr_str(s, &mut out);
                Ok(out)
            }
            None => py_str(&value),
        });
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

fn too_much_output() -> String {
    format!("the template renders more than {} MiB of text; is it looping?", TEMPLATE_MAX_OUTPUT >> 20)
}

/// The bytes `{{ }}` printed in one render (a per-render object of minijinja's state).
#[derive(Debug, Default)]
struct Printed(AtomicUsize);

impl minijinja::value::Object for Printed {}

/// Render output that refuses to grow past [`TEMPLATE_MAX_OUTPUT`].
struct CappedOutput {
    text: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit reached"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

// ---------------------------------------------------------------------------------------------
// Python formatting
// ---------------------------------------------------------------------------------------------

/// How deep a printed (`{{ }}`, `tojson`) value may nest, and how many items it may hold.
const MAX_PRINT_DEPTH: usize = 256;
const MAX_PRINT_ITEMS: usize = 1_000_000;

/// What is left to print: items, and bytes of strings.
struct PrintBudget {
    items: usize,
    bytes: usize,
}

impl PrintBudget {
    fn new() -> Self {
        Self { items: MAX_PRINT_ITEMS, bytes: TEMPLATE_MAX_OUTPUT }
    }
}

/// Refuses to print a value that is too large or too deep: a template can build one cheaply
/// (`[s] * 10**9` is a lazy sequence of a billion references to `s`), and printing it would
/// take unbounded time and memory.
fn check_printable(value: &Value, depth: usize, budget: &mut PrintBudget) -> std::result::Result<(), JinjaError> {
    let too_large = || {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!(
                "a value too large to print (over {MAX_PRINT_ITEMS} items, {} MiB or {MAX_PRINT_DEPTH} levels deep)",
                TEMPLATE_MAX_OUTPUT >> 20
            ),
        )
    };
    budget.items = budget.items.checked_sub(1).ok_or_else(too_large)?;
    budget.bytes = budget.bytes.checked_sub(value.as_str().map_or(0, str::len)).ok_or_else(too_large)?;
    if !matches!(value.kind(), ValueKind::Seq | ValueKind::Map | ValueKind::Iterable) {
        return Ok(());
    }
    if depth >= MAX_PRINT_DEPTH {
        return Err(too_large());
    }
    let is_map = value.kind() == ValueKind::Map;
    for item in value.try_iter()? {
        check_printable(&item, depth + 1, budget)?;
        if is_map {
            check_printable(&value.get_item(&item)?, depth + 1, budget)?;
        }
    }
    Ok(())
}

fn to_json(value: &Value) -> std::result::Result<Json, JinjaError> {
    if value.is_undefined() {
        return Ok(Json::Null);
    }
    check_printable(value, 0, &mut PrintBudget::new())?;
    Ok(serde_json::to_value(value).unwrap_or(Json::Null))
}

/// Python's `str()` of a template value (what Jinja2 prints for `{{ value }}`).
fn py_str(value: &Value) -> std::result::Result<String, JinjaError> {
    Ok(match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(&to_json(value)?, &mut s);
            s
        }
        ValueKind::Iterable => {
            check_printable(value, 0, &mut PrintBudget::new())?;
            value.to_string()
        }
        _ => value.to_string(),
    })
}

/// Python's `repr()` of a JSON-like value (strings quoted as Python quotes them).
fn py_repr(v: &Json, out: &mut String) {
    match v {
        Json::Null => out.push_str("None"),
        Json::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Json::Number(n) => out.push_str(&py_number(n)),
        Json::String(s) => py_repr_str(s, out),
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(x, out);
            }
            out.push(']');
        }
        Json::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr_str(k, out);
                out.push_str(": ");
                py_repr(x, out);
            }
            out.push('}');
        }
    }
}

fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn py_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() => py_float(f),
        _ => n.to_string(),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7"
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = &digits[1..];
        let m = if frac.is_empty() { digits[..1].to_string() } else { format!("{}.{frac}", &digits[..1]) };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// i.e. `json.dumps` with those arguments.
fn tojson(
    value: Value,
    ensure_ascii: Option<bool>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<String, JinjaError> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.or(ensure_ascii).unwrap_or(false);
    let indent = kwargs.get::<Option<Value>>("indent")?.or(indent);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    JinjaError::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")
                })?;
                if n > 1024 {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent {n} is too large"),
                    ));
                }
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let (item_sep, key_sep) = match &separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => return Err(JinjaError::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let long = [indent.as_deref().unwrap_or(""), &item_sep, &key_sep].iter().any(|s| s.len() > 1024);
    if long {
        return Err(JinjaError::new(ErrorKind::InvalidOperation, "tojson: indent or separator is too long"));
    }
    let d = Dumper { ensure_ascii, indent, sort_keys, item_sep, key_sep };
    let mut out = String::new();
    d.dump(&to_json(&value)?, 0, &mut out);
    if out.len() > TEMPLATE_MAX_OUTPUT {
        return Err(JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the text would exceed {} MiB", TEMPLATE_MAX_OUTPUT >> 20),
        ));
    }
    Ok(out)
}

struct Dumper {
    ensure_ascii: bool,
    indent: Option<String>,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

impl Dumper {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn dump(&self, v: &Json, level: usize, out: &mut String) {
        if out.len() > TEMPLATE_MAX_OUTPUT {
            return; // the caller refuses the result
        }
        match v {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.is_nan() => out.push_str("NaN"),
                Some(f) if n.is_f64() && f.is_infinite() => {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
                }
                _ => out.push_str(&py_number(n)),
            },
            Json::String(s) => self.string(s, out),
            Json::Array(a) if a.is_empty() => out.push_str("[]"),
            Json::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if out.len() > TEMPLATE_MAX_OUTPUT {
                        return;
                    }
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.dump(x, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Json::Object(m) if m.is_empty() => out.push_str("{}"),
            Json::Object(m) => {
                let mut entries: Vec<(&String, &Json)> = m.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if out.len() > TEMPLATE_MAX_OUTPUT {
                        return;
                    }
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key_sep);
                    self.dump(x, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

// ---------------------------------------------------------------------------------------------
// strftime_now
// ---------------------------------------------------------------------------------------------

/// `datetime.now().strftime(format)` in UTC, for the directives chat templates use.
fn strftime_now(format: &str) -> std::result::Result<String, JinjaError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(strftime(format, secs as i64))
}

pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let no_pad = spec == Some('-');
        if no_pad {
            spec = chars.next();
        }
        let num = |v: i64, w: usize| if no_pad { v.to_string() } else { format!("{v:0w$}") };
        match spec {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&num(y.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(m, 2)),
            Some('d') => out.push_str(&num(d, 2)),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('H') => out.push_str(&num(h, 2)),
            Some('I') => out.push_str(&num(if h % 12 == 0 { 12 } else { h % 12 }, 2)),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&num(mi, 2)),
            Some('S') => out.push_str(&num(s, 2)),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (-2.5e-7, "-2.5e-07"),
            (0.1, "0.1"),
            (1.2345678901234567e20, "1.2345678901234567e+20"),
        ] {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 13:45:09 UTC (checked with Python), a Friday, day 208 of a leap year
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A %j %-d/%-m %y %%", 1_722_001_509),
            "26 Jul 2024 13:45:09 Friday 208 26/7 24 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%B %e", 951_782_400), "February 29"); // 2000-02-29
    }

    #[test]
    fn generation_tags_render_their_body() {
        let s = strip_generation_tags("{%- generation -%}x{% endgeneration %}");
        assert_eq!(s, "{%- if true -%}x{% endif %}");
    }
}
