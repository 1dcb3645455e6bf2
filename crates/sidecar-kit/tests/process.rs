//! The kit as users meet it: a real sidecar process (the `kit-demo` example) receiving real
//! signals, answering probes, and refusing bad configuration.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;
use test_support::http;
use test_support::ports::free_addr;
use test_support::process::{Process, Signal};
use test_support::wait::Wait;

/// `cargo test` builds the crate's examples next to the test binaries.
fn kit_demo() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = dir.join("examples").join("kit-demo");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test -p sidecar-kit`, which builds the examples",
        bin.display()
    );
    bin
}

/// The demo sidecar, ready; killed on drop.
struct Demo {
    process: Process,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        Self::start_with(Command::new(kit_demo()), extra)
    }

    fn start_with(mut command: Command, extra: &[&str]) -> Demo {
        let listen = free_addr();
        let admin = free_addr();
        command
            .args(["--listen", &listen.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--log-format", "text"])
            .args(extra);
        let mut process = Process::spawn("kit-demo", command);
        process.wait_ready(admin, Duration::from_secs(15));
        Demo {
            process,
            listen,
            admin,
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_exit(limit)
    }

    /// Starts `GET /slow?ms=<ms>` and returns once the demo has read it: a request in flight.
    fn request_in_flight(
        &self,
        ms: u64,
    ) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
        let pending = http::send(self.listen, "GET", &format!("/slow?ms={ms}"), &[], b"")
            .expect("send the slow request");
        pending.wait_read_by_server(Duration::from_secs(10));
        std::thread::spawn(move || pending.response().map(|r| (r.status, r.body)))
    }

    /// Waits until /readyz fails (the shutdown has begun), within `limit`; returns its body.
    fn wait_not_ready(&self, limit: Duration) -> String {
        Wait::new("/readyz to fail")
            .timeout(limit)
            .every(Duration::from_millis(5))
            .context(|| self.process.log())
            .value(|| {
                let r = http::get(self.admin, "/readyz?verbose").ok()?;
                (r.status == 503).then_some(r.body)
            })
    }
}

/// A plain HTTP/1.1 request on a new connection: (status, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http::request(addr, method, path, &[], b"").map(|r| (r.status, r.body))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path)
}

#[test]
fn sigterm_fails_readiness_waits_the_delay_then_drains_and_exits_zero() {
    let mut demo = Demo::start(&["--shutdown-delay", "800ms", "--shutdown-grace", "6s"]);
    let in_flight = demo.request_in_flight(2500);

    demo.process.signal(Signal::SIGTERM);
    let signalled = Instant::now();

    // Readiness fails at once (within 100 ms), naming why.
    let body = demo.wait_not_ready(Duration::from_millis(100).saturating_sub(signalled.elapsed()));
    assert!(
        body.contains("[-]shutdown failed: shutting down (SIGTERM)"),
        "{body}"
    );

    // During the delay new work is still accepted (load balancers are catching up).
    let (status, body) = get(demo.listen, "/slow?ms=0").expect("request during the delay");
    assert_eq!((status, body.as_str()), (200, "hello after 0ms\n"));

    // After the delay (by 1.1 s after the signal) the listener is closed: new connections are
    // refused.
    let closed = Wait::new("the listener to close after the delay")
        .timeout(Duration::from_millis(1100).saturating_sub(signalled.elapsed()))
        .every(Duration::from_millis(10))
        .elapsed(|| TcpStream::connect_timeout(&demo.listen, Duration::from_secs(2)).is_err());
    assert!(
        closed.is_some(),
        "a new connection 1.1 s after the signal (delay 800ms) was accepted"
    );

    // The request in flight when the signal came completes.
    let (status, body) = in_flight
        .join()
        .expect("thread")
        .expect("in-flight request");
    assert_eq!((status, body.as_str()), (200, "hello after 2500ms\n"));

    let exit = demo.wait_exit(Duration::from_secs(6));
    assert_eq!(exit.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(6));
}

#[test]
fn sighup_does_not_kill_a_sidecar() {
    let mut demo = Demo::start(&[]);
    demo.process.signal(Signal::SIGHUP);
    demo.process
        .wait_signal_handled(Signal::SIGHUP, Duration::from_secs(5));
    assert!(
        demo.process.try_exit().is_none(),
        "SIGHUP killed the sidecar"
    );
    assert_eq!(
        get(demo.listen, "/slow?ms=0").expect("still serving").0,
        200
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut demo = Demo::start(&["--shutdown-grace", "20s"]);
    let _in_flight = demo.request_in_flight(15000);
    demo.process.signal(Signal::SIGTERM);
    // The first signal is taken (the drain has begun) before the second comes.
    demo.wait_not_ready(Duration::from_secs(5));
    let second = Instant::now();
    demo.process.signal(Signal::SIGINT);
    let exit = demo.wait_exit(Duration::from_secs(2));
    assert_eq!(exit.code(), Some(130));
    assert!(second.elapsed() < Duration::from_secs(1));
}

#[test]
fn grace_period_bounds_the_drain() {
    let mut demo = Demo::start(&["--shutdown-grace", "1s"]);
    let _in_flight = demo.request_in_flight(30000);
    let signalled = Instant::now();
    demo.process.signal(Signal::SIGTERM);
    let exit = demo.wait_exit(Duration::from_secs(3));
    // Work was abandoned: not a clean exit, and said so.
    assert_eq!(exit.code(), Some(1));
    assert!(signalled.elapsed() >= Duration::from_millis(900));
}

#[test]
fn works_as_pid_1() {
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("unshare (util-linux) is needed for the PID 1 test");
    let mut command = Command::new(unshare);
    command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(kit_demo());
    let mut demo = Demo::start_with(command, &[]);
    // The sidecar is unshare's child; inside its namespace it is PID 1.
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        demo.process.pid(),
        demo.process.pid()
    ))
    .expect("children of unshare");
    let inner: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the sidecar's pid");
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert!(nspid.trim_end().ends_with("\t1"), "not PID 1: {nspid}");

    let (status, _) = get(demo.listen, "/slow?ms=10").expect("served as PID 1");
    assert_eq!(status, 200);
    kill(Pid::from_raw(inner), Signal::SIGTERM).expect("SIGTERM");
    let exit = demo.wait_exit(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn admin_endpoints_answer_and_metrics_pass_promtool() {
    let mut demo = Demo::start(&[]);
    assert_eq!(
        get(demo.admin, "/livez").expect("livez"),
        (200, "ok\n".into())
    );
    let (status, body) = get(demo.admin, "/readyz?verbose").expect("readyz");
    assert_eq!(status, 200);
    assert!(
        body.contains("[+]http ok") && body.contains("[+]shutdown ok"),
        "{body}"
    );
    let (status, body) = get(demo.admin, "/version").expect("version");
    assert_eq!(status, 200);
    let version: serde_json::Value = serde_json::from_str(&body).expect("version JSON");
    assert_eq!(version["name"], "kit-demo");

    let (status, metrics) = get(demo.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let page = test_support::metrics::Metrics::parse(&metrics).expect("a metrics page");
    assert!(
        page.series("sidecar_build_info")
            .any(|s| !s.labels.is_empty()),
        "{metrics}"
    );
    assert!(
        page.get("process_resident_memory_bytes", &[]).is_some(),
        "{metrics}"
    );
    if let Err(e) = test_support::metrics::promtool_check(&metrics) {
        panic!("promtool refused /metrics: {e}");
    }

    // State changes are for loopback callers; this one is, so the sidecar drains and exits.
    let (status, _) = request(demo.admin, "POST", "/shutdown").expect("shutdown");
    assert_eq!(status, 200);
    assert_eq!(demo.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

fn run_expecting_config_error(args: &[&str]) -> String {
    let out = Command::new(kit_demo())
        .args(["--admin-addr", &free_addr().to_string()])
        .args(args)
        .output()
        .expect("run kit-demo");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn config_errors_exit_64_naming_the_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "greeting: hi\nmax_delay: 5\n").expect("write");
    let err = run_expecting_config_error(&["--config", unknown.to_str().expect("utf8")]);
    assert_eq!(
        err.trim_end(),
        format!(
            "kit-demo: configuration error: {}: line 2 column 1: unknown field `max_delay`, expected one of greeting, max_delay_ms",
            unknown.display()
        )
    );

    let wrong_type = dir.path().join("type.yaml");
    std::fs::write(&wrong_type, "greeting: hi\nmax_delay_ms: soon\n").expect("write");
    let err = run_expecting_config_error(&["--config", wrong_type.to_str().expect("utf8")]);
    assert!(
        err.contains(&format!(
            "{}: line 2 column 15: field `max_delay_ms`: invalid u64",
            wrong_type.display()
        )),
        "{err}"
    );

    let err = run_expecting_config_error(&["--config", "/nonexistent/demo.yaml"]);
    assert!(
        err.contains("cannot read config file /nonexistent/demo.yaml: No such file"),
        "{err}"
    );

    let err = run_expecting_config_error(&["--shutdown-grace", "forever"]);
    assert!(err.contains("--shutdown-grace"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );

    // Env fallbacks carry the sidecar's prefix, and are validated the same way.
    let out = Command::new(kit_demo())
        .env("KIT_DEMO_ADMIN_ADDR", "not-an-address")
        .output()
        .expect("run kit-demo");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-addr"));
}

#[test]
fn help_and_version_exit_zero() {
    let out = Command::new(kit_demo())
        .arg("--help")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[env: KIT_DEMO_ADMIN_ADDR=]"), "{help}");
    assert!(help.contains("[default: 0.0.0.0:9909]"), "{help}");
    let out = Command::new(kit_demo())
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
}
