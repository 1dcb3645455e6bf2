//! A real DNS server for the discovery tests: dnsmasq on a loopback port, answering from a hosts
//! file the test rewrites (SIGHUP makes it reread), killed on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// dnsmasq on a loopback port serving a hosts file we rewrite; killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(port: Option<u16>, names: &[(&str, &str)]) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        // dnsmasq drops root privileges before re-reading the file on SIGHUP.
        set_mode(dir.path(), 0o755);
        let hosts = dir.path().join("hosts");
        let log_path = dir.path().join("dnsmasq.log");
        let mut last_log = String::new();
        for _ in 0..20 {
            let port = port.unwrap_or_else(free_dns_port);
            write_hosts(&hosts, names);
            let log = std::fs::File::create(&log_path).expect("dnsmasq log file");
            let child = Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    &format!("--addn-hosts={}", hosts.display()),
                    "--local-ttl=1",
                    "--pid-file=",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(e) => panic!(
                    "dnsmasq is needed for the DNS tests (apt-get install dnsmasq-base): {e}"
                ),
            };
            std::thread::sleep(Duration::from_millis(150));
            match child.try_wait() {
                Ok(None) => {
                    return Dnsmasq {
                        child,
                        port,
                        hosts,
                        _dir: dir,
                    };
                }
                // Port taken between our probe and its bind: try another (unless the caller
                // fixed it, when the same port may be free again a moment later).
                _ => {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        panic!("dnsmasq would not start; its last words: {last_log}");
    }

    pub fn nameserver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn answer(&self, names: &[(&str, &str)]) {
        write_hosts(&self.hosts, names);
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_hosts(path: &Path, names: &[(&str, &str)]) {
    let text: String = names
        .iter()
        .map(|(ip, name)| format!("{ip} {name}\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write hosts");
    set_mode(&tmp, 0o644);
    std::fs::rename(&tmp, path).expect("rename hosts");
}

/// A loopback port free for both UDP and TCP (dnsmasq binds both), chosen below the kernel's
/// ephemeral range (32768 and up by default): an ephemeral port can be taken at any moment by one
/// of the many connections the tests make, or by the resolver's own query sockets, and a test
/// that reserves a port for a DNS server it starts later needs it to stay free.
pub fn free_dns_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for dnsmasq in 20000..32000");
}
