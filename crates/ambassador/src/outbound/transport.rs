//! One outbound route's mTLS transport: a few shared HTTP/2 connections per endpoint when the
//! remote agrees through ALPN (see [`crate::proxy::client::h2`]), pooled keep-alive HTTP/1.1 connections
//! otherwise and for upgrades; the pod's certificate presented and the remote's identity checked
//! on every new connection.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sidecar_kit::error_chain;
use sidecar_kit::reload::{CredentialReloader, Credentials};
use sidecar_kit::tls::{self, ExpectedIdentity, TlsError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::RouteMetrics;
use crate::proxy::body::ProxyBody;
use crate::proxy::client::UpstreamBody;
use crate::proxy::client::h2::H2Conns;
use crate::proxy::error::TransportError;
use crate::proxy::forward::wants_upgrade;
use crate::proxy::tls::refusal_reason;
use crate::shard::ShardLocal;

/// One address of a remote service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }
}

/// The TLS client configs of a route, swapped whole when certificates reload.
struct RouteTls {
    /// Offers h2 and http/1.1.
    any: TlsConnector,
    /// Offers http/1.1 only, for requests that upgrade (WebSocket) and need HTTP/1.
    http1: TlsConnector,
    /// No ALPN, for raw TCP routes.
    raw: TlsConnector,
}

impl RouteTls {
    fn build(
        credentials: &Credentials,
        expected: &ExpectedIdentity,
        http2: bool,
    ) -> Result<Self, TlsError> {
        let config = |alpn: &[&[u8]]| -> Result<TlsConnector, TlsError> {
            let mut config: ClientConfig = tls::client_config(
                Some(&credentials.identity),
                &credentials.bundle,
                expected.clone(),
                alpn,
            )?;
            config.resumption = rustls::client::Resumption::in_memory_sessions(1024);
            Ok(TlsConnector::from(Arc::new(config)))
        };
        let any: &[&[u8]] = if http2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        Ok(Self {
            any: config(any)?,
            http1: config(&[b"http/1.1"])?,
            raw: config(&[])?,
        })
    }
}

/// A route's shared TLS state and what the connector needs to name and count failures.
struct Shared {
    /// TCP connect plus handshake; running out is a connect failure (retried elsewhere).
    connect_timeout: Duration,
    tls: ArcSwap<RouteTls>,
    expected: ExpectedIdentity,
    metrics: RouteMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// Opens mTLS connections to the endpoint named by the URI's authority.
#[derive(Debug, Clone)]
struct MtlsConnector {
    shared: Arc<Shared>,
    http1_only: bool,
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsStream, TransportError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let shared = self.shared.clone();
        let http1_only = self.http1_only;
        Box::pin(async move {
            let addr = endpoint_of(&uri)?;
            let tls = shared.tls.load();
            let connector = if http1_only {
                tls.http1.clone()
            } else {
                tls.any.clone()
            };
            drop(tls);
            let stream = connect_mtls(&shared, &connector, addr).await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(MtlsStream {
                io: TokioIo::new(stream),
                h2,
            })
        })
    }
}

fn endpoint_of(uri: &Uri) -> Result<SocketAddr, TransportError> {
    let bad = || TransportError::Http(format!("internal: no endpoint address in {uri}"));
    let host = uri.host().ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, uri.port_u16().ok_or_else(bad)?))
}

/// TCP connect plus mTLS handshake, with failures classified and counted.
async fn connect_mtls(
    shared: &Shared,
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, TransportError> {
    match tokio::time::timeout(
        shared.connect_timeout,
        connect_mtls_untimed(shared, connector, addr),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(TransportError::Connect {
            addr,
            message: format!(
                "no connection within {:?} (connect timeout)",
                shared.connect_timeout
            ),
        }),
    }
}

async fn connect_mtls_untimed(
    shared: &Shared,
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, TransportError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| TransportError::Connect {
            addr,
            message: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    // SNI: the DNS identity when there is one; for a SPIFFE ID the IP (which sends no SNI).
    let server_name = match &shared.expected {
        ExpectedIdentity::Dns(name) => ServerName::try_from(name.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into())),
        ExpectedIdentity::Spiffe(_) => ServerName::IpAddress(addr.ip().into()),
    };
    match connector.connect(server_name, tcp).await {
        Ok(stream) => Ok(stream),
        Err(e) => {
            if let Some(mismatch) = tls::rustls_error(&e).and_then(tls::identity_mismatch) {
                shared.metrics.tls_failure("identity_mismatch");
                tracing::warn!(route = shared.metrics.route(), %addr, error = %mismatch, "remote refused: identity mismatch");
                return Err(TransportError::IdentityMismatch {
                    addr,
                    message: mismatch.to_string(),
                });
            }
            let reason = refusal_reason(&e);
            shared.metrics.tls_failure(reason);
            tracing::warn!(route = shared.metrics.route(), %addr, reason, error = %e, "mTLS handshake failed");
            Err(TransportError::Tls {
                addr,
                reason,
                message: e.to_string(),
            })
        }
    }
}

/// An mTLS connection as hyper's client sees it.
#[derive(Debug)]
pub struct MtlsStream {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
}

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// HTTP/2 connections opened per endpoint by each worker thread (each thread has its own, see
/// [`crate::shard`]). One: a thread's requests share it, so its writes carry many requests at
/// once; a second on the same thread would add a handshake and its buffers, and split them.
pub const H2_CONNECTIONS_PER_ENDPOINT: usize = 1;

/// What the transport keeps per endpoint.
struct Remote {
    authority: Authority,
    /// Each worker thread's own connections: their I/O stays on the thread that uses them.
    h2: ShardLocal<Arc<H2Conns>>,
    /// Set once the endpoint answered ALPN without `h2`: its requests use the HTTP/1.1 pool.
    http1_only: AtomicBool,
}

/// One route's transport.
pub struct Transport {
    shared: Arc<Shared>,
    http2: bool,
    idle: Duration,
    remotes: RwLock<HashMap<SocketAddr, Arc<Remote>>>,
    /// HTTP/1.1 keep-alive pool, for remotes that do not speak h2 (or with `http2: false`).
    client: Client<MtlsConnector, ProxyBody>,
    /// HTTP/1.1 only, for requests that upgrade (WebSocket).
    upgrade_client: Client<MtlsConnector, ProxyBody>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("shared", &self.shared)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Builds the route's transport and keeps its TLS configs in step with the reloader.
    pub fn new(
        expected: ExpectedIdentity,
        http2: bool,
        timeouts: &crate::resilience::TimeoutConfig,
        reloader: &Arc<CredentialReloader>,
        metrics: RouteMetrics,
        stop: CancellationToken,
    ) -> Result<Self, TlsError> {
        let tls = RouteTls::build(&reloader.current(), &expected, http2)?;
        let shared = Arc::new(Shared {
            connect_timeout: timeouts.connect,
            tls: ArcSwap::from_pointee(tls),
            expected,
            metrics,
        });
        spawn_reload(shared.clone(), reloader, http2, stop);
        let idle = timeouts.idle;
        let client = |http1_only: bool| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(idle)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_adaptive_window(true);
            builder.build(MtlsConnector {
                shared: shared.clone(),
                http1_only,
            })
        };
        Ok(Self {
            client: client(false),
            upgrade_client: client(true),
            shared,
            http2,
            idle,
            remotes: RwLock::new(HashMap::new()),
        })
    }

    fn remote(&self, addr: SocketAddr) -> Arc<Remote> {
        if let Some(remote) = self
            .remotes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
        {
            return remote.clone();
        }
        let mut remotes = self.remotes.write().unwrap_or_else(|p| p.into_inner());
        remotes
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Remote {
                    authority: Authority::try_from(addr.to_string())
                        .expect("a socket address is always a valid URI authority"),
                    h2: ShardLocal::new(|| H2Conns::new(H2_CONNECTIONS_PER_ENDPOINT, self.idle)),
                    http1_only: AtomicBool::new(!self.http2),
                })
            })
            .clone()
    }

    /// Sends a request to the endpoint at `addr`: on a shared HTTP/2 connection when the
    /// remote speaks h2, else on a pooled HTTP/1.1 one (a new one if none is free).
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, TransportError> {
        let upgrade = wants_upgrade(&req);
        let remote = self.remote(addr);
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(remote.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| TransportError::Http(format!("bad request target: {e}")))?;
        if !upgrade && !remote.http1_only.load(Ordering::Relaxed) {
            // RFC 9113 8.3.1: the app's `Host` goes to HTTP/2 as `:authority` (not as a header
            // beside the endpoint's address), so the remote's app sees the name it was called by.
            let host = req.headers_mut().remove(header::HOST);
            if let Some(authority) = host
                .as_ref()
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            {
                set_authority(&mut req, authority);
            }
            let shared = self.shared.clone();
            let remote_h1 = remote.clone();
            let connect = move || {
                let (shared, remote) = (shared.clone(), remote_h1.clone());
                async move {
                    let connector = shared.tls.load().any.clone();
                    let stream = connect_mtls(&shared, &connector, addr).await?;
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Ok(stream)
                    } else {
                        // The remote does not speak h2: from now on the HTTP/1.1 pool serves it.
                        remote.http1_only.store(true, Ordering::Relaxed);
                        Err(TransportError::Connect {
                            addr,
                            message: "the remote did not agree to HTTP/2; retrying over HTTP/1.1"
                                .to_owned(),
                        })
                    }
                }
            };
            req = match remote.h2.get().send(req, &connect, addr).await {
                Ok(response) => return Ok(response.map(UpstreamBody::H2)),
                // Not sent, and the remote turned out to speak HTTP/1.1 only: send it that way.
                Err((_, Some(mut req))) if remote.http1_only.load(Ordering::Relaxed) => {
                    tracing::debug!(route = self.shared.metrics.route(), %addr, "the remote does not speak h2: using HTTP/1.1");
                    // The HTTP/1.1 client connects to the URI's authority: the endpoint's again.
                    set_authority(&mut req, remote.authority.clone());
                    if let Some(host) = host {
                        req.headers_mut().insert(header::HOST, host);
                    }
                    req
                }
                Err((e, _)) => return Err(e),
            };
        }
        let client = if upgrade {
            &self.upgrade_client
        } else {
            &self.client
        };
        client
            .request(req)
            .await
            .map(|r| r.map(UpstreamBody::Http1))
            .map_err(|e| classify(&e))
    }

    /// Opens a raw mTLS connection (no ALPN) to `endpoint`, for TCP routes.
    pub async fn connect_raw(
        &self,
        endpoint: &Endpoint,
    ) -> Result<TlsStream<TcpStream>, TransportError> {
        let connector = self.shared.tls.load().raw.clone();
        connect_mtls(&self.shared, &connector, endpoint.addr).await
    }
}

fn classify(err: &hyper_util::client::legacy::Error) -> TransportError {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(ours) = cause.downcast_ref::<TransportError>() {
            return ours.clone();
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_user()
        {
            return TransportError::RequestBody(error_chain(err));
        }
        source = cause.source();
    }
    TransportError::Http(error_chain(err))
}

fn spawn_reload(
    shared: Arc<Shared>,
    reloader: &Arc<CredentialReloader>,
    http2: bool,
    stop: CancellationToken,
) {
    let mut updates = reloader.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = updates.changed() => if changed.is_err() { return },
            }
            let credentials = updates.borrow_and_update().clone();
            match RouteTls::build(&credentials, &shared.expected, http2) {
                // New connections use the new certificate; pooled ones keep theirs.
                Ok(tls) => shared.tls.store(Arc::new(tls)),
                Err(e) => tracing::error!(
                    route = shared.metrics.route(),
                    error = %e,
                    "cannot use the reloaded certificates; keeping the old ones"
                ),
            }
        }
    });
}

/// Replaces the authority of `req`'s (absolute) URI.
fn set_authority<B>(req: &mut Request<B>, authority: Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}
