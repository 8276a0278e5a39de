//! `kiln index …`, `kiln query` and `kiln find` end to end: key values read as JSON or text,
//! every query form, exit codes, and an index kept across processes.

mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

fn kiln(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    common::run_kiln(root, args, stdin)
}

fn ok(root: &Path, args: &[&str]) -> String {
    common::kiln_ok(root, args, None)
}

fn code(root: &Path, args: &[&str]) -> i32 {
    kiln(root, args, None).status.code().unwrap()
}

/// The ids of JSON-line rows.
fn ids(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.get("id")
                .or_else(|| v.get("_id"))
                .and_then(Value::as_str)
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    ok(&root, &["db", "create", "n"]);
    let lines: String = [
        json!({"_id": "a", "n": 0, "tags": ["x", "y"], "who": {"name": "ann"}}),
        json!({"_id": "b", "n": ""}),
        json!({"_id": "c", "n": "0"}),
        json!({"_id": "d", "n": [1, "z"]}),
        json!({"_id": "e", "n": [1, "a"], "tags": ["y"]}),
        json!({"_id": "f", "n": 2.5, "who": {"name": "bo"}}),
        json!({"_id": "g", "n": null}),
    ]
    .iter()
    .map(|v| format!("{v}\n"))
    .collect();
    let o = kiln(&root, &["import", "n", "-"], Some(&lines));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (d, root)
}

#[test]
fn query_reads_keys_as_json_or_text_and_every_form_answers() {
    let (_d, root) = setup();
    let out = ok(&root, &["index", "create", "n", "by-n", "--field", "n"]);
    assert!(out.contains("7 rows"), "{out}");
    let q = |extra: &[&str]| {
        let mut a = vec!["query", "n", "by-n"];
        a.extend_from_slice(extra);
        ids(&ok(&root, &a))
    };
    assert_eq!(q(&[]), ["g", "a", "f", "b", "c", "e", "d"]);
    assert_eq!(q(&["--key", "0"]), ["a"]);
    assert_eq!(q(&["--key", "\"0\""]), ["c"]);
    assert_eq!(q(&["--key", "\"\""]), ["b"]);
    assert_eq!(q(&["--key", "null"]), ["g"]);
    assert_eq!(q(&["--keys", "0", "2.5", "nothing"]), ["a", "f"]);
    assert_eq!(q(&["--range", "0", "\"0\""]), ["a", "f", "b", "c"]);
    assert_eq!(
        q(&["--range", "0", "\"0\"", "--exclusive-end"]),
        ["a", "f", "b"]
    );
    assert_eq!(q(&["--prefix", "1"]), ["e", "d"]);
    assert_eq!(q(&["--prefix", "1", "z"]), ["d"]);
    assert_eq!(q(&["--desc", "--limit", "2"]), ["d", "e"]);
    assert_eq!(q(&["--skip", "5"]), ["e", "d"]);
    assert!(q(&["--limit", "0"]).is_empty());
    // A row: {key, id, value} in that order, and the document with --docs.
    let line = ok(&root, &["query", "n", "by-n", "--key", "2.5", "--docs"]);
    assert!(
        line.starts_with(r#"{"key":2.5,"id":"f","value":null,"doc":"#),
        "{line}"
    );
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["doc"]["who"]["name"], "bo");
    // --json: one array.
    let v: Value =
        serde_json::from_str(&ok(&root, &["--json", "query", "n", "by-n", "--key", "0"])).unwrap();
    assert_eq!(v, json!([{"key": 0, "id": "a", "value": null}]));
}

#[test]
fn compound_and_each_indexes_and_their_listing() {
    let (_d, root) = setup();
    ok(
        &root,
        &["index", "create", "n", "tags", "--field", "tags", "--each"],
    );
    ok(
        &root,
        &[
            "index", "create", "n", "who", "--field", "who.name", "--field", "n",
        ],
    );
    assert_eq!(
        ids(&ok(&root, &["query", "n", "tags", "--key", "y"])),
        ["a", "e"]
    );
    assert_eq!(
        ids(&ok(&root, &["query", "n", "who", "--prefix", "ann"])),
        ["a"]
    );
    let list = ok(&root, &["index", "list", "n"]);
    assert!(
        list.contains("tags  fields: tags (each element)  3 rows  current"),
        "{list}"
    );
    assert!(
        list.contains("who  fields: who.name, n  2 rows  current"),
        "{list}"
    );
    let v: Value = serde_json::from_str(&ok(&root, &["--json", "index", "list", "n"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    // A write in another process: the next query sees it.
    let o = kiln(
        &root,
        &["put", "n"],
        Some(r#"{"_id":"h","tags":["y","q"]}"#),
    );
    assert!(o.status.success());
    let list = ok(&root, &["index", "list", "n"]);
    assert!(list.contains("behind"), "{list}");
    assert_eq!(
        ids(&ok(&root, &["query", "n", "tags", "--key", "y"])),
        ["a", "e", "h"]
    );
    let out = ok(&root, &["index", "rebuild", "n"]);
    assert!(
        out.contains("rebuilt tags: 5 rows (8 documents mapped)"),
        "{out}"
    );
    ok(&root, &["index", "drop", "n", "tags"]);
    assert_eq!(code(&root, &["index", "drop", "n", "tags"]), 4);
    assert_eq!(code(&root, &["query", "n", "tags"]), 4);
}

#[test]
fn find_answers_the_same_with_and_without_an_index() {
    let (_d, root) = setup();
    let scan = ok(&root, &["find", "n", "--where", "who.name=bo"]);
    assert_eq!(ids(&scan), ["f"]);
    assert_eq!(ids(&ok(&root, &["find", "n", "--where", "n=0"])), ["a"]);
    assert_eq!(ids(&ok(&root, &["find", "n", "--where", "n=\"0\""])), ["c"]);
    let both = ["find", "n", "--where", "n=2.5", "--where", "who.name=bo"];
    assert_eq!(ids(&ok(&root, &both)), ["f"]);
    ok(
        &root,
        &["index", "create", "n", "names", "--field", "who.name"],
    );
    assert_eq!(ok(&root, &["find", "n", "--where", "who.name=bo"]), scan);
    assert_eq!(ids(&ok(&root, &both)), ["f"]);
    assert!(ok(&root, &["find", "n", "--where", "n=0", "--limit", "0"]).is_empty());
}

#[test]
fn bad_input_is_a_usage_error() {
    let (_d, root) = setup();
    assert_eq!(code(&root, &["find", "n", "--where", "nofield"]), 2);
    assert_eq!(code(&root, &["find", "n"]), 2);
    assert_eq!(code(&root, &["index", "create", "n", "x"]), 2);
    assert_eq!(
        code(&root, &["index", "create", "n", "x", "--field", "a..b"]),
        2
    );
    assert_eq!(
        code(&root, &["index", "create", "n", "bad/name", "--field", "a"]),
        2
    );
    ok(&root, &["index", "create", "n", "x", "--field", "n"]);
    assert_eq!(code(&root, &["query", "n", "x", "--range", "1"]), 2);
    assert_eq!(
        code(&root, &["query", "n", "x", "--key", "1", "--prefix", "2"]),
        2
    );
    assert_eq!(code(&root, &["query", "n", "x", "--exclusive-end"]), 2);
    assert_eq!(code(&root, &["query", "nodb", "x"]), 4);
}

#[test]
fn query_at_an_event_and_changes_limit() {
    let (_d, root) = setup();
    ok(&root, &["index", "create", "n", "by-n", "--field", "n"]);
    let log: Value =
        serde_json::from_str(&ok(&root, &["--json", "log", "n", "--limit", "1"])).unwrap();
    let then = log[0]["cid"]
        .as_str()
        .or(log[0]["event"].as_str())
        .unwrap()
        .to_owned();
    let o = kiln(&root, &["put", "n"], Some(r#"{"_id":"a","n":99}"#));
    assert!(o.status.success());
    assert!(ok(&root, &["query", "n", "by-n", "--key", "0"]).is_empty());
    assert_eq!(
        ids(&ok(
            &root,
            &["query", "n", "by-n", "--key", "0", "--at", &then]
        )),
        ["a"]
    );
    assert_eq!(code(&root, &["query", "n", "by-n", "--at", "nonsense"]), 2);
    // The 2 most recent changes, oldest first.
    let v: Value =
        serde_json::from_str(&ok(&root, &["--json", "changes", "n", "--limit", "2"])).unwrap();
    let got: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["g", "a"]);
}

#[test]
fn a_large_answer_streams_and_a_reader_that_stops_stops_the_query() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    ok(&root, &["db", "create", "big"]);
    let lines: String = (0..20_000)
        .map(|i| {
            format!(
                "{}\n",
                json!({"_id": format!("d{i:05}"), "n": i, "pad": "x".repeat(200)})
            )
        })
        .collect();
    let o = kiln(&root, &["import", "big", "-"], Some(&lines));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&root, &["index", "create", "big", "n", "--field", "n"]);
    // Every row, one line each, in key order.
    let all = ok(&root, &["query", "big", "n", "--docs"]);
    assert_eq!(all.lines().count(), 20_000);
    assert!(all.lines().next().unwrap().contains("\"d00000\""));
    // A reader that takes one line and goes away (as `head -1`): the query ends, cleanly.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(&root)
        .args(["query", "big", "n", "--docs"])
        .env_remove("KILN_ROOT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"d00000\""), "{first}");
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
