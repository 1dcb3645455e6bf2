//! KV secrets through the real binary against a real OpenBao: every output format, changes
//! followed within the poll interval, nothing written while nothing changes, one-time mode,
//! configuration errors, file modes and owners, and secret values kept out of logs and metrics.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{AgentSetup, Bao, require_bao, root_token_args};
use test_support::process::Signal;
use test_support::wait;

const CONFIG: &str = r#"
secrets:
  app: {kv: {mount: secret, path: app/config}}
  old: {kv: {mount: kv1, path: legacy, version: 1}}
  pinned: {kv: {mount: secret, path: app/config, pin: 1}}
files:
  - {path: app.json, secret: app, format: json}
  - {path: app.env, secret: app, format: env}
  - {path: keys/api_key, secret: app, field: api_key}
  - {path: legacy.txt, secret: old, field: password}
  - {path: pinned.txt, secret: pinned, field: api_key}
  - path: app.conf
    template: |
      user={{ app.user }} key={{ app.api_key }}
      legacy={{ old.password }}
"#;

fn kv_server(bin: &Path) -> Bao {
    let bao = Bao::dev(bin);
    bao.kv_put("app/config", &[("api_key", "k1"), ("user", "svc")]);
    bao.run(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao.run(&["write", "kv1/legacy", "password=p1"]);
    bao
}

/// (inode, mtime in ns) of every file, through the links.
fn stamps(out: &Path, files: &[&str]) -> Vec<(u64, i64)> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(out.join(f)).unwrap();
            (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec())
        })
        .collect()
}

#[test]
fn kv_secrets_render_in_every_format_and_follow_changes() {
    let bin = require_bao();
    let bao = kv_server(&bin);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--poll-interval=1s".into());
    let setup = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args,
    };
    let mut agent = setup.start();
    let out = agent.out.clone();

    assert_eq!(agent.read("keys/api_key").as_deref(), Some("k1"));
    assert_eq!(agent.read("legacy.txt").as_deref(), Some("p1"));
    assert_eq!(agent.read("pinned.txt").as_deref(), Some("k1"));
    assert_eq!(
        agent.read("app.env").as_deref(),
        Some("api_key='k1'\nuser='svc'\n")
    );
    assert_eq!(
        agent.read("app.conf").as_deref(),
        Some("user=svc key=k1\nlegacy=p1\n")
    );
    let json: serde_json::Value = serde_json::from_str(&agent.read("app.json").unwrap()).unwrap();
    assert_eq!(json, serde_json::json!({"api_key": "k1", "user": "svc"}));

    // The kubelet's layout: top-level links into ..data, which links to a version directory.
    let data = std::fs::read_link(out.join("..data")).unwrap();
    assert!(data.to_string_lossy().starts_with(".."), "{data:?}");
    assert_eq!(
        std::fs::read_link(out.join("app.json")).unwrap(),
        Path::new("..data/app.json")
    );
    assert_eq!(
        std::fs::read_link(out.join("keys")).unwrap(),
        Path::new("..data/keys")
    );
    let mode = std::fs::metadata(out.join("app.env")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o400);

    // Nothing changes: several polls, nothing written.
    let files = [
        "app.json",
        "app.env",
        "keys/api_key",
        "legacy.txt",
        "pinned.txt",
        "app.conf",
    ];
    let before = stamps(&out, &files);
    let unchanged = |m: &test_support::metrics::Metrics| {
        m.get(
            "secrets_agent_fetches_total",
            &[("secret", "app"), ("kind", "kv"), ("result", "unchanged")],
        )
        .unwrap_or(0.0)
    };
    let polls_before = unchanged(&agent.metrics());
    wait::until(Duration::from_secs(10), "three more polls", || {
        unchanged(&agent.metrics()) >= polls_before + 3.0
    });
    assert_eq!(
        stamps(&out, &files),
        before,
        "files were rewritten while nothing changed"
    );
    assert_eq!(std::fs::read_link(out.join("..data")).unwrap(), data);
    let m = agent.metrics();
    assert_eq!(
        m.get("secrets_agent_publishes_total", &[]),
        Some(1.0),
        "{m}"
    );

    // A change is published within the poll interval (1s; the rest is slack for a loaded
    // machine), every file of the set at once.
    let written = Instant::now();
    bao.kv_put("app/config", &[("api_key", "k2"), ("user", "svc")]);
    agent.wait_content("keys/api_key", "k2", Duration::from_secs(5));
    let took = written.elapsed();
    assert_eq!(
        agent.read("app.conf").as_deref(),
        Some("user=svc key=k2\nlegacy=p1\n")
    );
    assert_eq!(
        agent.read("pinned.txt").as_deref(),
        Some("k1"),
        "the pinned version moved"
    );
    let after = stamps(&out, &files);
    assert_eq!(
        after[3], before[3],
        "legacy.txt did not change and keeps its inode"
    );
    assert_ne!(after[2], before[2]);
    eprintln!("KV write to file: {took:?}");

    let status = agent.process.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", agent.process.log());
    // The files stay after the agent stops.
    assert_eq!(
        std::fs::read_to_string(out.join("keys/api_key")).unwrap(),
        "k2"
    );
}

#[test]
fn sighup_reads_kv_secrets_again_at_once() {
    let bin = require_bao();
    let bao = kv_server(&bin);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--poll-interval=1h".into());
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args,
    }
    .start();
    bao.kv_put("app/config", &[("api_key", "k9"), ("user", "svc")]);
    agent.process.signal(Signal::SIGHUP);
    agent.wait_content("keys/api_key", "k9", Duration::from_secs(10));
}

#[test]
fn one_time_renders_everything_and_exits_zero() {
    let bin = require_bao();
    let bao = kv_server(&bin);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--one-time".into());
    let (status, log) = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args,
    }
    .run_to_exit();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = dir.path().join("out");
    assert_eq!(
        std::fs::read_to_string(out.join("keys/api_key")).unwrap(),
        "k1"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("app.conf")).unwrap(),
        "user=svc key=k1\nlegacy=p1\n"
    );
}

#[test]
fn one_time_exits_non_zero_naming_the_secret_that_failed() {
    let bin = require_bao();
    let bao = kv_server(&bin);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--one-time".into());
    let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\n  gone: {kv: {mount: secret, path: no/such/entry}}\nfiles:\n  - {path: a, secret: app, field: api_key}\n  - {path: b, secret: gone, field: x}\n";
    let started = Instant::now();
    let (status, log) = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
    .run_to_exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("secret `gone` (kv v2 secret/no/such/entry)"),
        "{log}"
    );
    assert!(log.contains("404"), "{log}");
    // Not found is not worth retrying until the timeout.
    assert!(started.elapsed() < Duration::from_secs(20), "{log}");
    // Nothing half-rendered was published.
    assert!(!dir.path().join("out/a").exists());
}

#[test]
fn bad_configurations_exit_64_naming_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x").unwrap();
    let secrets = "secrets:\n  app: {kv: {mount: secret, path: app}}\n";
    let cases = [
        (
            format!("{secrets}files:\n  - {{path: ../up, secret: app, format: json}}\n"),
            "leaves the output directory",
        ),
        (
            format!("{secrets}files:\n  - {{path: /etc/x, secret: app, format: json}}\n"),
            "is absolute",
        ),
        (
            format!("{secrets}files:\n  - {{path: a, template: '{{{{ app.x '}}\n"),
            "template of a",
        ),
        (
            format!("{secrets}files:\n  - {{path: a, secret: app, format: json, mdoe: '0400'}}\n"),
            "mdoe",
        ),
        (
            format!("{secrets}files:\n  - {{path: a, secret: nope, format: json}}\n"),
            "`nope`",
        ),
    ];
    for (yaml, want) in cases {
        let config = dir.path().join("c.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_secrets-agent"))
            .args(["--addr=http://127.0.0.1:1", "--auth-method=token"])
            .arg(format!("--token-file={}", token.display()))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--output-dir={}", dir.path().join("out").display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert!(stderr.contains(want), "{yaml}: {stderr}");
        assert!(
            stderr.contains("c.yaml"),
            "the message names the file: {stderr}"
        );
    }
    // No --config at all, and a missing token file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secrets-agent"))
        .args([
            "--addr=http://127.0.0.1:1",
            "--auth-method=token",
            "--output-dir=/tmp/x",
        ])
        .arg(format!("--token-file={}", token.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    assert!(
        !dir.path().join("out").exists(),
        "nothing may be created before the config is good"
    );
}

/// The owner and group a non-root user can give: itself, and a supplementary group other than
/// its primary one when it has one (chown(2) allows any group the caller is in).
fn own_owner_and_group() -> (u32, u32) {
    let egid = nix::unistd::getegid();
    let group = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .find(|g| *g != egid)
        .unwrap_or(egid);
    (nix::unistd::geteuid().as_raw(), group.as_raw())
}

#[test]
fn files_get_the_configured_mode_owner_and_group() {
    let bin = require_bao();
    let root = nix::unistd::geteuid().is_root();
    // Root gives any owner; anyone else, itself and one of its groups: either way the agent's
    // chown runs and its result is checked.
    let (owner, group) = if root {
        (4321, 8765)
    } else {
        own_owner_and_group()
    };
    let bao = kv_server(&bin);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--one-time".into());
    let config = format!(
        "secrets:\n  app: {{kv: {{mount: secret, path: app/config}}}}\nfiles:\n  - {{path: default, secret: app, field: api_key}}\n  - {{path: shared, secret: app, field: api_key, mode: '0440', owner: {owner}, group: {group}}}\n"
    );
    let (status, log) = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: &config,
        args,
    }
    .run_to_exit();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = dir.path().join("out");
    let default = std::fs::metadata(out.join("default")).unwrap();
    assert_eq!(default.mode() & 0o7777, 0o400);
    assert_eq!(default.uid(), nix::unistd::geteuid().as_raw());
    let shared = std::fs::metadata(out.join("shared")).unwrap();
    assert_eq!(shared.mode() & 0o7777, 0o440);
    assert_eq!((shared.uid(), shared.gid()), (owner, group));

    if !root {
        // An owner only root could give: the chown is really asked for, and its refusal fails
        // the run naming the file instead of publishing it with the wrong owner.
        let other = tempfile::tempdir().unwrap();
        let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: shared, secret: app, field: api_key, owner: 4321}\n";
        let (status, log) = AgentSetup {
            bao: &bao,
            dir: other.path(),
            config,
            args: root_token_args(&bao, other.path())
                .into_iter()
                .chain(["--one-time".to_owned()])
                .collect(),
        }
        .run_to_exit();
        assert_ne!(status.code(), Some(0), "{log}");
        assert!(log.contains("setting the owner of"), "{log}");
        assert!(!other.path().join("out/shared").exists());
    }
}

#[test]
fn secret_values_stay_out_of_logs_and_metrics() {
    let bin = require_bao();
    const VALUE: &str = "hunter2-SECRET-VALUE";
    let bao = Bao::dev(&bin);
    bao.kv_put("app/config", &[("api_key", VALUE), ("port", "5432")]);
    let dir = tempfile::tempdir().unwrap();
    let (role_id, secret_id) = bao.approle(dir.path(), "1h", "2h");
    let role_value = std::fs::read_to_string(&role_id).unwrap();
    let secret_id_value = std::fs::read_to_string(&secret_id).unwrap();
    let args = vec![
        "--auth-method=approle".into(),
        format!("--role-id-file={}", role_id.display()),
        format!("--secret-id-file={}", secret_id.display()),
        "--poll-interval=1s".into(),
        "--log-level=trace".into(),
        format!("--token-sink-file={}", dir.path().join("sink").display()),
    ];
    let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n  - path: port\n    template: '{{ app.port | int + 1 }}'\n";
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
    .start();
    assert_eq!(agent.read("key").as_deref(), Some(VALUE));
    assert_eq!(agent.read("port").as_deref(), Some("5433"));
    // A value that breaks the template: the error is logged, the value is not.
    let bad = format!("{VALUE}-port");
    bao.kv_put("app/config", &[("api_key", VALUE), ("port", &bad)]);
    agent
        .process
        .wait_log("cannot render", Duration::from_secs(10));
    assert_eq!(
        agent.read("port").as_deref(),
        Some("5433"),
        "a bad render replaced a good file"
    );
    let metrics = agent.metrics();
    assert!(
        metrics.get(
            "secrets_agent_renders_total",
            &[("result", "render_failed")]
        ) >= Some(1.0),
        "{metrics}"
    );
    let log = agent.process.log();
    let token = std::fs::read_to_string(dir.path().join("sink")).unwrap();
    assert!(token.len() > 10, "the sink holds the token");
    for (what, value) in [
        ("the KV value", VALUE),
        ("the token", token.trim()),
        ("the role_id", role_value.trim()),
        ("the secret_id", secret_id_value.trim()),
    ] {
        assert!(!log.contains(value), "{what} is in the log:\n{log}");
        assert!(!metrics.text().contains(value), "{what} is in the metrics");
    }
}

#[test]
fn the_app_is_notified_of_changed_files_by_name_never_by_value() {
    let bin = require_bao();
    const VALUE: &str = "s3cret-in-the-files-only";
    let bao = Bao::dev(&bin);
    bao.kv_put("app/config", &[("api_key", VALUE), ("user", "svc")]);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("notified");
    let touched = dir.path().join("touched");
    let mut args = root_token_args(&bao, dir.path());
    args.extend([
        "--poll-interval=1s".to_owned(),
        "--notify-debounce=200ms".into(),
        format!(
            "--notify-command=sh -c 'env >> {}; echo --- >> {}'",
            seen.display(),
            seen.display()
        ),
        format!("--notify-touch-file={}", touched.display()),
    ]);
    let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n  - {path: user, secret: app, field: user}\n";
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
    .start();
    // The first publish is a change too: the app may have started first.
    wait::until(Duration::from_secs(10), "the first notification", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("---"))
    });
    let first = std::fs::read_to_string(&seen).unwrap();
    assert!(
        first.contains("SECRETS_AGENT_CHANGED_FILES=key user"),
        "{first}"
    );
    assert!(
        first.contains(&format!("SECRETS_AGENT_OUTPUT_DIR={}", agent.out.display())),
        "{first}"
    );
    assert!(touched.exists());

    bao.kv_put(
        "app/config",
        &[("api_key", "rotated-value"), ("user", "svc")],
    );
    wait::until(Duration::from_secs(10), "the second notification", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.matches("---").count() == 2)
    });
    let all = std::fs::read_to_string(&seen).unwrap();
    let second = all.split("---").nth(1).unwrap();
    assert!(
        second.contains("SECRETS_AGENT_CHANGED_FILES=key\n"),
        "only the changed file: {second}"
    );
    assert!(
        !all.contains(VALUE) && !all.contains("rotated-value"),
        "a value reached the command: {all}"
    );
    // Counted once the command has exited, a moment after it wrote its last line.
    wait::until(
        Duration::from_secs(10),
        "two successful commands counted",
        || {
            agent.metrics().get(
                "secrets_agent_notifications_total",
                &[("kind", "command"), ("result", "success")],
            ) == Some(2.0)
        },
    );
}
