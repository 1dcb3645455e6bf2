//! JSON documents against real mappings (BIND's and HAProxy's JSON pages, and a small one with
//! tight caps that reads keys, indexes, positions, leaves and sibling predicates): the first
//! byte picks the mapping and how the document is cut into reads; read whole and read in
//! pieces, it must translate the same, and a document must never be read as anything but JSON.

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
    let engines = sidecars_fuzz::engines(&[BIND, HAPROXY, SMALL]);
    afl::fuzz!(|data: &[u8]| {
        let Some((engine, first, doc)) = sidecars_fuzz::pick(&engines, data) else {
            return;
        };
        let whole = engine.translate(doc);
        if let Err(xml_adapter::engine::DocumentError::Malformed { format, .. }) = &whole {
            assert_eq!(*format, "JSON", "a JSON mapping's error names JSON");
        }
        sidecars_fuzz::assert_same_in_pieces(engine, doc, first / 4, &whole);
    });
}
