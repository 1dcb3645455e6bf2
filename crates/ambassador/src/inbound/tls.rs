//! The inbound TLS side: a server config that requires a client certificate from the CA bundle
//! and refuses, during the handshake, a peer whose identity is not on the allow-list; and the
//! reason each refused handshake is counted under.
//!
//! The kit's `tls::server_config` verifies the chain but has no hook for authorization, so the
//! config is built here from the kit's pieces (identity, bundle, provider) with a verifier that
//! wraps webpki's.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use sidecar_kit::reload::Credentials;
use sidecar_kit::tls::{self, PeerIdentity, TlsError};

use crate::authz::AllowList;

/// The peer's certificate is valid but its identity is not on the allow-list.
#[derive(Debug, thiserror::Error)]
#[error("identity not allowed: {names}")]
pub struct NotAllowed {
    /// The certificate's URI and DNS SANs, comma-separated.
    pub names: String,
}

/// Why an inbound handshake failed, as counted (`reason` label) and logged.
pub fn refusal_reason(err: &std::io::Error) -> &'static str {
    let Some(rustls_err) = tls::rustls_error(err) else {
        return "handshake_error";
    };
    match rustls_err {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Other(other) if other.0.downcast_ref::<NotAllowed>().is_some() => {
                "identity_not_allowed"
            }
            _ => "handshake_error",
        },
        _ => "handshake_error",
    }
}

/// The inbound server config for `credentials`, allowing the peers of `allow`.
pub fn server_config(
    credentials: &Credentials,
    allow: Option<&AllowList>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let provider = tls::provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(credentials.bundle.roots(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let verifier: Arc<dyn ClientCertVerifier> = match allow {
        Some(allow) => Arc::new(Authorizing {
            inner: webpki,
            allow: allow.clone(),
        }),
        None => webpki,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            credentials.identity.certified_key()?,
        )));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Resumed sessions skip the full handshake; they were authorized when first made. The
    // cache is allocated whole up front (about 100 bytes an entry): 1024 entries hold the last
    // 512 peers' sessions (TLS 1.3 issues two tickets per handshake) in 100 KB; 4096 cost 400 KB
    // of every ambassador's memory.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(config)
}

#[derive(Debug)]
struct Authorizing {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for Authorizing {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = PeerIdentity::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allow.allows(&peer.spiffe_ids, &peer.dns_names) {
            Ok(ClientCertVerified::assertion())
        } else {
            let names = peer.names().join(", ");
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotAllowed {
                    names: if names.is_empty() {
                        "no SAN".to_owned()
                    } else {
                        names
                    },
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
