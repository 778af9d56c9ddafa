//! Python-compatibility shims for chat templates: what Jinja2 under Python prints for a value
//! (`str()` for `{{ value }}`, `repr()` for `pprint`, `repr(float)`), transformers' `tojson`
//! (`json.dumps`, in [`tojson`]) and `strftime_now` (in [`strftime`]), each refusing values
//! too large or too deep to print within [`TEMPLATE_MAX_OUTPUT`].

mod strftime;
mod tojson;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind};
use serde_json::Value as Json;

use crate::chat_limits::TEMPLATE_MAX_OUTPUT;

pub(crate) use strftime::strftime_now;
pub(crate) use tojson::tojson;

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
pub(crate) fn py_str(value: &Value) -> std::result::Result<String, JinjaError> {
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

/// Python's `pprint.pformat` (Jinja2's `pprint`) without line wrapping; minijinja's own
/// indents every level of nesting anew, which makes its output quadratic in the depth.
pub(crate) fn pprint(value: Value) -> std::result::Result<String, JinjaError> {
    match value.as_str() {
        Some(s) => {
            let mut out = String::new();
            py_repr_str(s, &mut out);
            Ok(out)
        }
        None => py_str(&value),
    }
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
}
