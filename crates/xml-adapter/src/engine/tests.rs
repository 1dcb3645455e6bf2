use super::window::WINDOW;
use super::*;
use crate::encode::Suffix;
use crate::mapping::Mapping;

pub(super) fn run(mapping: &str, doc: &str) -> Result<Translation, DocumentError> {
    Engine::new(Mapping::parse(mapping, "test.yaml").unwrap()).translate(doc.as_bytes())
}

fn run_windowed(mapping: &str, doc: &[u8], window: usize) -> Result<Translation, DocumentError> {
    let engine = Engine::new(Mapping::parse(mapping, "test.yaml").unwrap());
    let mut t = Translator::with_window(&engine, Scratch::default(), window);
    // One byte at a time: the window fills in the smallest steps.
    for b in doc {
        t.feed(std::slice::from_ref(b))?;
    }
    t.finish()
}

#[test]
fn events_cut_by_the_window_read_the_same() {
    let m =
        "rules:\n  - {name: m, type: gauge, path: /r/i, labels: {k: '@k', t: '.'}, value: '@n'}\n";
    let good = "\u{FEFF}<?xml version='1.0' encoding='UTF-8'?>\r\n<!DOCTYPE r>\n<!-- a > b -->\
        <r a='x&amp;y'><i n='1' k='\u{e9}&lt;'>a&amp;b&#x41;<![CDATA[<c> ]]>d\r\ne</i>\
        <?pi x > y?><i n='2' k='\u{20ac}'>\u{1F600}x&#128512;y\u{FEFF}\r z</i></r>\n";
    let bad: &[&[u8]] = &[
        b"<r><i n='1'>1</i>",
        b"<r><i n='1'>&nope;</i></r>",
        b"<r><i n='1'>a & b</i></r>",
        b"<r><!-- not closed </r>",
        b"<r><i n='1' k='x>1</i></r>",
        b"<r><i n='1'>\xff</i></r>",
        b"<r><i n='1'>\xe2\x82</i></r>",
        b"<r><i n='1'/></r><r/>",
        b"<r><i n='1'/></x>",
        b"<r><![CDATA[ x ]></r>",
        b"<r><!x></r>",
        b"<r></r>\xef\xbb\xbf",
    ];
    let want = run_windowed(m, good.as_bytes(), WINDOW).unwrap();
    assert_eq!(
        samples(&want),
        vec![
            "m{k=\u{e9}<,t=a&bA<c> d\ne} 1",
            "m{k=\u{20ac},t=\u{1F600}x\u{1F600}y\u{FEFF}\n z} 2"
        ]
    );
    let want_errors: Vec<String> = bad
        .iter()
        .map(|d| run_windowed(m, d, WINDOW).unwrap_err().to_string())
        .collect();
    for window in 1..48 {
        let got = run_windowed(m, good.as_bytes(), window).unwrap();
        assert_eq!(samples(&got), samples(&want), "window {window}");
        for (d, want) in bad.iter().zip(&want_errors) {
            let got = run_windowed(m, d, window).unwrap_err().to_string();
            assert_eq!(
                &got,
                want,
                "window {window}: {}",
                String::from_utf8_lossy(d)
            );
        }
    }
}

#[test]
fn reused_buffers_translate_each_document_afresh() {
    let engine = Engine::new(
        Mapping::parse(
            "rules:\n  - {name: m, type: gauge, path: /r/i, labels: {k: '@k'}, value: '@v'}\n",
            "test.yaml",
        )
        .unwrap(),
    );
    let docs: &[&str] = &[
        "<r><i k='a' v='1'/><i k='b' v='2'/></r>",
        "<r><i k='b' v='3'/><i k='c' v='4'/></r>",
        "<r><i k='a' v='5'/><i k='x'",
        "<r><i k='a' v='5'/><i k='a' v='6'/><i k='d' v='7'/></r>",
        "<r><i k='a' v='1'/><i k='b' v='2'/></r>",
    ];
    let mut scratch = Scratch::default();
    for doc in docs {
        let fresh = engine.translate(doc.as_bytes());
        let mut t = Translator::with_scratch(&engine, scratch);
        t.feed(doc.as_bytes()).unwrap();
        let (got, s) = t.finish_keep();
        scratch = s;
        match (fresh, got) {
            (Ok(a), Ok(b)) => {
                assert_eq!(samples(&a), samples(&b), "{doc}");
                assert_eq!(a.rule_issues, b.rule_issues, "{doc}");
                assert_eq!(a.series, b.series, "{doc}");
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{doc}: {a:?} vs {b:?}"),
        }
    }
}

pub(super) fn samples(t: &Translation) -> Vec<String> {
    t.families
        .iter()
        .flat_map(|f| {
            f.samples.iter().map(move |s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}} {}", f.name, labels.join(","), s.value)
            })
        })
        .collect()
}

#[test]
fn descendant_steps_match_each_element_once() {
    let t = run(
        "rules:\n  - {name: n, type: gauge, path: '//a//b', labels: {id: '@id'}, value: '@v'}\n",
        "<r><a><a><b id='1' v='1'/></a></a><b id='2' v='2'/><a><c><b id='3' v='3'/></c></a></r>",
    )
    .unwrap();
    assert_eq!(samples(&t), vec!["n{id=1} 1", "n{id=3} 3"]);
}

#[test]
fn nested_records_and_child_text_predicates() {
    let t = run(
        "rules:\n  - {name: outer, type: gauge, path: '/r/s[kind=\"x\"]', labels: {n: name}, value: v}\n  - {name: inner, type: gauge, path: '/r/s/t', labels: {n: '../@n'}, value: .}\n",
        "<r><s n='a'><name>a</name><kind>x</kind><v>1</v><t>5</t></s><s n='b'><name>b</name><kind>y</kind><v>2</v><t>6</t></s></r>",
    )
    .unwrap();
    assert_eq!(
        samples(&t),
        vec!["outer{n=a} 1", "inner{n=a} 5", "inner{n=b} 6"]
    );
}

#[test]
fn duplicate_policies() {
    let doc = "<r><i k='a'>1</i><i k='a'>2</i><i k='b'>3</i></r>";
    for (policy, want) in [
        ("error", vec!["m{k=b} 3"]),
        ("first", vec!["m{k=a} 1", "m{k=b} 3"]),
        ("last", vec!["m{k=a} 2", "m{k=b} 3"]),
        ("sum", vec!["m{k=a} 3", "m{k=b} 3"]),
    ] {
        let t = run(
            &format!("rules:\n  - {{name: m, type: gauge, path: /r/i, labels: {{k: '@k'}}, on_duplicate: {policy}}}\n"),
            doc,
        )
        .unwrap();
        assert_eq!(samples(&t), want, "{policy}");
        let dup = t
            .rule_issues
            .get(&("m".to_string(), Reason::Duplicate))
            .copied();
        assert_eq!(dup, (policy == "error").then_some(1), "{policy}");
    }
}

#[test]
fn missing_policies() {
    let doc = "<r><i k='a'><v>1</v></i><i k='b'/></r>";
    for (policy, want) in [
        ("skip", vec!["m{k=a} 1"]),
        ("zero", vec!["m{k=a} 1", "m{k=b} 0"]),
        ("error", vec!["m{k=a} 1"]),
    ] {
        let t = run(
            &format!("rules:\n  - {{name: m, type: gauge, path: /r/i, labels: {{k: '@k'}}, value: v, on_missing: {policy}}}\n"),
            doc,
        )
        .unwrap();
        assert_eq!(samples(&t), want, "{policy}");
        let reason = if policy == "error" {
            Reason::BadValue
        } else {
            Reason::Missing
        };
        let n = t.rule_issues.get(&("m".to_string(), reason)).copied();
        assert_eq!(n, (policy != "zero").then_some(1), "{policy}");
    }
}

#[test]
fn record_size_cap_drops_and_counts() {
    let big = "x".repeat(5000);
    let t = run(
        "limits: {max_record_bytes: 1000}\nrules:\n  - {name: m, type: gauge, path: /r/i, value: '@v'}\n",
        &format!("<r><i v='1'>{big}</i><i v='2'/></r>"),
    )
    .unwrap();
    assert_eq!(samples(&t), vec!["m{} 2"]);
    assert_eq!(
        t.rule_issues
            .get(&("m".to_string(), Reason::RecordTooLarge)),
        Some(&1)
    );
}

#[test]
fn records_cap_truncates_visibly() {
    let t = run(
        "limits: {max_records: 2}\nrules:\n  - {name: m, type: gauge, path: /r/i, labels: {k: '@k'}, value: '@k'}\n",
        "<r><i k='1'/><i k='2'/><i k='3'/></r>",
    )
    .unwrap();
    assert_eq!(samples(&t).len(), 2);
    assert_eq!(t.truncated, vec!["records"]);
}

#[test]
fn well_formedness_errors_are_refusals() {
    let m = "rules:\n  - {name: m, type: gauge, path: /r/i}\n";
    for (doc, want) in [
        ("<r><i>1</i>", "still open (innermost <r>)"),
        ("<r><i>1</r>", "expected </i>, found </r>"),
        ("<r/><r/>", "second root"),
        ("<r/>junk", "text outside the root"),
        ("", "no root element"),
        ("<r><i>&nope;</i></r>", "undefined entity `&nope;`"),
        ("<r><i a='1' b='2' a='3'>1</i></r>", "`a` appears twice"),
        (
            "<r><i a0='' a1='' a2='' a3='' a4='' a5='' a6='' a7='' a8='' a9='' b0='' b1='' \
             b2='' b3='' b4='' b5='' b6='' b7='' b8='' b9='' a3=''>1</i></r>",
            "`a3` appears twice",
        ),
        ("<r></i></r>", "expected </r>, found </i>"),
        (
            "<?xml version='1.0' encoding='EBCDIC'?><r/>",
            "unsupported encoding",
        ),
    ] {
        let e = run(m, doc).unwrap_err().to_string();
        assert!(e.contains(want), "{doc:?}: {e}");
    }
    // Entities and character references that need no DTD are fine.
    let t = run(m, "<r><i>&#49;&#x30;</i></r>").unwrap();
    assert_eq!(samples(&t), vec!["m{} 10"]);
}

#[test]
fn lenient_mode_recovers_missing_end_tags_only() {
    let m = "lenient: true\nrules:\n  - {name: m, type: gauge, path: /r/a/i}\n";
    let t = run(m, "<r><a><i>1</i><b></a></r>").unwrap();
    assert_eq!(t.recovered, 1);
    assert_eq!(samples(&t), vec!["m{} 1"]);
    assert!(run(m, "<r><a><i>1</i>").is_err(), "truncated stays refused");
}

#[test]
fn histogram_accumulates_per_bucket_counters() {
    let t = run(
        "rules:\n  - {name: h, type: histogram, path: '/r/c', bucket: '@n', buckets: {a: 1, b: 2, c: +Inf}}\n",
        "<r><c n='a'>1</c><c n='b'>2</c><c n='c'>3</c><c n='other'>100</c></r>",
    )
    .unwrap();
    assert_eq!(
        samples(&t),
        vec!["h{le=1} 1", "h{le=2} 3", "h{le=+Inf} 6", "h{} 6"]
    );
    assert_eq!(t.families[0].samples[3].suffix, Suffix::Count);
}

#[test]
fn element_per_field_with_name_function() {
    // BIND's old v2 schema: one element per counter.
    let t = run(
        "rules:\n  - {name: m_total, type: counter, path: '/s/nsstat/*', labels: {name: 'local-name()'}}\n",
        "<s><nsstat><Requestv4>5</Requestv4><Requestv6>0</Requestv6></nsstat></s>",
    )
    .unwrap();
    assert_eq!(
        samples(&t),
        vec!["m{name=Requestv4} 5", "m{name=Requestv6} 0"]
    );
}
