//! Container tests: the images of `scripts/images.sh`, run the way a pod runs them.
//!
//! Two "pods" on a private Docker network, each an app container (the demo app) owning the
//! network namespace with sidecar containers joined to it (`--network container:<app>`):
//! pod A has the ambassador, the xml-adapter and git-sync; pod B has the ambassador. A git
//! server container serves the config repository. A third pod's log-shipper ships its app's
//! access log from a shared volume. Every sidecar runs as it would in a
//! restricted pod: its image's user 65532, a read-only root filesystem, no capabilities.
//!
//! They need a Docker engine, so they are `#[ignore = "needs a Docker engine"]`: `cargo test`
//! lists them as ignored, never as passed. `scripts/test.sh` runs them (`--ignored`) when an
//! engine is reachable, and always in CI (`CI=true`), where a missing engine fails them.
//! `SIDECARS_IMAGES_PREBUILT=1` skips the image build (the images must then exist, tagged
//! `:dev`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use test_support::certs::Ca;
use test_support::metrics::Metrics;
use test_support::ports::loopback;
use test_support::skip::{require_docker_engine, require_program};
use test_support::wait::Wait;

const SIDECARS: [(&str, u16); 5] = [
    ("ambassador", 9901),
    ("xml-adapter", 9902),
    ("git-sync", 9903),
    ("log-shipper", 9904),
    ("secrets-agent", 9905),
];
const TRUST_DOMAIN: &str = "spiffe://containers.test/ns/e2e/sa";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn image(name: &str) -> String {
    let repo = std::env::var("IMAGE_REPO").unwrap_or_else(|_| "ghcr.io/sidecars".into());
    format!("{repo}/{name}:dev")
}

// ---- the engine and the images ---------------------------------------------------------------

/// Builds the images once per test binary (cargo and Docker both cache, so reruns are quick).
fn build_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        if std::env::var("SIDECARS_IMAGES_PREBUILT").is_ok_and(|v| v == "1") {
            return Ok(());
        }
        // Inherited stdio: the build takes minutes and CI's log should show it progressing.
        // The `ci` profile: the release images' code and behaviour, without the whole-program
        // and profile-guided optimisation that only the published images need.
        let status = Command::new(repo_root().join("scripts/images.sh"))
            .args(["--profile", "ci"])
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("cannot run scripts/images.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/images.sh --profile ci failed ({status}); its output is above"
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

/// Runs docker and returns its trimmed stdout; panics with its stderr if it fails.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a test created, removed when it ends (pass or fail).
struct Resources {
    prefix: String,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Resources {
    fn new(test: &str) -> Resources {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        Resources {
            prefix: format!(
                "sidecars-e2e-{}-{}-{test}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            containers: Vec::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// A private network with a subnet of its own, so that pods keep their address across a
    /// restart (as a Kubernetes Service's address outlives its pods): the ambassador's static
    /// endpoints then stay right. Dynamic addresses come from the upper half only.
    fn network(&mut self) -> (String, String) {
        let name = self.name("net");
        let mut last_error = String::new();
        for attempt in 0..20u32 {
            let third = (std::process::id() + attempt * 7) % 200 + 20;
            let subnet = format!("172.31.{third}.0/24");
            let range = format!("172.31.{third}.128/25");
            let out = docker(&[
                "network",
                "create",
                "--subnet",
                &subnet,
                "--ip-range",
                &range,
                &name,
            ]);
            if out.status.success() {
                self.networks.push(name.clone());
                return (name, format!("172.31.{third}"));
            }
            // Another network (a parallel run, the host) has this subnet: try the next one.
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("cannot create a test network: {last_error}");
    }

    /// A named volume (created on first mount, filled from the image's directory).
    fn volume(&mut self, what: &str) -> String {
        let name = self.name(what);
        self.volumes.push(name.clone());
        name
    }

    /// A tmpfs volume owned by 65532, shared by the containers that mount it (an emptyDir).
    fn shared_tmpfs(&mut self, what: &str) -> String {
        let name = self.name(what);
        docker_ok(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            "o=uid=65532,gid=65532,size=32m",
            &name,
        ]);
        self.volumes.push(name.clone());
        name
    }

    /// `docker run -d` with the restricted settings of the Kubernetes manifests.
    fn run(&mut self, what: &str, options: &[&str], image_and_args: &[&str]) -> String {
        let name = self.name(what);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
        ];
        args.extend_from_slice(options);
        args.extend_from_slice(image_and_args);
        self.containers.push(name.clone());
        docker_ok(&args);
        name
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.containers {
            let logs = docker(&["logs", "--tail", "30", c]);
            out.push_str(&format!(
                "---- {c}\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        out
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// The host port (on 127.0.0.1) Docker published for a container's port.
fn host_port(container: &str, port: u16) -> u16 {
    let mapping = docker_ok(&["port", container, &format!("{port}/tcp")]);
    mapping
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{container}:{port} is not published on 127.0.0.1: {mapping:?}"))
}

// ---- plain HTTP from the test to published ports on 127.0.0.1 ----------------------------------

fn http(method: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    test_support::http::request(loopback(port), method, path, &[], b"").map(|r| (r.status, r.body))
}

/// A wait of `within` for `what`, checked every 250 ms; on timeout the containers' logs are
/// part of the failure message.
fn eventually<'a>(res: &'a Resources, what: &str, within: Duration) -> Wait<'a> {
    Wait::new(what)
        .timeout(within)
        .every(Duration::from_millis(250))
        .context(move || res.logs())
}

fn wait_ready(res: &Resources, container: &str, admin_port: u16) {
    let port = host_port(container, admin_port);
    eventually(
        res,
        &format!("{container} /readyz on :{admin_port}"),
        Duration::from_secs(60),
    )
    .value(|| matches!(http("GET", port, "/readyz"), Ok((200, _))).then_some(()));
}

/// The user id the container's main process runs as, from the host's view (`docker top`).
fn process_uid(container: &str) -> String {
    let top = docker_ok(&["top", container, "-o", "pid,uid,comm"]);
    top.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no process in {container}: {top}"))
        .to_owned()
}

/// Runs the demo app's client in `network` (`container:<app>` to be inside a pod).
fn demo_client(network: &str, mounts: &[&str], args: &[&str]) -> (bool, String) {
    let image = image("demo-app");
    let mut all = vec![
        "run",
        "--rm",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--network",
        network,
    ];
    all.extend_from_slice(mounts);
    all.push(&image);
    all.extend_from_slice(args);
    let out = docker(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---- certificates (rcgen, at test time) --------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and one certificate per pod, each in `<dir>/<pod>/{tls.crt,tls.key,ca.crt}`.
    fn new(pods: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("container tests CA");
        for pod in pods {
            let leaf = ca
                .leaf()
                .dns(pod)
                .spiffe(&format!("{TRUST_DOMAIN}/{pod}"))
                .sign();
            let pod_dir = dir.path().join(pod);
            std::fs::create_dir(&pod_dir).expect("pod cert dir");
            leaf.write(&pod_dir, "tls");
            ca.write(&pod_dir.join("ca.crt"));
        }
        ca.write(&dir.path().join("ca.crt"));
        // The containers run as 65532: the test-only files must be readable by it.
        world_readable(dir.path());
        Pki { dir }
    }

    fn mount(&self, pod: &str, at: &str) -> String {
        format!("{}:{at}:ro", self.dir.path().join(pod).display())
    }
}

fn world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            world_readable(&entry.expect("dir entry").path());
        }
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    world_readable(&path);
    path
}

// ---- git, from the host to the git server container ------------------------------------------

struct ConfigRepo {
    dir: tempfile::TempDir,
    url: String,
}

impl ConfigRepo {
    fn new(git_port: u16) -> ConfigRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = ConfigRepo {
            dir,
            url: format!("git://127.0.0.1:{git_port}/config.git"),
        };
        repo.git(&["init", "-q", "-b", "main"]).expect("git init");
        repo
    }

    fn git(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@example.invalid",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("git is needed by the container tests (apt install git): {e}")
            });
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Commits `app.conf` with `text`.
    fn commit(&self, text: &str) {
        std::fs::write(self.dir.path().join("app.conf"), text).expect("write app.conf");
        self.git(&["add", "app.conf"]).expect("git add");
        self.git(&["commit", "-q", "-m", text]).expect("git commit");
    }

    /// Pushes to the git server over git:// (the server may still be starting: Err).
    fn push(&self) -> Result<String, String> {
        self.git(&["push", "-q", &self.url, "HEAD:refs/heads/main"])
    }
}

// ---- the tests ---------------------------------------------------------------------------------

#[test]
#[ignore = "needs a Docker engine"]
fn images_are_labelled_non_root_and_shell_less() {
    require_docker_engine();
    build_images();
    for (name, _) in SIDECARS {
        let image = image(name);
        let user = docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &image]);
        assert_eq!(user, "65532:65532", "{image}: user");
        let labels = docker_ok(&["image", "inspect", "-f", "{{json .Config.Labels}}", &image]);
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&labels).expect("labels are JSON");
        for key in [
            "title",
            "description",
            "source",
            "version",
            "revision",
            "licenses",
        ] {
            let value = labels
                .get(&format!("org.opencontainers.image.{key}"))
                .unwrap_or_else(|| panic!("{image}: no org.opencontainers.image.{key} label"));
            assert!(
                !value.is_empty() && value != "unknown",
                "{image}: label {key} is {value:?}"
            );
        }
        assert_eq!(labels["org.opencontainers.image.title"], name);
        // No shell to exec into: an attacker (or a debugging habit) finds nothing to run.
        let shell = docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &image,
            "-c",
            "true",
        ]);
        assert!(!shell.status.success(), "{image} has a /bin/sh");
        // The binary is the whole image: it runs --version with nothing else present.
        let version = docker_ok(&["run", "--rm", "--read-only", &image, "--version"]);
        assert!(version.contains(name), "{image} --version said {version:?}");
    }
}

/// The whole demo as containers, checked end to end.
#[test]
#[ignore = "needs a Docker engine"]
fn two_pods_talk_through_their_ambassadors_with_adapter_and_git_sync() {
    require_docker_engine();
    build_images();
    let mut res = Resources::new("mesh");
    let (net, prefix) = res.network();
    let (ip_a, ip_b) = (format!("{prefix}.10"), format!("{prefix}.11"));
    let pki = Pki::new(&["pod-a", "pod-b"]);
    let files = tempfile::tempdir().expect("temp dir");
    world_readable(files.path());

    // The git server, and the first config commit pushed to it from the host.
    // The repository lives on a fresh volume, which Docker fills from the image (owned by 65532).
    let git_data = res.volume("git-data");
    let git_server = res.run(
        "git-server",
        &[
            "--network",
            &net,
            "--network-alias",
            "git-server",
            "-p",
            "127.0.0.1::9418",
            "-v",
            &format!("{git_data}:/srv/git"),
        ],
        &[&image("git-server")],
    );
    let repo = ConfigRepo::new(host_port(&git_server, 9418));
    repo.commit("greeting = hello\n");
    eventually(
        &res,
        "the first push to the git server",
        Duration::from_secs(30),
    )
    .value(|| repo.push().ok());

    // Pod B's app (its ambassador joins its network namespace below).
    let b_app = res.run(
        "pod-b",
        &[
            "--network",
            &net,
            "--ip",
            &ip_b,
            "--network-alias",
            "pod-b",
            "-p",
            "127.0.0.1::9901",
        ],
        &[&image("demo-app"), "serve", "--name", "pod-b"],
    );
    // Pod A: its app reading the git-sync volume, and all three sidecars.
    let config_volume = res.shared_tmpfs("config");
    let a_app = res.run(
        "pod-a",
        &[
            "--network",
            &net,
            "--ip",
            &ip_a,
            "--network-alias",
            "pod-a",
            "-v",
            &format!("{config_volume}:/git:ro"),
            "-p",
            "127.0.0.1::9901",
            "-p",
            "127.0.0.1::9902",
            "-p",
            "127.0.0.1::9903",
            "-p",
            "127.0.0.1::9108",
        ],
        &[
            &image("demo-app"),
            "serve",
            "--name",
            "pod-a",
            "--config-dir",
            "/git/current",
        ],
    );
    // Sidecars after both apps: the ambassadors resolve their peer's name when they start.
    let amb_b = ambassador_config(files.path(), "pod-b", "pod-a");
    let b_amb = res.run(
        "pod-b-ambassador",
        &[
            "--network",
            &format!("container:{b_app}"),
            "-v",
            &pki.mount("pod-b", "/etc/ambassador/tls"),
            "-v",
            &format!("{}:/etc/ambassador/ambassador.yaml:ro", amb_b.display()),
        ],
        &[
            &image("ambassador"),
            "--config",
            "/etc/ambassador/ambassador.yaml",
        ],
    );
    let in_a = format!("container:{a_app}");
    let amb_a = ambassador_config(files.path(), "pod-a", "pod-b");
    let mapping = repo_root().join("deploy/kubernetes/config/xml-adapter/mapping.yaml");
    let a_amb = res.run(
        "pod-a-ambassador",
        &[
            "--network",
            &in_a,
            "-v",
            &pki.mount("pod-a", "/etc/ambassador/tls"),
            "-v",
            &format!("{}:/etc/ambassador/ambassador.yaml:ro", amb_a.display()),
        ],
        &[
            &image("ambassador"),
            "--config",
            "/etc/ambassador/ambassador.yaml",
        ],
    );
    let a_xml = res.run(
        "pod-a-xml-adapter",
        &[
            "--network",
            &in_a,
            "-v",
            &format!("{}:/etc/xml-adapter/mapping.yaml:ro", mapping.display()),
        ],
        &[
            &image("xml-adapter"),
            "--config=/etc/xml-adapter/mapping.yaml",
            "--upstream=http://127.0.0.1:8080/status.xml",
            "--listen=0.0.0.0:9108",
        ],
    );
    let a_git = res.run(
        "pod-a-git-sync",
        &["--network", &in_a, "-v", &format!("{config_volume}:/git")],
        &[
            &image("git-sync"),
            "--repo=git://git-server/config.git",
            "--ref=main",
            "--root=/git",
            "--period=1s",
        ],
    );

    // Prometheus (the compose demo's image) scrapes pod-a's adapter over the network.
    let prometheus_config = write_file(
        files.path(),
        "prometheus.yml",
        "global: {scrape_interval: 1s, scrape_timeout: 900ms}\n\
         scrape_configs: [{job_name: legacy-app, static_configs: [{targets: [\"pod-a:9108\"]}]}]\n",
    );
    let prometheus = res.run(
        "prometheus",
        &[
            "--network",
            &net,
            "-p",
            "127.0.0.1::9090",
            "-v",
            &format!(
                "{}:/etc/prometheus/prometheus.yml:ro",
                prometheus_config.display()
            ),
            "--tmpfs",
            "/prometheus:uid=65532,gid=65532",
        ],
        &[&image("prometheus")],
    );

    // Every sidecar: ready, as 65532, on a read-only root filesystem.
    for (container, app, admin) in [
        (&a_amb, &a_app, 9901),
        (&a_xml, &a_app, 9902),
        (&a_git, &a_app, 9903),
        (&b_amb, &b_app, 9901),
    ] {
        wait_ready(&res, app, admin);
        assert_eq!(process_uid(container), "65532", "{container} runs as 65532");
        let read_only = docker_ok(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", container]);
        assert_eq!(
            read_only, "true",
            "{container} has a read-only root filesystem"
        );
    }

    // git-sync published the first commit into the app's volume; the app reads it.
    let (ok, text) = demo_client(
        &in_a,
        &[],
        &["get", "http://127.0.0.1:8080/config/app.conf"],
    );
    assert!(
        ok && text.contains("greeting = hello"),
        "pod-a's app reads its config: {text}\n{}",
        res.logs()
    );

    // pod-a's app -> pod-a's ambassador (plain) -> mTLS -> pod-b's ambassador -> pod-b's app.
    let (ok, text) = demo_client(&in_a, &[], &["get", "http://127.0.0.1:15001/"]);
    assert!(
        ok,
        "the call through both ambassadors failed: {text}\n{}",
        res.logs()
    );
    assert!(text.contains("hello from pod-b"), "{text}");
    assert!(
        text.contains(&format!("URI={TRUST_DOMAIN}/pod-a")),
        "pod-b's app is told who called (X-Forwarded-Client-Cert): {text}"
    );

    // A container on the same network without a certificate is refused by pod-b's ambassador,
    // and the refusal is counted with its reason.
    let b_admin = host_port(&b_app, 9901);
    let refused_before = refusals(b_admin, "no_certificate");
    let ca = format!("{}:/ca.crt:ro", pki.dir.path().join("ca.crt").display());
    let (ok, text) = demo_client(
        &net,
        &["-v", &ca],
        &["get", "--ca", "/ca.crt", "https://pod-b:15443/"],
    );
    assert!(!ok, "a caller without a certificate got through: {text}");
    let refused_after = refusals(b_admin, "no_certificate");
    assert!(
        refused_after > refused_before,
        "no_certificate refusals {refused_before:?} -> {refused_after:?}"
    );

    // The adapter serves the app's XML status page as metrics, including the call just made.
    let metrics_port = host_port(&a_app, 9108);
    let (status, metrics) = http("GET", metrics_port, "/metrics").expect("adapter /metrics");
    assert_eq!(status, 200, "{metrics}");
    let metrics = Metrics::parse(&metrics).expect("a metrics page");
    assert_eq!(metrics.value("legacy_app_up"), Some(1.0), "{metrics}");
    assert_eq!(
        metrics.value("legacy_app_healthy{server=\"pod-a\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics
            .value("legacy_app_requests_total{route=\"/config\"}")
            .is_some(),
        "{metrics}"
    );

    // ... and Prometheus has the adapter's series (its query API says so).
    let prometheus_port = host_port(&prometheus, 9090);
    eventually(
        &res,
        "legacy_app_up == 1 in Prometheus",
        Duration::from_secs(60),
    )
    .value(|| {
        let (status, body) = http(
            "GET",
            prometheus_port,
            "/api/v1/query?query=legacy_app_up%7Bjob%3D%22legacy-app%22%7D",
        )
        .ok()?;
        (status == 200 && body.contains("\"result\":[{") && body.contains(",\"1\"]")).then_some(())
    });

    // A commit pushed to the git server appears in the app's volume.
    repo.commit("greeting = bonjour\n");
    repo.push().expect("the second push");
    eventually(
        &res,
        "the second commit in pod-a's volume",
        Duration::from_secs(30),
    )
    .value(|| {
        let (ok, text) = demo_client(
            &in_a,
            &[],
            &["get", "http://127.0.0.1:8080/config/app.conf"],
        );
        (ok && text.contains("greeting = bonjour")).then_some(())
    });

    // Pod B goes away: once its endpoint has failed (and is ejected), pod-a's ambassador answers
    // 503 itself, at once, instead of letting every caller wait on a dead address.
    docker_ok(&["stop", "-t", "5", &b_amb]);
    docker_ok(&["stop", "-t", "5", &b_app]);
    let (ok, text) = demo_client(
        &in_a,
        &[],
        &[
            "get",
            "--attempts",
            "60",
            "--interval",
            "50ms",
            "--timeout",
            "5s",
            "--until-status",
            "503",
            "http://127.0.0.1:15001/",
        ],
    );
    assert!(ok, "with pod-b down, pod-a's app never got a 503: {text}");
    let answered_in_ms: u64 = text
        .lines()
        .find(|l| l.contains("status=503"))
        .and_then(|l| l.rsplit("time_ms=").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timed 503 attempt in {text}"));
    assert!(
        answered_in_ms < 500,
        "the 503 took {answered_in_ms} ms: {text}"
    );

    // Pod B comes back (app first: it owns the network namespace) and the calls work again.
    docker_ok(&["start", &b_app]);
    docker_ok(&["start", &b_amb]);
    wait_ready(&res, &b_app, 9901);
    eventually(
        &res,
        "calls through the ambassadors after pod-b restarted",
        Duration::from_secs(60),
    )
    .value(|| {
        let (ok, text) = demo_client(&in_a, &[], &["get", "http://127.0.0.1:15001/"]);
        (ok && text.contains("hello from pod-b")).then_some(())
    });

    // A batch job in pod A without native sidecars (deploy/kubernetes/examples/job-classic):
    // it does its calls through the ambassador, then asks it to stop on loopback; the
    // ambassador exits 0, so the pod (and a Job) can complete.
    let (ok, text) = demo_client(
        &in_a,
        &[],
        &[
            "job",
            "--call",
            "http://127.0.0.1:15001/",
            "--count",
            "3",
            "--shutdown",
            "http://127.0.0.1:9901/shutdown",
        ],
    );
    assert!(ok, "the job failed: {text}");
    let exited = eventually(
        &res,
        "pod-a's ambassador stops after the job",
        Duration::from_secs(40),
    )
    .value(|| {
        let state = docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &a_amb,
        ]);
        state.starts_with("exited").then_some(state)
    });
    assert_eq!(
        exited, "exited 0",
        "the ambassador's exit after POST /shutdown"
    );
}

/// The log-shipper image tails the app's log file on a shared volume (read-only for it), ships
/// every line once, and keeps its place across a restart in its state volume.
#[test]
#[ignore = "needs a Docker engine"]
fn log_shipper_ships_the_apps_log_from_a_shared_volume_across_a_restart() {
    require_docker_engine();
    build_images();
    let mut res = Resources::new("logs");
    let logs = res.shared_tmpfs("app-logs");
    let state = res.shared_tmpfs("shipper-state");
    let app = res.run(
        "pod",
        &[
            "-v",
            &format!("{logs}:/logs"),
            // The app holds the pod's volumes for the pod's life, as a pod holds its emptyDirs:
            // Docker empties a tmpfs volume when no container has it mounted, which would lose
            // the log-shipper's checkpoints while it restarts.
            "-v",
            &format!("{state}:/held/log-shipper-state:ro"),
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::8090",
            "-p",
            "127.0.0.1::9904",
        ],
        &[
            &image("demo-app"),
            "serve",
            "--name",
            "pod",
            "--access-log",
            "/logs/access.log",
        ],
    );
    let in_pod = format!("container:{app}");
    res.run(
        "store",
        &["--network", &in_pod],
        // On every address: the test reads it through the port Docker publishes.
        &[&image("demo-app"), "collect", "--listen", "0.0.0.0:8090"],
    );
    let shipper = res.run(
        "log-shipper",
        &[
            "--network",
            &in_pod,
            "-v",
            &format!("{logs}:/logs:ro"),
            "-v",
            &format!("{state}:/var/lib/log-shipper"),
            "-e",
            "POD_NAME=pod",
        ],
        &[
            &image("log-shipper"),
            "--file=/logs/*.log",
            "--parser=json",
            "--env-field=pod=POD_NAME",
            "--sink-url=http://127.0.0.1:8090/ingest",
            "--batch-timeout=200ms",
        ],
    );
    wait_ready(&res, &app, 9904);
    let (app_port, store_port) = (host_port(&app, 8080), host_port(&app, 8090));
    let requests = |n: usize| {
        for _ in 0..n {
            let answer = http("GET", app_port, "/");
            assert!(
                matches!(answer, Ok((200, _))),
                "the app answered {answer:?}"
            );
        }
    };
    let stored = |want: u64| {
        eventually(
            &res,
            &format!("{want} lines in the log store"),
            Duration::from_secs(60),
        )
        .value(|| {
            let (status, body) = http("GET", store_port, "/lines").ok()?;
            let count: u64 = body.lines().next()?.strip_prefix("lines: ")?.parse().ok()?;
            (status == 200 && count >= want).then_some((count, body))
        })
    };
    requests(50);
    let (count, body) = stored(50);
    assert_eq!(count, 50, "each line once:\n{body}");
    assert!(
        body.lines()
            .skip(1)
            .all(|l| l.contains(r#""pod":"pod""#) && l.contains(r#""status":200"#)),
        "every line parsed and enriched:\n{body}"
    );

    // A graceful restart (SIGTERM, as a rollout sends) keeps the checkpoint: no line again.
    docker_ok(&["restart", "-t", "20", &shipper]);
    requests(30);
    let (count, body) = stored(80);
    assert_eq!(count, 80, "no line shipped twice:\n{body}");
    // A line sent again would come within a batch timeout (200 ms) of the others.
    let count_now = || {
        http("GET", store_port, "/lines")
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .next()?
                    .strip_prefix("lines: ")?
                    .parse::<u64>()
                    .ok()
            })
    };
    test_support::wait::holds_for(
        Duration::from_secs(3),
        "the log store keeps 80 lines",
        || count_now() == Some(80),
    );
    let sent: f64 = test_support::metrics::scrape(loopback(host_port(&app, 9904)))
        .series("log_shipper_lines_sent_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        sent, 30.0,
        "the restarted log-shipper sent only the new lines"
    );
}

/// The ambassador configurations shipped in deploy/ start the shipped image (ready on /readyz).
#[test]
#[ignore = "needs a Docker engine"]
fn shipped_ambassador_configs_start_the_image() {
    require_docker_engine();
    build_images();
    let mut res = Resources::new("configs");
    let pki = Pki::new(&["pod"]);
    for (what, config, at) in [
        (
            "kubernetes",
            "deploy/kubernetes/config/ambassador/ambassador.yaml",
            "/etc/ambassador/config/ambassador.yaml",
        ),
        (
            "compose-pod-a",
            "deploy/compose/ambassador-pod-a.yaml",
            "/etc/ambassador/ambassador.yaml",
        ),
        (
            "compose-pod-b",
            "deploy/compose/ambassador-pod-b.yaml",
            "/etc/ambassador/ambassador.yaml",
        ),
    ] {
        let file = repo_root().join(config);
        let container = res.run(
            what,
            &[
                "-p",
                "127.0.0.1::9901",
                "-v",
                &pki.mount("pod", "/etc/ambassador/tls"),
                "-v",
                &format!("{}:{at}:ro", file.display()),
            ],
            &[&image("ambassador"), "--config", at],
        );
        wait_ready(&res, &container, 9901);
    }
}

/// The ambassador's config for `pod`: inbound from `peer` only, outbound to `peer`.
fn ambassador_config(dir: &Path, pod: &str, peer: &str) -> PathBuf {
    write_file(
        dir,
        &format!("ambassador-{pod}.yaml"),
        &format!(
            "tls:\n  cert: /etc/ambassador/tls/tls.crt\n  key: /etc/ambassador/tls/tls.key\n  ca: /etc/ambassador/tls/ca.crt\n\
             inbound:\n  - name: app\n    listen: 0.0.0.0:15443\n    app: 127.0.0.1:8080\n    allow:\n      spiffe: [\"{TRUST_DOMAIN}/{peer}\"]\n\
             outbound:\n  - name: {peer}\n    listen: 127.0.0.1:15001\n    dns: {peer}:15443\n    identity: {TRUST_DOMAIN}/{peer}\n"
        ),
    )
}

/// Inbound handshakes pod-b's ambassador refused for `reason` (its inbound route is `app`);
/// None if it never did.
fn refusals(admin_port: u16, reason: &str) -> Option<f64> {
    test_support::metrics::scrape(loopback(admin_port)).get(
        "ambassador_tls_failures_total",
        &[
            ("direction", "inbound"),
            ("route", "app"),
            ("reason", reason),
        ],
    )
}

// ---- the compose stack (deploy/compose), driven as deploy/compose/demo.sh drives it ----------

const DEMO_TRUST_DOMAIN: &str = "spiffe://demo.local/ns/demo/sa";

/// deploy/compose/docker-compose.yml up under a project of its own, torn down with its volumes
/// when dropped (pass or fail). The only difference from the demo's stack: its host ports are
/// ephemeral (Docker picks them), so that a demo running on this machine, or another run of
/// this test, does not collide with it.
struct ComposeStack {
    project: String,
    dir: tempfile::TempDir,
    root_token: String,
}

impl ComposeStack {
    fn new() -> ComposeStack {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = repo_root().join("deploy/compose/docker-compose.yml");
        let text = std::fs::read_to_string(&file).expect("read deploy/compose/docker-compose.yml");
        let (text, published) = ephemeral_host_ports(&text);
        assert!(
            published >= 10,
            "only {published} host ports rewritten in {}: has its ports: syntax changed?",
            file.display()
        );
        std::fs::write(dir.path().join("docker-compose.yml"), text).expect("write compose file");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        ComposeStack {
            project: format!(
                "sidecars-e2e-compose-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            // OpenBao's dev-mode root token: of this run only, on a port of 127.0.0.1.
            root_token: format!("e2e{:x}{nanos:x}", std::process::id()),
            dir,
        }
    }

    /// The approle credentials demo.sh writes and the secrets-agent containers mount.
    fn approle_dir(&self) -> PathBuf {
        self.dir.path().join("approle")
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(self.dir.path().join("docker-compose.yml"))
            // Relative paths (the configs beside the file) resolve from deploy/compose.
            .arg("--project-directory")
            .arg(repo_root().join("deploy/compose"))
            .args(args)
            .env("OPENBAO_ROOT_TOKEN", &self.root_token)
            .env("DEMO_APPROLE", self.approle_dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker-compose {args:?}: {e}"))
    }

    /// Runs docker-compose and returns its trimmed stdout; panics with its stderr and the
    /// stack's logs if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The host port (on 127.0.0.1) Docker published for a service's port.
    fn port(&self, service: &str, port: u16) -> u16 {
        host_port(&self.container(service), port)
    }

    /// The container id of a service (its one container).
    fn container(&self, service: &str) -> String {
        let id = self.ok(&["ps", "-q", service]);
        assert!(!id.is_empty(), "{service} has no container");
        id
    }

    /// The Docker network of the pods and OpenBao.
    fn network(&self) -> String {
        format!("{}_mesh", self.project)
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "30"]);
        format!(
            "---- docker-compose -p {} logs\n{}{}",
            self.project,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn eventually(&self, what: &str, within: Duration) -> Wait<'_> {
        Wait::new(what)
            .timeout(within)
            .every(Duration::from_millis(250))
            .context(move || self.logs())
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        let out = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        if !out.status.success() {
            eprintln!(
                "docker-compose -p {} down failed: {}",
                self.project,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The compose file with every `- "127.0.0.1:HOST:PORT"` as `- "127.0.0.1::PORT"`, and how many.
fn ephemeral_host_ports(compose: &str) -> (String, usize) {
    let mut rewritten = 0;
    let mut out = String::with_capacity(compose.len());
    for line in compose.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        match body
            .strip_prefix("- \"127.0.0.1:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((host, port)) if !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit()) => {
                rewritten += 1;
                out.push_str(&format!("{indent}- \"127.0.0.1::{port}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    (out, rewritten)
}

/// The certificates an ambassador has in use, from its metrics: (role, subject, serial), role
/// `identity` for its chain (the leaf it serves first) and `ca` for its trust bundle.
fn certificates_in_use(admin_port: u16) -> Vec<(String, String, String)> {
    test_support::metrics::scrape(loopback(admin_port))
        .series("sidecar_certificate_expiry_timestamp_seconds")
        .map(|s| {
            let label = |name| s.label(name).unwrap_or_default().to_owned();
            (label("role"), label("subject"), label("serial"))
        })
        .collect()
}

/// The serial of the leaf certificate an ambassador serves as `pod` (`CN=pod`).
fn leaf_serial(admin_port: u16, pod: &str) -> Option<String> {
    certificates_in_use(admin_port)
        .into_iter()
        .find(|(role, subject, _)| role == "identity" && *subject == format!("CN={pod}"))
        .map(|(_, _, serial)| serial)
}

fn successful_reloads(admin_port: u16) -> f64 {
    test_support::metrics::scrape(loopback(admin_port))
        .get("sidecar_tls_reloads_total", &[("result", "ok")])
        .unwrap_or(0.0)
}

/// deploy/compose as `demo.sh up` brings it up: OpenBao first, set up by demo.sh (PKI, a role
/// and an AppRole per pod), then the whole stack, whose secrets-agents get both pods' SPIFFE
/// certificates from OpenBao's PKI for their ambassadors. Checks a call from pod-a through both
/// ambassadors, that what the ambassadors serve chains to OpenBao's CA, and that the 1-minute
/// certificates are renewed and hot-reloaded with calls succeeding throughout.
#[test]
#[ignore = "needs a Docker engine"]
fn compose_stack_serves_openbao_certificates_and_hot_reloads_their_rotation() {
    require_docker_engine();
    require_program("docker-compose", "docker-compose");
    require_program("curl", "curl"); // demo.sh's OpenBao setup
    build_images();
    let started = std::time::Instant::now();
    let stack = ComposeStack::new();

    // OpenBao first, set up by the demo's own script before any secrets-agent logs in.
    stack.ok(&["up", "-d", "openbao"]);
    let bao = stack.port("openbao", 8200);
    stack
        .eventually("OpenBao's /v1/sys/health", Duration::from_secs(60))
        .value(|| matches!(http("GET", bao, "/v1/sys/health"), Ok((200, _))).then_some(()));
    let setup = Command::new(repo_root().join("deploy/compose/demo.sh"))
        .arg("setup-openbao")
        .env("DEMO_OPENBAO_ADDR", format!("http://127.0.0.1:{bao}"))
        .env("OPENBAO_ROOT_TOKEN", &stack.root_token)
        .env("DEMO_APPROLE", stack.approle_dir())
        .output()
        .expect("run deploy/compose/demo.sh");
    assert!(
        setup.status.success(),
        "demo.sh setup-openbao failed: {}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    // Everything else; `up` returns once both one-time agents have published a certificate.
    stack.ok(&["up", "-d"]);

    // The git server starts empty: the config commit demo.sh seeds it with.
    let repo = ConfigRepo::new(stack.port("git-server", 9418));
    repo.commit("greeting = hello\n");
    stack
        .eventually("the first push to the git server", Duration::from_secs(30))
        .value(|| repo.push().ok());

    // Both pods ready: every sidecar of pod-a, and pod-b's ambassador and secrets-agent.
    for (service, admin) in [
        ("pod-a", 9901),
        ("pod-a", 9902),
        ("pod-a", 9903),
        ("pod-a", 9904),
        ("pod-a", 9905),
        ("pod-b", 9901),
        ("pod-b", 9905),
    ] {
        let port = stack.port(service, admin);
        stack
            .eventually(
                &format!("{service}'s /readyz on :{admin}"),
                Duration::from_secs(60),
            )
            .value(|| matches!(http("GET", port, "/readyz"), Ok((200, _))).then_some(()));
    }

    // pod-a's app -> pod-a's ambassador (plain) -> mTLS -> pod-b's ambassador -> pod-b's app,
    // which is told pod-a's SPIFFE ID (X-Forwarded-Client-Cert).
    let in_a = format!("container:{}", stack.container("pod-a"));
    let call = || {
        let (ok, text) = demo_client(&in_a, &[], &["get", "http://127.0.0.1:15001/"]);
        assert!(
            ok && text.contains("hello from pod-b")
                && text.contains(&format!("URI={DEMO_TRUST_DOMAIN}/pod-a")),
            "pod-a's call through both ambassadors: {text}\n{}",
            stack.logs()
        );
    };
    call();

    // OpenBao's CA, from OpenBao (unauthenticated, as any client may fetch it).
    let (status, ca_pem) = http("GET", bao, "/v1/pki/ca/pem").expect("OpenBao's CA");
    assert_eq!(status, 200, "GET /v1/pki/ca/pem: {ca_pem}");
    let bundle =
        sidecar_kit::tls::TrustBundle::from_pem(ca_pem.as_bytes(), Path::new("pki/ca/pem"))
            .expect("OpenBao's CA is a PEM certificate");
    let [ca_der] = bundle.certs() else {
        panic!("OpenBao's pki/ca/pem is not one certificate: {ca_pem}");
    };
    let ca = sidecar_kit::tls::PeerIdentity::from_der(ca_der).expect("OpenBao's CA parses");
    assert_eq!(ca.subject, "CN=sidecars demo CA (OpenBao)");

    // What each ambassador has in use: its leaf (CN=<pod>) with OpenBao's CA behind it in the
    // chain, and OpenBao's CA, alone, as its trust bundle (no test CA anywhere).
    let pods = [
        ("pod-a", stack.port("pod-a", 9901)),
        ("pod-b", stack.port("pod-b", 9901)),
    ];
    let ca_entry = |role: &str| (role.to_owned(), ca.subject.clone(), ca.serial_hex.clone());
    let mut first_leaves = Vec::new();
    for (pod, admin) in pods {
        let certs = certificates_in_use(admin);
        let leaf = leaf_serial(admin, pod)
            .unwrap_or_else(|| panic!("{pod}'s ambassador has no CN={pod} identity: {certs:?}"));
        let mut expected = vec![
            ("identity".to_owned(), format!("CN={pod}"), leaf.clone()),
            ca_entry("identity"),
            ca_entry("ca"),
        ];
        let mut certs_sorted = certs.clone();
        certs_sorted.sort();
        expected.sort();
        assert_eq!(certs_sorted, expected, "{pod}'s ambassador's certificates");
        first_leaves.push(leaf);
    }

    // The certificate each ambassador serves verifies against OpenBao's CA alone: a client
    // trusting only that CA (and sending no certificate) gets through the server's side of the
    // handshake, and is refused only for having no certificate of its own.
    let ca_file = write_file(stack.dir.path(), "openbao-ca.crt", &ca_pem);
    let ca_mount = format!("{}:/ca.crt:ro", ca_file.display());
    for (pod, admin) in pods {
        let refused_before = refusals(admin, "no_certificate");
        let (ok, text) = demo_client(
            &stack.network(),
            &["-v", &ca_mount],
            &["get", "--ca", "/ca.crt", &format!("https://{pod}:15443/")],
        );
        assert!(
            !ok,
            "a caller without a certificate got through to {pod}: {text}"
        );
        let refused_after = refusals(admin, "no_certificate");
        assert!(
            refused_after > refused_before,
            "{pod}'s ambassador: no_certificate refusals {refused_before:?} -> {refused_after:?} \
             (the client, trusting OpenBao's CA only, said: {text})"
        );
    }

    // The rotation: the agents renew at 2/3 of the certificates' 65 s (about 38 s after issue);
    // each ambassador then serves a new leaf, reloaded from its volume, while calls keep working.
    let reloads_before: Vec<f64> = pods.iter().map(|&(_, a)| successful_reloads(a)).collect();
    let mut calls = 0u32;
    let new_leaves = stack
        .eventually(
            "both ambassadors serve a renewed certificate",
            Duration::from_secs(120),
        )
        .every(Duration::from_secs(1))
        .value(|| {
            call();
            calls += 1;
            let now: Vec<Option<String>> = pods.iter().map(|&(p, a)| leaf_serial(a, p)).collect();
            now.iter()
                .zip(&first_leaves)
                .all(|(now, first)| now.as_ref().is_some_and(|n| n != first))
                .then(|| now.into_iter().flatten().collect::<Vec<_>>())
        });
    call();
    for (((pod, admin), reloads_before), new_leaf) in
        pods.iter().zip(&reloads_before).zip(&new_leaves)
    {
        let certs = certificates_in_use(*admin);
        assert!(
            certs.contains(&("identity".to_owned(), format!("CN={pod}"), new_leaf.clone()))
                && certs.contains(&ca_entry("identity"))
                && certs.contains(&ca_entry("ca")),
            "{pod}'s renewed certificate is OpenBao's: {certs:?}"
        );
        let metrics = test_support::metrics::scrape(loopback(*admin));
        let reloads = metrics.get("sidecar_tls_reloads_total", &[("result", "ok")]);
        assert!(
            reloads.is_some_and(|r| r > *reloads_before),
            "{pod}'s ambassador: successful reloads {reloads_before} -> {reloads:?}"
        );
        // The agent swaps the whole directory at once: the ambassador never saw half of it.
        let refused: Vec<_> = metrics
            .series("sidecar_tls_reloads_total")
            .filter(|s| s.label("result") != Some("ok") && s.value > 0.0)
            .collect();
        assert!(
            refused.is_empty(),
            "{pod}'s ambassador refused reloads: {refused:?}"
        );
    }
    eprintln!(
        "the compose stack: up, checked, one rotation with {calls} calls through it, in {:?}",
        started.elapsed()
    );
}
