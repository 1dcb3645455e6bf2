//! Why a request could not be sent to the next hop, whichever side the next hop is on (a remote
//! endpoint over mTLS, or the app on localhost).

use std::net::SocketAddr;

/// Why a request could not be sent to an endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The TCP connection failed: the server was never reached (safe to retry elsewhere).
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    /// The mTLS handshake failed; `reason` is the metrics label.
    #[error("mTLS handshake with {addr} failed ({reason}): {message}")]
    Tls {
        addr: SocketAddr,
        reason: &'static str,
        message: String,
    },
    /// The server's certificate is valid but names someone else.
    #[error("{addr}: {message}")]
    IdentityMismatch { addr: SocketAddr, message: String },
    /// The server turned the request away unprocessed because it was busy (HTTP/2
    /// REFUSED_STREAM at its concurrency limit): safe to retry, and no failure of the server.
    #[error("{addr} refused the request unprocessed: {message}")]
    Refused { addr: SocketAddr, message: String },
    /// The connection broke or the server spoke bad HTTP.
    #[error("{0}")]
    Http(String),
    /// The caller's own request body failed (a malformed chunk, an upload cut short): it says
    /// nothing about the server, and the caller is answered 400.
    #[error("the request body could not be read: {0}")]
    RequestBody(String),
}

impl TransportError {
    /// True when the request never reached the server (connect or handshake failure).
    pub fn is_connect_failure(&self) -> bool {
        !matches!(self, Self::Http(_) | Self::RequestBody(_))
    }

    /// True when the caller's request broke, not the server.
    pub fn is_caller_failure(&self) -> bool {
        matches!(self, Self::RequestBody(_))
    }

    /// The `kind` label of `ambassador_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Refused { .. } => "refused",
            Self::Tls { .. } => "tls",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::Http(_) => "http",
            Self::RequestBody(_) => "request_body",
        }
    }
}
