//! A real DNS server for the discovery tests: dnsmasq on a loopback port, answering from a hosts
//! file the test rewrites (SIGHUP makes it reread), killed on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::ports::{free_udp_tcp_port, loopback};
use test_support::process::{Process, Signal};
use test_support::skip::require_program;

#[allow(unused_imports)] // for the tests that reserve the port before starting it
pub use test_support::ports::free_udp_tcp_port as free_dns_port;

/// dnsmasq on a loopback port serving a hosts file we rewrite; killed on drop.
pub struct Dnsmasq {
    process: Process,
    pub port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(fixed: Option<u16>, names: &[(&str, &str)]) -> Dnsmasq {
        require_program("dnsmasq", "dnsmasq-base");
        let dir = tempfile::tempdir().expect("tempdir");
        // dnsmasq drops root privileges before re-reading the file on SIGHUP.
        set_mode(dir.path(), 0o755);
        let hosts = dir.path().join("hosts");
        let mut last_log = String::new();
        for _ in 0..20 {
            let port = fixed.unwrap_or_else(free_udp_tcp_port);
            write_hosts(&hosts, names);
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--no-daemon",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                &format!("--addn-hosts={}", hosts.display()),
                "--local-ttl=1",
                "--pid-file=",
            ]);
            let mut process = Process::spawn("dnsmasq", cmd);
            // It serves TCP as well as UDP: listening on TCP means it is up.
            match process.try_wait_listening(loopback(port), Duration::from_secs(10)) {
                Ok(()) => {
                    return Dnsmasq {
                        process,
                        port,
                        hosts,
                        _dir: dir,
                    };
                }
                // Port taken between our probe and its bind: try another, or (when the caller
                // fixed it) the same once it is free again.
                Err(e) => {
                    last_log = e.log().to_owned();
                    if fixed.is_some() {
                        test_support::wait::until(
                            Duration::from_secs(5),
                            format_args!("port {port} to be free for dnsmasq"),
                            || {
                                std::net::UdpSocket::bind(loopback(port)).is_ok()
                                    && std::net::TcpListener::bind(loopback(port)).is_ok()
                            },
                        );
                    }
                }
            }
        }
        panic!("dnsmasq would not start; its last words: {last_log}");
    }

    pub fn nameserver(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub fn answer(&self, names: &[(&str, &str)]) {
        write_hosts(&self.hosts, names);
        self.process.signal(Signal::SIGHUP);
    }

    pub fn stop(&mut self) {
        self.process.kill();
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
