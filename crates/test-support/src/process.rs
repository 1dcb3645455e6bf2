//! A real binary under test as a child process.
//!
//! Its stdout and stderr go to a log file of its own, which failure messages quote; it is
//! awaited on its admin server's `/readyz`; it can be signalled and stopped gracefully with its
//! exit status checked; and it is killed (SIGKILL) and reaped when the `Process` is dropped,
//! whether the test passed or not.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use test_support::{ports, process::{Process, Signal}};
//!
//! let admin = ports::free_addr();
//! let mut cmd = Command::new("/path/to/sidecar");
//! cmd.args(["--admin-addr", &admin.to_string()]);
//! let mut sidecar = Process::spawn("sidecar", cmd);
//! sidecar.wait_ready(admin, Duration::from_secs(20));
//! let status = sidecar.stop(Duration::from_secs(10)); // SIGTERM, then the exit
//! assert_eq!(status.code(), Some(0), "{}", sidecar.log());
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub use nix::sys::signal::Signal;

use crate::wait::Wait;

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// Why [`Process::try_wait_ready`] gave up.
#[derive(Debug)]
pub enum NotReady {
    /// The process exited first.
    Exited { status: ExitStatus, log: String },
    /// It kept running but never answered `/readyz` with 200 (or never listened).
    TimedOut { log: String },
}

impl NotReady {
    pub fn log(&self) -> &str {
        match self {
            NotReady::Exited { log, .. } | NotReady::TimedOut { log } => log,
        }
    }

    /// It exited because a port it was given was taken meanwhile (worth a retry with others).
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, NotReady::Exited { log, .. } if log.contains("in use"))
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited { status, log } => write!(f, "exited before ready ({status}):\n{log}"),
            NotReady::TimedOut { log } => write!(f, "not ready (or not listening) in time:\n{log}"),
        }
    }
}

impl Process {
    /// Starts `command` (`name` is for messages), stdin closed, stdout and stderr to its log.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("{}-log-", name.replace('/', "_")))
            .tempdir()
            .expect("a directory for the process log");
        let log = log_dir.path().join("output.log");
        let file = std::fs::File::create(&log).expect("create the process log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Process {
            name: name.to_owned(),
            child,
            log,
            _log_dir: log_dir,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until its output contains `needle`; panics with the log after `timeout`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        Wait::new(format_args!("{} to log {needle:?}", self.name))
            .timeout(timeout)
            .context(|| self.log())
            .until(|| self.log().contains(needle));
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name))
    }

    /// Waits until `http://admin/readyz` answers 200, failing early if the process exits.
    pub fn try_wait_ready(&mut self, admin: SocketAddr, timeout: Duration) -> Result<(), NotReady> {
        let mut exited = None;
        let ready = Wait::new("ready")
            .timeout(timeout)
            .every(Duration::from_millis(25))
            .elapsed(|| {
                if let Ok(Some(status)) = self.child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                matches!(crate::http::get(admin, "/readyz"), Ok(r) if r.status == 200)
            });
        match (exited, ready) {
            (Some(status), _) => Err(NotReady::Exited {
                status,
                log: self.log(),
            }),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(NotReady::TimedOut { log: self.log() }),
        }
    }

    /// [`Process::try_wait_ready`], panicking with the log if it is not ready.
    #[track_caller]
    pub fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) {
        if let Err(e) = self.try_wait_ready(admin, timeout) {
            panic!("{} on {admin}: {e}", self.name);
        }
    }

    /// Waits until something accepts TCP connections on `addr` (a server without an admin
    /// endpoint), failing early if the process exits.
    pub fn try_wait_listening(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), NotReady> {
        let mut exited = None;
        let listening = Wait::new("listening").timeout(timeout).elapsed(|| {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        match (exited, listening) {
            (Some(status), _) => Err(NotReady::Exited {
                status,
                log: self.log(),
            }),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(NotReady::TimedOut { log: self.log() }),
        }
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(self.child.id()).expect("a pid fits in an i32"),
        );
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("send {signal} to {}: {e}", self.name));
    }

    /// Waits until a `signal` sent to it is no longer pending: it has been handled (or it
    /// ended the process). Then "the signal did nothing" can be checked at once.
    #[track_caller]
    pub fn wait_signal_handled(&mut self, signal: Signal, timeout: Duration) {
        let status = format!("/proc/{}/status", self.child.id());
        let bit = 1u64 << (signal as i32 - 1);
        let name = self.name.clone();
        Wait::new(format_args!("{name} to take {signal}"))
            .timeout(timeout)
            .every(Duration::from_millis(5))
            .until(|| {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return true;
                }
                let Ok(text) = std::fs::read_to_string(&status) else {
                    return true;
                };
                let pending = |field: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                        .unwrap_or(0)
                };
                (pending("ShdPnd:") | pending("SigPnd:")) & bit == 0
            });
    }

    /// Waits for it to exit; panics with the log after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        let log = self.log.clone();
        let child = &mut self.child;
        Wait::new(format_args!("{name} to exit"))
            .timeout(timeout)
            .context(|| std::fs::read_to_string(&log).unwrap_or_default())
            .value(|| {
                child
                    .try_wait()
                    .unwrap_or_else(|e| panic!("wait for {name}: {e}"))
            })
    }

    /// Graceful stop: SIGTERM, then its exit status (within `timeout`, else a panic).
    #[track_caller]
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child, for what this type does not cover.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn output_is_captured_and_the_exit_status_returned() {
        let mut p = Process::spawn("sh", sh("echo to-stdout; echo to-stderr >&2; exit 3"));
        let status = p.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.log(), "to-stdout\nto-stderr\n");
    }

    #[test]
    fn a_trapped_signal_is_seen_handled_and_stop_returns_the_status() {
        let mut p = Process::spawn(
            "sh",
            sh("trap 'echo hup' HUP; trap 'exit 7' TERM; echo up; while :; do sleep 0.01; done"),
        );
        p.wait_log("up", Duration::from_secs(10));
        p.signal(Signal::SIGHUP);
        p.wait_signal_handled(Signal::SIGHUP, Duration::from_secs(10));
        assert!(p.try_exit().is_none());
        p.wait_log("hup", Duration::from_secs(10));
        assert_eq!(p.stop(Duration::from_secs(10)).code(), Some(7));
    }

    #[test]
    fn an_early_exit_is_not_ready() {
        let mut p = Process::spawn("sh", sh("echo bind: Address already in use; exit 1"));
        let err = p
            .try_wait_ready(crate::ports::free_addr(), Duration::from_secs(10))
            .expect_err("exited");
        assert!(err.is_address_in_use(), "{err}");
    }
}
