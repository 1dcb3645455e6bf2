//! What a user sees of a mapping the adapter refuses, and of a document it reads oddly: the
//! real binary's `check` and start-up. Every mapping error, from the YAML parser or from the
//! mapping's own checks, names the file, line and column, and the field as `rules[0].path`
//! (indexes 0-based), and exits 64.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn adapter(args: &[&str], mapping: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .args(args)
        .arg("--config")
        .arg(mapping)
        .output()
        .unwrap()
}

/// Writes `text` to `dir/name`; its path.
fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check(mapping: &Path, input: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .args(["check", "--config"])
        .arg(mapping)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap()
}

/// Mappings with one semantic error each, and the line, column and field it must name.
const BAD: &[(&str, &str, &str)] = &[
    (
        "rules:\n  - name: a\n    type: gauge\n    path: 'stats/a'\n",
        "line 4 column 11: field `rules[0].path`: ",
        "must start with",
    ),
    (
        "up_metric: app_up\nrules:\n  - {name: a, type: gauge, path: /a}\n  - name: b\n    type: histogram\n    path: /b\n    bucket: '@n'\n    buckets: {small: 1}\n",
        "line 8 column 14: field `rules[1].buckets`: ",
        "`+Inf` bucket",
    ),
    (
        "rules:\n  - name: a\n    type: gauge\n    path: /a\n    labels:\n      view: 'ancestor::view/text()'\n",
        "line 6 column 13: field `rules[0].labels.view`: ",
        "text of an open ancestor",
    ),
    (
        "rules:\n  - {name: a, type: gauge, path: /a}\n  - {name: a, type: counter, path: /b}\n",
        "line 3 column 21: field `rules[1].type`: ",
        "share a type",
    ),
    // The parser's own errors, for comparison: the same form.
    (
        "rules:\n  - name: a\n    type: gauge\n    path: /a\n    vaule: b\n",
        "line 5 column 5: ",
        "vaule",
    ),
];

#[test]
fn check_names_line_column_and_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write(dir.path(), "doc.xml", "<a>1</a>");
    for (i, (yaml, at, what)) in BAD.iter().enumerate() {
        let m = write(dir.path(), &format!("m{i}.yaml"), yaml);
        let out = check(&m, &doc);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}\n{stderr}");
        let want = format!("error: mapping {}: {at}", m.display());
        assert!(
            stderr.starts_with(&want) && stderr.contains(what),
            "{yaml}\nwanted `{want}...{what}`, got: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{yaml}: nothing is printed on stdout"
        );
    }
}

#[test]
fn start_up_refuses_a_bad_mapping_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (yaml, at, what)) in BAD.iter().enumerate() {
        let m = write(dir.path(), &format!("m{i}.yaml"), yaml);
        let out = adapter(&["--upstream", "http://127.0.0.1:9/status.xml"], &m);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}\n{stderr}");
        let want = format!("configuration error: mapping {}: {at}", m.display());
        assert!(
            stderr.contains(&want) && stderr.contains(what),
            "{yaml}\nwanted `{want}...{what}`, got: {stderr}"
        );
    }
}

#[test]
fn check_names_a_utf16_documents_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(
        dir.path(),
        "m.yaml",
        "rules:\n  - {name: a, help: A., type: gauge, path: /a}\n",
    );
    let doc = dir.path().join("doc.xml");
    let utf16: Vec<u8> = "\u{FEFF}<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>1</a>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(&doc, utf16).unwrap();
    let out = check(&m, &doc);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("malformed XML at byte 0: the document is encoded in UTF-16LE"),
        "{stderr}"
    );
}

#[test]
fn an_ancestors_child_printed_after_the_records_is_waited_for_or_noted() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write(
        dir.path(),
        "doc.xml",
        "<pools><pool><member name='a' size='1'/><member name='b' size='2'/><id>p1</id></pool></pools>",
    );
    // The samples wait for the pool's id.
    let m = write(
        dir.path(),
        "m.yaml",
        "rules:\n  - {name: pool_size, help: Size., type: gauge, path: /pools/pool/member, labels: {pool: ancestor::pool/id, member: '@name'}, value: '@size'}\n",
    );
    let out = check(&m, &doc);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("pool_size{member=\"a\",pool=\"p1\"} 1"),
        "{stdout}"
    );
    assert!(!stderr.contains("late_child"), "{stderr}");
    // Split values are read at once: the empty labels are noted.
    let m = write(
        dir.path(),
        "split.yaml",
        "rules:\n  - {name: pool_size, help: Size., type: gauge, path: /pools/pool/member, split: true, labels: {pool: ancestor::pool/id, member: '@name'}, value: '@size'}\n",
    );
    let out = check(&m, &doc);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("pool_size{member=\"a\",pool=\"\"} 1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("rule `pool_size`: 2 sample(s) dropped (late_child)"),
        "{stderr}"
    );
    assert!(stderr.contains("prints after them"), "{stderr}");
}
