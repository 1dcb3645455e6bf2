//! The xml-adapter's YAML mapping: rules, paths, transforms, limits, compiled as at start.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some(text) = sidecars_fuzz::text(data)
            && let Ok(mapping) = xml_adapter::mapping::Mapping::parse(text, "fuzz")
        {
            // The engine compiles the mapping's paths into its trie.
            let _ = xml_adapter::engine::Engine::new(mapping);
        }
    });
}
