//! The inbound TLS side: a server config that requires a client certificate from the CA bundle
//! and refuses, during the handshake, a peer whose identity is not on the route's allow-list
//! (the kit's authorization hook, consulted once the chain has verified); and the
//! `X-Forwarded-Client-Cert` header that tells the app who called.

use std::sync::Arc;

use rustls::ServerConfig;
use sidecar_kit::reload::Credentials;
use sidecar_kit::tls::{self, PeerIdentity, TlsError};

use crate::authz::AllowList;

/// The inbound server config for `credentials`, allowing the peers of `allow`.
pub fn server_config(
    credentials: &Credentials,
    allow: &AllowList,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut config = tls::server_config_with_authorizer(
        &credentials.identity,
        &credentials.bundle,
        alpn,
        Arc::new(allow.clone()),
    )?;
    // Resumed sessions skip the full handshake; they were authorized when first made. The
    // cache is allocated whole up front, so every ambassador pays for its size: 1024 entries
    // hold the last 512 peers' sessions (TLS 1.3 issues two tickets per handshake).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(config)
}

/// The `X-Forwarded-Client-Cert` value for a peer, in Envoy's format:
/// `By=<our URI>;Hash=<sha256 hex>;Subject="<DN>";URI=<uri>;DNS=<name>;DNS=<name>`.
pub fn xfcc(peer: &PeerIdentity, by: Option<&str>) -> String {
    let mut out = String::with_capacity(256);
    if let Some(by) = by {
        out.push_str("By=");
        push_value(&mut out, by);
        out.push(';');
    }
    out.push_str("Hash=");
    out.push_str(&peer.sha256_hex);
    out.push_str(";Subject=\"");
    out.push_str(&peer.subject.replace('\\', "\\\\").replace('"', "\\\""));
    out.push('"');
    for uri in &peer.uris {
        out.push_str(";URI=");
        push_value(&mut out, uri);
    }
    for dns in &peer.dns_names {
        out.push_str(";DNS=");
        push_value(&mut out, dns);
    }
    out
}

/// Envoy quotes a value that holds `,`, `;` or `=`.
fn push_value(out: &mut String, value: &str) {
    if value.contains([',', ';', '=', '"']) {
        out.push('"');
        out.push_str(&value.replace('"', "\\\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn xfcc_is_envoys_format() {
        let peer = PeerIdentity {
            spiffe_ids: vec!["spiffe://td/a".into()],
            uris: vec!["spiffe://td/a".into()],
            dns_names: vec!["a.svc".into(), "b.svc".into()],
            subject: "CN=a".into(),
            sha256_hex: "ab12".into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
            serial_hex: "01".into(),
        };
        assert_eq!(
            xfcc(&peer, Some("spiffe://td/me")),
            "By=spiffe://td/me;Hash=ab12;Subject=\"CN=a\";URI=spiffe://td/a;DNS=a.svc;DNS=b.svc"
        );
    }
}
