//! Real stores for the sink tests, started on 127.0.0.1 by the tests: rsyslog (TCP, TLS),
//! syslog-ng and a throwaway ClickHouse server, each in a temporary directory. A store that is
//! not installed makes the test say it is skipped, and fail when `CI` is set
//! (scripts/install-test-deps.sh installs them all).
#![allow(dead_code)]

pub mod apis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::process::Process;
use test_support::{ports, wait};

/// Whether the tests must not skip (CI).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// `path` if it exists; else says the test is skipped (or fails in CI) and gives `None`.
pub fn require(test: &str, path: &str, package: &str) -> Option<PathBuf> {
    let found = [
        path,
        &format!("/usr/sbin/{path}"),
        &format!("/usr/bin/{path}"),
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_absolute() && p.exists());
    if let Some(p) = found {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "{test}: CI is set but {path} is not installed (Debian package {package}; scripts/install-test-deps.sh)"
        );
    }
    eprintln!("notice: {test} skipped: {path} is not installed (Debian package {package})");
    None
}

/// Lines of a file a receiver writes (empty when it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` has at least `n` lines.
#[track_caller]
pub fn wait_lines(path: &Path, n: usize, timeout: Duration, context: impl Fn() -> String) {
    wait::Wait::new(format_args!("{n} lines in {}", path.display()))
        .timeout(timeout)
        .every(Duration::from_millis(50))
        .context(|| format!("{} lines\n{}", lines(path).len(), context()))
        .until(|| lines(path).len() >= n);
}

/// TLS files for a receiver that asks for client certificates.
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// rsyslogd receiving on a TCP (or TLS) port, writing one line per message to `out`:
/// `APP-NAME SEVERITY HOSTNAME STRUCTURED-DATA MSG` (newlines in MSG escaped as #012).
pub struct Rsyslog {
    pub port: u16,
    pub out: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    tls: bool,
    pub proc: Option<Process>,
}

impl Rsyslog {
    pub fn start(bin: &Path, dir: &Path, tls: Option<&ServerTls>) -> Rsyslog {
        let port = ports::free_port();
        let out = dir.join("rsyslog.out");
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let (global_tls, module) = match tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_owned()),
            Some(t) => (
                format!(
                    r#" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ),
                // Mode 1: TLS only; x509/certvalid: a client certificate signed by the CA.
                r#"module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")"#
                    .to_owned(),
            ),
        };
        let config = format!(
            r#"global(workDirectory="{work}"{global_tls})
{module}
template(name="t" type="string" string="%app-name% %syslogseverity-text% %hostname% %structured-data% %msg%\n")
input(type="imtcp" port="{port}" ruleset="r")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="t" flushOnTXEnd="on" asyncWriting="off") }}
"#,
            work = work.display(),
            out = out.display(),
        );
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, config).unwrap();
        let mut r = Rsyslog {
            port,
            out,
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            tls: tls.is_some(),
            proc: None,
        };
        r.run();
        r
    }

    /// Starts (again) on the same port.
    pub fn run(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"));
        let mut proc = Process::spawn("rsyslogd", cmd);
        proc.try_wait_listening(self.addr(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("rsyslogd: {e}"));
        self.proc = Some(proc);
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        ports::loopback(self.port)
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Process::log).unwrap_or_default()
    }
}

/// The syslog-ng binary: installed, or unpacked under /opt/deb (it conflicts with rsyslog),
/// with the library path and module path that go with it.
pub struct SyslogNgBin {
    pub bin: PathBuf,
    pub root: Option<PathBuf>,
}

pub fn syslog_ng(test: &str) -> Option<SyslogNgBin> {
    if Path::new("/usr/sbin/syslog-ng").is_file() {
        return Some(SyslogNgBin {
            bin: "/usr/sbin/syslog-ng".into(),
            root: None,
        });
    }
    let unpacked = require(
        test,
        "/opt/deb/syslog-ng-core/usr/sbin/syslog-ng",
        "syslog-ng-core",
    )?;
    Some(SyslogNgBin {
        bin: unpacked,
        root: Some("/opt/deb/syslog-ng-core".into()),
    })
}

/// syslog-ng with a `syslog()` source (RFC 5424, octet counting) on a TCP port, writing one
/// JSON object per message: `{"app":..,"sdata":..,"msg":..}`.
pub struct SyslogNg {
    pub port: u16,
    pub out: PathBuf,
    pub proc: Process,
}

impl SyslogNg {
    pub fn start(b: &SyslogNgBin, dir: &Path) -> SyslogNg {
        let port = ports::free_port();
        let out = dir.join("syslog-ng.out");
        let config = format!(
            r#"@version: 3.38
options {{ flush-lines(0); time-reopen(1); }};
source s {{ syslog(ip("127.0.0.1") port({port}) transport("tcp") max-connections(10)); }};
destination d {{ file("{out}" template("$(format-json app=${{PROGRAM}} sdata=${{SDATA}} msg=${{MSG}})\n")); }};
log {{ source(s); destination(d); flags(flow-control); }};
"#,
            out = out.display()
        );
        let conf = dir.join("syslog-ng.conf");
        std::fs::write(&conf, config).unwrap();
        let mut cmd = Command::new(&b.bin);
        cmd.arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-R")
            .arg(dir.join("syslog-ng.persist"))
            .arg("-p")
            .arg(dir.join("syslog-ng.pid"))
            .arg("-c")
            .arg(dir.join("syslog-ng.ctl"))
            .arg("--no-caps");
        if let Some(root) = &b.root {
            cmd.arg(format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ))
            .env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"));
        }
        let mut proc = Process::spawn("syslog-ng", cmd);
        proc.try_wait_listening(ports::loopback(port), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("syslog-ng: {e}"));
        SyslogNg { port, out, proc }
    }
}

/// A throwaway ClickHouse server on free loopback ports, user `shipper` with a password.
pub struct ClickHouse {
    pub http: SocketAddr,
    pub password: String,
    pub proc: Process,
}

impl ClickHouse {
    pub fn start(bin: &Path, dir: &Path) -> ClickHouse {
        let (http, tcp) = (ports::free_port(), ports::free_port());
        let data = dir.join("clickhouse");
        std::fs::create_dir_all(&data).unwrap();
        let password = "s3cret-for-the-test".to_owned();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size>
  <uncompressed_cache_size>8589934</uncompressed_cache_size>
  <timezone>UTC</timezone>
</yandex>
"#,
            d = data.display()
        );
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default/></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <shipper><password>{password}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></shipper>
  </users>
  <quotas><default/></quotas>
</yandex>
"#
        );
        std::fs::write(dir.join("config.xml"), config).unwrap();
        std::fs::write(dir.join("users.xml"), users).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ));
        let mut proc = Process::spawn("clickhouse-server", cmd);
        let addr = ports::loopback(http);
        proc.try_wait_listening(addr, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("clickhouse-server: {e}"));
        let ch = ClickHouse {
            http: addr,
            password,
            proc,
        };
        wait::until(
            Duration::from_secs(60),
            "ClickHouse to answer queries",
            || ch.try_query("SELECT 1").is_ok_and(|r| r.trim() == "1"),
        );
        ch
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.http)
    }

    /// Runs `sql` as the default user; the answer's body, or the error.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let r = test_support::http::request(self.http, "POST", "/", &[], sql.as_bytes())
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{}: {}", r.status, r.body));
        }
        Ok(r.body)
    }

    #[track_caller]
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.proc.log()))
    }
}
