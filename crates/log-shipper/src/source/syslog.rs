//! The syslog receiver: RFC 5424 and RFC 3164 messages over TCP and UDP on localhost, for apps
//! (and their syslog libraries, `logger`, nginx's `syslog:` target...) that log to syslog.
//!
//! - **TCP**, framed as RFC 6587 says: octet counting (`<length> <message>`, what RFC 5425 and
//!   rsyslog's `TCP_Framing="octet-counted"` send) or a newline after each message
//!   (non-transparent framing, the traditional one). The framing is recognised per message: a
//!   message that begins with a digit is octet-counted. Each connection is a stream; when the
//!   pipeline pushes back, the receiver stops reading and TCP's flow control slows the sender.
//! - **UDP**: one message per datagram (RFC 5426). UDP has no flow control: what arrives while
//!   the receiver cannot keep up is dropped by the kernel (the socket's receive buffer).
//!
//! Messages longer than the maximum event size are cut (marked `truncated`, counted). Parsing
//! (RFC 5424 or RFC 3164) happens in the pipeline's syslog line format.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::AckStream;
use crate::metrics::Metrics;
use crate::source::{Format, LineSpan, RawChunk, Source, SourceItem, StreamInfo, next_stream_id};

/// The settings of one syslog receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogInputSpec {
    pub name: String,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    /// Longer messages are cut.
    pub max_message_bytes: usize,
    /// TCP connections at once; more are closed at once.
    pub max_connections: usize,
}

/// A syslog receiver, its sockets bound.
#[derive(Debug)]
pub struct SyslogSource {
    pub spec: SyslogInputSpec,
    tcp: Option<std::net::TcpListener>,
    udp: Option<std::net::UdpSocket>,
    metrics: Metrics,
}

impl SyslogSource {
    /// Binds the addresses (a taken port is an error at start, naming the input).
    pub fn bind(spec: SyslogInputSpec, metrics: Metrics) -> std::io::Result<Self> {
        let tcp = spec
            .tcp
            .map(|a| {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })
            .transpose()?;
        let udp = spec
            .udp
            .map(|a| {
                let s = std::net::UdpSocket::bind(a)?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            })
            .transpose()?;
        Ok(Self {
            spec,
            tcp,
            udp,
            metrics,
        })
    }
}

impl Source for SyslogSource {
    fn start(
        self: Box<Self>,
        out: mpsc::Sender<SourceItem>,
        stop: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        tokio::spawn(async move {
            let SyslogSource {
                spec,
                tcp,
                udp,
                metrics,
            } = *self;
            let spec = Arc::new(spec);
            let mut tasks = Vec::new();
            if let Some(listener) = tcp {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tracing::info!(input = %spec.name, address = ?spec.tcp, "syslog receiver listening on TCP");
                tasks.push(tokio::spawn(accept(
                    listener,
                    spec.clone(),
                    out.clone(),
                    metrics.clone(),
                    stop.clone(),
                )));
            }
            if let Some(socket) = udp {
                let socket = tokio::net::UdpSocket::from_std(socket)?;
                tracing::info!(input = %spec.name, address = ?spec.udp, "syslog receiver listening on UDP");
                tasks.push(tokio::spawn(datagrams(
                    socket,
                    spec.clone(),
                    out.clone(),
                    metrics.clone(),
                    stop.clone(),
                )));
            }
            drop(out);
            for task in tasks {
                task.await?;
            }
            Ok(())
        })
    }
}

fn stream(spec: &SyslogInputSpec) -> Arc<StreamInfo> {
    Arc::new(StreamInfo {
        id: next_stream_id(),
        input: spec.name.as_str().into(),
        path: None,
        ack: AckStream::new(0),
        format: Format::Syslog,
    })
}

fn count(metrics: &Metrics, input: &str, chunk: &RawChunk, bytes: usize) {
    metrics
        .lines_read
        .with_label_values(&[input])
        .inc_by(chunk.lines.len() as u64);
    metrics
        .bytes_read
        .with_label_values(&[input])
        .inc_by(bytes as u64);
    let cut = chunk.lines.iter().filter(|l| l.truncated).count() as u64;
    if cut > 0 {
        metrics
            .events_truncated
            .with_label_values(&[input])
            .inc_by(cut);
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    spec: Arc<SyslogInputSpec>,
    out: mpsc::Sender<SourceItem>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(spec.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(input = %spec.name, error = %e, "cannot accept a syslog connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(input = %spec.name, %peer, max = spec.max_connections, "too many syslog connections: closing this one");
            continue;
        };
        let (spec, out, metrics, stop) = (spec.clone(), out.clone(), metrics.clone(), stop.clone());
        connections.spawn(async move {
            connection(socket, &spec, &out, &metrics, &stop).await;
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    // Connections stop reading at the stop too; what they read is handed on.
    while connections.join_next().await.is_some() {}
}

async fn connection(
    mut socket: tokio::net::TcpStream,
    spec: &SyslogInputSpec,
    out: &mpsc::Sender<SourceItem>,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    let stream = stream(spec);
    let mut framer = Framer::new(spec.max_message_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = socket.read(&mut buf) => n,
            () = stop.cancelled() => break,
        };
        let n = match n {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(input = %spec.name, error = %e, "syslog connection failed");
                break;
            }
        };
        let chunk = framer.feed(&buf[..n], &stream);
        if !chunk.lines.is_empty() {
            count(metrics, &spec.name, &chunk, n);
            // Waiting here is the back-pressure: the socket is not read meanwhile.
            if out.send(SourceItem::Lines(chunk)).await.is_err() {
                return;
            }
        }
    }
    let last = framer.finish(&stream);
    if !last.lines.is_empty() {
        count(metrics, &spec.name, &last, 0);
        let _ = out.send(SourceItem::Lines(last)).await;
    }
    let _ = out.send(SourceItem::Closed(stream)).await;
}

/// Datagrams handed on together at most.
const DATAGRAM_BATCH: usize = 512;

async fn datagrams(
    socket: tokio::net::UdpSocket,
    spec: Arc<SyslogInputSpec>,
    out: mpsc::Sender<SourceItem>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let stream = stream(&spec);
    let mut position = 0u64;
    let mut buf = vec![0u8; 65_536];
    loop {
        let first = tokio::select! {
            r = socket.recv(&mut buf) => r,
            () = stop.cancelled() => break,
        };
        let mut chunk = RawChunk {
            stream: stream.clone(),
            data: Vec::new(),
            lines: Vec::new(),
        };
        let mut bytes = 0;
        let mut received = first;
        // What has already arrived goes in the same chunk.
        while let Ok(n) = received {
            bytes += n;
            push_message(
                &mut chunk,
                &buf[..n],
                position,
                position + n as u64,
                spec.max_message_bytes,
                false,
            );
            position += n as u64;
            if chunk.lines.len() >= DATAGRAM_BATCH {
                break;
            }
            received = socket.try_recv(&mut buf);
        }
        if chunk.lines.is_empty() {
            continue;
        }
        count(&metrics, &spec.name, &chunk, bytes);
        if out.send(SourceItem::Lines(chunk)).await.is_err() {
            return;
        }
    }
    let _ = out.send(SourceItem::Closed(stream)).await;
}

/// Adds one message (trailing newlines and NULs removed, cut at `max`) to `chunk`; `cut`: it
/// was cut already.
fn push_message(chunk: &mut RawChunk, message: &[u8], start: u64, end: u64, max: usize, cut: bool) {
    let mut m = message;
    while let Some((last, rest)) = m.split_last() {
        if matches!(last, b'\n' | b'\r' | b'\0') {
            m = rest;
        } else {
            break;
        }
    }
    if m.is_empty() {
        return;
    }
    let from = chunk.data.len();
    let truncated = cut || m.len() > max;
    chunk.data.extend_from_slice(&m[..m.len().min(max)]);
    chunk.lines.push(LineSpan {
        range: (from, chunk.data.len()),
        start,
        end,
        truncated,
    });
}

/// Cuts a TCP byte stream into messages: octet counting or newline framing, per message.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    buf: Vec<u8>,
    /// The stream position of `buf[0]`.
    pos: u64,
    /// Bytes of a cut octet-counted message still to skip.
    skip: u64,
    /// A newline-framed message was cut: skip to its newline.
    overflow: bool,
}

/// Digits of an octet count at most (messages of up to 999,999,999 bytes).
const MAX_COUNT_DIGITS: usize = 9;

impl Framer {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            pos: 0,
            skip: 0,
            overflow: false,
        }
    }

    /// The messages completed by `bytes`.
    pub fn feed(&mut self, bytes: &[u8], stream: &Arc<StreamInfo>) -> RawChunk {
        self.buf.extend_from_slice(bytes);
        let mut chunk = RawChunk {
            stream: stream.clone(),
            data: Vec::new(),
            lines: Vec::new(),
        };
        let mut at = 0usize;
        while let Some(used) = self.next(at, &mut chunk, false) {
            at += used;
        }
        self.consume(at);
        chunk
    }

    /// The end of the stream: what is left is a last message.
    pub fn finish(&mut self, stream: &Arc<StreamInfo>) -> RawChunk {
        let mut chunk = RawChunk {
            stream: stream.clone(),
            data: Vec::new(),
            lines: Vec::new(),
        };
        let mut at = 0usize;
        while let Some(used) = self.next(at, &mut chunk, true) {
            at += used;
        }
        self.consume(self.buf.len());
        chunk
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.pos += n as u64;
    }

    /// Takes one message (or skipped bytes) from `buf[at..]`; the bytes used, or `None` when
    /// more are needed.
    fn next(&mut self, at: usize, chunk: &mut RawChunk, eof: bool) -> Option<usize> {
        let rest = &self.buf[at..];
        if rest.is_empty() {
            return None;
        }
        let start = self.pos + at as u64;
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            self.skip -= n as u64;
            return Some(n);
        }
        if self.overflow {
            return match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.overflow = false;
                    Some(i + 1)
                }
                None => Some(rest.len()),
            };
        }
        // Whitespace between frames (a newline after an octet-counted frame) is not a message.
        let blank = rest
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r' | b'\0' | b' '))
            .count();
        if blank > 0 {
            return Some(blank);
        }
        if rest[0].is_ascii_digit() {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            match rest.get(digits) {
                Some(b' ') if digits <= MAX_COUNT_DIGITS => {
                    let len: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
                    let header = digits + 1;
                    let body = &rest[header..];
                    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
                    let want = len_usize.min(self.max);
                    let end = start + header as u64 + len;
                    if body.len() >= len_usize {
                        push_message(chunk, &body[..len_usize], start, end, self.max, false);
                        return Some(header + len_usize);
                    }
                    if len_usize > self.max && body.len() >= want {
                        // Cut: the first `max` bytes now, the rest skipped as it comes.
                        push_message(chunk, &body[..want], start, end, self.max, true);
                        self.skip = len - body.len() as u64;
                        return Some(rest.len());
                    }
                    if eof {
                        let end = start + rest.len() as u64;
                        push_message(chunk, body, start, end, self.max, false);
                        return Some(rest.len());
                    }
                    return None;
                }
                // Digits not yet followed by anything: wait, unless it cannot be a count.
                None if digits <= MAX_COUNT_DIGITS && !eof => return None,
                _ => {}
            }
        }
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                push_message(
                    chunk,
                    &rest[..i],
                    start,
                    start + i as u64 + 1,
                    self.max,
                    false,
                );
                Some(i + 1)
            }
            None if eof => {
                let n = rest.len();
                push_message(chunk, rest, start, start + n as u64, self.max, false);
                Some(n)
            }
            None if rest.len() > self.max => {
                let end = start + rest.len() as u64;
                push_message(chunk, rest, start, end, self.max, false);
                self.overflow = true;
                Some(rest.len())
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Arc<StreamInfo> {
        stream(&SyslogInputSpec {
            name: "t".into(),
            tcp: None,
            udp: None,
            max_message_bytes: 16,
            max_connections: 1,
        })
    }

    fn texts(c: &RawChunk) -> Vec<(String, u64, u64, bool)> {
        c.lines
            .iter()
            .map(|l| {
                (
                    String::from_utf8_lossy(c.bytes(l)).into_owned(),
                    l.start,
                    l.end,
                    l.truncated,
                )
            })
            .collect()
    }

    #[test]
    fn octet_counting_and_newlines_in_one_stream_across_reads() {
        let stream = s();
        let mut f = Framer::new(64);
        let mut got = Vec::new();
        // "11 <13>1 - one" is 14 bytes; a newline-framed message; another counted one split
        // over three reads.
        for piece in [&b"11 <13>1 - one"[..], b"<14>two\n5 ", b"th", b"ree\n"] {
            got.extend(texts(&f.feed(piece, &stream)));
        }
        got.extend(texts(&f.finish(&stream)));
        assert_eq!(
            got,
            vec![
                ("<13>1 - one".into(), 0, 14, false),
                ("<14>two".into(), 14, 22, false),
                ("three".into(), 22, 29, false),
            ]
        );
    }

    #[test]
    fn long_messages_are_cut_and_the_rest_skipped() {
        let stream = s();
        let mut f = Framer::new(4);
        let mut got = texts(&f.feed(b"10 0123456789", &stream));
        got.extend(texts(&f.feed(b"abcdefg", &stream)));
        got.extend(texts(&f.feed(b"hij\nok\n", &stream)));
        assert_eq!(
            got,
            vec![
                ("0123".into(), 0, 13, true),
                ("abcd".into(), 13, 20, true),
                ("ok".into(), 24, 27, false),
            ]
        );
        // A counted message cut before all of it has come: the rest is skipped as it comes.
        let mut h = Framer::new(4);
        let first = h.feed(b"10 01234", &stream);
        assert_eq!(texts(&first), vec![("0123".into(), 0, 13, true)]);
        let next = h.feed(b"56789ok\n", &stream);
        assert_eq!(texts(&next), vec![("ok".into(), 13, 16, false)]);
        // An octet count split from its message.
        let mut g = Framer::new(64);
        assert!(g.feed(b"11", &stream).lines.is_empty());
        let c = g.feed(b" <13>message", &stream);
        assert_eq!(texts(&c), vec![("<13>message".into(), 0, 14, false)]);
        // A last line without its newline at the end of the stream.
        assert!(g.feed(b"<13>tail", &stream).lines.is_empty());
        assert_eq!(
            texts(&g.finish(&stream)),
            vec![("<13>tail".into(), 14, 22, false)]
        );
    }
}
