//! The xml-adapter's path language: record paths (absolute) and relative paths, with a prefix
//! bound to a namespace.
use std::collections::BTreeMap;

use xml_adapter::path::{parse_record_path, parse_rel_path};

fn main() {
    let ns = BTreeMap::from([("p".to_owned(), "urn:p".to_owned())]);
    afl::fuzz!(|data: &[u8]| {
        let Some(src) = sidecars_fuzz::text(data) else {
            return;
        };
        if let Ok(p) = parse_record_path(src, &ns) {
            p.needs_namespaces();
        }
        if let Ok(p) = parse_rel_path(src, &ns) {
            p.needs_namespaces();
        }
    });
}
