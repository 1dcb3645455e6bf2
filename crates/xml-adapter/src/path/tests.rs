use super::*;

fn ns() -> BTreeMap<String, String> {
    BTreeMap::from([("q".to_string(), "urn:q".to_string())])
}

#[test]
fn parses_child_descendant_and_predicates() {
    let p = parse_record_path(
        r#"/statistics//counters[@type="qtype"][starts-with(@x,'Q')]/counter"#,
        &ns(),
    )
    .unwrap();
    assert_eq!(p.steps.len(), 3);
    assert_eq!(p.steps[1].axis, Axis::Descendant);
    assert_eq!(p.steps[1].predicates.len(), 2);
    assert!(matches!(p.steps[1].predicates[0].op, Op::Eq(ref s) if s == "qtype"));
    assert!(matches!(p.steps[1].predicates[1].op, Op::StartsWith(ref s) if s == "Q"));
}

#[test]
fn content_predicates_only_on_last_step() {
    let e = parse_record_path(r#"/a[name="x"]/b"#, &ns()).unwrap_err();
    assert!(e.message.contains("last step"), "{e}");
    parse_record_path(r#"/a/b[name="x"]"#, &ns()).unwrap();
}

#[test]
fn prefixes_resolve_through_the_mapping() {
    let p = parse_record_path("//q:event", &ns()).unwrap();
    assert_eq!(
        p.steps[0].test,
        NameTest::Qualified {
            uri: "urn:q".into(),
            local: Some("event".into())
        }
    );
    let e = parse_record_path("//z:event", &ns()).unwrap_err();
    assert!(e.message.contains("prefix `z`"), "{e}");
}

#[test]
fn relative_paths() {
    assert!(matches!(
        parse_rel_path("@name", &ns()).unwrap(),
        RelPath::Down { ref steps, leaf: Leaf::Attr(_) } if steps.is_empty()
    ));
    assert!(matches!(
        parse_rel_path(".", &ns()).unwrap(),
        RelPath::Down {
            leaf: Leaf::Text,
            ..
        }
    ));
    assert!(matches!(
        parse_rel_path("block/percent", &ns()).unwrap(),
        RelPath::Down { ref steps, leaf: Leaf::Text } if steps.len() == 2
    ));
    assert!(matches!(
        parse_rel_path("ancestor::view/@name", &ns()).unwrap(),
        RelPath::Up {
            sel: AncestorSel::Named(_),
            child: None,
            leaf: Leaf::Attr(_)
        }
    ));
    assert!(matches!(
        parse_rel_path("../measTypes", &ns()).unwrap(),
        RelPath::Up {
            sel: AncestorSel::Up(1),
            child: Some(_),
            leaf: Leaf::Text
        }
    ));
    assert!(matches!(
        parse_rel_path("../../name()", &ns()).unwrap(),
        RelPath::Up {
            sel: AncestorSel::Up(2),
            leaf: Leaf::Name,
            ..
        }
    ));
    assert!(parse_rel_path("../a/b", &ns()).is_err());
    assert!(parse_rel_path("a[", &ns()).is_err());
}

#[test]
fn quoted_names_hold_any_key() {
    let p = parse_record_path(r#"/"a b"/'x/y'[ "k:1" = "v" ]"#, &ns()).unwrap();
    assert_eq!(p.steps[0].test, NameTest::Local("a b".into()));
    assert_eq!(p.steps[1].test, NameTest::Local("x/y".into()));
    assert!(matches!(
        &p.steps[1].predicates[0].operand,
        Operand::Child(NameTest::Local(k)) if k == "k:1"
    ));
    assert!(matches!(
        parse_rel_path(r#"stats/"rx bytes""#, &ns()).unwrap(),
        RelPath::Down { ref steps, leaf: Leaf::Text } if steps.len() == 2
    ));
    assert!(parse_record_path(r#"/"unterminated"#, &ns()).is_err());
    let p = parse_record_path(r#"/*/*[field/name="scur"]"#, &ns()).unwrap();
    assert!(matches!(
        &p.steps[1].predicates[0].operand,
        Operand::ChildPath(steps) if steps.len() == 2
    ));
    assert!(parse_record_path(r#"/a[b/c="x"]/d"#, &ns()).is_err());
}

#[test]
fn bad_regex_is_named() {
    let e = parse_record_path(r#"/a[matches(@n, "(")]"#, &ns()).unwrap_err();
    assert!(e.message.contains("bad regex"), "{e}");
}

#[test]
fn multibyte_whitespace_is_skipped_whole() {
    // Found by fuzzing (xml_path): skipping U+2006 one byte at a time sliced inside it.
    let ns = BTreeMap::new();
    let _ = parse_rel_path("a[b!=\"\"]\u{2006}/c", &ns);
    let _ = parse_record_path("/a[@b=\"\"]\u{a0}", &ns);
    assert!(parse_rel_path("\u{2006}@name", &ns).is_ok());
    let found = "item[@avic=\"\u{12}\"][Adn/ics/mtics/tas=\"\u{12}\"][Adn/ys/taics/mgg\u{2006}r/threaa!=\"\"]/keu";
    let _ = parse_record_path(found, &ns);
    let _ = parse_rel_path(found, &ns);
}

#[test]
fn position_not_and_concat() {
    let p = parse_record_path(r#"/a[position()=2]/b[not(@x)][position() != "1"]"#, &ns()).unwrap();
    assert!(matches!(
        p.steps[0].predicates[0].operand,
        Operand::Position
    ));
    assert!(matches!(p.steps[0].predicates[0].op, Op::Eq(ref n) if n == "2"));
    assert!(matches!(p.steps[1].predicates[0].op, Op::Absent));
    assert!(!p.steps[0].predicates[0].needs_content());
    let leaf = parse_record_path("//*[not(*)]", &ns()).unwrap();
    assert!(leaf.steps[0].predicates[0].is_leaf_test());
    // A leaf test needs the element's content: the last step only.
    assert!(parse_record_path("/a[not(*)]/b", &ns()).is_err());
    assert!(parse_record_path("/a[not(@x]", &ns()).is_err());
    assert!(matches!(
        parse_rel_path("position()", &ns()).unwrap(),
        RelPath::Down { ref steps, leaf: Leaf::Position } if steps.is_empty()
    ));
    assert!(matches!(
        parse_rel_path("../position()", &ns()).unwrap(),
        RelPath::Up {
            leaf: Leaf::Position,
            ..
        }
    ));
    let RelPath::Concat(parts) = parse_rel_path(
        r#"concat(ancestor::v/@name, "/", a[@k="x,y"]/b, ', ')"#,
        &ns(),
    )
    .unwrap() else {
        panic!("a concat");
    };
    assert_eq!(parts.len(), 4);
    assert!(matches!(&parts[1], Part::Literal(s) if s == "/"));
    assert!(matches!(&parts[3], Part::Literal(s) if s == ", "));
    assert!(matches!(&parts[2], Part::Path(RelPath::Down { steps, .. }) if steps.len() == 2));
    let e = parse_rel_path("concat(a, ../b/c)", &ns()).unwrap_err();
    assert!(e.message.contains("`../b/c`"), "{e}");
}
