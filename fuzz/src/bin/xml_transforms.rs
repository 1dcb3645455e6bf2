//! The xml-adapter's value transforms: a YAML chain (NUL) a value. The chain is compiled and
//! applied; the fast numeric path must agree with the general one.
use xml_adapter::transform::{
    TransformSpec, apply_chain, apply_numeric, apply_numeric_fast, apply_text, parse_bytes,
    parse_duration, parse_number, parse_rfc3339, parse_strf,
};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (chain, value) = sidecars_fuzz::split2(data);
        let (Some(chain), Some(value)) = (sidecars_fuzz::text(chain), sidecars_fuzz::text(value))
        else {
            return;
        };
        let _ = parse_number(value);
        let _ = parse_bytes(value);
        let _ = parse_duration(value);
        let _ = parse_rfc3339(value);
        let _ = parse_strf(value, chain);
        let Ok(specs) = serde_saphyr::from_str::<Vec<TransformSpec>>(chain) else {
            return;
        };
        let Ok(compiled) = specs
            .iter()
            .map(|s| s.compile())
            .collect::<Result<Vec<_>, _>>()
        else {
            return;
        };
        let _ = apply_chain(&compiled, value);
        let _ = apply_text(&compiled, value);
        let slow = apply_numeric(&compiled, value);
        let fast = apply_numeric_fast(&compiled, value);
        match (&slow, &fast) {
            (Ok(Some(a)), Ok(Some(b))) => {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{slow:?} != {fast:?}"
                )
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            _ => panic!("apply_numeric {slow:?} but apply_numeric_fast {fast:?}"),
        }
    });
}
