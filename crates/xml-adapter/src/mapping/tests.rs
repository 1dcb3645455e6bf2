use super::*;

#[test]
fn parses_a_full_rule() {
    let m = Mapping::parse(
        r#"
namespaces: {q: "urn:q"}
up_metric: app_up
rules:
  - name: app_state
    help: State.
    type: gauge
    path: //q:service[@type="3"]
    labels:
      name: name
      kind: {path: "@kind", transforms: [trim, lower]}
    const_labels: {source: legacy}
    value: status
    transforms: [trim, {map: {UP: 1, DOWN: 0}}, {scale: 2}]
    on_missing: zero
    on_duplicate: sum
"#,
        "test.yaml",
    )
    .unwrap();
    assert_eq!(m.rules.len(), 1);
    assert!(m.needs_namespaces);
    assert_eq!(m.rules[0].transforms.len(), 3);
    assert_eq!(m.rules[0].on_duplicate, DuplicatePolicy::Sum);
    assert_eq!(m.up_metric.as_deref(), Some("app_up"));
}

#[test]
fn unknown_fields_are_refused_with_origin() {
    let e = Mapping::parse(
        "rules:\n  - name: a\n    type: gauge\n    path: /a\n    vaule: b\n",
        "m.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("m.yaml") && e.contains("vaule"), "{e}");
}

#[test]
fn bad_rules_name_the_rule() {
    for (yaml, want) in [
        (
            "rules:\n  - {name: 'bad name', type: gauge, path: /a}\n",
            "valid metric name",
        ),
        (
            "rules:\n  - {name: a, type: gauge, path: 'a/b'}\n",
            "must start with",
        ),
        (
            "rules:\n  - {name: a, type: histogram, path: /a, bucket: '@n', buckets: {x: 1}}\n",
            "+Inf",
        ),
        (
            "rules:\n  - {name: a, type: stateset, path: /a}\n",
            "states",
        ),
        (
            "rules:\n  - {name: a, type: summary, path: /a, quantile: '@q', sum: ../s}\n",
            "a summary needs `count`",
        ),
        (
            "rules:\n  - {name: a, type: gauge, path: /a, sum: ../s}\n",
            "for `type: summary`",
        ),
        (
            "rules:\n  - {name: xml_adapter_up, type: gauge, path: /a}\n",
            "reserved",
        ),
        (
            "rules:\n  - {name: a, type: gauge, path: /a, labels: {__x: '@y'}}\n",
            "label name",
        ),
        (
            "rules:\n  - {name: a, type: gauge, path: /a, transforms: [{regex: '('}]}\n",
            "bad regex",
        ),
        (
            "rules:\n  - {name: a_bytes, type: gauge, unit: seconds, path: /a}\n",
            "unit `seconds`",
        ),
        (
            "rules:\n  - {name: a, type: gauge, path: /a}\n  - {name: a, type: counter, path: /b}\n",
            "share a type",
        ),
    ] {
        let e = Mapping::parse(yaml, "m.yaml").unwrap_err().to_string();
        assert!(e.contains(want), "{yaml}: {e}");
        assert!(
            e.starts_with("mapping m.yaml: line ") && e.contains(": field `rules["),
            "{yaml}: {e}"
        );
    }
}

#[test]
fn every_error_names_the_line_column_and_field() {
    let yaml = "\
up_metric: app_up
rules:
  - name: a
    type: gauge
    path: /a
    labels:
      view: \"ancestor::view/text()\"
  - {name: b, type: histogram, path: /b, bucket: '@n', buckets: {x: 1}}
  - name: c
    type: gauge
    path: 'a/b'
";
    let err = |text: &str| Mapping::parse(text, "m.yaml").unwrap_err().to_string();
    let e = err(yaml);
    assert!(
        e.starts_with("mapping m.yaml: line 7 column 13: field `rules[0].labels.view`: "),
        "{e}"
    );
    let second = yaml.replace("\"ancestor::view/text()\"", "'@v'");
    let e = err(&second);
    assert!(
        e.starts_with("mapping m.yaml: line 8 column 65: field `rules[1].buckets`: ")
            && e.contains("+Inf"),
        "{e}"
    );
    let third = second.replace("buckets: {x: 1}", "buckets: {x: +Inf}");
    let e = err(&third);
    assert!(
        e.starts_with("mapping m.yaml: line 11 column 11: field `rules[2].path`: ")
            && e.contains("must start with"),
        "{e}"
    );
    // The parser's own errors read the same way.
    let e = err(&third.replace("    path: 'a/b'", "    path: /c\n    vaule: 1"));
    assert!(e.starts_with("mapping m.yaml: line 12 column 5: "), "{e}");
    assert!(e.contains("rules[2]") && e.contains("vaule"), "{e}");
    // Top-level settings too.
    let e = err("up_metric: 'bad name'\nrules:\n  - {name: a, type: gauge, path: /a}\n");
    assert!(
        e.starts_with("mapping m.yaml: line 1 column 12: field `up_metric`: "),
        "{e}"
    );
}

#[test]
fn metric_and_label_names() {
    assert!(valid_metric_name("bind_up"));
    assert!(valid_metric_name("a:b_c1"));
    assert!(!valid_metric_name("1abc"));
    assert!(!valid_metric_name(""));
    assert!(valid_label_name("view"));
    assert!(!valid_label_name("__name__"));
    assert!(!valid_label_name("a-b"));
}
