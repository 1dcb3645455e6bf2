//! TLS building blocks for mutual TLS: PEM loading, rustls server and client configs, peer
//! identities, and the checks run before new credentials replace old ones.
//!
//! The whole workspace uses one crypto provider, rustls' ring ([`provider`]).
//!
//! A server decides who may connect with a [`PeerAuthorizer`] given to
//! [`server_config_with_authorizer`]: it is consulted during the handshake, after the client's
//! chain has verified.
//!
//! ```no_run
//! use sidecar_kit::tls::{self, ExpectedIdentity, Identity, TrustBundle};
//! # fn demo() -> Result<(), tls::TlsError> {
//! let me = Identity::load("/certs/tls.crt".as_ref(), "/certs/tls.key".as_ref())?;
//! let ca = TrustBundle::load("/certs/ca.crt".as_ref())?;
//! // Inbound: clients must present a certificate issued by the bundle.
//! let server = tls::server_config(&me, &ca, &[b"h2", b"http/1.1"])?;
//! // Outbound: present ours, and accept only the server with this SPIFFE ID.
//! let expected = ExpectedIdentity::Spiffe("spiffe://example.org/ns/prod/sa/billing".into());
//! let client = tls::client_config(Some(&me), &ca, expected, &[b"h2", b"http/1.1"])?;
//! # let _ = (server, client); Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why certificates, keys or bundles cannot be used. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind wanted, or garbage.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. "no CERTIFICATE block".
        what: String,
    },
    /// A certificate could not be parsed.
    #[error("{origin}: cannot parse certificate: {reason}")]
    Certificate {
        /// Where it came from.
        origin: String,
        /// Why.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate's validity period is over.
    #[error("the certificate in {} expired at {}", path.display(), humantime::format_rfc3339_seconds(*not_after))]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired.
        not_after: SystemTime,
    },
    /// The certificate's validity period has not begun.
    #[error("the certificate in {} is not valid before {}", path.display(), humantime::format_rfc3339_seconds(*not_before))]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// When it becomes valid.
        not_before: SystemTime,
    },
    /// The certificate does not chain to the trust bundle.
    #[error("the certificate in {} does not chain to the trust bundle {}: {reason}", cert.display(), bundle.display())]
    Chain {
        /// The certificate file.
        cert: PathBuf,
        /// The bundle file.
        bundle: PathBuf,
        /// webpki's reason.
        reason: String,
    },
    /// rustls refused to build a configuration from otherwise valid inputs.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of the whole workspace: ring, as linkerd2-proxy's default. Against
/// aws-lc-rs it leaves 1.5 MB less code in the ambassador (its resident memory is mostly its own
/// code pages) at the same request and handshake rates; it offers X25519, P-256 and P-384 key
/// exchange, not the post-quantum X25519MLKEM768 hybrid.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(workspace_provider())
}

/// The one place that names the provider.
fn workspace_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Installs [`provider`] as rustls' process default, so crates that build their own configs
/// (reqwest, for one) use the same one. Harmless if already installed. [`crate::runtime::run`]
/// calls it; so must code that builds a reqwest client outside it (tests, tools): the
/// workspace's reqwest has no provider of its own and panics without a default.
pub fn install_default_provider() {
    let _already = workspace_provider().install_default();
}

/// A certificate chain (leaf first) and its private key, as loaded from PEM files.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem(&cert_pem, &key_pem, cert_path, key_path)
    }

    /// Parses PEM text; the paths are only used to name the source in errors.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let chain = parse_certs(cert_pem, cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            path: key_path.to_owned(),
            what: format!("no usable private key: {e}"),
        })?;
        Ok(Self {
            chain,
            key,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The file the chain came from.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key, for building configs by hand.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The chain and key as rustls' signing form, refusing a key that is not the certificate's.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map(Arc::new)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: self.cert_path.clone(),
                    key: self.key_path.clone(),
                },
                other => TlsError::Pem {
                    path: self.key_path.clone(),
                    what: format!("unusable private key: {other}"),
                },
            })
    }
}

/// A bundle of CA certificates to verify peers against.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    path: PathBuf,
}

impl TrustBundle {
    /// Loads every certificate of a PEM bundle as a trust anchor.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(path)?, path)
    }

    /// Parses a PEM bundle; `path` names it in errors.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, TlsError> {
        let certs = parse_certs(pem, path)?;
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| TlsError::Certificate {
                origin: path.display().to_string(),
                reason: format!("not usable as a trust anchor: {e}"),
            })?;
        }
        Ok(Self {
            certs,
            roots: Arc::new(roots),
            path: path.to_owned(),
        })
    }

    /// The CA certificates.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The trust anchors, for rustls verifiers.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The file the bundle came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".to_owned(),
        });
    }
    for cert in &certs {
        // Refuse garbage inside a well-formed PEM block now, not at the first handshake.
        X509Certificate::from_der(cert).map_err(|e| TlsError::Certificate {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// A server config that requires client certificates issued by `clients` (TLS 1.2 and 1.3),
/// presenting `identity`, and offering `alpn` protocols in order of preference.
///
/// Any client whose chain verifies is accepted; to also decide who may connect, see
/// [`server_config_with_authorizer`].
pub fn server_config(
    identity: &Identity,
    clients: &TrustBundle,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    build_server_config(identity, clients, alpn, None)
}

/// Like [`server_config`], and once a client's chain has verified, asks `authorizer` whether
/// that client may connect. A client it refuses fails the handshake with
/// `CertificateError::Other` holding a [`PeerNotAllowed`] (see [`peer_not_allowed`]), so the
/// refusal happens before any request is read and the client learns why (a TLS alert).
///
/// ```no_run
/// use std::sync::Arc;
/// use sidecar_kit::tls::{self, Identity, PeerIdentity, TrustBundle};
/// # fn demo(me: &Identity, ca: &TrustBundle) -> Result<(), tls::TlsError> {
/// // Only the web workloads of the prod namespace may call.
/// let only_web = |peer: &PeerIdentity| {
///     peer.spiffe_ids.iter().any(|id| id == "spiffe://example.org/ns/prod/sa/web")
/// };
/// let server = tls::server_config_with_authorizer(me, ca, &[b"h2"], Arc::new(only_web))?;
/// # let _ = server; Ok(()) }
/// ```
pub fn server_config_with_authorizer(
    identity: &Identity,
    clients: &TrustBundle,
    alpn: &[&[u8]],
    authorizer: Arc<dyn PeerAuthorizer>,
) -> Result<ServerConfig, TlsError> {
    build_server_config(identity, clients, alpn, Some(authorizer))
}

fn build_server_config(
    identity: &Identity,
    clients: &TrustBundle,
    alpn: &[&[u8]],
    authorizer: Option<Arc<dyn PeerAuthorizer>>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(clients.roots(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let verifier: Arc<dyn ClientCertVerifier> = match authorizer {
        Some(authorizer) => Arc::new(AuthorizingVerifier {
            chain: webpki,
            authorizer,
        }),
        None => webpki,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            identity.certified_key()?,
        )));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Decides which clients a server accepts, once their certificate chain has verified against
/// the trust bundle: an allow-list of SPIFFE IDs, a namespace rule, and so on. Consulted
/// during every full handshake (a resumed session was authorized when it was first made).
///
/// Any `Fn(&PeerIdentity) -> bool` closure is one.
pub trait PeerAuthorizer: Send + Sync {
    /// Whether the client with this certificate may connect.
    fn allows(&self, peer: &PeerIdentity) -> bool;
}

impl<F> PeerAuthorizer for F
where
    F: Fn(&PeerIdentity) -> bool + Send + Sync,
{
    fn allows(&self, peer: &PeerIdentity) -> bool {
        self(peer)
    }
}

/// A client presented a valid certificate, but the server's [`PeerAuthorizer`] refused it.
#[derive(Debug, thiserror::Error)]
#[error("identity not allowed: {names}")]
pub struct PeerNotAllowed {
    /// The certificate's URI and DNS SANs, comma-separated (`no SAN` when it has none).
    pub names: String,
}

/// The authorization refusal behind a handshake failure, if that is what it was.
pub fn peer_not_allowed(err: &rustls::Error) -> Option<&PeerNotAllowed> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PeerNotAllowed>()
        }
        _ => None,
    }
}

/// webpki's client verification, then the [`PeerAuthorizer`]'s decision.
struct AuthorizingVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    authorizer: Arc<dyn PeerAuthorizer>,
}

impl fmt::Debug for AuthorizingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizingVerifier")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AuthorizingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = PeerIdentity::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.authorizer.allows(&peer) {
            return Ok(ClientCertVerified::assertion());
        }
        let names = peer.names().join(", ");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(PeerNotAllowed {
                names: if names.is_empty() {
                    "no SAN".to_owned()
                } else {
                    names
                },
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Who the remote server must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedIdentity {
    /// A SPIFFE ID among the certificate's URI SANs, e.g. `spiffe://example.org/ns/a/sa/b`.
    Spiffe(String),
    /// A DNS name matching one of the certificate's DNS SANs (wildcards as webpki allows).
    Dns(String),
}

impl ExpectedIdentity {
    /// `spiffe://...` is a SPIFFE ID; anything else a DNS name.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("spiffe://") {
            Self::Spiffe(text.to_owned())
        } else {
            Self::Dns(text.to_owned())
        }
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spiffe(id) => f.write_str(id),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

/// The server presented a valid certificate for someone else.
#[derive(Debug, thiserror::Error)]
#[error("server identity mismatch: expected {expected}, the certificate names {presented}")]
pub struct IdentityMismatch {
    /// Who was expected.
    pub expected: ExpectedIdentity,
    /// The identities the certificate carries (URI and DNS SANs), comma-separated.
    pub presented: String,
}

/// A client config presenting `identity` (if any) and accepting only a server whose certificate
/// chains to `servers` and carries `expected`.
pub fn client_config(
    identity: Option<&Identity>,
    servers: &TrustBundle,
    expected: ExpectedIdentity,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        roots: servers.roots(),
        expected,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(
            rustls::sign::SingleCertAndKey::from(identity.certified_key()?),
        )),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The rustls error inside an I/O error from a tokio-rustls handshake, if there is one.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The identity mismatch behind a handshake failure, if that is what it was.
pub fn identity_mismatch(err: &rustls::Error) -> Option<&IdentityMismatch> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityMismatch>()
        }
        _ => None,
    }
}

/// Verifies the chain against the bundle, then the identity: by SPIFFE ID (which webpki's
/// hostname check cannot do) or by DNS name.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: ExpectedIdentity,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let mismatch = || {
            let presented = PeerIdentity::from_der(end_entity)
                .map(|p| p.names().join(", "))
                .unwrap_or_default();
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(IdentityMismatch {
                    expected: self.expected.clone(),
                    presented: if presented.is_empty() {
                        "no identity".to_owned()
                    } else {
                        presented
                    },
                }),
            )))
        };
        match &self.expected {
            ExpectedIdentity::Dns(name) => {
                let server_name = ServerName::try_from(name.as_str())
                    .map_err(|_| mismatch())?
                    .to_owned();
                rustls::client::verify_server_name(&cert, &server_name).map_err(|_| mismatch())?;
            }
            ExpectedIdentity::Spiffe(id) => {
                let peer = PeerIdentity::from_der(end_entity).map_err(|_| mismatch())?;
                if !peer.spiffe_ids.iter().any(|p| p == id) {
                    return Err(mismatch());
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Who a certificate says its holder is, parsed with x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs that are SPIFFE IDs.
    pub spiffe_ids: Vec<String>,
    /// Every URI SAN (SPIFFE IDs included).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject's distinguished name, RFC 4514 style.
    pub subject: String,
    /// SHA-256 of the DER certificate, lowercase hex (Envoy's XFCC `Hash`).
    pub sha256_hex: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
}

impl PeerIdentity {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Certificate {
            origin: "peer certificate".to_owned(),
            reason: e.to_string(),
        })?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        let spiffe_ids = uris
            .iter()
            .filter(|u| u.starts_with("spiffe://"))
            .cloned()
            .collect();
        Ok(Self {
            spiffe_ids,
            uris,
            dns_names,
            subject: cert.subject().to_string(),
            sha256_hex: hex::encode(Sha256::digest(der)),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            serial_hex: cert.raw_serial_as_string().replace(':', ""),
        })
    }

    /// URI and DNS names together, for messages.
    pub fn names(&self) -> Vec<String> {
        self.uris
            .iter()
            .chain(self.dns_names.iter())
            .cloned()
            .collect()
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Checks that new credentials can safely replace the ones in use: the key is the leaf's, the
/// leaf is within its validity at `now`, and the chain verifies against `bundle` (as a client
/// or a server certificate). Returns the leaf's parsed identity.
pub fn check_credentials(
    identity: &Identity,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<PeerIdentity, TlsError> {
    identity.certified_key()?;
    let leaf_der = identity.chain.first().ok_or_else(|| TlsError::Pem {
        path: identity.cert_path.clone(),
        what: "no CERTIFICATE block".to_owned(),
    })?;
    let leaf = PeerIdentity::from_der(leaf_der).map_err(|e| match e {
        TlsError::Certificate { reason, .. } => TlsError::Certificate {
            origin: identity.cert_path.display().to_string(),
            reason,
        },
        other => other,
    })?;
    if now < leaf.not_before {
        return Err(TlsError::NotYetValid {
            path: identity.cert_path.clone(),
            not_before: leaf.not_before,
        });
    }
    if now > leaf.not_after {
        return Err(TlsError::Expired {
            path: identity.cert_path.clone(),
            not_after: leaf.not_after,
        });
    }
    let chain_error = |reason: String| TlsError::Chain {
        cert: identity.cert_path.clone(),
        bundle: bundle.path.clone(),
        reason,
    };
    let end_entity =
        webpki::EndEntityCert::try_from(leaf_der).map_err(|e| chain_error(e.to_string()))?;
    let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let algs = provider().signature_verification_algorithms.all;
    let intermediates = &identity.chain[1..];
    let verify = |usage| {
        end_entity
            .verify_for_usage(
                algs,
                &bundle.roots.roots,
                intermediates,
                unix,
                usage,
                None,
                None,
            )
            .map(|_| ())
    };
    verify(webpki::KeyUsage::client_auth())
        .or_else(|_| verify(webpki::KeyUsage::server_auth()))
        .map_err(|e| chain_error(format!("{e:?}")))?;
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::certs::Ca;

    fn ca(name: &str) -> Ca {
        Ca::new(name)
    }

    fn leaf(ca: &Ca, spiffe: &str, dns: &str, days: (i64, i64)) -> (String, String) {
        let leaf = ca
            .leaf()
            .spiffe(spiffe)
            .dns(dns)
            .valid_days(days.0, days.1)
            .sign();
        (leaf.cert_pem, leaf.key_pem)
    }

    fn identity(pems: &(String, String)) -> Identity {
        Identity::from_pem(
            pems.0.as_bytes(),
            pems.1.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap()
    }

    fn bundle(ca: &Ca) -> TrustBundle {
        TrustBundle::from_pem(ca.pem().as_bytes(), Path::new("ca.crt")).unwrap()
    }

    #[test]
    fn good_credentials_pass_and_identity_is_parsed() {
        let ca = ca("mesh");
        let id = identity(&leaf(
            &ca,
            "spiffe://example.org/ns/a/sa/web",
            "web.a",
            (-1, 30),
        ));
        let peer = check_credentials(&id, &bundle(&ca), SystemTime::now()).unwrap();
        assert_eq!(peer.spiffe_ids, vec!["spiffe://example.org/ns/a/sa/web"]);
        assert_eq!(peer.dns_names, vec!["web.a"]);
        assert_eq!(peer.sha256_hex.len(), 64);
    }

    #[test]
    fn mismatched_key_is_refused() {
        let ca = ca("mesh");
        let a = leaf(&ca, "spiffe://x/a", "a", (-1, 30));
        let b = leaf(&ca, "spiffe://x/b", "b", (-1, 30));
        let id = identity(&(a.0, b.1));
        let err = check_credentials(&id, &bundle(&ca), SystemTime::now()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let ca = ca("mesh");
        let old = identity(&leaf(&ca, "spiffe://x/a", "a", (-30, -1)));
        let err = check_credentials(&old, &bundle(&ca), SystemTime::now()).unwrap_err();
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        let future = identity(&leaf(&ca, "spiffe://x/a", "a", (1, 30)));
        let err = check_credentials(&future, &bundle(&ca), SystemTime::now()).unwrap_err();
        assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let ca1 = ca("mesh");
        let ca2 = ca("other");
        let id = identity(&leaf(&ca2, "spiffe://x/a", "a", (-1, 30)));
        let err = check_credentials(&id, &bundle(&ca1), SystemTime::now()).unwrap_err();
        assert!(matches!(err, TlsError::Chain { .. }), "{err}");
    }

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let err = Identity::from_pem(
            b"hello",
            b"world",
            Path::new("/x/tls.crt"),
            Path::new("/x/tls.key"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/x/tls.crt"), "{err}");
        let bad_block = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = TrustBundle::from_pem(bad_block.as_bytes(), Path::new("/x/ca.crt")).unwrap_err();
        assert!(err.to_string().contains("/x/ca.crt"), "{err}");
    }

    #[tokio::test]
    async fn mtls_handshake_checks_the_server_identity() {
        let ca = ca("mesh");
        let server_id = identity(&leaf(
            &ca,
            "spiffe://example.org/srv",
            "srv.local",
            (-1, 30),
        ));
        let client_id = identity(&leaf(
            &ca,
            "spiffe://example.org/cli",
            "cli.local",
            (-1, 30),
        ));
        let server = Arc::new(server_config(&server_id, &bundle(&ca), &[b"http/1.1"]).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        use tokio::io::AsyncWriteExt;
                        let _ = tls.write_all(b"hi").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let connect = |expected: ExpectedIdentity| {
            let config =
                client_config(Some(&client_id), &bundle(&ca), expected, &[b"http/1.1"]).unwrap();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(ServerName::try_from("ignored").unwrap(), tcp)
                    .await
            }
        };
        connect(ExpectedIdentity::Spiffe("spiffe://example.org/srv".into()))
            .await
            .unwrap();
        connect(ExpectedIdentity::Dns("srv.local".into()))
            .await
            .unwrap();
        let err = connect(ExpectedIdentity::Spiffe(
            "spiffe://example.org/other".into(),
        ))
        .await
        .unwrap_err();
        let mismatch = rustls_error(&err).and_then(identity_mismatch).unwrap();
        assert_eq!(
            mismatch.to_string(),
            "server identity mismatch: expected spiffe://example.org/other, \
             the certificate names spiffe://example.org/srv, srv.local"
        );
        let err = connect(ExpectedIdentity::Dns("other.local".into()))
            .await
            .unwrap_err();
        let mismatch = rustls_error(&err).and_then(identity_mismatch).unwrap();
        assert_eq!(
            mismatch.expected,
            ExpectedIdentity::Dns("other.local".into())
        );
    }

    /// A server with `config` on a loopback port; each handshake's outcome comes back on the
    /// channel (in TLS 1.3 the client finishes first, so only the server sees a refusal).
    async fn serve_handshakes(
        config: ServerConfig,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Result<(), std::io::Error>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tx.send(acceptor.accept(tcp).await.map(drop));
            }
        });
        (addr, rx)
    }

    async fn handshake(addr: std::net::SocketAddr, client: &Identity, ca: &TrustBundle) {
        let config = client_config(
            Some(client),
            ca,
            ExpectedIdentity::Spiffe("spiffe://example.org/srv".into()),
            &[],
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The outcome that matters is the server's; the client's may be either.
        let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("ignored").unwrap(), tcp)
            .await;
    }

    /// An allow-list as a caller would write one: a type of its own.
    #[derive(Debug)]
    struct SpiffeAllowList(Vec<String>);

    impl PeerAuthorizer for SpiffeAllowList {
        fn allows(&self, peer: &PeerIdentity) -> bool {
            peer.spiffe_ids.iter().any(|id| self.0.contains(id))
        }
    }

    #[tokio::test]
    async fn the_authorizer_decides_which_verified_clients_connect() {
        let ca = ca("mesh");
        let server = identity(&leaf(&ca, "spiffe://example.org/srv", "srv", (-1, 30)));
        let web = identity(&leaf(
            &ca,
            "spiffe://example.org/web",
            "web.local",
            (-1, 30),
        ));
        let batch = identity(&leaf(&ca, "spiffe://example.org/batch", "batch", (-1, 30)));
        let allow = SpiffeAllowList(vec!["spiffe://example.org/web".into()]);
        let config =
            server_config_with_authorizer(&server, &bundle(&ca), &[], Arc::new(allow)).unwrap();
        let (addr, mut outcomes) = serve_handshakes(config).await;

        handshake(addr, &web, &bundle(&ca)).await;
        outcomes.recv().await.unwrap().unwrap();

        handshake(addr, &batch, &bundle(&ca)).await;
        let err = outcomes.recv().await.unwrap().unwrap_err();
        let refused = rustls_error(&err).and_then(peer_not_allowed).unwrap();
        assert_eq!(refused.names, "spiffe://example.org/batch, batch");
        assert_eq!(
            refused.to_string(),
            "identity not allowed: spiffe://example.org/batch, batch"
        );
    }

    #[tokio::test]
    async fn a_closure_authorizes_and_is_asked_only_after_the_chain_verified() {
        let other_ca = ca("other");
        let ca = ca("mesh");
        let server = identity(&leaf(&ca, "spiffe://example.org/srv", "srv", (-1, 30)));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asked.clone();
        let only_web_local = move |peer: &PeerIdentity| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            peer.dns_names.iter().any(|n| n == "web.local")
        };
        let config =
            server_config_with_authorizer(&server, &bundle(&ca), &[], Arc::new(only_web_local))
                .unwrap();
        let (addr, mut outcomes) = serve_handshakes(config).await;

        // Issued by a CA the server does not trust: refused by the chain check, not asked about.
        let stranger = identity(&leaf(
            &other_ca,
            "spiffe://example.org/web",
            "web.local",
            (-1, 30),
        ));
        handshake(addr, &stranger, &bundle(&ca)).await;
        let err = outcomes.recv().await.unwrap().unwrap_err();
        let rustls_err = rustls_error(&err).unwrap();
        assert!(peer_not_allowed(rustls_err).is_none(), "{rustls_err}");
        assert!(
            matches!(
                rustls_err,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{rustls_err}"
        );
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 0);

        let web = identity(&leaf(
            &ca,
            "spiffe://example.org/web",
            "web.local",
            (-1, 30),
        ));
        handshake(addr, &web, &bundle(&ca)).await;
        outcomes.recv().await.unwrap().unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);

        // Without an authorizer every verified client connects, as before.
        let plain = server_config(&server, &bundle(&ca), &[]).unwrap();
        let (addr, mut outcomes) = serve_handshakes(plain).await;
        let batch = identity(&leaf(&ca, "spiffe://example.org/batch", "batch", (-1, 30)));
        handshake(addr, &batch, &bundle(&ca)).await;
        outcomes.recv().await.unwrap().unwrap();
    }
}
