//! Syslog over TCP or TLS: RFC 5424 messages with octet-counting framing (RFC 6587 section
//! 3.4.1), to rsyslog (imtcp), syslog-ng (`syslog()` source) or any RFC 5425 receiver.
//!
//! **What "delivered" means.** Syslog over TCP has no acknowledgement from the receiving
//! application. Vector and Fluent Bit count a batch delivered once it is written to the socket,
//! so whatever sits in the kernel's send buffer when the connection breaks is lost without a
//! trace. Here a batch is delivered once it is written, flushed, *and acknowledged by the
//! receiver's TCP stack*: the sink waits until the socket has no unsent and no unacknowledged
//! bytes (`TCP_INFO`), for at most the sink's timeout. A connection that breaks, or does not
//! drain in time, fails the batch: the sink reconnects and sends the whole batch again, so a
//! break costs duplicates, never lines. What remains is the receiver's own: a receiver that
//! dies after its kernel took the bytes and before it wrote them loses them (RELP closes that
//! gap and is not spoken here).
//!
//! Before each batch an idle connection is checked: one the receiver closed (an idle timeout,
//! a restart) is replaced before anything is written to it. TCP keepalive finds dead peers on
//! idle connections.

pub mod format;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::{getsockopt_impl, sockopt_impl};
use rustls::pki_types::ServerName;
use sidecar_kit::reload::CredentialReloader;
use sidecar_kit::tls::{ExpectedIdentity, TrustBundle};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;

use crate::event::Event;
use crate::sink::http::{SinkContext, TlsSpec, client_tls, reloader};
use crate::sink::{BoxFuture, Outcome, Sink};
use format::FormatSpec;

// TCP_INFO (linux/tcp.h): the socket's send queue, in nix's own safe wrapper.
sockopt_impl!(
    TcpInfo,
    GetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_INFO,
    libc::tcp_info
);

/// TCP_CLOSE in `tcpi_state`: the connection is gone.
const TCP_CLOSE: u8 = 7;

/// A syslog sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogSpec {
    pub host: String,
    pub port: u16,
    /// TLS (RFC 5425); `None` for plain TCP.
    pub tls: Option<TlsSpec>,
    pub format: FormatSpec,
    /// Connecting, writing and waiting for the receiver's TCP acknowledgement, each.
    pub timeout: Duration,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the receiver is still there: nothing to read (a syslog receiver sends nothing)
    /// and no end of stream.
    async fn alive(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let polled = std::future::poll_fn(|cx| {
            let mut read = ReadBuf::new(&mut buf);
            let p = match self {
                Conn::Tcp(s) => Pin::new(s).poll_read(cx, &mut read),
                Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut read),
            };
            Poll::Ready(p.map(|r| r.map(|()| read.filled().len())))
        })
        .await;
        match polled {
            Poll::Pending => true,
            // Bytes from the receiver (unexpected): read and ignored.
            Poll::Ready(Ok(n)) => n > 0,
            Poll::Ready(Err(_)) => false,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

/// TLS settings resolved once: the CA (and our certificate, reloaded when its files change).
struct TlsSource {
    reloader: Option<Arc<CredentialReloader>>,
    bundle: Option<TrustBundle>,
    expected: ExpectedIdentity,
    server_name: ServerName<'static>,
}

impl TlsSource {
    fn connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        let mut config = client_tls(
            self.reloader.as_deref(),
            self.bundle.as_ref(),
            &self.expected,
        )?;
        config.alpn_protocols.clear();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// The syslog sink: one connection, one batch at a time.
pub struct Syslog {
    spec: SyslogSpec,
    tls: Option<TlsSource>,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog")
            .field("host", &self.spec.host)
            .field("port", &self.spec.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Syslog {
    pub fn new(spec: SyslogSpec, ctx: &SinkContext) -> Result<Self, String> {
        let tls = match &spec.tls {
            None => None,
            Some(t) => {
                sidecar_kit::tls::install_default_provider();
                let name = t.server_name.clone().unwrap_or_else(|| spec.host.clone());
                let server_name = ServerName::try_from(spec.host.clone())
                    .map_err(|e| format!("address: `{}`: {e}", spec.host))?;
                let (reloader, bundle) = match (&t.cert_file, &t.key_file, &t.ca_file) {
                    (Some(cert), Some(key), Some(ca)) => {
                        (Some(reloader(ctx, cert, key, ca)?), None)
                    }
                    (None, None, Some(ca)) => (
                        None,
                        Some(TrustBundle::load(ca).map_err(|e| format!("tls.ca_file: {e}"))?),
                    ),
                    _ => {
                        return Err(
                            "tls: give ca_file (and, for mTLS, cert_file and key_file)".into()
                        );
                    }
                };
                Some(TlsSource {
                    reloader,
                    bundle,
                    expected: ExpectedIdentity::parse(&name),
                    server_name,
                })
            }
        };
        Ok(Self {
            spec,
            tls,
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Conn, Outcome> {
        let timeout = self.spec.timeout;
        let target = (self.spec.host.as_str(), self.spec.port);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(failed("connect", format!("connecting: {e}"))),
            Err(_) => return Err(failed("timeout", "connecting timed out")),
        };
        let _ = tcp.set_nodelay(true);
        // Keepalive finds a receiver that vanished while the connection was idle.
        let _ = setsockopt(&tcp, sockopt::KeepAlive, &true);
        let _ = setsockopt(&tcp, sockopt::TcpKeepIdle, &30);
        let _ = setsockopt(&tcp, sockopt::TcpKeepInterval, &10);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let connector = tls.connector().map_err(|e| failed("tls", e))?;
        match tokio::time::timeout(timeout, connector.connect(tls.server_name.clone(), tcp)).await {
            Ok(Ok(s)) => Ok(Conn::Tls(Box::new(s))),
            Ok(Err(e)) => Err(failed("tls", format!("TLS handshake: {e}"))),
            Err(_) => Err(failed("timeout", "TLS handshake timed out")),
        }
    }

    async fn send_batch(&self, events: &[&Event]) -> Outcome {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.size_hint() + 64).sum());
        for event in events {
            self.spec.format.write_framed(event, &mut body);
        }
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_mut()
            && !conn.alive().await
        {
            tracing::info!(host = %self.spec.host, port = self.spec.port, "syslog receiver closed the connection; reconnecting");
            *slot = None;
        }
        if slot.is_none() {
            match self.connect().await {
                Ok(c) => *slot = Some(c),
                Err(outcome) => return outcome,
            }
        }
        let Some(conn) = slot.as_mut() else {
            return failed("connect", "no connection");
        };
        let result = match tokio::time::timeout(self.spec.timeout, conn.write_all(&body)).await {
            Ok(Ok(())) => wait_acknowledged(conn.tcp(), self.spec.timeout).await,
            Ok(Err(e)) => Err(failed("io", format!("writing: {e}"))),
            Err(_) => Err(failed("timeout", "writing timed out")),
        };
        match result {
            Ok(()) => Outcome::Delivered {
                bytes: body.len() as u64,
            },
            Err(outcome) => {
                // Whatever state the stream is in, it is not trusted again.
                *slot = None;
                outcome
            }
        }
    }
}

impl Sink for Syslog {
    fn send<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Outcome> {
        Box::pin(self.send_batch(events))
    }
}

fn failed(status: &str, reason: impl Into<String>) -> Outcome {
    Outcome::Retry {
        status: status.into(),
        reason: reason.into(),
        after: None,
    }
}

/// Waits until the receiver's TCP stack has acknowledged every byte written on `tcp`.
async fn wait_acknowledged(tcp: &TcpStream, timeout: Duration) -> Result<(), Outcome> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    loop {
        let info = getsockopt(tcp, TcpInfo)
            .map_err(|e| failed("io", format!("reading the socket's TCP_INFO: {e}")))?;
        if info.tcpi_unacked == 0 && info.tcpi_notsent_bytes == 0 {
            return Ok(());
        }
        if info.tcpi_state == TCP_CLOSE {
            return Err(failed(
                "io",
                "the connection closed before the receiver acknowledged the batch",
            ));
        }
        if start.elapsed() >= timeout {
            return Err(failed(
                "timeout",
                format!(
                    "the receiver did not acknowledge the batch within {timeout:?} ({} segments unacknowledged, {} bytes unsent)",
                    info.tcpi_unacked, info.tcpi_notsent_bytes
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// `host:port` or `[v6]:port`.
pub fn parse_address(text: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{text}`: the port is 1 to 65535"))?;
    if host.is_empty() || host.contains([' ', '/']) {
        return Err(format!("`{text}` is not host:port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn spec(port: u16) -> SyslogSpec {
        SyslogSpec {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            format: FormatSpec {
                facility: 1,
                severity: 6,
                severity_field: None,
                app_name_field: None,
                app_name: "t".into(),
                hostname_field: None,
                hostname: "h".into(),
                msgid: String::new(),
                sd_id: None,
                sd_fields: vec![],
            },
            timeout: Duration::from_secs(2),
        }
    }

    fn ctx() -> SinkContext {
        SinkContext {
            registry: prometheus::Registry::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tls: Arc::default(),
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("rsyslog:6514").unwrap(),
            ("rsyslog".into(), 6514)
        );
        assert_eq!(parse_address("[::1]:514").unwrap(), ("::1".into(), 514));
        assert!(parse_address("rsyslog").is_err());
        assert!(parse_address("rsyslog:0").is_err());
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced_before_the_next_batch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = Syslog::new(spec(port), &ctx()).unwrap();
        let e = Event::new("one".into());
        let sending = tokio::spawn(async move {
            let first = sink.send(&[&e]).await;
            (sink, first)
        });
        let (mut a, _) = listener.accept().await.unwrap();
        let (sink, first) = sending.await.unwrap();
        assert!(matches!(first, Outcome::Delivered { .. }), "{first:?}");
        let mut buf = vec![0u8; 256];
        let n = a.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" h t - - - one"));
        // The receiver restarts: the old connection is closed.
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut slot = sink.conn.lock().await;
            if !slot.as_mut().unwrap().alive().await {
                break;
            }
            drop(slot);
            assert!(Instant::now() < deadline, "the close never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e2 = Event::new("two".into());
        let sending = tokio::spawn(async move { sink.send(&[&e2]).await });
        let (mut b, _) = listener.accept().await.unwrap();
        let second = sending.await.unwrap();
        assert!(matches!(second, Outcome::Delivered { .. }), "{second:?}");
        let n = b.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" - two"));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_retry() {
        let port = test_support::ports::free_port();
        let sink = Syslog::new(spec(port), &ctx()).unwrap();
        let e = Event::new("x".into());
        assert!(matches!(
            sink.send(&[&e]).await,
            Outcome::Retry { status, .. } if status == "connect"
        ));
    }
}
