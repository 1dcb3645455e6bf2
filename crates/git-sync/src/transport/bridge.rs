//! The loopback bridge between libgit2 and HTTP(S) remotes (see [`super`]).
//!
//! One listener on 127.0.0.1 per remote origin, in a small tokio runtime on a thread of the
//! network worker. Each connection carries one request: the bridge reads its head, writes it
//! to the real server with the right `Host`, `Connection: close` and, for the remote's own
//! origin, the login (basic or bearer), then relays the body and the response as they are. A
//! redirect to an origin is rewritten to that origin's listener, so libgit2 never leaves the
//! bridge. When the bridge cannot reach the server (refused connection, TLS, proxy) it answers
//! 502 and keeps the reason, which the sync's error then names instead of libgit2's
//! "unexpected http status code: 502".
//!
//! The app's containers share the pod's loopback: every bridge URL starts with a random token
//! of this process (`/TOKEN/path`), and a request without it is refused, so another process of
//! the pod cannot use the bridge to reach the server with git-sync's login or client
//! certificate. No secret crosses the loopback: the bridge adds the login itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sidecar_kit::tls::{Identity, TrustBundle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::proxy::ProxyUrl;
use super::{HttpSettings, HttpUrl, Origin};

/// Longest request or response head the bridge reads.
const MAX_HEAD: usize = 64 * 1024;

static BRIDGE: OnceLock<Result<Bridge, String>> = OnceLock::new();

/// The bridge of this process, started on first use.
fn bridge() -> Result<&'static Bridge, String> {
    BRIDGE
        .get_or_init(Bridge::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// The bridge if this process started one.
fn running() -> Option<&'static Bridge> {
    BRIDGE.get()?.as_ref().ok()
}

/// The login the bridge sends to a remote's origin: basic auth or a bearer token, from files
/// read on every sync.
#[derive(Debug, Clone, Copy, Default)]
pub struct Login<'a> {
    /// (username, password file)
    pub basic: Option<(&'a str, &'a Path)>,
    pub bearer: Option<&'a Path>,
}

/// What libgit2 should fetch from for `url` with `settings`: the bridge's loopback URL for an
/// http(s) remote (its listener's settings brought up to date: files re-read), `url` itself
/// otherwise.
pub fn local_url(url: &str, settings: &HttpSettings, login: Login<'_>) -> Result<String, String> {
    let Some(parsed) = HttpUrl::parse(url) else {
        return Ok(url.to_string());
    };
    let bridge = bridge()?;
    let entry = bridge.prepare(&parsed.origin, settings, login)?;
    Ok(format!("{}{}", bridge.base(entry.port), parsed.path))
}

/// The reason the bridge last failed to reach `url`'s origin, taken (None when it did not).
pub fn take_error(url: &str) -> Option<String> {
    let parsed = HttpUrl::parse(url)?;
    let bridge = running()?;
    let entry = bridge.origins.lock().ok()?.get(&parsed.origin).cloned()?;
    entry.error.lock().ok()?.take()
}

/// libgit2's text with the bridge's loopback URLs turned back into the remote's.
pub fn unmap(message: &str) -> String {
    let Some(bridge) = running() else {
        return message.to_string();
    };
    let Ok(origins) = bridge.origins.lock() else {
        return message.to_string();
    };
    let mut text = message.to_string();
    for (origin, entry) in origins.iter() {
        text = text.replace(&bridge.base(entry.port), &origin.base_url());
    }
    text
}

struct Bridge {
    /// The first path segment of every bridge URL.
    token: String,
    runtime: tokio::runtime::Handle,
    origins: Mutex<HashMap<Origin, Arc<Entry>>>,
    /// The system's CA bundle, read once, when a remote first needs it.
    native_roots: OnceLock<Result<Arc<rustls::RootCertStore>, String>>,
}

/// One origin's listener.
struct Entry {
    port: u16,
    state: Mutex<Arc<State>>,
    /// Why the last connection could not reach the server.
    error: Mutex<Option<String>>,
}

/// How to reach one origin, as of the last sync.
struct State {
    origin: Origin,
    settings: HttpSettings,
    tls: Option<Arc<ClientConfig>>,
    /// The files the TLS config was built from, to rebuild it only when they change.
    tls_files: Vec<Vec<u8>>,
    proxy: Option<ProxyUrl>,
    /// The `Authorization` value for this origin, if it has a login.
    authorization: Option<String>,
}

impl Bridge {
    fn start() -> Result<Bridge, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTPS bridge: {e}"))?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("https-bridge".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("starting the HTTPS bridge: {e}"))?;
        Ok(Bridge {
            token: format!("{:032x}", rand::random::<u128>()),
            runtime: handle,
            origins: Mutex::new(HashMap::new()),
            native_roots: OnceLock::new(),
        })
    }

    /// `http://127.0.0.1:PORT/TOKEN`, what a bridge URL starts with.
    fn base(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}/{}", self.token)
    }

    /// The origin's listener (started if new), with its state rebuilt from `settings`.
    fn prepare(
        &'static self,
        origin: &Origin,
        settings: &HttpSettings,
        login: Login<'_>,
    ) -> Result<Arc<Entry>, String> {
        let entry = self.entry(origin)?;
        let previous = entry
            .state
            .lock()
            .map_err(|_| "bridge state poisoned")?
            .clone();
        let state = self.build_state(origin, settings, login, Some(&previous))?;
        *entry.state.lock().map_err(|_| "bridge state poisoned")? = Arc::new(state);
        if let Ok(mut error) = entry.error.lock() {
            *error = None;
        }
        Ok(entry)
    }

    fn entry(&'static self, origin: &Origin) -> Result<Arc<Entry>, String> {
        let mut origins = self.origins.lock().map_err(|_| "bridge state poisoned")?;
        if let Some(entry) = origins.get(origin) {
            return Ok(entry.clone());
        }
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("opening the HTTPS bridge's loopback listener: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("the bridge's listener: {e}"))?
            .port();
        let entry = Arc::new(Entry {
            port,
            state: Mutex::new(Arc::new(State {
                origin: origin.clone(),
                settings: HttpSettings::default(),
                tls: None,
                tls_files: Vec::new(),
                proxy: None,
                authorization: None,
            })),
            error: Mutex::new(None),
        });
        let serving = entry.clone();
        self.runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, serving, self).await,
                Err(e) => tracing::error!(error = %e, "the HTTPS bridge cannot listen"),
            }
        });
        origins.insert(origin.clone(), entry.clone());
        Ok(entry)
    }

    fn build_state(
        &self,
        origin: &Origin,
        settings: &HttpSettings,
        login: Login<'_>,
        previous: Option<&State>,
    ) -> Result<State, String> {
        let proxy = settings
            .proxy
            .for_origin(origin.https, &origin.host, origin.port)
            .cloned();
        let authorization = match login {
            Login {
                bearer: Some(file), ..
            } => Some(format!(
                "Bearer {}",
                read_secret(file, "--bearer-token-file")?
            )),
            Login {
                basic: Some((user, file)),
                ..
            } => {
                let password = read_secret(file, "--password-file")?;
                let pair = format!("{user}:{password}");
                Some(format!(
                    "Basic {}",
                    crate::known_hosts::base64_encode(pair.as_bytes())
                ))
            }
            _ => None,
        };
        let (tls, tls_files) = if origin.https {
            let files = [
                &settings.ca_file,
                &settings.client_cert_file,
                &settings.client_key_file,
            ]
            .into_iter()
            .flatten()
            .map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())))
            .collect::<Result<Vec<_>, _>>()?;
            match previous {
                Some(p) if p.tls.is_some() && p.tls_files == files && p.settings == *settings => {
                    (p.tls.clone(), files)
                }
                _ => (Some(Arc::new(self.tls_config(settings)?)), files),
            }
        } else {
            (None, Vec::new())
        };
        Ok(State {
            origin: origin.clone(),
            settings: settings.clone(),
            tls,
            tls_files,
            proxy,
            authorization,
        })
    }

    fn tls_config(&self, settings: &HttpSettings) -> Result<ClientConfig, String> {
        let roots = match &settings.ca_file {
            Some(file) => TrustBundle::load(file)
                .map_err(|e| format!("--ca-file: {e}"))?
                .roots(),
            None => self
                .native_roots
                .get_or_init(native_roots)
                .as_ref()
                .map_err(Clone::clone)?
                .clone(),
        };
        let builder = ClientConfig::builder_with_provider(sidecar_kit::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&settings.client_cert_file, &settings.client_key_file) {
            (Some(cert), Some(key)) => {
                let identity =
                    Identity::load(cert, key).map_err(|e| format!("--client-cert-file: {e}"))?;
                builder
                    .with_client_auth_cert(identity.chain().to_vec(), identity.key().clone_key())
                    .map_err(|e| format!("--client-cert-file {}: {e}", cert.display()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The listener for a redirect's target, with the redirecting origin's settings but no
    /// login (a login is for the configured remote's origin only).
    fn redirect_target(&'static self, url: &HttpUrl, from: &State) -> Option<String> {
        let entry = if url.origin == from.origin {
            self.origins.lock().ok()?.get(&url.origin).cloned()?
        } else {
            let entry = self.entry(&url.origin).ok()?;
            let state = self
                .build_state(&url.origin, &from.settings, Login::default(), None)
                .ok()?;
            *entry.state.lock().ok()? = Arc::new(state);
            entry
        };
        Some(format!("{}{}", self.base(entry.port), url.path))
    }
}

fn native_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(format!(
            "no system CA certificates for HTTPS ({why}): give --ca-file, or set SSL_CERT_FILE"
        ));
    }
    Ok(Arc::new(roots))
}

fn read_secret(file: &Path, flag: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{flag}: cannot read {}: {e}", file.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(format!("{flag}: {} is empty", file.display()));
    }
    Ok(secret)
}

async fn serve(listener: TcpListener, entry: Arc<Entry>, bridge: &'static Bridge) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // out of file descriptors, most likely: give the others a moment to close
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let entry = entry.clone();
        tokio::spawn(async move {
            let state = match entry.state.lock() {
                Ok(s) => s.clone(),
                Err(_) => return,
            };
            handle(client, &state, &entry, bridge).await;
        });
    }
}

impl Entry {
    /// Keeps the reason (before libgit2 sees the 502, so that its error can name it).
    fn failed(&self, state: &State, reason: &str) {
        tracing::debug!(origin = %state.origin.base_url(), %reason, "the HTTPS bridge could not reach the remote");
        if let Ok(mut error) = self.error.lock() {
            *error = Some(reason.to_string());
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Carries one request. When the server cannot be reached, libgit2 gets a 502 and the entry
/// the reason.
async fn handle(mut client: TcpStream, state: &State, entry: &Entry, bridge: &'static Bridge) {
    let Some((head, body_start)) = read_head(&mut client).await else {
        return; // libgit2 went away
    };
    let request = match rewrite_request(&head, state, &bridge.token) {
        Ok(r) => r,
        Err(Refused::NotOurs) => {
            let _ = respond(&mut client, 403, "not a request of git-sync").await;
            return;
        }
        Err(Refused::Bad(e)) => {
            entry.failed(state, &e);
            let _ = respond(&mut client, 400, &e).await;
            return;
        }
    };
    let mut upstream = match connect(state).await {
        Ok(u) => u,
        Err(e) => {
            entry.failed(state, &e);
            let _ = respond(&mut client, 502, &e).await;
            return;
        }
    };
    let send = async {
        upstream.write_all(&request).await?;
        upstream.write_all(&body_start).await
    };
    if let Err(e) = send.await {
        let reason = format!("sending the request to {}: {e}", state.origin.base_url());
        entry.failed(state, &reason);
        let _ = respond(&mut client, 502, &reason).await;
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let body = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        std::future::pending::<()>().await
    };
    let response = relay_response(&mut upstream_read, &mut client_write, state, bridge);
    tokio::select! {
        () = body => {}
        result = response => {
            if let Err(reason) = result {
                entry.failed(state, &reason);
                let _ = respond_half(&mut client_write, 502, &reason).await;
            }
        }
    }
}

/// Reads up to the end of a head; returns it and what came after it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Some((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Hop-by-hop headers and those the bridge sets itself.
fn dropped(name: &str) -> bool {
    [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Why the bridge does not carry a request.
#[derive(Debug)]
enum Refused {
    /// Not from this process's libgit2 (no token).
    NotOurs,
    Bad(String),
}

/// The request head as the server (or, for plain HTTP, the proxy) gets it.
fn rewrite_request(head: &[u8], state: &State, token: &str) -> Result<Vec<u8>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Refused::NotOurs),
    }
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err(Refused::NotOurs);
    };
    let Some(path) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(token))
        .filter(|p| p.starts_with('/'))
    else {
        return Err(Refused::NotOurs);
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refused::Bad(format!(
            "the bridge carries requests to {} only",
            state.origin.base_url()
        )));
    }
    let origin = &state.origin;
    let target = match (&state.proxy, origin.https) {
        // Through a proxy, plain HTTP is asked for by absolute URL.
        (Some(_), false) => format!("http://{}{path}", origin.authority(true)),
        _ => path.to_string(),
    };
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\n",
        origin.authority(false)
    );
    let mut has_authorization = false;
    for header in request.headers.iter() {
        if dropped(header.name) {
            continue;
        }
        has_authorization |= header.name.eq_ignore_ascii_case("authorization");
        out.push_str(header.name);
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(header.value));
        out.push_str("\r\n");
    }
    if let (Some(authorization), false) = (&state.authorization, has_authorization) {
        out.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    if let (Some(proxy), false) = (&state.proxy, origin.https) {
        out.push_str(&proxy_authorization(proxy));
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(out.into_bytes())
}

fn proxy_authorization(proxy: &ProxyUrl) -> String {
    match &proxy.userinfo {
        Some(userinfo) => format!(
            "Proxy-Authorization: Basic {}\r\n",
            crate::known_hosts::base64_encode(percent_decode(userinfo).as_bytes())
        ),
        None => String::new(),
    }
}

/// `%XX` escapes of a URL's userinfo.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection to the server: direct or through the proxy, TLS for https.
async fn connect(state: &State) -> Result<Box<dyn Io>, String> {
    let origin = &state.origin;
    let tcp = match &state.proxy {
        None => TcpStream::connect((origin.host.as_str(), origin.port))
            .await
            .map_err(|e| format!("connecting to {}: {e}", origin.authority(true)))?,
        Some(proxy) => {
            let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
                .await
                .map_err(|e| format!("connecting to the proxy {proxy}: {e}"))?;
            if origin.https {
                tunnel(&mut tcp, proxy, origin).await?;
            }
            tcp
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &state.tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(origin.host.clone())
        .map_err(|e| format!("{} is not a valid TLS server name: {e}", origin.host))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {}: {e}", origin.authority(true)))?;
    Ok(Box::new(stream))
}

/// `CONNECT host:port` through the proxy.
async fn tunnel(tcp: &mut TcpStream, proxy: &ProxyUrl, origin: &Origin) -> Result<(), String> {
    let target = origin.authority(true);
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{}\r\n",
        proxy_authorization(proxy)
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("the proxy {proxy}: {e}"))?;
    let Some((head, rest)) = read_head(tcp).await else {
        return Err(format!(
            "the proxy {proxy} closed the connection on CONNECT {target}"
        ));
    };
    let status_line =
        String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(&[])).into_owned();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    if !matches!(code, Some(200..=299)) {
        return Err(format!(
            "the proxy {proxy} refused CONNECT {target}: {status_line}"
        ));
    }
    if !rest.is_empty() {
        return Err(format!(
            "the proxy {proxy} sent data before the tunnel was up"
        ));
    }
    Ok(())
}

/// Copies the response, rewriting a redirect's `Location` to the bridge.
async fn relay_response(
    upstream: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    state: &State,
    bridge: &'static Bridge,
) -> Result<(), String> {
    let Some((head, rest)) = read_head(upstream).await else {
        return Err(format!(
            "{} closed the connection without answering",
            state.origin.base_url()
        ));
    };
    let head = rewrite_response(&head, state, bridge);
    let copy = async {
        client.write_all(&head).await?;
        client.write_all(&rest).await?;
        tokio::io::copy(upstream, client).await?;
        client.flush().await
    };
    // Once the answer has started, a broken connection is libgit2's to report.
    let _ = copy.await;
    Ok(())
}

/// The response head libgit2 gets: `Connection: close` (the bridge carries one request per
/// connection, whatever the server or a proxy said), and a redirect's `Location` pointing at
/// the bridge.
fn rewrite_response(head: &[u8], state: &State, bridge: &'static Bridge) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let code = match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => response.code.unwrap_or(0),
        _ => return head.to_vec(),
    };
    if code < 200 {
        return head.to_vec();
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str(lines.next().unwrap_or_default());
    out.push_str("\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        if (300..400).contains(&code)
            && name.eq_ignore_ascii_case("location")
            && let Some(url) = HttpUrl::parse(value.trim())
            && let Some(local) = bridge.redirect_target(&url, state)
        {
            out.push_str(&format!("Location: {local}\r\n"));
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn respond(client: &mut TcpStream, status: u16, reason: &str) -> std::io::Result<()> {
    respond_half(client, status, reason).await
}

async fn respond_half(
    client: &mut (impl AsyncWrite + Unpin),
    status: u16,
    reason: &str,
) -> std::io::Result<()> {
    let body = format!("git-sync: {reason}\n");
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    client
        .write_all(
            format!(
                "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn state(https: bool, proxy: Option<&str>, bearer: Option<&str>) -> State {
        State {
            origin: Origin {
                https,
                host: "git.example.com".into(),
                port: if https { 443 } else { 8080 },
            },
            settings: HttpSettings::default(),
            tls: None,
            tls_files: Vec::new(),
            proxy: proxy.map(|p| ProxyUrl::parse(p).unwrap()),
            authorization: bearer.map(|t| format!("Bearer {t}")),
        }
    }

    const REQUEST: &[u8] = b"POST /0123456789abcdef0123456789abcdef/team/cfg.git/git-upload-pack HTTP/1.1\r\nUser-Agent: git/2.0 (libgit2 1.9)\r\nHost: 127.0.0.1:40000\r\nContent-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";

    #[test]
    fn requests_get_the_real_host_one_connection_and_the_bearer_token() {
        let out = rewrite_request(REQUEST, &state(true, None, Some("tok")), TOKEN).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "POST /team/cfg.git/git-upload-pack HTTP/1.1\r\nHost: git.example.com\r\n"
        ));
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        assert!(text.contains("Authorization: Bearer tok\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
        assert!(!text.contains("keep-alive") && !text.contains("127.0.0.1"));

        // libgit2's own Authorization (basic auth) is kept and wins
        let basic = String::from_utf8(REQUEST.to_vec())
            .unwrap()
            .replace("\r\n\r\n", "\r\nAuthorization: Basic YTpi\r\n\r\n");
        let text = String::from_utf8(
            rewrite_request(basic.as_bytes(), &state(true, None, Some("tok")), TOKEN).unwrap(),
        )
        .unwrap();
        assert!(text.contains("Authorization: Basic YTpi\r\n") && !text.contains("Bearer"));
    }

    #[test]
    fn requests_without_the_token_are_not_carried() {
        let s = state(true, None, Some("tok"));
        for head in [
            &b"GET /team/cfg.git/info/refs HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"GET /0123456789abcdef0123456789abcdeX/r HTTP/1.1\r\n\r\n"[..],
            &b"GET /0123456789abcdef0123456789abcdef HTTP/1.1\r\n\r\n"[..],
            &b"garbage\r\n\r\n"[..],
        ] {
            assert!(
                matches!(rewrite_request(head, &s, TOKEN), Err(Refused::NotOurs)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn plain_http_through_a_proxy_is_asked_by_absolute_url() {
        let s = state(false, Some("http://us%40r:p%3Ass@proxy:3128"), None);
        let text = String::from_utf8(rewrite_request(REQUEST, &s, TOKEN).unwrap()).unwrap();
        assert!(text.starts_with(
            "POST http://git.example.com:8080/team/cfg.git/git-upload-pack HTTP/1.1\r\nHost: git.example.com:8080\r\n"
        ), "{text}");
        // "us@r:p:ss"
        assert!(
            text.contains("Proxy-Authorization: Basic dXNAcjpwOnNz\r\n"),
            "{text}"
        );
        // https through the same proxy goes by CONNECT: origin-form, no proxy header
        let s = state(true, Some("http://u:p@proxy:3128"), None);
        let text = String::from_utf8(rewrite_request(REQUEST, &s, TOKEN).unwrap()).unwrap();
        assert!(text.starts_with("POST /team/") && !text.contains("Proxy-Authorization"));
        assert!(rewrite_request(b"CONNECT x:443 HTTP/1.1\r\n\r\n", &s, TOKEN).is_err());
    }

    #[test]
    fn responses_close_the_connection_and_redirects_stay_on_the_bridge() {
        let bridge = bridge().unwrap();
        let s = state(true, None, None);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n";
        let text = String::from_utf8(rewrite_response(ok, &s, bridge)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
        let entry = bridge.entry(&s.origin).unwrap();
        let moved = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://git.example.com/new.git/info/refs?service=git-upload-pack\r\n\r\n";
        let text = String::from_utf8(rewrite_response(moved, &s, bridge)).unwrap();
        assert!(
            text.contains(&format!(
                "Location: http://127.0.0.1:{}/{}/new.git/info/refs?service=git-upload-pack\r\n",
                entry.port, bridge.token
            )),
            "{text}"
        );
        // to another origin: a listener of its own
        let elsewhere =
            b"HTTP/1.1 302 Found\r\nLocation: https://mirror.example.com/cfg.git/info/refs\r\n\r\n";
        let text = String::from_utf8(rewrite_response(elsewhere, &s, bridge)).unwrap();
        assert!(
            text.contains("Location: http://127.0.0.1:") && !text.contains("mirror"),
            "{text}"
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(rewrite_response(interim, &s, bridge), interim.to_vec());
    }
}
