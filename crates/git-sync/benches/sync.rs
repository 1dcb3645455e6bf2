//! git-sync against the git CLI, in one run, on a git daemon on 127.0.0.1.
//!
//! `cargo bench -p git-sync --bench sync` (needs git, ssh-keygen, and GNU time at
//! /usr/bin/time). Environment: GITSYNC_BENCH_FILES (10000), GITSYNC_BENCH_MB (100),
//! GITSYNC_BENCH_RUNS (5), GITSYNC_BENCH_MONO_FILES (100000; 0 skips the monorepo),
//! GITSYNC_BENCH_MONO_RUNS (3).
//!
//! Measures:
//! 1. push-to-published latency with POST /sync and with polling (--period 1s);
//! 2. the cost of a poll when nothing changed (CPU time, bytes on the wire) vs `git fetch`;
//! 3. first sync (vs `git clone --depth 1`) and incremental sync (vs `git fetch --depth 1` +
//!    `git checkout`) of a generated repository, wall time and peak RSS;
//! 4. the cost of signature verification on that repository, its commits signed with an SSH
//!    key: `--verify-signatures head` on the first sync, `all` on the incremental one, against
//!    the same syncs unverified (and `git verify-commit` on the git CLI's side);
//! 5. a 100,000-file monorepo published whole and with `--subpath` to one directory of 1,000
//!    files, against `git clone --depth 1` and a partial clone with a sparse checkout.

// Benchmark code: a failed unwrap aborts the run with its location.
#![allow(clippy::unwrap_used)]

mod sync {
    pub mod monorepo;
    pub mod signed;
}

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.invalid")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.invalid")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A long-running git-sync on `root`, answering on `admin` once this returns.
fn start_git_sync(bin: &str, root: &Path, url: &str, period: &str, admin: u16) -> Killer {
    let gs = Killer(
        Command::new(bin)
            .args(["--root", root.to_str().unwrap(), "--repo", url])
            .args(["--depth", "1", "--period", period])
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--log-level",
                "warn",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(admin);
    gs
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counts the bytes both ways between clients and the git daemon.
struct Proxy {
    port: u16,
    bytes: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    counter.fetch_add(n as u64, Ordering::Relaxed);
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Proxy { port, bytes }
    }
}

/// Wall seconds, CPU seconds (user+sys) and peak RSS (KiB) of one command, via GNU time
/// (whose peak is the largest single process), and the peak of the RSS summed over the
/// command's processes (git-sync's network worker, git's index-pack), sampled every 20 ms.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    rss_sum_kib: u64,
}

fn measure(dir: &Path, program: &str, args: &[&str]) -> Cost {
    let out_file = dir.join(format!(".time-{}", rand::rng().random::<u64>()));
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&out_file)
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/time (apt-get install time)");
    let mut rss_sum_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // the descendants of GNU time, not time itself
        let sum: u64 = descendants(child.id()).into_iter().map(rss_kib_of).sum();
        rss_sum_kib = rss_sum_kib.max(sum);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{program} {args:?} failed");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let _ = std::fs::remove_file(&out_file);
    let f: Vec<f64> = text
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Cost {
        wall: f[0],
        cpu: f[1] + f[2],
        rss_kib: f[3] as u64,
        rss_sum_kib,
    }
}

/// Live descendants of `pid` (through /proc/PID/task/TID/children).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU seconds (user+sys) of a process, its reaped children and its live descendants (git-sync's
/// network worker lives across polls).
fn cpu_seconds_of_tree(pid: u32) -> f64 {
    let own = |pid: u32| -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0.0;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<f64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        // utime, stime, and cutime, cstime (children already waited for)
        (fields[11] + fields[12] + fields[13] + fields[14]) / 100.0 // USER_HZ
    };
    own(pid) + descendants(pid).into_iter().map(own).sum::<f64>()
}

fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(port: u16, name: &str) -> f64 {
    http(port, "GET", "/metrics")
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn published(root: &Path) -> Option<String> {
    Some(
        std::fs::read_link(root.join("current"))
            .ok()?
            .file_name()?
            .to_str()?
            .to_string(),
    )
}

fn generate(work: &Path, files: usize, total_mb: usize, rng: &mut rand::rngs::StdRng) {
    let per_file = total_mb * 1024 * 1024 / files;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 =:\n";
    for i in 0..files {
        let dir = work.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..per_file)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect();
        std::fs::write(dir.join(format!("f{i:05}.conf")), body).unwrap();
    }
}

fn change_some(work: &Path, files: usize, every: usize, round: usize) {
    for i in (0..files).step_by(every) {
        let path = work
            .join(format!("d{:03}", i % 100))
            .join(format!("f{i:05}.conf"));
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "changed in round {round}").unwrap();
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and a 100 MB
    // benchmark has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("git-sync benchmark: run it with `cargo bench -p git-sync --bench sync`");
        return;
    }
    let files = env_or("GITSYNC_BENCH_FILES", 10_000);
    let mb = env_or("GITSYNC_BENCH_MB", 100);
    let runs = env_or("GITSYNC_BENCH_RUNS", 5).max(1);
    let bin = env!("CARGO_BIN_EXE_git-sync");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let srv = t.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let bare = srv.join("big.git");
    git(
        t,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let work = t.join("work");
    git(t, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
    git(&work, &["config", "gc.auto", "0"]);
    git(&bare, &["config", "gc.auto", "0"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    eprintln!("generating {files} files, {mb} MB...");
    generate(&work, files, mb, &mut rng);
    git(&work, &["add", "-A"]);
    let signer = sync::signed::Signer::new(t);
    signer.git(&work, &["commit", "-q", "-S", "-m", "initial"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let mono_files = env_or("GITSYNC_BENCH_MONO_FILES", 100_000);
    if mono_files > 0 {
        eprintln!("generating the monorepo, {mono_files} files...");
        sync::monorepo::generate(&srv, t, mono_files);
    }

    let daemon_port = free_port();
    // `git-daemon` itself, not the `git daemon` wrapper, so that the kill reaches the listener.
    let exec_path = String::from_utf8(
        Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git --exec-path")
            .stdout,
    )
    .expect("exec path is UTF-8");
    let _daemon = Killer(
        Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args([
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={daemon_port}"),
                &format!("--base-path={}", srv.display()),
                &srv.display().to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon"),
    );
    wait_port(daemon_port);
    let proxy = Proxy::start(daemon_port);
    let url = format!("git://127.0.0.1:{}/big.git", proxy.port);
    let gs_args = |root: &Path| -> Vec<String> {
        vec![
            "--one-time".into(),
            "--root".into(),
            root.display().to_string(),
            "--repo".into(),
            url.clone(),
            "--depth".into(),
            "1".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--log-level".into(),
            "warn".into(),
        ]
    };

    // 3a. first sync vs git clone --depth 1; 4. the same verified
    let mut first_gs = Vec::new();
    let mut first_cli = Vec::new();
    let mut first_gsv = Vec::new();
    let mut first_cliv = Vec::new();
    for i in 0..runs {
        let root = t.join(format!("gs{i}"));
        let a = gs_args(&root);
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        first_gs.push(measure(t, bin, &args));
        let root = t.join(format!("gsv{i}"));
        let mut a = gs_args(&root);
        a.extend(signer.git_sync_args("head"));
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        first_gsv.push(measure(t, bin, &args));
        let dest = t.join(format!("cli{i}"));
        first_cli.push(measure(
            t,
            "git",
            &["clone", "-q", "--depth", "1", &url, dest.to_str().unwrap()],
        ));
        let dest = t.join(format!("cliv{i}"));
        let script = format!(
            "git clone -q --depth 1 {url} {d} && cd {d} && {verify} >/dev/null 2>&1",
            d = dest.display(),
            verify = signer.verify_commit_command("HEAD")
        );
        first_cliv.push(measure(t, "sh", &["-c", &script]));
    }

    // 3b. incremental: 1% of the files change
    change_some(&work, files, 100, 1);
    signer.git(&work, &["commit", "-q", "-S", "-am", "one percent"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let mut inc_gs = Vec::new();
    let mut inc_cli = Vec::new();
    let mut inc_gsv = Vec::new();
    let mut inc_cliv = Vec::new();
    for i in 0..runs {
        let root = t.join(format!("gs{i}"));
        let a = gs_args(&root);
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        inc_gs.push(measure(t, bin, &args));
        let root = t.join(format!("gsv{i}"));
        let mut a = gs_args(&root);
        a.extend(signer.git_sync_args("all"));
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        inc_gsv.push(measure(t, bin, &args));
        let dest = t.join(format!("cli{i}"));
        inc_cli.push(measure(
            &dest,
            "sh",
            &[
                "-c",
                "git fetch -q --depth 1 origin main && git checkout -q --detach FETCH_HEAD",
            ],
        ));
        let dest = t.join(format!("cliv{i}"));
        let script = format!(
            "git fetch -q --depth 1 origin main && {verify} >/dev/null 2>&1 && git checkout -q --detach FETCH_HEAD",
            verify = signer.verify_commit_command("FETCH_HEAD")
        );
        inc_cliv.push(measure(&dest, "sh", &["-c", &script]));
    }
    let new_sha = git(&work, &["rev-parse", "HEAD"]);
    for i in 0..runs {
        for name in ["gs", "gsv"] {
            assert_eq!(
                published(&t.join(format!("{name}{i}"))).as_deref(),
                Some(new_sha.as_str())
            );
        }
    }
    // Only the runs' first sync and incremental sync are needed: free the disk.
    for i in 0..runs {
        for name in ["gsv", "cliv"] {
            let _ = std::fs::remove_dir_all(t.join(format!("{name}{i}")));
        }
    }
    let mono = (mono_files > 0).then(|| {
        let mono_url = format!("git://127.0.0.1:{}/mono.git", proxy.port);
        let mono_runs = env_or("GITSYNC_BENCH_MONO_RUNS", 3).max(1);
        sync::monorepo::run(t, bin, &proxy, &mono_url, mono_files, mono_runs)
    });

    // 2. a poll when nothing changed: git-sync (long-running) vs `git fetch` in a clone
    let polls = 30;
    let admin = free_port();
    let root = t.join("gs0");
    let gs = start_git_sync(bin, &root, &url, "1h", admin);
    let wait_syncs = |n: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(admin, "gitsync_syncs_total") < n {
            assert!(Instant::now() < deadline, "git-sync did not sync");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_syncs(1.0);
    let cpu0 = cpu_seconds_of_tree(gs.0.id());
    let bytes0 = proxy.bytes.load(Ordering::SeqCst);
    for k in 0..polls {
        http(admin, "POST", "/sync");
        wait_syncs(2.0 + f64::from(k));
    }
    let gs_poll_cpu = (cpu_seconds_of_tree(gs.0.id()) - cpu0) / f64::from(polls);
    let gs_poll_bytes = (proxy.bytes.load(Ordering::SeqCst) - bytes0) as f64 / f64::from(polls);
    let unchanged = metric(admin, "gitsync_syncs_total{result=\"unchanged\"}");
    assert!(unchanged >= f64::from(polls), "polls were not 'unchanged'");
    let mut cli_poll_cpu = Vec::new();
    let bytes0 = proxy.bytes.load(Ordering::SeqCst);
    let clone0 = t.join("cli0");
    for _ in 0..polls {
        cli_poll_cpu.push(
            measure(
                &clone0,
                "git",
                &["fetch", "-q", "--depth", "1", "origin", "main"],
            )
            .cpu,
        );
    }
    let cli_poll_bytes = (proxy.bytes.load(Ordering::SeqCst) - bytes0) as f64 / f64::from(polls);
    let cli_poll_cpu = cli_poll_cpu.iter().sum::<f64>() / f64::from(polls);

    // 1. push-to-published latency: POST /sync right after the push, and polling every 1s
    let pushes = runs.max(5);
    let mut lat_post = Vec::new();
    for round in 0..pushes {
        change_some(&work, files, 1000, 100 + round);
        git(&work, &["commit", "-q", "-am", "post"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        // from the moment the server has the commit
        let start = Instant::now();
        http(admin, "POST", "/sync");
        while published(&root).as_deref() != Some(sha.as_str()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        lat_post.push(start.elapsed().as_secs_f64());
    }
    drop(gs);
    let admin = free_port();
    let gs = start_git_sync(bin, &root, &url, "1s", admin);
    let mut lat_poll = Vec::new();
    for round in 0..pushes {
        change_some(&work, files, 1000, 200 + round);
        git(&work, &["commit", "-q", "-am", "poll"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        let start = Instant::now();
        while published(&root).as_deref() != Some(sha.as_str()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        lat_poll.push(start.elapsed().as_secs_f64());
        // desynchronise the next push from the poll phase
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..1000)));
    }
    drop(gs);

    let med = |v: &[Cost], f: fn(&Cost) -> f64| median(v.iter().map(f).collect());
    let max_rss = |v: &[Cost]| v.iter().map(|c| c.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let max_rss_sum =
        |v: &[Cost]| v.iter().map(|c| c.rss_sum_kib).max().unwrap_or(0) as f64 / 1024.0;
    println!("## git-sync benchmark ({files} files, {mb} MB, {runs} runs, medians)");
    println!();
    println!("| measure | git-sync | git CLI | ratio |");
    println!("|---|---|---|---|");
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!("| {name} | {a:.3} {unit} | {b:.3} {unit} | {:.2}x |", a / b);
    };
    row(
        "first sync, wall (vs clone --depth 1)",
        med(&first_gs, |c| c.wall),
        med(&first_cli, |c| c.wall),
        "s",
    );
    row(
        "first sync, CPU",
        med(&first_gs, |c| c.cpu),
        med(&first_cli, |c| c.cpu),
        "s",
    );
    row(
        "first sync, peak RSS (largest process)",
        max_rss(&first_gs),
        max_rss(&first_cli),
        "MiB",
    );
    row(
        "first sync, peak RSS (all processes, sampled)",
        max_rss_sum(&first_gs),
        max_rss_sum(&first_cli),
        "MiB",
    );
    row(
        "incremental 1%, wall (vs fetch --depth 1 + checkout)",
        med(&inc_gs, |c| c.wall),
        med(&inc_cli, |c| c.wall),
        "s",
    );
    row(
        "incremental 1%, CPU",
        med(&inc_gs, |c| c.cpu),
        med(&inc_cli, |c| c.cpu),
        "s",
    );
    row(
        "incremental 1%, peak RSS (largest process)",
        max_rss(&inc_gs),
        max_rss(&inc_cli),
        "MiB",
    );
    row(
        "incremental 1%, peak RSS (all processes, sampled)",
        max_rss_sum(&inc_gs),
        max_rss_sum(&inc_cli),
        "MiB",
    );
    row(
        "poll with nothing new, CPU per poll",
        gs_poll_cpu * 1000.0,
        cli_poll_cpu * 1000.0,
        "ms",
    );
    row(
        "poll with nothing new, bytes on the wire",
        gs_poll_bytes,
        cli_poll_bytes,
        "B",
    );
    println!();
    println!("| push-to-published latency | median | max |");
    println!("|---|---|---|");
    let lat = |v: &[f64]| (median(v.to_vec()), v.iter().cloned().fold(0.0, f64::max));
    let (m, x) = lat(&lat_post);
    println!(
        "| POST /sync right after the push | {:.0} ms | {:.0} ms |",
        m * 1000.0,
        x * 1000.0
    );
    let (m, x) = lat(&lat_poll);
    println!(
        "| polling, --period 1s (jitter 10%) | {:.0} ms | {:.0} ms |",
        m * 1000.0,
        x * 1000.0
    );
    println!();
    println!(
        "## signature verification ({files} files, commits signed by ssh-keygen, {runs} runs, medians)"
    );
    println!();
    println!("| measure | unverified | verified | cost of verifying |");
    println!("|---|---|---|---|");
    let cost_row = |name: &str, a: f64, b: f64| {
        println!(
            "| {name} | {a:.3} s | {b:.3} s | {:+.1}% |",
            (b / a - 1.0) * 100.0
        );
    };
    cost_row(
        "git-sync first sync, wall (--verify-signatures head)",
        med(&first_gs, |c| c.wall),
        med(&first_gsv, |c| c.wall),
    );
    cost_row(
        "git-sync first sync, CPU",
        med(&first_gs, |c| c.cpu),
        med(&first_gsv, |c| c.cpu),
    );
    cost_row(
        "git-sync incremental 1%, wall (--verify-signatures all)",
        med(&inc_gs, |c| c.wall),
        med(&inc_gsv, |c| c.wall),
    );
    cost_row(
        "git-sync incremental 1%, CPU",
        med(&inc_gs, |c| c.cpu),
        med(&inc_gsv, |c| c.cpu),
    );
    cost_row(
        "git CLI clone --depth 1, wall (+ git verify-commit)",
        med(&first_cli, |c| c.wall),
        med(&first_cliv, |c| c.wall),
    );
    cost_row(
        "git CLI fetch + checkout, wall (+ git verify-commit)",
        med(&inc_cli, |c| c.wall),
        med(&inc_cliv, |c| c.wall),
    );
    if let Some(mono) = mono {
        mono.print();
    }
}
