//! Property / fuzz tests of trl-reward's parsers of untrusted input (issue #10): preference
//! rows (`data::parse_row`, JSONL files) and chat templates (`chat::ChatTemplate`, compiled
//! and rendered with random conversations). Bad input gives a typed error, never a panic, a
//! hang or unbounded memory. Seeded and replayable: see `trl-core/tests/fuzz_util`.
//!
//! Short (CI) run: `cargo test -p trl-reward --test fuzz` (~2 s). Long run:
//! `TRL_RS_FUZZ_SEED=0x10f6 TRL_RS_FUZZ_CASES=25000 cargo test -p trl-reward --test fuzz`:
//! 25 000 cases for each of the 3 fuzz targets, 0 panics, 0 hangs (2026-11-30, after the fix
//! of the one panic it found: minijinja slicing an empty string with `[::-1]`).

#[path = "../../trl-core/tests/fuzz_util/mod.rs"]
mod fuzz_util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use fuzz_util::{
    fuzz, interesting_json, mutate_bytes, mutate_json, mutate_text, mutated_json_text, random_string, show_text, Rng,
    JSON_DICT,
};
use trl_core::Tokenizer;
use trl_reward::chat::{ChatTemplate, TEMPLATE_FUEL};
use trl_reward::data::{parse_row, read_rows, Content, Message, PreferenceRow};
use trl_reward::RewardError;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&data_dir().join("tokenizer")).expect("tests/fixtures/data/tokenizer")
}

/// A fresh directory under the system temp dir (trl-reward has no tempfile dev-dependency).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trl-rs-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

// ---------------------------------------------------------------------------------------------
// preference rows
// ---------------------------------------------------------------------------------------------

const ROW_KEYS: &[&str] = &[
    "prompt",
    "chosen",
    "rejected",
    "margin",
    "role",
    "content",
    "name",
    "tool_calls",
    "reasoning_content",
    "thinking",
    "user",
    "assistant",
];

/// Every JSON line of the data fixtures (the malformed ones included).
fn row_seeds() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("data fixtures")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let rows: Vec<Value> = files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).expect("jsonl").lines().map(String::from).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    assert!(rows.len() > 10, "too few seed rows");
    rows
}

fn kinds_agree(row: &PreferenceRow) -> bool {
    let conv = row.chosen.is_conversational();
    row.rejected.is_conversational() == conv && row.prompt.as_ref().is_none_or(|p| p.is_conversational() == conv)
}

fn messages(c: &Content) -> &[Message] {
    match c {
        Content::Messages(m) => m,
        Content::Text(_) => &[],
    }
}

/// The properties of a parsed row: one kind throughout, no null or duplicated role/content
/// keys in messages, and serialising it gives the same row back.
fn check_row(row: &PreferenceRow) {
    assert!(kinds_agree(row), "a row mixes text and conversations: {row:?}");
    for side in [Some(&row.chosen), Some(&row.rejected), row.prompt.as_ref()].into_iter().flatten() {
        for m in messages(side) {
            assert!(m.extra.values().all(|v| !v.is_null()), "null extra value kept");
            assert!(!m.extra.contains_key("role") && !m.extra.contains_key("content"));
        }
    }
    // a margin beyond f32 becomes ±inf, which JSON cannot hold: round trip only finite ones
    if row.margin.is_none_or(f32::is_finite) {
        let v = serde_json::to_value(row).expect("serialise");
        assert_eq!(parse_row(v).as_ref(), Ok(row), "serialise → parse_row changed the row");
    }
}

#[test]
fn row_seeds_parse() {
    let ok = row_seeds().into_iter().filter_map(|v| parse_row(v).ok()).inspect(check_row).count();
    assert!(ok > 10, "only {ok} seed rows parse");
}

/// A row as JSON value (structured mutations) or as a line of text.
#[derive(Clone)]
enum RowInput {
    Value(Value),
    Text(String),
}

#[test]
fn preference_rows() {
    let seeds = row_seeds();
    fuzz(
        "preference_rows",
        4000,
        move |rng| {
            let mut v = seeds[rng.below(seeds.len())].clone();
            if rng.one_in(3) {
                RowInput::Text(mutated_json_text(rng, &v, ROW_KEYS, JSON_DICT))
            } else {
                mutate_json(rng, &mut v, ROW_KEYS);
                RowInput::Value(v)
            }
        },
        |input| {
            let parsed = match input {
                RowInput::Value(v) => parse_row(v.clone()),
                RowInput::Text(t) => serde_json::from_str::<Value>(t).map_err(|e| e.to_string()).and_then(parse_row),
            };
            match parsed {
                Ok(row) => check_row(&row),
                Err(e) => assert!(!e.is_empty() && !e.contains("Some("), "error: {e}"),
            }
        },
        |input| match input {
            RowInput::Value(v) => show_text(&v.to_string()),
            RowInput::Text(t) => show_text(t),
        },
    );
}

/// Whole JSONL files of mutated lines through `read_rows`, strict and skipping bad rows.
#[test]
fn jsonl_files() {
    let seeds = row_seeds();
    let dir = scratch("jsonl");
    let path = dir.join("rows.jsonl");
    fuzz(
        "jsonl_files",
        600,
        move |rng| {
            let mut text = String::new();
            for _ in 0..rng.range(0, 6) {
                let v = &seeds[rng.below(seeds.len())];
                let line = if rng.one_in(2) { mutated_json_text(rng, v, ROW_KEYS, JSON_DICT) } else { v.to_string() };
                text.push_str(&line);
                text.push_str(if rng.one_in(8) { "\r\n" } else { "\n" });
            }
            if rng.one_in(4) {
                text = mutate_text(rng, &text, JSON_DICT);
            }
            text
        },
        move |text| {
            std::fs::write(&path, text).unwrap();
            for skip in [false, true] {
                match read_rows(&path, skip) {
                    Ok(loaded) => {
                        assert!(!loaded.rows.is_empty());
                        assert!(loaded.rows.len() + loaded.skipped <= text.lines().count());
                        assert!(skip || loaded.skipped == 0);
                        loaded.rows.iter().for_each(check_row);
                    }
                    Err(e) => {
                        assert!(matches!(e, RewardError::Row { .. } | RewardError::Data { .. }), "{e:?}");
                        assert!(e.to_string().contains("rows.jsonl"), "{e}");
                    }
                }
            }
        },
        |t| show_text(t),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// chat templates
// ---------------------------------------------------------------------------------------------

const QWEN: &str = r#"{%- if tools %}{{- '<|im_start|>system\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}{{- "\n\n# Tools\n\n<tools>" }}{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}{{- "\n</tools><|im_end|>\n" }}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- endif %}{%- endif %}
{%- for message in messages %}{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- elif message.role == "assistant" %}{{- '<|im_start|>' + message.role }}{%- if message.content %}{{- '\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\n' }}{%- elif message.role == "tool" %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"#;

const LLAMA3: &str = r#"{{- bos_token }}{%- set date_string = strftime_now("%d %b %Y") %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "" %}{%- endif %}{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}{{- "Today Date: " + date_string + "\n\n" }}{{- system_message }}{{- "<|eot_id|>" }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;

const MISTRAL: &str = r#"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"#;

const THINKING: &str = r#"{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}{%- for message in messages %}{%- if message.role == "assistant" %}{%- set content = message.content %}{%- set reasoning_content = '' %}{%- if message.reasoning_content is defined and message.reasoning_content is not none %}{%- set reasoning_content = message.reasoning_content %}{%- else %}{%- if '</think>' in message.content %}{%- set content = message.content.split('</think>')[-1].lstrip('\n') %}{%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}{%- endif %}{%- endif %}{{- '<|im_start|>' + message.role }}{% generation %}{%- if loop.index0 > ns.last_query_index %}{{- '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}{%- else %}{{- '\n' + content }}{%- endif %}{% endgeneration %}{{- '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"#;

/// Templates from the fixtures plus real-world shapes (ChatML with tools, Llama 3, Mistral's
/// alternation check, a thinking template with `namespace` and `{% generation %}`).
fn template_seeds() -> Vec<String> {
    let mut v: Vec<String> = ["fancy.jinja", "strict.jinja"]
        .iter()
        .map(|f| std::fs::read_to_string(data_dir().join("templates").join(f)).expect("template fixture"))
        .collect();
    for tok in ["tokenizer", "tokenizer-bos"] {
        let t = Tokenizer::from_dir(&data_dir().join(tok)).expect("tokenizer");
        v.push(t.chat_template.expect("fixture tokenizer has a chat template"));
    }
    v.extend([QWEN, LLAMA3, MISTRAL, THINKING].map(String::from));
    v
}

/// Jinja fragments to splice into templates: syntax, loops (some huge), macros (some
/// recursive), filters, Python methods, slicing, arithmetic on strings and sequences.
const JINJA_DICT: &[&[u8]] = &[
    b"{{",
    b"}}",
    b"{%",
    b"%}",
    b"{#",
    b"#}",
    b"{%-",
    b"-%}",
    b"{% for m in messages %}",
    b"{% endfor %}",
    b"{% if ",
    b" %}",
    b"{% endif %}",
    b"{% else %}",
    b"{% elif true %}",
    b"{% set ns = namespace(x=0, s='', l=[]) %}",
    b"{% set ns.x = ns.x + 1 %}",
    b"{% set ns.s = ns.s ~ ns.s ~ 'ab' %}",
    b"{% set ns.l = [ns.l] %}",
    b"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    b"{% macro g(n) %}{{ n }}{{ caller() }}{% endmacro %}{% call g(1) %}x{% endcall %}",
    b"{% filter upper %}",
    b"{% endfilter %}",
    b"{% raw %}",
    b"{% endraw %}",
    b"{% with a = 1 %}",
    b"{% endwith %}",
    b"{% break %}",
    b"{% continue %}",
    b"{% include 'x' %}",
    b"{% extends 'chat_template' %}",
    b"{% import 'chat_template' as t %}",
    b"{% generation %}",
    b"{% endgeneration %}",
    b"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    b"{% for i in range(1000) %}",
    b"range(10**9)",
    b"range(100000)",
    b"{{ messages | tojson(indent=2) }}",
    b"{{ messages[0] | tojson(sort_keys=true, ensure_ascii=true) }}",
    b"| tojson",
    b"| length",
    b"| list",
    b"| join(', ')",
    b"| sort",
    b"| unique",
    b"| reverse",
    b"| trim",
    b"| replace('a', 'bb')",
    b"| int",
    b"| float",
    b"| first",
    b"| last",
    b"| items",
    b"| dictsort",
    b"| batch(3)",
    b"| map(attribute='role')",
    b"| selectattr('role', 'equalto', 'user')",
    b"| string",
    b"| safe",
    b"| default('d')",
    b"| indent(4)",
    b"| wordcount",
    b"messages[::-1]",
    b"messages[1:]",
    b"messages[-1]",
    b"messages[10**18]",
    b"message.content.split()",
    b"message['content'].strip()",
    b".startswith('<')",
    b".upper()",
    b".items()",
    b".get('name')",
    b".replace('x', 'yy')",
    b".format(1)",
    b"loop.index0",
    b"loop.cycle('a', 'b')",
    b"loop.previtem",
    b"loop.length",
    b"raise_exception('boom')",
    b"strftime_now('%Y-%m-%d %-d %j %%')",
    b"'x' * 100000",
    b"'ab' * 10**9",
    b"[1] * 10**18",
    b"[messages] * 1000",
    b" ~ ",
    b" + ",
    b" * ",
    b" ** ",
    b" // ",
    b" % ",
    b" / 0",
    b" is defined",
    b" is none",
    b" in ",
    b" not ",
    b"(",
    b")",
    b"[",
    b"]",
    b"'",
    b"\"",
    b"none",
    b"true",
    b"bos_token",
    b"eos_token",
    b"add_generation_prompt",
    b"dict(a=1)",
    b"namespace()",
];

const ROLES: &[&str] = &["user", "assistant", "system", "tool", "", "User", "developer"];
const EXTRA_KEYS: &[&str] = &["name", "tool_calls", "reasoning_content", "thinking", "reasoning", "tool_call_id"];

fn random_messages(rng: &mut Rng) -> Vec<Message> {
    (0..rng.range(0, 6))
        .map(|_| {
            let role = if rng.one_in(8) { random_string(rng) } else { rng.pick(ROLES).to_string() };
            let content = match rng.below(4) {
                0 => random_string(rng),
                1 => "<think>\nhmm\n</think>\n\nAnswer.".to_string(),
                _ => rng.pick(&["Hello", "!cmd", "  padded  ", "2+2?", "Cat — « chat »", ""]).to_string(),
            };
            let mut m = Message::new(role, content);
            for _ in 0..rng.below(3) {
                let v = if rng.one_in(3) {
                    json!([{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}])
                } else {
                    interesting_json(rng, EXTRA_KEYS)
                };
                if !v.is_null() {
                    m.extra.insert(rng.pick(EXTRA_KEYS).to_string(), v);
                }
            }
            m
        })
        .collect()
}

#[derive(Clone)]
struct TemplateCase {
    source: String,
    messages: Vec<Message>,
}

const ATOMS: &[&str] = &[
    "messages",
    "messages[0]",
    "messages[-1]",
    "messages[0].content",
    "messages[0]['role']",
    "messages | length",
    "message",
    "message.content",
    "loop.index0",
    "'text'",
    "''",
    "'<|im_start|>'",
    "0",
    "1",
    "-1",
    "10**9",
    "2**63",
    "1.5",
    "1e308",
    "none",
    "true",
    "[1, 'a', none]",
    "{'a': 1, 'b': [true]}",
    "range(5)",
    "range(100000)",
    "bos_token",
    "eos_token",
    "add_generation_prompt",
    "tools",
    "ns.x",
    "namespace(x=1)",
    "dict(a=1)",
    "'x' * 1000",
    "[messages] * 1000",
    "strftime_now('%d %b %Y')",
];

const OPS: &[&str] = &[
    " + ", " - ", " * ", " / ", " // ", " % ", " ** ", " ~ ", " == ", " != ", " < ", " and ", " or ", " in ",
    " not in ",
];

const FILTERS: &[&str] = &[
    "tojson",
    "tojson(indent=2)",
    "tojson(sort_keys=true, ensure_ascii=true)",
    "length",
    "list",
    "join(', ')",
    "sort",
    "unique",
    "reverse",
    "trim",
    "upper",
    "lower",
    "replace('a', 'bb')",
    "int",
    "float",
    "first",
    "last",
    "items",
    "dictsort",
    "batch(2)",
    "map(attribute='role')",
    "selectattr('role', 'equalto', 'user')",
    "string",
    "default('d')",
    "indent(2)",
    "wordcount",
    "round",
    "abs",
    "sum",
    "min",
    "max",
    "title",
    "capitalize",
    "count",
    "escape",
    "safe",
    "attr('role')",
    "groupby('role')",
    "slice(2)",
    "select",
    "reject",
    "bool",
    "pprint",
];

const METHODS: &[&str] = &[
    ".strip()",
    ".split()",
    ".split(',')",
    ".startswith('<')",
    ".endswith('>')",
    ".upper()",
    ".lower()",
    ".replace('a', 'b')",
    ".items()",
    ".keys()",
    ".values()",
    ".get('role')",
    ".get('name', 'x')",
    ".lstrip('\\n')",
    ".rstrip()",
    ".title()",
    ".format(1)",
    ".count('a')",
    ".find('x')",
    ".splitlines()",
    ".isdigit()",
    "[1:]",
    "[::-1]",
    "[0]",
    "[-1]",
    "['content']",
    ".content",
    ".role",
];

/// A random Jinja expression over what chat templates see.
fn expr(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.one_in(3) {
        return rng.pick(ATOMS).to_string();
    }
    match rng.below(6) {
        0 => format!("{}{}{}", expr(rng, depth - 1), rng.pick(OPS), expr(rng, depth - 1)),
        1 => format!("{} | {}", expr(rng, depth - 1), rng.pick(FILTERS)),
        2 => format!("({}){}", expr(rng, depth - 1), rng.pick(METHODS)),
        3 => format!("not {}", expr(rng, depth - 1)),
        4 => format!("{} if {} else {}", expr(rng, depth - 1), expr(rng, depth - 1), expr(rng, depth - 1)),
        _ => format!("[{}, {}]", expr(rng, depth - 1), expr(rng, depth - 1)),
    }
}

/// A random, balanced template statement (possibly nesting others).
fn statement(rng: &mut Rng, depth: usize) -> String {
    let body = |rng: &mut Rng| if depth == 0 { "x".to_string() } else { statement(rng, depth - 1) };
    match rng.below(14) {
        0..=2 => format!("{{{{ {} }}}}", expr(rng, 3)),
        3 => format!("{{% if {} %}}{}{{% elif {} %}}{}{{% else %}}{}{{% endif %}}", expr(rng, 2), body(rng), expr(rng, 2), body(rng), body(rng)),
        4 => format!("{{% for message in {} %}}{}{{{{ loop.index }}}}{{% endfor %}}", expr(rng, 2), body(rng)),
        5 => format!("{{% for x in {} %}}{{% if loop.first %}}{{% continue %}}{{% endif %}}{{{{ x }}}}{{% else %}}{}{{% endfor %}}", expr(rng, 2), body(rng)),
        6 => format!("{{% set v = {} %}}{{{{ v }}}}", expr(rng, 3)),
        7 => format!("{{% set ns = namespace(x={}) %}}{{% for m in messages %}}{{% set ns.x = {} %}}{{% endfor %}}{{{{ ns.x }}}}", expr(rng, 2), expr(rng, 2)),
        8 => format!("{{% macro m(a, b=1) %}}{{{{ a }}}}{}{{% endmacro %}}{{{{ m({}) }}}}", body(rng), expr(rng, 2)),
        9 => format!("{{% filter upper %}}{}{{% endfilter %}}", body(rng)),
        10 => format!("{{% set c %}}{}{{% endset %}}{{{{ c }}}}", body(rng)),
        11 => format!("{{% macro r(n) %}}{{% if n > 0 %}}{{{{ r(n - 1) }}}}{{% endif %}}{{% endmacro %}}{{{{ r({}) }}}}", rng.pick(&[3, 100, 600, 100000])),
        12 => format!("{{{{ raise_exception({}) }}}}", expr(rng, 1)),
        _ => "{% raw %}{{ x }}{% endraw %}".to_string(),
    }
}

/// Places between template tags, where a whole statement can go.
fn boundaries(src: &str) -> Vec<usize> {
    let mut v = vec![0, src.len()];
    for pat in ["%}", "}}"] {
        v.extend(src.match_indices(pat).map(|(i, _)| i + 2));
    }
    v
}

/// A template: a seed with whole statements inserted, an expression replaced, a tag removed,
/// two seeds spliced, or bytes and Jinja fragments mutated (for the syntax-error paths).
fn gen_template(rng: &mut Rng, seeds: &[String]) -> TemplateCase {
    let mut source = seeds[rng.below(seeds.len())].clone();
    for _ in 0..rng.range(1, 3) {
        match rng.below(10) {
            0..=3 => {
                let b = boundaries(&source);
                let at = *rng.pick(&b);
                source.insert_str(at, &statement(rng, 2));
            }
            4 | 5 => {
                // replace the expression of one `{{ … }}` or `{% if … %}`
                let spans: Vec<(usize, usize)> = source
                    .match_indices("{{")
                    .filter_map(|(i, _)| source[i + 2..].find("}}").map(|j| (i + 2, i + 2 + j)))
                    .chain(
                        source
                            .match_indices("{% if ")
                            .filter_map(|(i, _)| source[i + 6..].find("%}").map(|j| (i + 6, i + 6 + j))),
                    )
                    .collect();
                if !spans.is_empty() {
                    let (a, b) = *rng.pick(&spans);
                    source.replace_range(a..b, &format!(" {} ", expr(rng, 3)));
                }
            }
            6 => {
                let spans: Vec<(usize, usize)> = source
                    .match_indices("{{")
                    .filter_map(|(i, _)| source[i..].find("}}").map(|j| (i, i + j + 2)))
                    .collect();
                if !spans.is_empty() {
                    let (a, b) = *rng.pick(&spans);
                    source.replace_range(a..b, "");
                }
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let (a, b) = (*rng.pick(&boundaries(&source)), *rng.pick(&boundaries(other)));
                source = format!("{}{}", &source[..a], &other[b..]);
            }
            8 => {
                let mut b = source.into_bytes();
                mutate_bytes(rng, &mut b, &[b"{{", b"}}", b"{%", b"%}", b"'", b"\""]);
                source = String::from_utf8_lossy(&b).into_owned();
            }
            _ => source = mutate_text(rng, &source, JINJA_DICT),
        }
    }
    TemplateCase { source, messages: random_messages(rng) }
}

fn check_template(tok: &Tokenizer, case: &TemplateCase) {
    let t0 = Instant::now();
    let result = ChatTemplate::new(&case.source, tok).and_then(|t| t.render(&case.messages));
    match result {
        Ok(text) => assert!(text.len() <= trl_reward::chat::TEMPLATE_MAX_OUTPUT),
        Err(RewardError::Template(msg)) => assert!(!msg.is_empty()),
        Err(e) => panic!("not a template error: {e:?}"),
    }
    // fuel and the output bound keep every render short, even in an unoptimised build
    assert!(t0.elapsed() < Duration::from_secs(15), "render took {:?}", t0.elapsed());
}

#[test]
fn template_seeds_render() {
    let tok = tokenizer();
    let msgs =
        vec![Message::new("system", "Be terse."), Message::new("user", "Hi"), Message::new("assistant", "Hello")];
    let user_assistant = &msgs[1..];
    for (i, src) in template_seeds().iter().enumerate() {
        let t = ChatTemplate::new(src, &tok).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        let out = t.render(&msgs).or_else(|_| t.render(user_assistant)).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(out.contains("Hello"), "seed {i}: {out}");
    }
}

#[test]
fn chat_templates() {
    let seeds = template_seeds();
    let tok = tokenizer();
    fuzz(
        "chat_templates",
        1500,
        move |rng| gen_template(rng, &seeds),
        move |case| check_template(&tok, case),
        |case| {
            let msgs = serde_json::to_string(&case.messages).unwrap_or_default();
            format!("template {}\nmessages {}", show_text(&case.source), show_text(&msgs))
        },
    );
}

/// Templates that would run forever, recurse without end or fill memory stop with an error
/// that says why.
#[test]
fn template_limits() {
    let tok = tokenizer();
    let msgs = vec![Message::new("user", "Hi")];
    let render = |src: &str| {
        let t0 = Instant::now();
        let r = ChatTemplate::new(src, &tok).and_then(|t| t.render(&msgs));
        assert!(t0.elapsed() < Duration::from_secs(15), "{src}: took {:?}", t0.elapsed());
        match r {
            Err(RewardError::Template(m)) => m,
            other => panic!("{src}: expected a template error, got {other:?}"),
        }
    };
    let loops = "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
    let e = render(loops);
    assert!(e.contains(&TEMPLATE_FUEL.to_string()) && e.contains("loop"), "{e}");
    assert!(render("{% for i in range(10**9) %}{% endfor %}").contains("range"));
    let e = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(e.contains("recursion"), "{e}");
    let e = render(&format!("{{{{ {}1{} }}}}", "[".repeat(2000), "]".repeat(2000)));
    assert!(e.contains("recursion"), "{e}");
    render("{{ 'x' * 10**10 }}");
    let e = render("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
    assert!(e.contains("MiB"), "{e}");
    let e = render("{{ messages | tojson(indent=10**9) }}");
    assert!(e.contains("indent"), "{e}");
    let e = render("{{ [1] * 10**18 }}");
    assert!(e.contains("too large"), "{e}");
    let e = render("{{ ([messages] * 10**18) | tojson }}");
    assert!(e.contains("too large"), "{e}");
    let e = render("{% set s = 'x' * 10**8 %}{{ [s, s, s, s] }}");
    assert!(e.contains("too large"), "{e}");
    // minijinja 2.24 panics slicing an empty string or list with a negative step: an error here
    for src in ["{{ ''[::-1] }}", "{{ [][::-1] }}", "{% for x in [][::-1] %}{% endfor %}"] {
        assert!(render(src).contains("minijinja"), "{src}");
    }
    // a list nested 200 000 deep (dropped, turned into a string and compared recursively by
    // minijinja) needs more stack than a thread has: renders run on a large one
    let deep = "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% for j in range(200) %}\
                {% set ns.l = [ns.l] %}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(deep, &tok).unwrap();
    assert_eq!(t.render(&msgs).unwrap(), "");
    let s = format!("{deep}{{{{ (ns.l | string) | length }}}} {{{{ [ns.l, [1]] | sort | length }}}}");
    assert_eq!(ChatTemplate::new(&s, &tok).unwrap().render(&msgs).unwrap(), "400002 2");
    // deep values built in a loop cannot be printed either
    let e =
        render("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}");
    assert!(e.contains("too large"), "{e}");
}
