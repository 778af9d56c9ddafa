//! transformers' `tojson` filter: Python's `json.dumps` (separators, indent, key sorting,
//! `ensure_ascii`, Python float repr, no HTML escaping).

use minijinja::value::{Kwargs, Value};
use minijinja::{Error as JinjaError, ErrorKind};
use serde_json::Value as Json;

use super::{py_number, to_json};
use crate::chat_limits::TEMPLATE_MAX_OUTPUT;

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// i.e. `json.dumps` with those arguments.
pub(crate) fn tojson(
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
