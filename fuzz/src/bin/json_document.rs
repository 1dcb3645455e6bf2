//! JSON documents against real mappings (BIND's and HAProxy's JSON pages, and a small one with
//! tight caps that reads keys, indexes, positions, leaves and sibling predicates): the first
//! byte picks the mapping and how the document is cut into reads; read whole and read in
//! pieces, it must translate the same, and a document must never be read as anything but JSON.
use xml_adapter::engine::{Engine, Translator};
use xml_adapter::mapping::Mapping;

const BIND: &str = include_str!("../../../crates/xml-adapter/examples/mappings/bind9-json.yaml");
const HAPROXY: &str =
    include_str!("../../../crates/xml-adapter/examples/mappings/haproxy-json.yaml");
const SMALL: &str = r#"
format: json
limits: {max_depth: 8, max_records: 50, max_series: 50, max_record_bytes: 4096}
rules:
  - name: fuzz_value
    type: gauge
    path: '//*[not(*)]'
    labels: {key: name(), parent: ../name(), at: 'concat(../position(), ".", position())'}
    on_duplicate: sum
    transforms: [{nan_if: ["", "null"]}]
  - name: fuzz_item
    type: gauge
    path: /items/*[name="a"]
    labels: {index: name(), first: "ancestor::items/0"}
    value: v
    on_missing: zero
"#;

fn main() {
    let engines: Vec<Engine> = [BIND, HAPROXY, SMALL]
        .iter()
        .map(|m| Engine::new(Mapping::parse(m, "fuzz").expect("the fuzz mappings load")))
        .collect();
    afl::fuzz!(|data: &[u8]| {
        let Some((&first, doc)) = data.split_first() else {
            return;
        };
        let engine = &engines[usize::from(first) % engines.len()];
        let whole = engine.translate(doc);
        if let Err(xml_adapter::engine::DocumentError::Malformed { format, .. }) = &whole {
            assert_eq!(*format, "JSON", "a JSON mapping's error names JSON");
        }
        let mut t = Translator::new(engine);
        let mut pieces = Ok(());
        for chunk in doc.chunks(sidecars_fuzz::chunk_size(&[first / 4])) {
            pieces = t.feed(chunk);
            if pieces.is_err() {
                break;
            }
        }
        let pieces = pieces.and_then(|()| t.finish());
        assert_eq!(
            format!("{whole:?}"),
            format!("{pieces:?}"),
            "read whole and in pieces"
        );
    });
}
