//! The path language's later additions, through the engine: `position()`, `[not(*)]`,
//! `concat(...)`, ancestors' children printed after the record, and what open elements keep.

use super::tests::{run, samples};
use super::*;
use crate::mapping::Mapping;

#[test]
fn position_reads_and_selects_by_place_among_siblings() {
    let m = r#"
rules:
  - {name: p, type: gauge, path: /r/g/i, labels: {n: "@n", at: position(), g: ../position()}, value: position()}
  - {name: second, type: gauge, path: '/r/g/i[position()=2]', value: '@n'}
  - {name: not_first, type: gauge, path: '/r/g[position()!="1"]/*[position()=3]', value: '@n'}
"#;
    // Positions count every element child, whatever its name; text and comments do not count.
    let doc = "<r><g><i n='1'/> x <!-- c --><j/><i n='3'/><i n='4'/></g>\
               <g><i n='5'/><i n='6'/><i n='7'/></g></r>";
    let t = run(m, doc).unwrap();
    assert_eq!(
        samples(&t),
        vec![
            "p{at=1,g=1,n=1} 1",
            "p{at=1,g=2,n=5} 1",
            "p{at=2,g=2,n=6} 2",
            "p{at=3,g=1,n=3} 3",
            "p{at=3,g=2,n=7} 3",
            "p{at=4,g=1,n=4} 4",
            "second{} 6",
            "not_first{} 7",
        ]
    );
}

#[test]
fn position_in_json_is_the_item_index_plus_one() {
    let m = "format: json\nrules:\n  - {name: p, type: gauge, path: '/s/*', labels: {at: position(), i: name()}}\n";
    let t = run(m, r#"{"s": [10, null, 30]}"#).unwrap();
    // A null item is absent: the item after it is item 2, and the second element.
    assert_eq!(samples(&t), vec!["p{at=1,i=0} 10", "p{at=2,i=2} 30"]);
}

#[test]
fn leaf_only_selects_elements_without_element_children() {
    let m = r#"
rules:
  - {name: leaf, type: gauge, path: '//*[not(*)]', labels: {at: local-name(), up: ../name()}, on_duplicate: sum}
  - {name: attr_absent, type: gauge, path: '/r/*[not(@skip)]', present: true, labels: {n: name()}}
"#;
    let doc = "<r><a>1<b>2</b></a><c>3</c><d skip='y'><e>4</e><f/></d></r>";
    let t = run(m, doc).unwrap();
    let got = samples(&t);
    assert!(got.contains(&"leaf{at=b,up=a} 2".to_string()), "{got:?}");
    assert!(got.contains(&"leaf{at=c,up=r} 3".to_string()), "{got:?}");
    assert!(got.contains(&"leaf{at=e,up=d} 4".to_string()), "{got:?}");
    // <f/> has no text: the value is missing, so no sample.
    assert!(
        !got.iter()
            .any(|s| s.contains("at=a") || s.contains("at=r") || s.contains("at=d")),
        "{got:?}"
    );
    assert!(got.contains(&"attr_absent{n=a} 1".to_string()), "{got:?}");
    assert!(!got.iter().any(|s| s.contains("n=d")), "{got:?}");
}

#[test]
fn leaf_only_over_a_large_document_is_not_one_record() {
    // The root is no leaf: it stops being a record at its first child, so the rest of the
    // document is not held against max_record_bytes as the root's subtree.
    let m = "limits: {max_record_bytes: 1024}\nrules:\n  - {name: v, type: gauge, path: '//*[not(*)]', on_duplicate: sum}\n";
    let doc = format!("<r>{}</r>", "<g><v>1</v></g>".repeat(5000));
    let t = run(m, &doc).unwrap();
    assert_eq!(samples(&t), vec!["v{} 5000"]);
    assert!(t.rule_issues.is_empty(), "{:?}", t.rule_issues);
    // In JSON: every scalar.
    let m = "format: json\nrules:\n  - {name: v, type: gauge, path: '//*[not(*)]', labels: {k: name()}}\n";
    let t = run(m, r#"{"a": {"b": 1, "c": [2]}, "d": {}}"#).unwrap();
    assert_eq!(samples(&t), vec!["v{k=0} 2", "v{k=b} 1"]);
}

#[test]
fn concat_joins_paths_and_text_into_one_value() {
    let m = r#"
rules:
  - name: zone
    type: gauge
    path: /r/view/zone
    labels:
      id: 'concat(ancestor::view/@name, "/", @name)'
      both: {path: 'concat(a, "-", b)', transforms: [upper]}
      partial: 'concat(@name, ":", missing)'
    value: '@serial'
"#;
    let doc = "<r><view name='v1'><zone name='z' serial='7'><a>x</a><b>y</b></zone></view></r>";
    let t = run(m, doc).unwrap();
    assert_eq!(samples(&t), vec!["zone{both=X-Y,id=v1/z,partial=z:} 7"]);
    for bad in [
        "concat()",
        "concat(\"only text\")",
        "concat(a, concat(b, c))",
        "concat(a, \"x)",
        "concat(a, b",
    ] {
        let m = format!("rules:\n  - {{name: a, type: gauge, path: /a, labels: {{l: '{bad}'}}}}\n");
        let e = Mapping::parse(&m, "m.yaml").unwrap_err().to_string();
        assert!(e.contains("rules[0].labels.l"), "{bad}: {e}");
    }
}

#[test]
fn an_ancestors_child_printed_after_the_record_is_waited_for() {
    let m = r#"
rules:
  - {name: v, type: gauge, path: /r/g/i, labels: {id: {path: ancestor::g/id, transforms: [upper]}, n: '@n'}, value: '@n'}
"#;
    // The first group prints its id first, the second after its records, the third none.
    let doc = "<r><g><id>a</id><i n='1'/></g><g><i n='2'/><i n='3'/><id>b</id><i n='4'/></g>\
               <g><i n='5'/></g></r>";
    let t = run(m, doc).unwrap();
    assert_eq!(
        samples(&t),
        vec![
            "v{id=,n=5} 5",
            "v{id=A,n=1} 1",
            "v{id=B,n=2} 2",
            "v{id=B,n=3} 3",
            "v{id=B,n=4} 4"
        ]
    );
    assert!(t.rule_issues.is_empty(), "{:?}", t.rule_issues);
}

#[test]
fn records_past_the_wait_cap_are_served_at_once_and_counted() {
    // Waiting samples are bounded by max_record_bytes: with 2 KiB, some of 100 wait.
    let m = r#"
limits: {max_record_bytes: 2048}
rules:
  - {name: v, type: gauge, path: /r/g/i, labels: {id: ancestor::g/id, n: '@n'}, value: '@n'}
"#;
    let items: String = (0..100).map(|n| format!("<i n='{n}'/>")).collect();
    let doc = format!("<r><g>{items}<id>b</id></g></r>");
    let t = run(m, &doc).unwrap();
    let got = samples(&t);
    let waited = got.iter().filter(|s| s.contains("id=b")).count();
    let served = got.iter().filter(|s| s.contains("id=,")).count();
    assert_eq!(waited + served, 100, "{got:?}");
    assert!(waited > 0 && served > 0, "{got:?}");
    // Those served without waiting are counted: their label is empty.
    assert_eq!(
        t.rule_issues.get(&("v".to_string(), Reason::LateChild)),
        Some(&(served as u64)),
        "{:?}",
        t.rule_issues
    );
    assert!(
        t.messages.iter().any(|m| m.contains("prints after them")),
        "{:?}",
        t.messages
    );
    // The general path (split values) does not wait: counted too.
    let m = r#"
rules:
  - {name: v, type: gauge, path: /r/g/i, split: true, labels: {id: ancestor::g/id}, value: '@n'}
"#;
    let t = run(m, "<r><g><i n='1 2'/><id>b</id></g></r>").unwrap();
    assert_eq!(
        t.rule_issues.get(&("v".to_string(), Reason::LateChild)),
        Some(&1),
        "{:?}",
        t.rule_issues
    );
}

#[test]
fn open_elements_keep_their_attributes_only_when_a_path_reads_them() {
    let big = "x".repeat(600 << 10);
    // Nested tags of 600 KiB each: the whole document is valid and within the event cap.
    let doc = format!("<r><a pad='{big}'><b pad='{big}'><c pad='{big}'><i n='1'/></c></b></a></r>");
    // Names only are kept when no path reads an attribute above its record.
    let m = "rules:\n  - {name: v, type: gauge, path: //i, labels: {c: ../name()}, value: '@n'}\n";
    let t = run(m, &doc).unwrap();
    assert_eq!(samples(&t), vec!["v{c=c} 1"]);
    // Reading one, the kept tags are bounded by max_record_bytes (1 MiB): refused.
    let m = "rules:\n  - {name: v, type: gauge, path: //i, labels: {p: ../@pad}, value: '@n'}\n";
    let e = run(m, &doc).unwrap_err().to_string();
    assert!(
        e.contains("open elements hold more than max_record_bytes (1048576 bytes)"),
        "{e}"
    );
    let m = "limits: {max_record_bytes: 4194304}\nrules:\n  - {name: v, type: gauge, path: //i, labels: {p: ../@pad}, value: '@n'}\n";
    let t = run(m, &doc).unwrap();
    assert_eq!(t.series, 1);
}
