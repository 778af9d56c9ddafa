//! The trl-reward data layer against TRL 0.28 (issue 6, "Data"): JSONL and Parquet (snappy and
//! gzip) readers, TRL's tokenization of plain implicit, explicit-prompt and conversational rows
//! (token ids compared exactly with `RewardTrainer(...).train_dataset`), the `max_length`
//! filter, margins, chat templates rendered as transformers renders them, and the errors for
//! malformed rows, files and templates.
//!
//! Fixtures: `tests/fixtures/data/` (`make_data_fixtures.py`; what each file holds is in its
//! docstring).

use std::path::{Path, PathBuf};

use serde_json::Value;

use trl_core::Tokenizer;
use trl_reward::chat::apply_chat_template;
use trl_reward::data::{
    jsonl_lines, parse_row, read_rows, render, tokenize, Content, JsonlLine, Message, PreferenceRow, SkippedRow,
    Tokenized,
};
use trl_reward::parquet::ParquetFile;
use trl_reward::RewardError;
use trl_tests::fixture;

fn data(name: &str) -> PathBuf {
    let p = fixture("data").join(name);
    assert!(p.exists(), "missing fixture {}: run `python3 tests/fixtures/make_data_fixtures.py`", p.display());
    p
}

fn expected() -> Value {
    let path = data("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("expected.json")).expect("expected.json is JSON")
}

fn tokenizer(dir: &str) -> Tokenizer {
    Tokenizer::from_dir(&data(dir)).unwrap_or_else(|e| panic!("tokenizer {dir}: {e}"))
}

const EOS: &str = "<|endoftext|>";

fn rows(file: &str) -> Vec<PreferenceRow> {
    let loaded = read_rows(&data(file), false).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(loaded.skipped, 0);
    loaded.rows
}

fn ids(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .expect("list of id lists")
        .iter()
        .map(|r| r.as_array().expect("ids").iter().map(|x| x.as_i64().expect("id")).collect())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("list").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

/// Tokenizes the case's file(s) as `xtask train` does and checks every id against TRL's.
fn check_case(name: &str) -> Tokenized {
    let exp = expected();
    let case = &exp["cases"][name];
    assert!(case.is_object(), "no case {name} in expected.json");
    let tok = tokenizer(case["tokenizer"].as_str().unwrap());
    let template = case["template_file"].as_str().map(|f| std::fs::read_to_string(data(f)).expect("template"));
    let max_length = case["max_length"].as_u64().unwrap() as usize;
    let mut files = vec![case["jsonl"].as_str().unwrap().to_string()];
    files.extend(strings(&case["parquet"]));
    let mut first: Option<Tokenized> = None;
    for file in &files {
        let rows = rows(file);
        assert_eq!(rows.len() as u64, case["rows"].as_u64().unwrap(), "{name}/{file}: row count");
        let t = tokenize(&rows, &tok, EOS, Some(max_length), template.as_deref())
            .unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
        assert_eq!(t.dropped_too_long as u64, case["dropped"].as_u64().unwrap(), "{name}/{file}: rows dropped");
        assert_eq!(t.dropped_empty, 0, "{name}/{file}");
        let chosen: Vec<Vec<i64>> = t.pairs.iter().map(|p| p.chosen.clone()).collect();
        let rejected: Vec<Vec<i64>> = t.pairs.iter().map(|p| p.rejected.clone()).collect();
        let kept = case["kept"].as_array().unwrap();
        if let Some(texts) = case.get("chosen_text") {
            for (i, (p, (want_c, want_r))) in
                t.pairs.iter().zip(strings(texts).into_iter().zip(strings(&case["rejected_text"]))).enumerate()
            {
                assert_eq!(p.chosen_text, want_c, "{name}/{file}: chosen text of file row {}", kept[i]);
                assert_eq!(p.rejected_text, want_r, "{name}/{file}: rejected text of file row {}", kept[i]);
            }
        }
        let want_c = ids(&case["chosen_ids"]);
        let want_r = ids(&case["rejected_ids"]);
        assert_eq!(chosen.len(), want_c.len(), "{name}/{file}: rows kept");
        for i in 0..want_c.len() {
            assert_eq!(chosen[i], want_c[i], "{name}/{file}: chosen ids of file row {}", kept[i]);
            assert_eq!(rejected[i], want_r[i], "{name}/{file}: rejected ids of file row {}", kept[i]);
        }
        match &first {
            None => first = Some(t),
            Some(f) => assert_eq!(f.pairs, t.pairs, "{name}: {file} differs from {}", files[0]),
        }
    }
    first.expect("at least one file")
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

#[test]
fn jsonl_and_parquet_snappy_and_gzip_give_identical_rows() {
    for (jsonl, parquets) in [
        ("plain.jsonl", &["plain.parquet", "plain.gzip.parquet"][..]),
        ("explicit.jsonl", &["explicit.parquet"][..]),
        ("chat.jsonl", &["chat.parquet"][..]),
        ("strict.jsonl", &["strict.parquet"][..]),
    ] {
        let want = rows(jsonl);
        for p in parquets {
            assert_eq!(rows(p), want, "{p} vs {jsonl}");
        }
    }
    // the fixtures really use the compressions they are named after
    let raw = |f: &str| std::fs::read(data(f)).unwrap();
    assert_ne!(raw("plain.parquet"), raw("plain.gzip.parquet"));
}

#[test]
fn rows_have_the_expected_shapes() {
    let plain = rows("plain.jsonl");
    assert!(plain.iter().all(|r| r.prompt.is_none() && r.margin.is_none()));
    assert_eq!(plain[0].chosen, Content::Text("The cat sat on the mat.".into()));

    let chat = rows("chat.parquet");
    let Some(Content::Messages(prompt)) = &chat[0].prompt else { panic!("chat prompt is messages") };
    assert_eq!(prompt[0], Message::new("system", "You are terse."));
    // Parquet stores `name: null` in every message but one; nulls are dropped as TRL drops them
    let Some(Content::Messages(named)) = &chat[2].prompt else { panic!() };
    assert!(named[0].extra.is_empty(), "{:?}", named[0].extra);
    assert_eq!(named[1].extra.get("name"), Some(&Value::String("alice".into())));
}

#[test]
fn margins_come_through() {
    let exp = expected();
    let want: Vec<f32> = [1.0, 0.25, -0.5, 2.0, 0.0].into_iter().map(|m: f64| m as f32).collect::<Vec<_>>();
    for file in ["explicit.jsonl", "explicit.parquet"] {
        let got: Vec<f32> = rows(file).iter().map(|r| r.margin.expect("margin")).collect();
        assert_eq!(got, want, "{file}");
    }
    // and survive tokenization, for the rows TRL keeps, with TRL's values
    let t = check_case("explicit");
    let trl: Vec<f32> =
        exp["cases"]["explicit"]["margin"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap() as f32).collect();
    assert_eq!(t.pairs.iter().map(|p| p.margin.unwrap()).collect::<Vec<_>>(), trl);
}

// ---------------------------------------------------------------------------------------------
// Tokenization = TRL's
// ---------------------------------------------------------------------------------------------

#[test]
fn plain_implicit_rows_match_trl_ids_and_drops() {
    let t = check_case("plain");
    assert_eq!(t.dropped_too_long, 2);
    assert!(t.pairs.iter().all(|p| p.chosen.last() == Some(&0) && p.rejected.last() == Some(&0)));
    // "Hello world<|endoftext|>" already ends with the EOS: not doubled
    assert_eq!(t.pairs[1].chosen_text, format!("Hello world{EOS}"));
}

#[test]
fn plain_rows_get_the_post_processor_bos_like_trl() {
    // tokenizer(text) adds the tokenizer's special tokens (here a BOS) to plain text
    let t = check_case("plain_bos");
    assert!(t.pairs.iter().all(|p| p.chosen[0] == 0 && p.rejected[0] == 0));
}

#[test]
fn explicit_prompt_rows_match_trl_ids_and_drops() {
    let t = check_case("explicit");
    assert_eq!(t.dropped_too_long, 1);
    // TRL appends the EOS to the (empty) rejected side before concatenating the prompt, which
    // itself ends with the EOS: two EOS tokens
    let p = &t.pairs[2];
    assert_eq!(p.rejected_text, format!("Ends with eos{EOS}{EOS}"));
    assert_eq!(&p.rejected[p.rejected.len() - 2..], &[0, 0]);
}

#[test]
fn conversational_rows_match_trl_ids_and_drops() {
    let t = check_case("chat");
    assert_eq!(t.dropped_too_long, 1);
    assert!(t.pairs[0].chosen_text.starts_with("<|im_start|>system\nYou are terse.<|im_end|>\n"));
}

#[test]
fn strict_template_with_bos_matches_trl_without_a_second_bos() {
    // trim_blocks/lstrip_blocks, namespace, {% continue %}, .strip(); apply_chat_template
    // tokenizes without adding special tokens, so the template's bos_token is the only BOS
    let t = check_case("strict");
    assert_eq!(t.dropped_too_long, 1);
    for p in &t.pairs {
        assert_eq!(p.chosen[0], 0);
        assert_ne!(p.chosen[1], 0, "double BOS");
    }
}

#[test]
fn python_flavoured_template_matches_trl() {
    // tojson as json.dumps, str() of True/None/dicts/lists/floats, .startswith/.upper/.get/
    // .items(), slicing, {% continue %}
    let t = check_case("fancy");
    assert_eq!(t.dropped_too_long, 1);
    assert!(t.pairs[0].chosen_text.contains("{'role': 'system', 'content': 'You are terse.'}"));
    assert!(t.pairs[2].chosen_text.contains("[cmd STATUS]"));
}

#[test]
fn tokenizer_config_template_is_used_and_explicit_one_wins() {
    let tok = tokenizer("tokenizer");
    let msgs = [Message::new("user", "hi")];
    assert_eq!(
        apply_chat_template(tok.chat_template.as_deref().unwrap(), &msgs, &tok).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n"
    );
    let side = Content::Messages(msgs.to_vec());
    assert_eq!(render(None, &side, &tok, EOS, None).unwrap(), "<|im_start|>user\nhi<|im_end|>\n");
    assert_eq!(render(None, &side, &tok, EOS, Some("{{ messages[0].content }}!")).unwrap(), "hi!");
}

#[test]
fn generation_blocks_and_strftime_render() {
    let tok = tokenizer("tokenizer");
    let msgs = [Message::new("assistant", "ok")];
    let t = "{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration %}{% endfor %}";
    assert_eq!(apply_chat_template(t, &msgs, &tok).unwrap(), "ok");
    let date = apply_chat_template("{{ strftime_now('%Y') }}", &msgs, &tok).unwrap();
    assert!(date.len() == 4 && date.starts_with('2'), "{date}");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn malformed_jsonl_lines_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"chosen": "a", "rejected": "b"}"#;
    for (bad, want) in [
        ("{not json", "invalid JSON"),
        (r#"{"chosen": "only chosen"}"#, "missing `rejected`"),
        (
            r#"{"chosen": [{"role": "user", "content": "hi"}], "rejected": "plain"}"#,
            "mixes plain text and conversations",
        ),
        (
            r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}"#,
            "mixes plain text and conversations",
        ),
        (r#"{"chosen": 3, "rejected": "b"}"#, "`chosen` must be a string or a list"),
        (
            r#"{"chosen": [{"role": "user"}], "rejected": [{"role": "user", "content": "x"}]}"#,
            "needs a string `content`",
        ),
        (r#"{"chosen": "a", "rejected": "b", "margin": "big"}"#, "`margin` must be a number"),
        ("[1, 2]", "not a JSON object"),
    ] {
        let path = write(dir.path(), "rows.jsonl", &format!("{good}\n\n{bad}\n{good}\n"));
        let err = read_rows(&path, false).expect_err(bad);
        assert!(matches!(err, RewardError::Row { line: 3, .. }), "{bad}: {err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{}:3: ", path.display())), "{msg}");
        assert!(msg.contains(want), "{bad}: {msg}");
        assert!(msg.contains("--skip-bad-rows"), "{msg}");
        let loaded = read_rows(&path, true).expect("skipped");
        assert_eq!((loaded.rows.len(), loaded.skipped), (2, 1), "{bad}");
    }
}

#[test]
fn skip_bad_rows_skips_and_counts() {
    let path = data("bad.jsonl");
    let err = read_rows(&path, false).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2: invalid JSON"), "{err}");
    let loaded = read_rows(&path, true).unwrap();
    assert_eq!(loaded.skipped, 3);
    let chosen: Vec<&Content> = loaded.rows.iter().map(|r| &r.chosen).collect();
    assert_eq!(
        chosen,
        [&Content::Text("good one".into()), &Content::Text("good two".into()), &Content::Text(" good three".into())]
    );
    // a file of nothing but bad rows is still an error
    let dir = tempfile::tempdir().unwrap();
    let all_bad = write(dir.path(), "bad.jsonl", "{\n[]\n");
    let err = read_rows(&all_bad, true).unwrap_err().to_string();
    assert!(err.contains("no preference rows (all 2 rows are malformed)"), "{err}");
}

#[test]
fn parquet_missing_column_is_a_clear_error() {
    let path = data("missing_rejected.parquet");
    for skip in [false, true] {
        let err = read_rows(&path, skip).unwrap_err().to_string();
        assert!(err.contains("missing_rejected.parquet"), "{err}");
        assert!(err.contains("no `rejected` column (the file has: `chosen`)"), "{err}");
    }
}

#[test]
fn parquet_bad_row_names_file_and_row_and_can_be_skipped() {
    let path = data("null_rejected.parquet");
    let err = read_rows(&path, false).unwrap_err().to_string();
    assert!(err.contains("null_rejected.parquet: row 2: missing `rejected`"), "{err}");
    let loaded = read_rows(&path, true).unwrap();
    assert_eq!((loaded.rows.len(), loaded.skipped), (2, 1));
}

#[test]
fn raising_template_is_a_template_error_with_trl_message() {
    let exp = expected();
    let case = &exp["errors"]["bad_role"];
    let tok = tokenizer(case["tokenizer"].as_str().unwrap());
    let rows = rows(case["jsonl"].as_str().unwrap());
    let err = tokenize(&rows, &tok, EOS, Some(1024), None).unwrap_err();
    let RewardError::Template(msg) = &err else { panic!("not a template error: {err:?}") };
    assert!(msg.contains(case["message"].as_str().unwrap()), "{msg}");
    assert!(msg.contains("preference row 1"), "{msg}");
}

#[test]
fn conversations_without_a_template_say_to_pass_chat_template() {
    let tok = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    assert!(tok.chat_template.is_none());
    let err = tokenize(&rows("chat.jsonl"), &tok, EOS, None, None).unwrap_err();
    assert!(matches!(err, RewardError::Template(_)), "{err:?}");
    assert!(err.to_string().contains("pass --chat-template"), "{err}");
    // plain rows need none
    assert!(tokenize(&rows("plain.jsonl"), &tok, EOS, None, None).is_ok());
}

#[test]
fn template_syntax_errors_and_empty_conversations_are_errors() {
    let tok = tokenizer("tokenizer");
    let msgs = [Message::new("user", "hi")];
    let err = apply_chat_template("{% for m in messages %}", &msgs, &tok).unwrap_err();
    assert!(matches!(err, RewardError::Template(_)), "{err:?}");
    let row = parse_row(serde_json::json!({"chosen": [], "rejected": [{"role": "user", "content": "x"}]})).unwrap();
    let err = tokenize(&[row], &tok, EOS, None, None).unwrap_err().to_string();
    assert!(err.contains("empty conversation"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile input: encodings, and which rows were skipped
// ---------------------------------------------------------------------------------------------

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn invalid_utf8_line_names_file_and_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = br#"{"chosen": "a", "rejected": "b"}"#;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(good);
    bytes.extend_from_slice(b"\n\n{\"chosen\": \"caf\xe9\", \"rejected\": \"b\"}\n");
    bytes.extend_from_slice(good);
    bytes.push(b'\n');
    let path = write_bytes(dir.path(), "latin1.jsonl", &bytes);
    let err = read_rows(&path, false).unwrap_err();
    assert!(matches!(err, RewardError::Row { line: 3, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}:3: invalid UTF-8 at byte 16 of the line (or pass --skip-bad-rows)", path.display())
    );
    let loaded = read_rows(&path, true).unwrap();
    assert_eq!((loaded.rows.len(), loaded.skipped), (2, 1));
    assert_eq!(
        loaded.first_skipped,
        [SkippedRow { unit: "line", number: 3, reason: "invalid UTF-8 at byte 16 of the line".into() }]
    );
}

#[test]
fn bom_and_crlf_are_accepted_and_utf16_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bom.jsonl", "\u{feff}{\"chosen\": \"a\", \"rejected\": \"b\"}\r\n\r\n");
    let loaded = read_rows(&path, false).unwrap();
    assert_eq!(loaded.rows.len(), 1);
    assert_eq!(loaded.rows[0].chosen, Content::Text("a".into()));

    let utf16: Vec<u8> =
        [0xff, 0xfe].into_iter().chain("{\"chosen\"".encode_utf16().flat_map(u16::to_le_bytes)).collect();
    let path = write_bytes(dir.path(), "utf16.jsonl", &utf16);
    for skip in [false, true] {
        let err = read_rows(&path, skip).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: UTF-16 text (it starts with a UTF-16 byte-order mark); JSONL must be UTF-8: re-save the file \
                 as UTF-8",
                path.display()
            )
        );
    }
}

#[test]
fn jsonl_lines_numbers_lines_and_keeps_going_past_bad_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_bytes(dir.path(), "lines.jsonl", b"\xef\xbb\xbf\"one\"\n  \n\"tw\xffo\"\r\n\"three\"");
    let lines: Vec<JsonlLine> = jsonl_lines(&path).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        lines,
        [
            (1, Ok("\"one\"".to_string())),
            (3, Err("invalid UTF-8 at byte 4 of the line".to_string())),
            (4, Ok("\"three\"".to_string()))
        ]
    );
    // a directory, or a missing file, is an error naming the path
    for p in [dir.path().to_path_buf(), dir.path().join("missing.jsonl")] {
        let err = read_rows(&p, true).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", p.display())), "{err}");
    }
}

#[test]
fn loaded_keeps_the_first_five_skipped_lines_with_reasons() {
    let path = data("bad.jsonl");
    let loaded = read_rows(&path, true).unwrap();
    let lines: Vec<usize> = loaded.first_skipped.iter().map(|s| s.number).collect();
    assert_eq!(lines, [2, 3, 5]);
    assert!(loaded.first_skipped[0].reason.starts_with("invalid JSON: "), "{:?}", loaded.first_skipped);
    assert!(loaded.first_skipped[1].reason.starts_with("missing `rejected`"), "{:?}", loaded.first_skipped);
    assert!(loaded.first_skipped[2].reason.starts_with("mixes plain text and conversations"));
    let summary = loaded.skipped_summary(&path).unwrap();
    assert!(summary.starts_with(&format!("skipped 3 malformed row(s) of {} (line 2: invalid JSON: ", path.display())));
    assert!(summary.contains("; line 3: missing `rejected`"), "{summary}");

    // more than five: five kept, the rest counted
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("{\"chosen\": \"a\", \"rejected\": \"b\"}\n");
    for _ in 0..7 {
        text.push_str("[]\n");
    }
    let path = write(dir.path(), "many.jsonl", &text);
    let loaded = read_rows(&path, true).unwrap();
    assert_eq!(loaded.skipped, 7);
    let lines: Vec<usize> = loaded.first_skipped.iter().map(|s| s.number).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
    let summary = loaded.skipped_summary(&path).unwrap();
    assert!(summary.ends_with("; line 6: not a JSON object (rows need `chosen` and `rejected`, optionally `prompt` and `margin`); and 2 more)"), "{summary}");
    assert!(read_rows(&data("plain.jsonl"), true).unwrap().skipped_summary(&path).is_none());
}

#[test]
fn parquet_skipped_rows_are_named_by_row() {
    let path = data("null_rejected.parquet");
    let loaded = read_rows(&path, true).unwrap();
    assert_eq!(loaded.first_skipped.len(), 1);
    assert_eq!((loaded.first_skipped[0].unit, loaded.first_skipped[0].number), ("row", 2));
    assert!(loaded.first_skipped[0].reason.starts_with("missing `rejected`"), "{:?}", loaded.first_skipped);
    let summary = loaded.skipped_summary(&path).unwrap();
    assert!(
        summary.starts_with(&format!("skipped 1 malformed row(s) of {} (row 2: missing `rejected`", path.display()))
    );
}

#[test]
fn fake_parquet_and_parquet_rows_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let fake = write(dir.path(), "rows.PARQUET", "{\"chosen\": \"a\", \"rejected\": \"b\"}\n");
    for skip in [false, true] {
        let err = read_rows(&fake, skip).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: not a readable Parquet file: ", fake.display())), "{err}");
    }
    let file = ParquetFile::open(&data("plain.parquet")).unwrap();
    assert!(file.columns().iter().any(|c| c == "chosen"), "{:?}", file.columns());
    let rows: Vec<(usize, Value)> = file.rows(None).unwrap().collect::<Result<_, _>>().unwrap();
    let jsonl = rows_of_jsonl("plain.jsonl");
    assert_eq!(rows.len(), jsonl.len());
    assert_eq!(rows.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (1..=jsonl.len()).collect::<Vec<_>>());
    for ((_, row), want) in rows.iter().zip(&jsonl) {
        assert_eq!(row["chosen"], want["chosen"]);
        assert_eq!(row["rejected"], want["rejected"]);
    }
}

fn rows_of_jsonl(file: &str) -> Vec<Value> {
    std::fs::read_to_string(data(file))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
