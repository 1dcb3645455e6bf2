//! Entry points for the fuzz targets (`fuzz/`) into parsers that are private to the crate: not
//! part of the API, no stability promised.

use sidecar_kit::tls::PeerIdentity;

use crate::authz::{AllowList, DnsPattern, SpiffePattern};

/// Parses `pattern` as an allow-list entry (SPIFFE ID pattern and DNS pattern) and matches
/// `name` against what parsed.
pub fn patterns(pattern: &str, name: &str) {
    if let Ok(p) = SpiffePattern::parse(pattern) {
        p.matches(name);
    }
    if let Ok(p) = DnsPattern::parse(pattern) {
        p.matches(name);
    }
    if let Ok(list) = AllowList::new(&[pattern.to_owned()], &[pattern.to_owned()]) {
        list.allows(&[name.to_owned()], &[name.to_owned()]);
    }
}

/// The `X-Forwarded-Client-Cert` value the inbound side would build for a peer presenting the
/// DER certificate `der`, if it parses.
pub fn xfcc(der: &[u8], by: Option<&str>) -> Option<String> {
    let peer = PeerIdentity::from_der(der).ok()?;
    Some(crate::inbound::tls::xfcc(&peer, by))
}
