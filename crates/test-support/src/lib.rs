//! Helpers for the workspace's tests, one place for what every crate's tests need:
//!
//! - [`certs`]: a CA and leaf certificates (SPIFFE, DNS and IP SANs, any validity window)
//!   made with rcgen at test time, written as files or as a Kubernetes Secret volume.
//! - [`ports`]: free loopback ports.
//! - [`process`]: a real binary as a child process: its output captured for failure
//!   messages, `/readyz` awaited, signals, graceful stop with the exit status, killed on drop.
//! - [`metrics`]: `/metrics` scraped and parsed; a series is found by its name and its full
//!   label set, and a missing series is `None`, never 0; `promtool check metrics` on a page.
//! - [`wait`]: poll a condition until a deadline, with a message naming what did not happen.
//! - [`http`]: a small blocking HTTP/1.1 client for admin endpoints.
//! - [`net`]: whether the other end of a loopback connection has read what was sent.
//! - [`skip`]: how a test that cannot run here says so (and tools a test requires).
//!
//! Everything here panics on a failed setup, with a message that says what failed: in a test a
//! panic is the failure report.
//!
//! Add it as a dev-dependency: `test-support.workspace = true` under `[dev-dependencies]`.

pub mod certs;
pub mod http;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod process;
pub mod skip;
pub mod tinyproxy;
pub mod wait;
