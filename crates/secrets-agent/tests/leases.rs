//! Secrets that expire: database credentials from OpenBao's database engine against a real
//! PostgreSQL (renewed, then rotated, the old ones revoked), and PKI certificates re-issued at
//! 2/3 of their lifetime and picked up by sidecar-kit's certificate reloader, never a
//! certificate with another issue's key.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Agent, AgentSetup, Bao, Postgres, replace_file, require_bao};
use sidecar_kit::reload::{CredentialReloader, TlsFiles};
use sidecar_kit::tls::Identity;
use sidecar_kit::watch::WatchOptions;
use test_support::wait;

/// `KEY='value'` lines as the env format writes them (values without quotes inside).
fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}='")))
        .map(|v| v.trim_end_matches('\'').to_owned())
}

/// The database credentials in the agent's `db.env`, once it holds a user name (with its
/// password).
fn published_credentials(agent: &Agent) -> Option<(String, String)> {
    let text = agent.read("db.env")?;
    let user = env_value(&text, "username")?;
    let password = env_value(&text, "password").expect("a password with the user name");
    Some((user, password))
}

/// Waits until the files hold credentials for a user other than `old_user`.
#[track_caller]
fn wait_new_credentials(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    old_user: &str,
) -> (String, String) {
    agent.wait_value(what, timeout, || {
        published_credentials(agent).filter(|(user, _)| user != old_user)
    })
}

/// The database engine at `database/`, `database/config/pg` pointing at the cluster (user
/// names made by `username_template`, OpenBao's default without one).
fn enable_database(bao: &Bao, pg: &Postgres, username_template: Option<&str>) {
    bao.run(&["secrets", "enable", "database"]);
    configure_database(bao, pg, username_template);
}

/// Points `database/config/pg` at the cluster, user names made by `username_template`
/// (OpenBao's default without one).
fn configure_database(bao: &Bao, pg: &Postgres, username_template: Option<&str>) {
    let url = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let password = format!("password={}", pg.password);
    let mut args = vec![
        "write",
        "database/config/pg",
        "plugin_name=postgresql-database-plugin",
        &url,
        "allowed_roles=app",
        "username=postgres",
        &password,
    ];
    let template = username_template.map(|t| format!("username_template={t}"));
    args.extend(template.as_deref());
    bao.run(&args);
}

/// The role `app`: a PostgreSQL login valid as long as its lease.
fn database_role(bao: &Bao, default_ttl: &str, max_ttl: &str) {
    bao.run(&[
        "write",
        "database/roles/app",
        "db_name=pg",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        &format!("default_ttl={default_ttl}"),
        &format!("max_ttl={max_ttl}"),
    ]);
}

/// How many PostgreSQL roles match `condition` (SQL on `rolname`).
fn role_count(pg: &Postgres, condition: &str) -> String {
    pg.query(&format!("SELECT count(*) FROM pg_roles WHERE {condition}"))
}

#[test]
fn database_credentials_are_renewed_then_rotated_and_the_old_ones_revoked() {
    let bin = require_bao();
    let pg = Postgres::start();
    let bao = Bao::dev(&bin);
    enable_database(&bao, &pg, None);
    // A 6s lease that may live 12s: renewed at 2/3 of its TTL, capped at the max, then a new
    // one is issued before the old one ends.
    database_role(&bao, "6s", "12s");
    let dir = tempfile::tempdir().unwrap();
    let config = "secrets:\n  db: {dynamic: {path: database/creds/app}}\nfiles:\n  - {path: db.env, secret: db, format: env}\n  - path: dsn\n    template: \"postgresql://{{ db.username }}:{{ db.password|uri_component }}@127.0.0.1/postgres\"\n";
    // The replaced lease has about a second left by then: revoke it at once to see the agent do it.
    let agent =
        AgentSetup::with_root_token(&bao, dir.path(), config, &["--revoke-grace=0s"]).start();
    let (user1, pass1) = published_credentials(&agent).unwrap();
    assert_eq!(
        pg.query_as(&user1, &pass1, "SELECT 1"),
        Ok("1".into()),
        "the credentials work"
    );
    assert!(agent.read("dsn").unwrap().contains(&user1));

    agent.wait_until("the lease renewed", Duration::from_secs(15), || {
        agent.count(
            "secrets_agent_lease_renewals_total",
            &[("secret", "db"), ("result", "ok")],
        ) >= 1.0
    });
    assert_eq!(
        env_value(&agent.read("db.env").unwrap(), "username").unwrap(),
        user1,
        "a renewal keeps the credentials"
    );

    let second = wait_new_credentials(&agent, "new credentials", Duration::from_secs(20), &user1);
    assert_eq!(
        pg.query_as(&second.0, &second.1, "SELECT 1"),
        Ok("1".into())
    );
    // The replaced lease is revoked after the grace: its role is dropped.
    agent.wait_until("the old role dropped", Duration::from_secs(15), || {
        role_count(&pg, &format!("rolname = '{user1}'")) == "0"
    });
    assert!(pg.query_as(&user1, &pass1, "SELECT 1").is_err());
    let m = agent.metrics();
    assert!(
        m.get(
            "secrets_agent_lease_revocations_total",
            &[("secret", "db"), ("result", "ok")]
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(agent.readyz().0, 200);
}

/// Writes `token` to the agent's token file at once (a rotated Secret), so it logs in again.
fn replace_token(dir: &Path, token: &str) {
    replace_file(&dir.join("token"), token);
}

#[test]
fn reissued_credentials_that_cannot_be_rendered_leave_the_old_ones_in_the_files_and_working() {
    let bin = require_bao();
    let pg = Postgres::start();
    let bao = Bao::dev(&bin);
    enable_database(&bao, &pg, Some("good-{{random 10}}"));
    database_role(&bao, "45s", "1h");
    let dir = tempfile::tempdir().unwrap();
    // The template fails for the user names of the `bad-` template, set before the re-issue.
    let config = "secrets:\n  db: {dynamic: {path: database/creds/app}}\nfiles:\n  - {path: db.env, secret: db, format: env}\n  - path: dsn\n    template: \"{% if 'bad-' in db.username %}{{ db.no_such_field }}{% endif %}postgresql://{{ db.username }}@127.0.0.1/postgres\"\n";
    let agent =
        AgentSetup::with_root_token(&bao, dir.path(), config, &["--revoke-grace=1s"]).start();
    let (user1, pass1) = published_credentials(&agent).unwrap();
    assert!(user1.starts_with("good-"), "{user1}");
    assert_eq!(pg.query_as(&user1, &pass1, "SELECT 1"), Ok("1".into()));
    let revoked = || {
        agent.count(
            "secrets_agent_lease_revocations_total",
            &[("secret", "db"), ("result", "ok")],
        )
    };

    // A new token in the file: the agent logs in with it and issues the leased secret again
    // (leases end with the token that made them), long before the old lease ends. The new
    // credentials cannot be rendered.
    configure_database(&bao, &pg, Some("bad-{{random 10}}"));
    replace_token(dir.path(), &bao.create_token(&["-policy=root"]));
    agent.wait_until(
        "the re-issued credentials to fail to render",
        Duration::from_secs(30),
        || {
            agent.count(
                "secrets_agent_renders_total",
                &[("result", "render_failed")],
            ) >= 1.0
        },
    );
    assert_eq!(role_count(&pg, "rolname LIKE 'bad-%'"), "1", "issued");
    // The files keep the old credentials, and past the revoke grace they still work: the
    // lease the app uses is not revoked under it.
    assert_eq!(
        env_value(&agent.read("db.env").unwrap(), "username"),
        Some(user1.clone())
    );
    assert!(agent.read("dsn").unwrap().contains(&user1));
    wait::holds_for(
        Duration::from_secs(5),
        "the old credentials working past the grace",
        || pg.query_as(&user1, &pass1, "SELECT 1") == Ok("1".into()),
    );
    assert_eq!(revoked(), 0.0, "{}", agent.process.log());

    // Readiness judges the files: the old lease is no longer renewed and ends before anything
    // can replace it, so the agent says so (with the render error) before it ends.
    let why = agent.wait_value("readiness to fail", Duration::from_secs(60), || {
        let (status, body) = agent.readyz();
        (status == 503).then_some(body)
    });
    assert!(why.contains("secret `db` in the files"), "{why}");
    assert!(why.contains("cannot render"), "{why}");

    // Fixed, and a new issue (another login): published, then the leases it replaces are
    // revoked: the unrendered `bad-` role is dropped long before its lease would end.
    configure_database(&bao, &pg, Some("good-{{random 10}}"));
    replace_token(dir.path(), &bao.token);
    let (user3, pass3) = wait_new_credentials(
        &agent,
        "new credentials in the files",
        Duration::from_secs(30),
        &user1,
    );
    assert!(user3.starts_with("good-"), "{user3}");
    assert_eq!(pg.query_as(&user3, &pass3, "SELECT 1"), Ok("1".into()));
    agent.wait_until(
        "the replaced roles dropped",
        Duration::from_secs(20),
        || role_count(&pg, &format!("rolname = '{user1}' OR rolname LIKE 'bad-%'")) == "0",
    );
    assert!(revoked() >= 1.0, "{}", agent.process.log());
    wait::until(Duration::from_secs(10), "ready again", || {
        agent.readyz().0 == 200
    });
}

fn pki_server(bin: &Path, ttl_role: &str) -> Bao {
    let bao = Bao::dev(bin);
    bao.enable_pki();
    bao.short_lived_pki_role(ttl_role);
    bao
}

const PKI_CONFIG: &str = r#"
secrets:
  id:
    pki:
      role: short
      common_name: app.test
      uri_sans: [spiffe://test.example/ns/shop/sa/app]
      ttl: 12s
files:
  - {path: tls.crt, secret: id, fields: [certificate, ca_chain]}
  - {path: tls.key, secret: id, field: private_key}
  - {path: ca.crt, secret: id, fields: [ca_chain]}
"#;

#[test]
fn certificates_are_reissued_at_two_thirds_and_the_kits_reloader_sees_whole_sets() {
    let bin = require_bao();
    let bao = pki_server(&bin, "pki/roles/short");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentSetup::with_root_token(&bao, dir.path(), PKI_CONFIG, &[]).start();
    let out = agent.out.clone();

    // A reader that takes each set as the kubelet's layout allows (resolve ..data once) and
    // checks that the key belongs to the certificate, all through the rotations.
    let stop = Arc::new(AtomicBool::new(false));
    let (checked, mismatched) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (out, stop, checked, mismatched) = (
            out.clone(),
            stop.clone(),
            checked.clone(),
            mismatched.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(version) = std::fs::read_link(out.join("..data")) else {
                    continue;
                };
                let dir = out.join(version);
                let (Ok(cert), Ok(key)) = (
                    std::fs::read(dir.join("tls.crt")),
                    std::fs::read(dir.join("tls.key")),
                ) else {
                    continue; // replaced and removed meanwhile
                };
                let pair =
                    Identity::from_pem(&cert, &key, Path::new("tls.crt"), Path::new("tls.key"))
                        .and_then(|id| id.certified_key());
                match pair {
                    Ok(_) => checked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => mismatched.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = prometheus::Registry::new();
    let files = TlsFiles {
        cert: out.join("tls.crt"),
        key: out.join("tls.key"),
        ca: out.join("ca.crt"),
    };
    let rotations = runtime.block_on(async {
        let reloader = CredentialReloader::load(files, &registry).expect("the kit loads the files");
        let token = tokio_util::sync::CancellationToken::new();
        let options = WatchOptions {
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(50),
            poll_only: false,
        };
        reloader.spawn_watcher(options, token.clone());
        let mut updates = reloader.subscribe();
        let mut seen = vec![(reloader.current(), SystemTime::now())];
        let deadline = Instant::now() + Duration::from_secs(45);
        while seen.len() < 3 && Instant::now() < deadline {
            if tokio::time::timeout(Duration::from_secs(1), updates.changed())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                seen.push((updates.borrow_and_update().clone(), SystemTime::now()));
            }
        }
        token.cancel();
        seen
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(
        rotations.len(),
        3,
        "two rotations in 45s; log:\n{}",
        agent.process.log()
    );

    for pair in rotations.windows(2) {
        let (old, _) = &pair[0];
        let (new, seen) = &pair[1];
        assert_ne!(old.leaf.serial_hex, new.leaf.serial_hex);
        assert_eq!(
            new.leaf.spiffe_ids,
            vec!["spiffe://test.example/ns/shop/sa/app".to_owned()]
        );
        // Re-issued at 2/3 of the old certificate's lifetime: after 0.6 of it (the rest is the
        // watcher's and the scheduler's slack), well before it ends.
        let lifetime = old
            .leaf
            .not_after
            .duration_since(old.leaf.not_before)
            .unwrap();
        let at = seen.duration_since(old.leaf.not_before).unwrap();
        assert!(
            at >= lifetime.mul_f64(0.6) && at < lifetime.mul_f64(0.95),
            "replaced after {at:?} of a {lifetime:?} lifetime"
        );
    }
    let reloads = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "sidecar_tls_reloads_total")
        .map(|f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    (
                        m.get_label()[0].value().to_owned(),
                        m.get_counter().get_value(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert_eq!(
        reloads,
        vec![("ok".to_owned(), 2.0)],
        "the kit refused a set"
    );
    assert_eq!(
        mismatched.load(Ordering::Relaxed),
        0,
        "a reader saw a key with another certificate"
    );
    assert!(checked.load(Ordering::Relaxed) > 100, "the reader ran");

    let current = rotations.last().unwrap().0.leaf.not_after;
    let expiry = agent
        .metrics()
        .get(
            "secrets_agent_secret_expiry_timestamp_seconds",
            &[("secret", "id")],
        )
        .unwrap();
    let want = current
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - want).abs() <= 1.0,
        "expiry metric {expiry}, certificate {want}"
    );
}
