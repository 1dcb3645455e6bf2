//! XML documents against real mappings (BIND's, QuakeML's with namespaces, and a lenient
//! one): the first byte picks the mapping and how the document is cut into reads; read whole
//! and read in pieces, it must translate the same.
use xml_adapter::engine::{Engine, Translator};
use xml_adapter::mapping::Mapping;

const BIND: &str = include_str!("../../../crates/xml-adapter/examples/mappings/bind9.yaml");
const QUAKEML: &str = include_str!("../../../crates/xml-adapter/tests/mappings/quakeml.yaml");
const PASSENGER: &str = include_str!("../../../crates/xml-adapter/tests/mappings/passenger.yaml");

fn main() {
    let engines: Vec<Engine> = [
        BIND.to_owned(),
        QUAKEML.to_owned(),
        format!(
            "lenient: true\nlimits: {{max_depth: 16, max_records: 50, max_series: 50}}\n{PASSENGER}"
        ),
    ]
    .iter()
    .map(|m| Engine::new(Mapping::parse(m, "fuzz").expect("the fuzz mappings load")))
    .collect();
    afl::fuzz!(|data: &[u8]| {
        let Some((&first, doc)) = data.split_first() else {
            return;
        };
        let engine = &engines[usize::from(first) % engines.len()];
        let whole = engine.translate(doc);
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
