//! The JSON front end: the tree it reads a document as, its errors and caps, and chunking.

use super::*;
use crate::mapping::Mapping;

fn engine(mapping: &str) -> Engine {
    Engine::new(Mapping::parse(mapping, "test.yaml").unwrap())
}

fn run(mapping: &str, doc: &str) -> Result<Translation, DocumentError> {
    engine(mapping).translate(doc.as_bytes())
}

/// One byte at a time, so every token is cut by a chunk's end somewhere.
fn run_bytewise(mapping: &str, doc: &str) -> Result<Translation, DocumentError> {
    let engine = engine(mapping);
    let mut t = Translator::new(&engine);
    for b in doc.as_bytes() {
        t.feed(std::slice::from_ref(b))?;
    }
    t.finish()
}

/// The samples, sorted (the order of series in a family is not the document's).
fn samples(t: &Translation) -> Vec<String> {
    let mut v: Vec<String> = t
        .families
        .iter()
        .flat_map(|f| {
            f.samples.iter().map(move |s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}} {}", f.name, labels.join(","), s.value)
            })
        })
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort_unstable();
    v.into_iter().map(String::from).collect()
}

const SERVERS: &str = r#"{
  "version": "1.2",
  "qtypes": {"A": 5, "AAAA": 3, "TYPE65": 1e2},
  "servers": [
    {"name": "web1", "up": true, "requests": 10, "stats": {"rx": 1.5, "tx": 2}},
    {"name": "web2", "up": false, "requests": "n/a", "stats": {"rx": 3, "tx": null}},
    {"name": "web\"3\u00e9", "requests": -7}
  ],
  "a key/with:odd chars": {"n": 42}
}"#;

#[test]
fn keys_as_labels_indexes_and_wildcards() {
    let m = "rules:\n  - {name: q, type: counter, path: /qtypes/*, labels: {type: name()}}\n  - {name: second, type: gauge, path: /servers/1/stats/rx}\n";
    let t = run(m, SERVERS).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec![
            "q{type=A} 5",
            "q{type=AAAA} 3",
            "q{type=TYPE65} 100",
            "second{} 3"
        ])
    );
}

#[test]
fn array_items_values_and_per_value_errors() {
    let m = "rules:\n  - {name: req, type: gauge, path: /servers/*, labels: {server: name}, value: requests}\n";
    let t = run(m, SERVERS).unwrap();
    // web2's "n/a" is dropped and counted; the others are served.
    assert_eq!(
        samples(&t),
        sorted(vec!["req{server=web1} 10", "req{server=web\"3\u{e9}} -7"])
    );
    assert_eq!(t.rule_issues.len(), 1, "{:?}", t.rule_issues);
    assert!(
        t.rule_issues
            .keys()
            .any(|(r, reason)| r == "req" && *reason == Reason::BadValue)
    );
}

#[test]
fn predicates_on_sibling_values_and_climbing_to_an_ancestor() {
    let m = r#"rules:
  - {name: rx, type: gauge, path: '/servers/*[name="web2"]', value: stats/rx}
  - {name: up, type: gauge, path: '/servers/*/up', labels: {server: ../name}, transforms: [{map: {"true": 1, "false": 0}}]}
  - {name: io, type: gauge, path: /servers/*/stats/*, labels: {server: ../../name, dir: name()}}
"#;
    let t = run(m, SERVERS).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec![
            "rx{} 3",
            "up{server=web1} 1",
            "up{server=web2} 0",
            "io{dir=rx,server=web1} 1.5",
            "io{dir=tx,server=web1} 2",
            "io{dir=rx,server=web2} 3",
        ])
    );
    // `null` is absent: web2's `tx` is no record, not a 0.
    assert!(t.rule_issues.is_empty(), "{:?}", t.rule_issues);
    let m = "rules:\n  - {name: tx, type: gauge, path: /servers/*, labels: {server: name}, value: stats/tx, on_missing: nan}\n";
    let t = run(m, SERVERS).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec![
            "tx{server=web1} 2",
            "tx{server=web2} NaN",
            "tx{server=web\"3\u{e9}} NaN"
        ])
    );
}

#[test]
fn recursive_descent_and_quoted_keys() {
    let m = r#"rules:
  - {name: r, type: gauge, path: '//requests', labels: {at: ../name}}
  - {name: odd, type: gauge, path: '/"a key/with:odd chars"/n'}
  - {name: v, type: info, path: /version, labels: {version: .}}
"#;
    let t = run(m, SERVERS).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec![
            "r{at=web1} 10",
            "r{at=web\"3\u{e9}} -7",
            "odd{} 42",
            "v{version=1.2} 1"
        ])
    );
}

#[test]
fn a_top_level_array_and_the_sidecar_example() {
    let m =
        "rules:\n  - {name: items, type: gauge, path: /*, labels: {i: name(), n: key}, value: v}\n";
    let t = run(m, r#"[{"key": "a", "v": 1}, {"key": "b", "v": 2}, null]"#).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec!["items{i=0,n=a} 1", "items{i=1,n=b} 2"])
    );
    let m = "rules:\n  - {name: app_requests_total, type: counter, path: /requests}\n  - {name: app_errors_total, type: counter, path: /errors}\n";
    let t = run(m, r#"{"requests": 1027, "errors": 3}"#).unwrap();
    assert_eq!(
        samples(&t),
        sorted(vec!["app_requests{} 1027", "app_errors{} 3"])
    );
}

#[test]
fn chunks_of_any_size_read_the_same() {
    let m = r#"rules:
  - {name: io, type: gauge, path: /servers/*/stats/*, labels: {server: ../../name, dir: name()}}
  - {name: q, type: counter, path: /qtypes/*, labels: {type: name()}}
"#;
    let want = samples(&run(m, SERVERS).unwrap());
    assert_eq!(samples(&run_bytewise(m, SERVERS).unwrap()), want);
    let with_bom = format!("\u{FEFF} \n{SERVERS}");
    assert_eq!(samples(&run_bytewise(m, &with_bom).unwrap()), want);
}

#[test]
fn malformed_documents_are_refused_whole() {
    let m = "rules:\n  - {name: q, type: counter, path: /qtypes/*, labels: {type: name()}}\n";
    for doc in [
        r#"{"qtypes": {"A": 5}"#,
        r#"{"qtypes": {"A": 5}} {}"#,
        r#"{"qtypes": {"A": 5,}}"#,
        r#"{"qtypes": {"A": 05}}"#,
        r#"{"qtypes": {"A": "\x"}}"#,
        "{\"qtypes\": {\"A\": \"\u{1}\"}}",
        r#"{"qtypes" {"A": 5}}"#,
        "[",
    ] {
        for result in [run(m, doc), run_bytewise(m, doc)] {
            let e = result.unwrap_err().to_string();
            assert!(e.starts_with("malformed JSON at byte "), "{doc}: {e}");
        }
    }
    for cut in [10, 25, 40, SERVERS.len() - 1] {
        let e = run(m, &SERVERS[..cut]).unwrap_err().to_string();
        assert!(e.contains("truncated?"), "{cut}: {e}");
    }
    let bad_utf8 = b"{\"qtypes\": {\"A\": \"\xff\"}}";
    let e = engine(m).translate(&bad_utf8[..]).unwrap_err().to_string();
    assert!(e.starts_with("malformed JSON"), "{e}");
    // Nothing but white space is no document.
    assert!(run(m, "  \n").is_err());
}

#[test]
fn the_caps_hold() {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let m = "limits: {max_depth: 16}\nrules:\n  - {name: q, type: gauge, path: //x}\n";
    let e = run(m, &deep).unwrap_err().to_string();
    assert!(e.contains("JSON") && e.contains("max_depth 16"), "{e}");

    let m = "limits: {max_record_bytes: 300}\nrules:\n  - {name: q, type: gauge, path: /r/*, value: v}\n";
    let big = format!(
        r#"{{"r": {{"a": {{"v": 1}}, "b": {{"v": 2, "pad": "{}"}}}}}}"#,
        "x".repeat(400)
    );
    let t = run(m, &big).unwrap();
    assert_eq!(samples(&t), sorted(vec!["q{} 1"]));
    assert!(
        t.rule_issues
            .keys()
            .any(|(_, reason)| *reason == Reason::RecordTooLarge)
    );

    let m = "limits: {max_series: 2}\nrules:\n  - {name: q, type: gauge, path: /*, labels: {k: name()}}\n";
    let t = run(m, r#"{"a": 1, "b": 2, "c": 3}"#).unwrap();
    assert_eq!(t.truncated, vec!["series"]);
}

#[test]
fn the_mapping_can_name_the_format() {
    let m = "format: xml\nrules:\n  - {name: q, type: gauge, path: /a}\n";
    let e = run(m, r#"{"a": 1}"#).unwrap_err().to_string();
    assert!(e.starts_with("malformed XML"), "{e}");
    let m = "format: json\nrules:\n  - {name: q, type: gauge, path: /a}\n";
    let e = run(m, "<a>1</a>").unwrap_err().to_string();
    assert!(e.starts_with("malformed JSON"), "{e}");
    assert_eq!(
        samples(&run(m, r#"{"a": 1}"#).unwrap()),
        sorted(vec!["q{} 1"])
    );
    // `auto` takes the Content-Type first.
    let engine = engine("rules:\n  - {name: q, type: gauge, path: /a}\n");
    let mut t = Translator::for_content_type(&engine, Scratch::default(), Some("application/json"));
    t.feed(b"{\"a\": 2}").unwrap();
    assert_eq!(samples(&t.finish().unwrap()), sorted(vec!["q{} 2"]));
}

#[test]
fn reused_buffers_between_json_and_xml() {
    let engine = engine("rules:\n  - {name: q, type: gauge, path: /r/a}\n");
    let docs = [
        r#"{"r": {"a": 1}}"#,
        "<r><a>2</a></r>",
        r#"{"r": {"a": "#,
        r#"{"r": {"a": 4}}"#,
    ];
    let mut scratch = Scratch::default();
    for doc in docs {
        let fresh = engine.translate(doc.as_bytes());
        let mut t = Translator::with_scratch(&engine, scratch);
        t.feed(doc.as_bytes()).unwrap();
        let (got, s) = t.finish_keep();
        scratch = s;
        match (fresh, got) {
            (Ok(a), Ok(b)) => assert_eq!(samples(&a), samples(&b), "{doc}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{doc}: {a:?} vs {b:?}"),
        }
    }
}
