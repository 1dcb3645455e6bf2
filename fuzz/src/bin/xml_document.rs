//! XML documents against real mappings (BIND's, QuakeML's with namespaces, and a lenient
//! one): the first byte picks the mapping and how the document is cut into reads; read whole
//! and read in pieces, it must translate the same.

const BIND: &str = include_str!("../../../crates/xml-adapter/examples/mappings/bind9.yaml");
const QUAKEML: &str = include_str!("../../../crates/xml-adapter/tests/mappings/quakeml.yaml");
const PASSENGER: &str = include_str!("../../../crates/xml-adapter/tests/mappings/passenger.yaml");

fn main() {
    let lenient = format!(
        "lenient: true\nlimits: {{max_depth: 16, max_records: 50, max_series: 50}}\n{PASSENGER}"
    );
    let engines = sidecars_fuzz::engines(&[BIND, QUAKEML, &lenient]);
    afl::fuzz!(|data: &[u8]| {
        let Some((engine, first, doc)) = sidecars_fuzz::pick(&engines, data) else {
            return;
        };
        let whole = engine.translate(doc);
        sidecars_fuzz::assert_same_in_pieces(engine, doc, first / 4, &whole);
    });
}
