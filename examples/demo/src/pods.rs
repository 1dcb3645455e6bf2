//! Starts OpenBao and the two pods' processes, checks what the sidecars do, and prints what to
//! try.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Cli;
use crate::git;
use crate::openbao::{self, OpenBao};
use crate::processes::{Processes, bin, default_bin_dir, log_name};
use crate::rotation::{self, Load};

/// The mapping users would mount, shipped with the Kubernetes example.
const MAPPING: &str = include_str!("../../../deploy/kubernetes/config/xml-adapter/mapping.yaml");
const PODS: [&str; 2] = ["pod-a", "pod-b"];

struct Ports {
    outbound_a: u16,
    admin_ambassador_a: u16,
    admin_agent_a: u16,
    app_b: u16,
    inbound_b: u16,
    admin_ambassador_b: u16,
    metrics_b: u16,
    admin_adapter_b: u16,
    admin_git_sync_b: u16,
    admin_agent_b: u16,
    admin_shipper_b: u16,
    log_store: u16,
    openbao: u16,
}

impl Ports {
    fn from_base(base: u16) -> Self {
        Self {
            outbound_a: base,
            admin_ambassador_a: base + 1,
            admin_agent_a: base + 2,
            app_b: base + 10,
            inbound_b: base + 11,
            admin_ambassador_b: base + 12,
            metrics_b: base + 13,
            admin_adapter_b: base + 14,
            admin_git_sync_b: base + 15,
            admin_agent_b: base + 16,
            admin_shipper_b: base + 17,
            log_store: base + 18,
            openbao: base + 19,
        }
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
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

/// Where things are, for the checks and the "try it" text.
struct Setup {
    dir: PathBuf,
    logs: PathBuf,
    bins: PathBuf,
    bao: PathBuf,
    ports: Ports,
    cert_ttl: Duration,
}

impl Setup {
    fn certs(&self, pod: &str) -> PathBuf {
        self.dir.join(pod).join("certs")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("openbao/root-token")
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.join("config-repo")
    }

    /// How long a certificate lives: its TTL and OpenBao's backdating.
    fn lifetime(&self) -> Duration {
        self.cert_ttl + openbao::BACKDATE
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut stop = std::pin::pin!(stop_signal().context("listening for SIGINT and SIGTERM")?);
    let dir = std::path::absolute(&cli.dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let setup = Setup {
        bao: openbao::find_bao(cli.bao.as_deref())?,
        bins: cli.bin_dir.clone().unwrap_or_else(default_bin_dir),
        ports: Ports::from_base(cli.port_base),
        cert_ttl: cli.cert_ttl,
        dir,
        logs,
    };
    let procs = RefCell::new(Processes::new(setup.logs.clone()));
    // A Ctrl-C while OpenBao and the sidecars start or the checks run stops everything too.
    let checked = tokio::select! {
        checks = start_and_check(&setup, &procs) => Some(checks),
        () = &mut stop => None,
    };
    let Some(checks) = checked else {
        println!("\nStopping:");
        procs.borrow_mut().stop();
        return Ok(false);
    };
    let checks = checks?;
    let passed = checks.failed == 0;
    println!(
        "\n{} of {} checks passed.",
        checks.passed,
        checks.passed + checks.failed
    );
    if cli.check {
        println!("\nStopping:");
        procs.borrow_mut().stop();
        return Ok(passed);
    }

    let p = &setup.ports;
    let lifetime = setup.lifetime().as_secs_f64();
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
  curl http://127.0.0.1:{store}/lines               # pod B's access log, shipped by its log-shipper
  curl http://127.0.0.1:{shipper}/metrics           # the log-shipper: lines read, sent, file lag

Certificates: OpenBao's PKI issues each pod's for {ttl} (backdated {backdate}s); secrets-agent
renews it at 2/3 of its life (a new one every {every:.0}s) and the ambassadors reload it:
  curl -s http://127.0.0.1:{admin_a}/metrics | grep -E '^sidecar_(certificate_expiry|tls_reloads)'
  curl -s http://127.0.0.1:{agent_a}/metrics | grep -E '^secrets_agent_(fetches|publishes|secret_expiry)'
  ls -la {certs_a}                     # the ..data layout the ambassador watches
  BAO_ADDR=http://127.0.0.1:{bao_port} BAO_TOKEN=$(cat {token}) {bao} read pki/cert/ca

Press Ctrl-C to stop."#,
        logs = setup.logs.display(),
        outbound = p.outbound_a,
        inbound = p.inbound_b,
        metrics = p.metrics_b,
        admin_a = p.admin_ambassador_a,
        admin_b = p.admin_ambassador_b,
        agent_a = p.admin_agent_a,
        repo = setup.repo_dir().display(),
        app = p.app_b,
        store = p.log_store,
        shipper = p.admin_shipper_b,
        ttl = humantime::format_duration(setup.cert_ttl),
        backdate = openbao::BACKDATE.as_secs(),
        every = lifetime * 2.0 / 3.0 - openbao::BACKDATE.as_secs_f64(),
        certs_a = setup.certs("pod-a").display(),
        bao_port = p.openbao,
        token = setup.token_file().display(),
        bao = setup.bao.display(),
    );
    stop.await;
    println!("\nStopping:");
    procs.borrow_mut().stop();
    Ok(passed)
}

/// Starts OpenBao, gets the pods' certificates from it, starts the sidecars and checks them.
async fn start_and_check(setup: &Setup, procs: &RefCell<Processes>) -> anyhow::Result<Checks> {
    let p = &setup.ports;
    let dir = &setup.dir;
    println!("Setting up in {}", dir.display());
    let repo_dir = setup.repo_dir();
    let repo = git::init(&repo_dir)
        .with_context(|| format!("creating the git repository {}", repo_dir.display()))?;
    git::commit(&repo, "app.yaml", "greeting: hello\n", "first config")
        .context("committing the first config")?;
    let mapping = dir.join("mapping.yaml");
    std::fs::write(&mapping, MAPPING).with_context(|| format!("writing {}", mapping.display()))?;
    let volume = dir.join("pod-b/config");
    std::fs::create_dir_all(&volume).with_context(|| format!("creating {}", volume.display()))?;
    // The volume pod B's app writes its log files to and its log-shipper reads.
    let app_logs = dir.join("pod-b/app-logs");
    std::fs::create_dir_all(&app_logs)
        .with_context(|| format!("creating {}", app_logs.display()))?;

    // The workspace's one crypto provider; reqwest has none of its own here.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut checks = Checks::default();

    // OpenBao, in dev mode (in memory, unsealed) with a root token of this run's own.
    println!(
        "Starting OpenBao ({} server -dev) on {}",
        setup.bao.display(),
        local(p.openbao)
    );
    let token = format!("{:032x}", rand::random::<u128>());
    std::fs::create_dir_all(dir.join("openbao"))?;
    openbao::write_private(&setup.token_file(), &token)?;
    procs.borrow_mut().spawn_with_env(
        "openbao",
        &setup.bao,
        &[
            "server".into(),
            "-dev".into(),
            format!("-dev-listen-address={}", local(p.openbao)),
            "-dev-no-store-token".into(),
        ],
        // The environment rather than a flag: not in `ps` output.
        &[("BAO_DEV_ROOT_TOKEN_ID", token.as_str())],
    )?;
    let bao = OpenBao::new(format!("http://{}", local(p.openbao)), token)?;
    let up = wait_until(Duration::from_secs(30), || async {
        let exited = procs.borrow_mut().exited("openbao").is_some();
        exited || bao.is_up().await
    })
    .await;
    if !up || procs.borrow_mut().exited("openbao").is_some() {
        bail!(
            "OpenBao did not start; see {}",
            setup.logs.join(log_name("openbao")).display()
        );
    }
    bao.set_up(&PODS).await?;
    println!(
        "  PKI engine `pki` (its CA made in OpenBao), a role per pod issuing its SPIFFE ID for {}, AppRole login",
        humantime::format_duration(setup.cert_ttl)
    );

    // A secrets-agent per pod: logs in with its AppRole, issues its pod's certificate and
    // publishes it where the ambassador reads it.
    // Whole seconds: OpenBao reads Go durations, and humantime's `1m 33s` has a space in it.
    let ttl = format!("{}s", setup.cert_ttl.as_secs().max(1));
    for (pod, admin) in [("pod-a", p.admin_agent_a), ("pod-b", p.admin_agent_b)] {
        let own = dir.join(pod);
        let (role_id, secret_id) = bao.approle_files(pod, &own.join("approle")).await?;
        let config = own.join("secrets-agent.yaml");
        std::fs::write(&config, openbao::agent_config(pod, &ttl))
            .with_context(|| format!("writing {}", config.display()))?;
        procs.borrow_mut().spawn(
            &format!("{pod}/secrets-agent"),
            &bin(&setup.bins, "secrets-agent")?,
            &[
                format!("--addr={}", bao.addr),
                "--auth-method=approle".into(),
                format!("--role-id-file={}", s(&role_id)),
                format!("--secret-id-file={}", s(&secret_id)),
                format!("--config={}", s(&config)),
                format!("--output-dir={}", s(&setup.certs(pod))),
                format!("--admin-addr={}", local(admin)),
            ],
        )?;
    }
    println!("\nIssuing the pods' certificates...");
    for (name, port) in [
        ("pod-a/secrets-agent", p.admin_agent_a),
        ("pod-b/secrets-agent", p.admin_agent_b),
    ] {
        let ready = ready_within(&http, port, Duration::from_secs(30)).await;
        checks.record(
            &format!(
                "{name} published its pod's certificate from OpenBao (/readyz on {})",
                local(port)
            ),
            ready,
            &format!("see {}", setup.logs.join(log_name(name)).display()),
        );
    }

    let (cert_a, cert_b) = (setup.certs("pod-a"), setup.certs("pod-b"));
    let id_a = openbao::spiffe_id("pod-a");
    let id_b = openbao::spiffe_id("pod-b");
    {
        let mut procs_now = procs.borrow_mut();
        procs_now.spawn(
            "pod-b/app",
            &bin(&setup.bins, "demo-app")?,
            &[
                "serve".into(),
                "--listen".into(),
                local(p.app_b),
                "--name".into(),
                "pod-b".into(),
                "--config-dir".into(),
                s(&volume.join("current")),
                "--access-log".into(),
                s(&app_logs.join("access.log")),
            ],
        )?;
        // The central log store, played by the demo app (a real one is Elasticsearch, Loki,
        // ClickHouse, Splunk or a syslog server: see docs/log-shipper.md).
        procs_now.spawn(
            "log-store",
            &bin(&setup.bins, "demo-app")?,
            &["collect".into(), "--listen".into(), local(p.log_store)],
        )?;
        procs_now.spawn_with_env(
            "pod-b/log-shipper",
            &bin(&setup.bins, "log-shipper")?,
            &[
                "--file".into(),
                format!("{}/*.log", s(&app_logs)),
                "--parser".into(),
                "json".into(),
                "--env-field".into(),
                "pod=POD_NAME".into(),
                "--sink-url".into(),
                format!("http://{}/ingest", local(p.log_store)),
                "--batch-timeout".into(),
                "200ms".into(),
                "--state-dir".into(),
                s(&dir.join("pod-b/log-shipper")),
                "--admin-addr".into(),
                local(p.admin_shipper_b),
            ],
            // As the Downward API gives it in a pod.
            &[("POD_NAME", "pod-b")],
        )?;
        procs_now.spawn(
            "pod-b/ambassador",
            &bin(&setup.bins, "ambassador")?,
            &[
                "--cert".into(),
                s(&cert_b.join("tls.crt")),
                "--key".into(),
                s(&cert_b.join("tls.key")),
                "--ca".into(),
                s(&cert_b.join("ca.crt")),
                "--inbound-listen".into(),
                local(p.inbound_b),
                "--inbound-app".into(),
                local(p.app_b),
                "--allow-spiffe".into(),
                id_a.clone(),
                "--admin-addr".into(),
                local(p.admin_ambassador_b),
            ],
        )?;
        procs_now.spawn(
            "pod-b/xml-adapter",
            &bin(&setup.bins, "xml-adapter")?,
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
        procs_now.spawn(
            "pod-b/git-sync",
            &bin(&setup.bins, "git-sync")?,
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
        procs_now.spawn(
            "pod-a/ambassador",
            &bin(&setup.bins, "ambassador")?,
            &[
                "--cert".into(),
                s(&cert_a.join("tls.crt")),
                "--key".into(),
                s(&cert_a.join("tls.key")),
                "--ca".into(),
                s(&cert_a.join("ca.crt")),
                "--outbound-listen".into(),
                local(p.outbound_a),
                "--outbound-endpoints".into(),
                local(p.inbound_b),
                "--outbound-identity".into(),
                id_b,
                "--admin-addr".into(),
                local(p.admin_ambassador_a),
            ],
        )?;
    }

    println!("\nWaiting for the sidecars to be ready...");
    for (name, port) in [
        ("pod-b/ambassador", p.admin_ambassador_b),
        ("pod-b/xml-adapter", p.admin_adapter_b),
        ("pod-b/git-sync", p.admin_git_sync_b),
        ("pod-b/log-shipper", p.admin_shipper_b),
        ("pod-a/ambassador", p.admin_ambassador_a),
    ] {
        let ready = ready_within(&http, port, Duration::from_secs(30)).await;
        checks.record(
            &format!("{name} is ready (/readyz on {})", local(port)),
            ready,
            &format!("see {}", setup.logs.join(log_name(name)).display()),
        );
    }

    // Calls through the mesh from now until a certificate rotation has been seen.
    let mesh_url = format!("http://{}/", local(p.outbound_a));
    let load = Load::start(http.clone(), mesh_url.clone(), "hello from pod-b".into());
    let admin_a = format!("http://{}/metrics", local(p.admin_ambassador_a));
    let admin_b = format!("http://{}/metrics", local(p.admin_ambassador_b));
    let first = [
        serial(&http, &admin_a, "pod-a").await,
        serial(&http, &admin_b, "pod-b").await,
    ];

    println!("\nWhat the sidecars do:");
    let mesh = get(&http, &mesh_url).await;
    let mesh_ok = mesh.as_ref().is_ok_and(|(status, body)| {
        *status == 200 && body.contains("hello from pod-b") && body.contains(&id_a)
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
    let first_config = serves_within(&http, &config_url, "greeting: hello\n").await;
    checks.record(
        "git-sync published the config repository into pod B's config volume",
        first_config,
        &config_url,
    );
    git::commit(
        &repo,
        "app.yaml",
        "greeting: bonjour\n",
        "change the greeting",
    )?;
    let second_config = serves_within(&http, &config_url, "greeting: bonjour\n").await;
    checks.record(
        "a new commit appears in the app's config within seconds",
        second_config,
        &config_url,
    );

    // The first renewal comes at 2/3 of the first certificate's lifetime; allow for a second.
    println!(
        "  (waiting for secrets-agent to renew the certificates: at 2/3 of their {}s life)",
        setup.lifetime().as_secs()
    );
    let deadline = Instant::now() + setup.lifetime() * 2 + Duration::from_secs(10);
    let (rotated, now) = loop {
        let now = [
            serial(&http, &admin_a, "pod-a").await,
            serial(&http, &admin_b, "pod-b").await,
        ];
        let rotated = first
            .iter()
            .zip(&now)
            .all(|(before, after)| before.is_some() && after.is_some() && before != after);
        if rotated || Instant::now() >= deadline {
            break (rotated, now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let outcome = load.stop().await;
    let after = get(&http, &mesh_url).await;
    let after_ok = after
        .as_ref()
        .is_ok_and(|(status, body)| *status == 200 && body.contains("hello from pod-b"));
    checks.record(
        "secrets-agent renewed both pods' certificates and both ambassadors reloaded them, without a failed request",
        rotated && outcome.failures.is_empty() && after_ok,
        &format!(
            "serials before {first:?}, now {now:?}; {} of {} requests failed, e.g. {:?}; after: {after:?}",
            outcome.failures.len(),
            outcome.sent,
            outcome.failures.first()
        ),
    );
    if rotated {
        let show = |s: &Option<String>| s.as_deref().map(rotation::short).unwrap_or("?").to_owned();
        println!(
            "         pod A serial {} -> {}, pod B {} -> {}; {} requests through the mesh meanwhile, {} failed",
            show(&first[0]),
            show(&now[0]),
            show(&first[1]),
            show(&now[1]),
            outcome.sent,
            outcome.failures.len()
        );
    }

    // Every request pod B's app served wrote a line to its access log; the log-shipper must
    // have delivered each of them to the store, with the pod's name from the environment.
    let access_log = app_logs.join("access.log");
    let store_url = format!("http://{}/lines", local(p.log_store));
    let seen = std::cell::Cell::new((0, 0));
    let shipped = wait_until(Duration::from_secs(20), || async {
        let written = std::fs::read_to_string(&access_log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let Ok((200, body)) = get(&http, &store_url).await else {
            return false;
        };
        let stored = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("lines: "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        seen.set((written, stored));
        let enriched = body.lines().skip(1).any(|l| {
            l.contains(r#""pod":"pod-b""#) && l.contains(&id_a) && l.contains(r#""status":200"#)
        });
        written > 0 && stored == written && enriched
    })
    .await;
    checks.record(
        "the log-shipper delivered every line of pod B's access log to the log store, parsed and with the pod's name",
        shipped,
        &format!(
            "{} lines written, {} in the store ({store_url}); see {}",
            seen.get().0,
            seen.get().1,
            setup.logs.join(log_name("pod-b/log-shipper")).display()
        ),
    );
    if shipped {
        println!("         {} access log lines shipped", seen.get().0);
    }
    Ok(checks)
}

/// The serial of the certificate `pod`'s ambassador has in use, from its `/metrics`.
async fn serial(http: &reqwest::Client, metrics_url: &str, pod: &str) -> Option<String> {
    let (status, page) = get(http, metrics_url).await.ok()?;
    if status != 200 {
        return None;
    }
    rotation::serial_in_use(&page, pod)
}

/// Whether the admin server on `port` answers `/readyz` with 200 within `limit`.
async fn ready_within(http: &reqwest::Client, port: u16, limit: Duration) -> bool {
    wait_until(limit, || async {
        get(http, &format!("http://{}/readyz", local(port)))
            .await
            .is_ok_and(|(status, _)| status == 200)
    })
    .await
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

pub(crate) async fn get(
    http: &reqwest::Client,
    url: &str,
) -> Result<(u16, String), reqwest::Error> {
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
