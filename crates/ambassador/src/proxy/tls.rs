//! Why an mTLS handshake failed, as both directions count (`reason` label of
//! `ambassador_tls_failures_total`) and log it.

use rustls::CertificateError;
use sidecar_kit::tls;

/// The reason label for a failed handshake (accepting a peer, or connecting to a remote).
pub fn refusal_reason(err: &std::io::Error) -> &'static str {
    let Some(rustls_err) = tls::rustls_error(err) else {
        return "handshake_error";
    };
    if tls::peer_not_allowed(rustls_err).is_some() {
        return "identity_not_allowed";
    }
    match rustls_err {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            _ => "handshake_error",
        },
        _ => "handshake_error",
    }
}
