//! The ambassador's allow-list patterns (SPIFFE ID and DNS): a pattern (NUL) a peer's name.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (pattern, name) = sidecars_fuzz::split2(data);
        if let (Some(pattern), Some(name)) =
            (sidecars_fuzz::text(pattern), sidecars_fuzz::text(name))
        {
            ambassador::fuzzing::patterns(pattern, name);
        }
    });
}
