//! Starts the two pods' processes, checks what the sidecars do, and prints what to try.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Cli;
use crate::certs::Authority;

/// The mapping users would mount, shipped with the Kubernetes example.
const MAPPING: &str = include_str!("../../../deploy/kubernetes/config/xml-adapter/mapping.yaml");

struct Ports {
    outbound_a: u16,
    admin_ambassador_a: u16,
    app_b: u16,
    inbound_b: u16,
    admin_ambassador_b: u16,
    metrics_b: u16,
    admin_adapter_b: u16,
    admin_git_sync_b: u16,
}

impl Ports {
    fn from_base(base: u16) -> Self {
        Self {
            outbound_a: base,
            admin_ambassador_a: base + 1,
            app_b: base + 10,
            inbound_b: base + 11,
            admin_ambassador_b: base + 12,
            metrics_b: base + 13,
            admin_adapter_b: base + 14,
            admin_git_sync_b: base + 15,
        }
    }
}

/// The processes of the demo; stopped gracefully (SIGTERM, then a kill) on drop.
struct Processes {
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Processes {
    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let log_path = self.logs.join(log_name(name));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        // A process group of its own: a Ctrl-C in the terminal then reaches the demo only, which
        // stops each child with one SIGTERM and a graceful drain (a second signal, the terminal's
        // SIGINT on top, would make the sidecars exit at once, status 130).
        let child = Command::new(program)
            .args(args)
            .process_group(0)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        println!("  stopped {name:<22} ({status})");
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        println!("  killed  {name:<22} (did not stop in time)");
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pod-b/app` logs to `pod-b-app.log`.
fn log_name(process: &str) -> String {
    format!("{}.log", process.replace('/', "-"))
}

fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace first (scripts/demo.sh does)",
            path.display()
        );
    }
    Ok(path)
}

fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Resolves on the first SIGINT or SIGTERM. Registered when called: from then on a Ctrl-C is the
/// demo's to handle (it stops what it started) instead of killing it and orphaning the sidecars,
/// which run in process groups of their own.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut stop = std::pin::pin!(stop_signal().context("listening for SIGINT and SIGTERM")?);
    let bins = cli.bin_dir.clone().unwrap_or_else(default_bin_dir);
    let dir = std::path::absolute(&cli.dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let p = Ports::from_base(cli.port_base);

    println!("Setting up in {}", dir.display());
    let ca = Authority::create(&dir.join("certs"))?;
    let pod_a = ca.issue(&dir.join("certs"), "pod-a")?;
    let pod_b = ca.issue(&dir.join("certs"), "pod-b")?;
    let repo_dir = dir.join("config-repo");
    let repo = git::init(&repo_dir)
        .with_context(|| format!("creating the git repository {}", repo_dir.display()))?;
    git::commit(&repo, "app.yaml", "greeting: hello\n", "first config")
        .context("committing the first config")?;
    let mapping = dir.join("mapping.yaml");
    std::fs::write(&mapping, MAPPING).with_context(|| format!("writing {}", mapping.display()))?;
    let volume = dir.join("pod-b/config");
    std::fs::create_dir_all(&volume).with_context(|| format!("creating {}", volume.display()))?;

    let mut procs = Processes {
        children: Vec::new(),
        logs: logs.clone(),
    };
    let local = |port: u16| format!("127.0.0.1:{port}");
    procs.spawn(
        "pod-b/app",
        &bin(&bins, "demo-app")?,
        &[
            "serve".into(),
            "--listen".into(),
            local(p.app_b),
            "--name".into(),
            "pod-b".into(),
            "--config-dir".into(),
            s(&volume.join("current")),
        ],
    )?;
    procs.spawn(
        "pod-b/ambassador",
        &bin(&bins, "ambassador")?,
        &[
            "--cert".into(),
            s(&pod_b.cert),
            "--key".into(),
            s(&pod_b.key),
            "--ca".into(),
            s(&pod_b.ca),
            "--inbound-listen".into(),
            local(p.inbound_b),
            "--inbound-app".into(),
            local(p.app_b),
            "--allow-spiffe".into(),
            pod_a.spiffe_id.clone(),
            "--admin-addr".into(),
            local(p.admin_ambassador_b),
        ],
    )?;
    procs.spawn(
        "pod-b/xml-adapter",
        &bin(&bins, "xml-adapter")?,
        &[
            "--config".into(),
            s(&mapping),
            "--listen".into(),
            local(p.metrics_b),
            "--upstream".into(),
            format!("http://{}/status.xml", local(p.app_b)),
            "--admin-addr".into(),
            local(p.admin_adapter_b),
        ],
    )?;
    procs.spawn(
        "pod-b/git-sync",
        &bin(&bins, "git-sync")?,
        &[
            "--repo".into(),
            s(&repo_dir),
            "--ref".into(),
            "main".into(),
            "--root".into(),
            s(&volume),
            "--link".into(),
            "current".into(),
            "--period".into(),
            "1s".into(),
            "--admin-addr".into(),
            local(p.admin_git_sync_b),
        ],
    )?;
    procs.spawn(
        "pod-a/ambassador",
        &bin(&bins, "ambassador")?,
        &[
            "--cert".into(),
            s(&pod_a.cert),
            "--key".into(),
            s(&pod_a.key),
            "--ca".into(),
            s(&pod_a.ca),
            "--outbound-listen".into(),
            local(p.outbound_a),
            "--outbound-endpoints".into(),
            local(p.inbound_b),
            "--outbound-identity".into(),
            pod_b.spiffe_id.clone(),
            "--admin-addr".into(),
            local(p.admin_ambassador_a),
        ],
    )?;

    // The workspace's one crypto provider; reqwest has none of its own here.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // A Ctrl-C while the sidecars start or the checks run stops everything too.
    let checked = async {
        let mut checks = Checks::default();
        println!("\nWaiting for the sidecars to be ready...");
        for (name, port) in [
            ("pod-b/ambassador", p.admin_ambassador_b),
            ("pod-b/xml-adapter", p.admin_adapter_b),
            ("pod-b/git-sync", p.admin_git_sync_b),
            ("pod-a/ambassador", p.admin_ambassador_a),
        ] {
            let ready = wait_until(Duration::from_secs(30), || async {
                get(&http, &format!("http://{}/readyz", local(port)))
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            })
            .await;
            checks.record(
                &format!("{name} is ready (/readyz on {})", local(port)),
                ready,
                &format!("see {}", logs.join(log_name(name)).display()),
            );
        }

        println!("\nWhat the sidecars do:");
        let mesh = get(&http, &format!("http://{}/", local(p.outbound_a))).await;
        let mesh_ok = mesh.as_ref().is_ok_and(|(status, body)| {
            *status == 200 && body.contains("hello from pod-b") && body.contains(&pod_a.spiffe_id)
        });
        checks.record(
            "pod A's app calls pod B over mTLS through both ambassadors; pod B's app sees pod A's SPIFFE ID",
            mesh_ok,
            &format!("{mesh:?}"),
        );

        let no_cert = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("https://{}/", local(p.inbound_b)))
            .send()
            .await;
        checks.record(
            "a caller without a certificate is refused by pod B's ambassador",
            no_cert.is_err(),
            &format!("{no_cert:?}"),
        );

        let metrics_url = format!("http://{}/metrics", local(p.metrics_b));
        let metrics_ok = wait_until(Duration::from_secs(10), || async {
            get(&http, &metrics_url).await.is_ok_and(|(status, body)| {
                status == 200
                    && body.contains("legacy_app_healthy{server=\"pod-b\"} 1")
                    && body.contains("legacy_app_up 1")
            })
        })
        .await;
        checks.record(
            "the xml-adapter serves pod B's XML status page as Prometheus metrics",
            metrics_ok,
            &metrics_url,
        );

        let config_url = format!("http://{}/config/app.yaml", local(p.app_b));
        let first = serves_within(&http, &config_url, "greeting: hello\n").await;
        checks.record(
            "git-sync published the config repository into pod B's config volume",
            first,
            &config_url,
        );
        git::commit(
            &repo,
            "app.yaml",
            "greeting: bonjour\n",
            "change the greeting",
        )?;
        let second = serves_within(&http, &config_url, "greeting: bonjour\n").await;
        checks.record(
            "a new commit appears in the app's config within seconds",
            second,
            &config_url,
        );
        anyhow::Ok(checks)
    };
    let checks = tokio::select! {
        checks = checked => checks?,
        () = &mut stop => {
            println!("\nStopping:");
            procs.stop();
            return Ok(false);
        }
    };
    let passed = checks.failed == 0;
    println!(
        "\n{} of {} checks passed.",
        checks.passed,
        checks.passed + checks.failed
    );
    if cli.check {
        println!("\nStopping:");
        procs.stop();
        return Ok(passed);
    }

    println!(
        r#"
Try it (logs in {logs}):
  curl http://127.0.0.1:{outbound}/                 # pod A -> mTLS -> pod B's app (see the caller's identity)
  curl -k https://127.0.0.1:{inbound}/              # no client certificate: refused
  curl http://127.0.0.1:{metrics}/metrics           # pod B's XML status page as Prometheus metrics
  curl http://127.0.0.1:{metrics}/json              # the same samples as JSON
  curl http://127.0.0.1:{admin_a}/metrics           # pod A's ambassador: requests, latency, TLS
  curl http://127.0.0.1:{admin_b}/readyz?verbose    # readiness checks of pod B's ambassador
  cd {repo} && echo 'greeting: hi' > app.yaml && git commit -qam hi   # then, within seconds:
  curl http://127.0.0.1:{app}/config/app.yaml       # pod B's app reads the new config

Press Ctrl-C to stop."#,
        logs = logs.display(),
        outbound = p.outbound_a,
        inbound = p.inbound_b,
        metrics = p.metrics_b,
        admin_a = p.admin_ambassador_a,
        admin_b = p.admin_ambassador_b,
        repo = repo_dir.display(),
        app = p.app_b,
    );
    stop.await;
    println!("\nStopping:");
    procs.stop();
    Ok(passed)
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn record(&mut self, what: &str, ok: bool, detail: &str) {
        if ok {
            self.passed += 1;
            println!("  [ok]   {what}");
        } else {
            self.failed += 1;
            println!("  [FAIL] {what}\n         {detail}");
        }
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, String), reqwest::Error> {
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Whether `url` answers 200 with exactly `body` within 20 seconds (git-sync polls each second).
async fn serves_within(http: &reqwest::Client, url: &str, body: &str) -> bool {
    wait_until(Duration::from_secs(20), || async {
        get(http, url)
            .await
            .is_ok_and(|(status, got)| status == 200 && got == body)
    })
    .await
}

async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The config repository, made and changed with git2 (no git program needed).
pub(crate) mod git {
    use std::path::Path;

    use git2::{Repository, Signature};

    pub fn init(dir: &Path) -> anyhow::Result<Repository> {
        let mut options = git2::RepositoryInitOptions::new();
        options.initial_head("main");
        Ok(Repository::init_opts(dir, &options)?)
    }

    pub fn commit(
        repo: &Repository,
        file: &str,
        content: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        let workdir = repo
            .workdir()
            .ok_or_else(|| anyhow::anyhow!("the config repository has no work tree"))?;
        std::fs::write(workdir.join(file), content)?;
        let mut index = repo.index()?;
        index.add_path(Path::new(file))?;
        index.write()?;
        let tree = repo.find_tree(index.write_tree()?)?;
        let author = Signature::now("demo", "demo@demo.local")?;
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(Some("HEAD"), &author, &author, message, &tree, &parents)?;
        Ok(())
    }
}
