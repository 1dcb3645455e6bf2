//! A real HTTP proxy for the tests: tinyproxy on 127.0.0.1 (CONNECT allowed to any port), its
//! log read back to prove which requests it carried.

use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, loopback};
use crate::process::Process;

/// A real HTTP proxy on 127.0.0.1 that logs the requests it carries.
#[derive(Debug)]
pub struct Tinyproxy {
    pub port: u16,
    dir: tempfile::TempDir,
    _process: Process,
}

impl Tinyproxy {
    pub fn start() -> Tinyproxy {
        Self::start_with("")
    }

    /// A proxy that asks for a login (`BasicAuth`), CONNECT included: 407 without one, 401
    /// for a wrong one.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Tinyproxy {
        Self::start_with(&format!("BasicAuth {user} {password}\n"))
    }

    /// `extra`: configuration lines added to the defaults.
    fn start_with(extra: &str) -> Tinyproxy {
        crate::skip::require_program("tinyproxy", "tinyproxy");
        let dir = tempfile::tempdir().expect("a temporary directory for tinyproxy");
        for _ in 0..5 {
            let port = free_port();
            let conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogFile \"{}/tinyproxy.log\"\nLogLevel Info\nMaxClients 20\nDisableViaHeader Yes\n{extra}",
                dir.path().display()
            );
            let conf_path = dir.path().join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).expect("tinyproxy.conf written");
            let mut cmd = Command::new("tinyproxy");
            cmd.arg("-d").arg("-c").arg(&conf_path);
            let mut process = Process::spawn("tinyproxy", cmd);
            match process.try_wait_listening(loopback(port), Duration::from_secs(10)) {
                Ok(()) => {
                    return Tinyproxy {
                        port,
                        dir,
                        _process: process,
                    };
                }
                Err(e) => eprintln!("tinyproxy on port {port}: {e}; retrying"),
            }
        }
        panic!("tinyproxy did not start");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// tinyproxy's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    /// The requests tinyproxy carried (`GET http://...`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_string()))
            .filter(|r| r.contains(" HTTP/1."))
            .collect()
    }

    /// Whether tinyproxy carried a plain request for `url`.
    pub fn carried(&self, url: &str) -> bool {
        let line = format!("GET {url} HTTP/1.");
        self.requests().iter().any(|r| r.starts_with(&line))
    }

    /// Whether tinyproxy opened a CONNECT tunnel to `host_port`.
    pub fn tunnelled(&self, host_port: &str) -> bool {
        let line = format!("CONNECT {host_port} HTTP/1.");
        self.requests().iter().any(|r| r.starts_with(&line))
    }
}
