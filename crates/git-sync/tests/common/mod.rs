//! Test harness: fixture repositories built with the git CLI, real git servers on 127.0.0.1
//! (git daemon, git http-backend behind a small HTTP server with basic auth, sshd), and the
//! git-sync binary as a child process (test-support's). Every process is killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_support::metrics::Metrics;
use test_support::ports::{free_port, loopback};
use test_support::process::{Process, Signal};
use test_support::skip::require_program;

#[allow(unused_imports)] // not every test binary waits
pub use test_support::wait;

pub mod https;

/// The proxy variables curl and git read; cleared for every git-sync a test starts, so only
/// what the test sets applies.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn clear_proxy_variables(cmd: &mut Command) {
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

/// `git` with extra environment variables (GNUPGHOME for signing).
pub fn git_env(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> String {
    require_program("git", "git");
    let out = Command::new("git")
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository on disk (what the servers serve) and a working clone to commit from.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Fixture {
    /// `name` is the bare repo's directory name under the served base path.
    pub fn new(name: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("srv");
        std::fs::create_dir_all(&base).unwrap();
        let bare = base.join(name);
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        let work = dir.path().join("work");
        git(
            dir.path(),
            &["init", "-q", "-b", "main", work.to_str().unwrap()],
        );
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        // a background auto-gc would race the next commit's object writes
        git(&work, &["config", "gc.auto", "0"]);
        git(&bare, &["config", "gc.auto", "0"]);
        git(&bare, &["config", "receive.autogc", "false"]);
        Fixture { dir, bare, work }
    }

    pub fn base(&self) -> PathBuf {
        self.bare.parent().unwrap().to_path_buf()
    }

    /// Writes files (path, content), commits everything, pushes the branch; returns the SHA.
    pub fn commit(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        self.switch_to(branch);
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["push", "-q", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Checks the branch out in the working clone, creating it if needed.
    fn switch_to(&self, branch: &str) {
        let current = git(&self.work, &["symbolic-ref", "--short", "HEAD"]);
        if current != branch {
            let exists = Command::new("git")
                .args(["rev-parse", "--verify", "-q", branch])
                .current_dir(&self.work)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if exists {
                git(&self.work, &["checkout", "-q", branch]);
            } else {
                git(&self.work, &["checkout", "-q", "-b", branch]);
            }
        }
    }

    /// Like [`Fixture::commit`], signed (`git commit -S`) the way `signing` says.
    pub fn commit_signed(
        &self,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
        signing: &Signing,
    ) -> String {
        self.switch_to(branch);
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        let mut args = signing.git_config();
        args.extend(["commit", "-q", "-S", "--allow-empty", "-m", message].map(String::from));
        signing.git(&self.work, &args);
        git(&self.work, &["push", "-q", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// An annotated tag on `target`, signed when `signing` is given, pushed.
    pub fn tag(&self, name: &str, target: &str, signing: Option<&Signing>) {
        match signing {
            Some(s) => {
                let mut args = s.git_config();
                args.extend(["tag", "-s", "-m", "release", name, target].map(String::from));
                s.git(&self.work, &args);
            }
            None => {
                git(&self.work, &["tag", "-a", "-m", "release", name, target]);
            }
        }
        git(
            &self.work,
            &["push", "-q", "origin", &format!("refs/tags/{name}")],
        );
    }

    /// A copy of the branch's last commit with its message changed and its signature kept,
    /// force-pushed in its place: a tampered signed commit. Returns its id.
    pub fn push_tampered_copy(&self, branch: &str) -> String {
        git(&self.work, &["checkout", "-q", branch]);
        let raw = git(&self.work, &["cat-file", "commit", "HEAD"]);
        let (header, message) = raw.split_once("\n\n").expect("a commit has a message");
        let forged = format!("{header}\n\n{message} (changed after signing)\n");
        let path = self.dir.path().join("forged-commit");
        std::fs::write(&path, forged).unwrap();
        let id = git(
            &self.work,
            &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
        );
        git(&self.work, &["reset", "-q", "--hard", &id]);
        git(&self.work, &["push", "-q", "-f", "origin", branch]);
        id
    }

    /// Rewrites the branch's last commit and force-pushes it.
    pub fn force_push_rewrite(&self, branch: &str, files: &[(&str, &str)]) -> String {
        git(&self.work, &["checkout", "-q", branch]);
        git(&self.work, &["reset", "-q", "--hard", "HEAD~1"]);
        for (path, content) in files {
            std::fs::write(self.work.join(path), content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", "rewritten"]);
        git(&self.work, &["push", "-q", "-f", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// How a test signs commits and tags: an SSH key (git's `gpg.format=ssh`, `ssh-keygen -Y
/// sign`) or a GnuPG key in a throwaway GNUPGHOME.
pub enum Signing {
    Ssh {
        key: PathBuf,
    },
    Gpg {
        home: PathBuf,
        key: String,
        program: PathBuf,
    },
}

impl Signing {
    fn git_config(&self) -> Vec<String> {
        let pairs = match self {
            Signing::Ssh { key } => vec![
                ("gpg.format", "ssh".to_string()),
                ("user.signingkey", key.display().to_string()),
            ],
            Signing::Gpg { key, program, .. } => vec![
                ("gpg.format", "openpgp".to_string()),
                ("gpg.program", program.display().to_string()),
                ("user.signingkey", key.clone()),
            ],
        };
        pairs
            .into_iter()
            .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")])
            .collect()
    }

    fn git(&self, dir: &Path, args: &[String]) -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self {
            Signing::Ssh { .. } => git(dir, &args),
            Signing::Gpg { home, .. } => git_env(dir, &args, &[("GNUPGHOME", home)]),
        }
    }
}

/// An ed25519 key made by ssh-keygen, for `gpg.format=ssh` signatures.
pub struct SshSigningKey {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
}

impl SshSigningKey {
    pub fn new(comment: &str) -> SshSigningKey {
        require_program("ssh-keygen", "openssh-client");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen")
            .success();
        assert!(ok, "ssh-keygen failed");
        SshSigningKey { dir, key }
    }

    pub fn signing(&self) -> Signing {
        Signing::Ssh {
            key: self.key.clone(),
        }
    }

    /// An allowed-signers line for this key: `principal [options] keytype base64`.
    pub fn allowed_signers_line(&self, principal: &str, options: &str) -> String {
        let public = std::fs::read_to_string(self.key.with_extension("pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        if options.is_empty() {
            format!("{principal} {kind} {key}\n")
        } else {
            format!("{principal} {options} {kind} {key}\n")
        }
    }
}

/// A GnuPG key in its own throwaway GNUPGHOME (batch generation, no passphrase); its agent is
/// stopped on drop. `faked_time` makes the key and every signature as of that time
/// (`--faked-system-time`, e.g. `20200101T000000`, frozen), for an expired key.
pub struct GpgKey {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
    program: PathBuf,
}

impl GpgKey {
    pub fn new(user: &str, expires: &str, faked_time: Option<&str>) -> GpgKey {
        require_program("gpg", "gnupg");
        let home = tempfile::tempdir().unwrap();
        // git calls gpg.program; a wrapper adds the faked time to every call. Frozen (`!`):
        // a running clock restarts at `t` on every call, so on a slow machine the key would
        // be made a second "after" a later signature, and gpg refuses to sign with it.
        let program = home.path().join("gpg-wrapper");
        let faked = faked_time
            .map(|t| format!(" --faked-system-time {t}!"))
            .unwrap_or_default();
        std::fs::write(&program, format!("#!/bin/sh\nexec gpg{faked} \"$@\"\n")).unwrap();
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut key = GpgKey {
            fingerprint: String::new(),
            home,
            program,
        };
        key.gpg(&["--quick-gen-key", user, "ed25519", "sign", expires]);
        let listing = key.gpg(&["--list-keys", "--with-colons"]);
        let fingerprint = listing
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .expect("the new key's fingerprint");
        key.fingerprint = fingerprint;
        key
    }

    /// Runs gpg (through the wrapper) in this GNUPGHOME; returns stdout.
    pub fn gpg(&self, args: &[&str]) -> String {
        let out = Command::new(&self.program)
            .args(["--batch", "--yes", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", self.home.path())
            .output()
            .expect("gpg");
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The armoured public key (with its revocation, once [`GpgKey::revoke`] ran).
    pub fn export(&self) -> String {
        self.gpg(&["--armor", "--export", &self.fingerprint])
    }

    /// Imports the revocation certificate GnuPG wrote when it made the key.
    pub fn revoke(&self) {
        let cert = self
            .home
            .path()
            .join("openpgp-revocs.d")
            .join(format!("{}.rev", self.fingerprint));
        let text = std::fs::read_to_string(cert).expect("GnuPG's revocation certificate");
        // GnuPG guards it against accidental import with a leading colon.
        let path = self.home.path().join("revoke.asc");
        std::fs::write(&path, text.replace(":-----BEGIN", "-----BEGIN")).unwrap();
        self.gpg(&["--import", path.to_str().unwrap()]);
    }

    pub fn signing(&self) -> Signing {
        Signing::Gpg {
            home: self.home.path().to_path_buf(),
            key: self.fingerprint.clone(),
            program: self.program.clone(),
        }
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.home.path())
            .status();
    }
}

/// `git daemon` serving a base path on a loopback port.
pub struct GitDaemon {
    pub port: u16,
    _process: Process,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        require_program("git", "git");
        // Run `git-daemon` itself, not the `git daemon` wrapper: killing the wrapper would leave
        // the daemon listening after the test (one leaked process per test).
        let daemon = PathBuf::from(git(base, &["--exec-path"])).join("git-daemon");
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(&daemon);
            cmd.args([
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ]);
            let mut process = Process::spawn("git-daemon", cmd);
            match process.try_wait_listening(loopback(port), Duration::from_secs(5)) {
                Ok(()) => {
                    return GitDaemon {
                        port,
                        _process: process,
                    };
                }
                Err(e) => eprintln!("git daemon on port {port}: {e}; retrying"),
            }
        }
        panic!("git daemon did not start");
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

/// git's smart HTTP: `git http-backend` as CGI behind a tiny HTTP/1.1 server with basic auth.
pub struct GitHttp {
    pub port: u16,
    pub down: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHttp {
    /// `auth` = Some((user, password)) requires basic auth.
    pub fn start(base: &Path, auth: Option<(&str, &str)>) -> GitHttp {
        require_program("git", "git");
        let exec_path = git(base, &["--exec-path"]);
        let backend = PathBuf::from(exec_path).join("git-http-backend");
        assert!(
            backend.exists(),
            "git-http-backend not found at {}",
            backend.display()
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let expected_auth =
            auth.map(|(u, p)| format!("Basic {}", b64(format!("{u}:{p}").as_bytes())));
        let base = base.to_path_buf();
        let (d, r, s) = (down.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (d, r, base, backend, auth) = (
                            d.clone(),
                            r.clone(),
                            base.clone(),
                            backend.clone(),
                            expected_auth.clone(),
                        );
                        std::thread::spawn(move || {
                            let _ = serve_cgi(stream, &base, &backend, auth.as_deref(), &d, &r);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        GitHttp {
            port,
            down,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        req.body = body;
    } else if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            req.body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(req)
}

fn serve_cgi(
    mut stream: TcpStream,
    base: &Path,
    backend: &Path,
    auth: Option<&str>,
    down: &AtomicBool,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let req = read_request(&mut stream)?;
    requests.fetch_add(1, Ordering::SeqCst);
    if down.load(Ordering::SeqCst) {
        return stream.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    if let Some(expected) = auth
        && req.header("authorization") != Some(expected)
    {
        return stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let mut child = Command::new(backend)
        .env_clear()
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_TYPE", req.header("content-type").unwrap_or(""))
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            req.header("content-encoding").unwrap_or(""),
        )
        .env("GIT_PROTOCOL", req.header("git-protocol").unwrap_or(""))
        .env("REMOTE_USER", "git")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin");
    let body = req.body.clone();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    child.stdout.take().expect("stdout").read_to_end(&mut out)?;
    let _ = writer.join();
    child.wait()?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, body) = match split {
        Some((p, n)) => (
            String::from_utf8_lossy(&out[..p]).to_string(),
            &out[p + n..],
        ),
        None => (String::new(), &out[..]),
    };
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    let mut header_lines = String::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !line.is_empty() {
            header_lines.push_str(line);
            header_lines.push_str("\r\n");
        }
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{header_lines}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(body);
    stream.write_all(&response)
}

pub fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// sshd with key auth on a loopback port; the client key and a known_hosts line pinning it.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    _process: Process,
}

impl Sshd {
    pub fn start() -> Sshd {
        require_program("ssh-keygen", "openssh-client");
        require_program("/usr/sbin/sshd", "openssh-server");
        // sshd insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keygen = |path: &Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .expect("ssh-keygen")
                .success();
            assert!(ok, "ssh-keygen failed");
        };
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\nLogLevel ERROR\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).unwrap();
            let mut cmd = Command::new("/usr/sbin/sshd");
            cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
            let mut process = Process::spawn("sshd", cmd);
            if let Err(e) = process.try_wait_listening(loopback(port), Duration::from_secs(5)) {
                eprintln!("sshd on port {port}: {e}; retrying");
            } else {
                let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
                let mut fields = host_pub.split_whitespace();
                let line = format!(
                    "[127.0.0.1]:{port} {} {}\n",
                    fields.next().unwrap(),
                    fields.next().unwrap()
                );
                std::fs::write(d.join("known_hosts"), line).unwrap();
                return Sshd {
                    port,
                    client_key: d.join("client_key"),
                    known_hosts: d.join("known_hosts"),
                    dir,
                    _process: process,
                };
            }
        }
        panic!("sshd did not start");
    }

    pub fn url(&self, bare: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, bare.display())
    }
}

/// The git-sync binary under test, killed on drop.
pub struct GitSync {
    pub process: Process,
    pub admin_port: u16,
    pub root: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_git-sync")
}

impl GitSync {
    /// Starts git-sync with `--root root --admin-addr 127.0.0.1:PORT` plus `args`, and waits
    /// for its admin server to listen.
    pub fn start(root: &Path, args: &[&str]) -> GitSync {
        Self::start_env(root, args, &[])
    }

    /// Like [`GitSync::start`], with environment variables.
    pub fn start_env(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> GitSync {
        let admin_port = free_port();
        let mut cmd = Command::new(bin());
        clear_proxy_variables(&mut cmd);
        cmd.envs(envs.iter().copied());
        cmd.args([
            "--root",
            root.to_str().unwrap(),
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--log-format",
            "text",
        ])
        .args(args)
        .env("HOME", "/nonexistent");
        let mut process = Process::spawn("git-sync", cmd);
        if let Err(e) = process.try_wait_listening(loopback(admin_port), Duration::from_secs(10)) {
            panic!("git-sync's admin port did not open: {e}");
        }
        GitSync {
            process,
            admin_port,
            root: root.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn logs(&self) -> String {
        self.process.log()
    }

    pub fn metrics(&self) -> Metrics {
        test_support::metrics::scrape(loopback(self.admin_port))
    }

    /// The value of one series (`name` or `name{label="value",...}`, the full label set); None
    /// when git-sync does not serve it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().value(series)
    }

    pub fn ready(&self) -> bool {
        http_get(self.admin_port, "/readyz").0 == 200
    }

    pub fn signal(&self, signal: Signal) {
        self.process.signal(signal);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.process.wait_exit(timeout)
    }
}

/// Runs git-sync --one-time to completion; returns (status, logs).
pub fn one_time(root: &Path, args: &[&str]) -> (ExitStatus, String) {
    one_time_env(root, args, &[])
}

/// Like [`one_time`], with environment variables.
pub fn one_time_env(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin());
    clear_proxy_variables(&mut cmd);
    let out = cmd
        .envs(envs.iter().copied())
        .args([
            "--root",
            root.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
            "--one-time",
            "--log-format",
            "text",
        ])
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("run git-sync");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, logs)
}

/// The SHA the link points at, and the published tree's path.
pub fn published(root: &Path, link: &str) -> Option<String> {
    let target = std::fs::read_link(root.join(link)).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// One request to 127.0.0.1:port: (status, body), (0, "") if it could not be made.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    test_support::http::request(loopback(port), method, path, headers, body)
        .map(|r| (r.status, r.body))
        .unwrap_or((0, String::new()))
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], b"")
}

/// A tiny HTTP server recording requests (a webhook receiver); answers `statuses` in turn, then 200.
pub struct Recorder {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start(statuses: Vec<u16>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        if let Ok(req) = read_request(&mut stream) {
                            let status = statuses.next().unwrap_or(200);
                            r.lock().unwrap().push(req);
                            let _ = stream.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder {
            port,
            requests,
            stop,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP proxy in front of a real server that can turn silent: then it accepts connections
/// and never sends a byte (a hung server, or a load balancer in front of a frozen one). For
/// each silent connection it records when it was accepted and when the client closed it. It
/// can also trickle: pass the server's first bytes at full speed, then one byte every 20 ms
/// (a server that is alive but hopelessly slow, in the middle of the pack).
pub struct SilentSwitch {
    pub port: u16,
    mode: Arc<AtomicUsize>,
    silent_conns: Arc<Mutex<Vec<SilentConnection>>>,
}

/// When a silent connection was accepted, and when the client closed it.
pub type SilentConnection = (Instant, Option<Instant>);

const FORWARD: usize = 0;
const SILENT: usize = 1;
const TRICKLE: usize = 2;
/// Bytes passed at full speed before trickling starts.
pub const TRICKLE_AFTER: usize = 1500;

impl SilentSwitch {
    pub fn start(upstream_port: u16) -> SilentSwitch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicUsize::new(FORWARD));
        let silent_conns = Arc::new(Mutex::new(Vec::new()));
        let (m, conns) = (mode.clone(), silent_conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let mode = m.load(Ordering::SeqCst);
                if mode == SILENT {
                    let conns = conns.clone();
                    std::thread::spawn(move || {
                        let index = {
                            let mut c = conns.lock().unwrap();
                            c.push((Instant::now(), None));
                            c.len() - 1
                        };
                        // Read (and drop) whatever the client sends until it hangs up.
                        let mut client = client;
                        let mut buf = [0u8; 4096];
                        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
                        conns.lock().unwrap()[index].1 = Some(Instant::now());
                    });
                } else if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) {
                    let (mut c1, mut s1) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (mut c2, mut s2) = (client, server);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c1, &mut s1);
                        let _ = s1.shutdown(std::net::Shutdown::Write);
                    });
                    std::thread::spawn(move || {
                        if mode == TRICKLE {
                            let _ = trickle(&mut s2, &mut c2);
                        } else {
                            let _ = std::io::copy(&mut s2, &mut c2);
                        }
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        SilentSwitch {
            port,
            mode,
            silent_conns,
        }
    }

    pub fn set_silent(&self, on: bool) {
        self.mode
            .store(if on { SILENT } else { FORWARD }, Ordering::SeqCst);
    }

    pub fn set_trickle(&self) {
        self.mode.store(TRICKLE, Ordering::SeqCst);
    }

    /// (accepted, closed by the client) of every silent connection so far.
    pub fn silent_connections(&self) -> Vec<SilentConnection> {
        self.silent_conns.lock().unwrap().clone()
    }
}

fn trickle(from: &mut TcpStream, to: &mut TcpStream) -> std::io::Result<()> {
    let mut sent = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for byte in &buf[..n] {
            if sent >= TRICKLE_AFTER {
                std::thread::sleep(Duration::from_millis(20));
            }
            to.write_all(std::slice::from_ref(byte))?;
            sent += 1;
        }
    }
}

/// Pids of the live (not zombie) child processes of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 1 && fields[1] == pid.to_string() && fields[0] != "Z" {
            out.push(child);
        }
    }
    out
}

/// Is the process still running (not gone, not a zombie)?
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rfind(')')
            .map(|i| &stat[i + 2..])
            .and_then(|after| after.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
    }
}
