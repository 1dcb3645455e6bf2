//! `--verify-signatures` against commits and tags signed by the real tools: `git commit -S`
//! with `gpg.format=ssh` (ssh-keygen -Y sign) and with GnuPG in a throwaway GNUPGHOME. A
//! refused revision is never published: the old tree stays, the refusal is logged with the
//! commit and the reason and counted, and readiness follows the staleness rule.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn is_published(root: &Path, sha: &str) -> bool {
    published(root, "current").as_deref() == Some(sha)
}

/// Replaces a key file in one rename, as a Secret volume update does: git-sync re-reads it
/// on every sync and must never see it half written.
fn replace_file(path: &Path, content: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn refusals(gs: &GitSync, reason: &str) -> Option<f64> {
    gs.metric(&format!(
        "gitsync_signature_refusals_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn ssh_signed_commits_publish_unsigned_and_unknown_keys_are_refused_and_keys_are_reread() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let bob = SshSigningKey::new("bob");
    let c1 = fx.commit_signed("main", &[("a", "1")], "signed by alice", &alice.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--ref",
            "main",
            "--period",
            "100ms",
            "--stale-after",
            "2s",
            "--verify-signatures",
            "head",
            "--allowed-signers-file",
            signers.to_str().unwrap(),
        ],
    );
    wait::until(
        Duration::from_secs(10),
        "the signed commit published",
        || is_published(&root, &c1),
    );
    wait::until(Duration::from_secs(5), "ready", || gs.ready());

    // An unsigned commit on top: refused, counted once, the signed tree stays.
    let c2 = fx.commit("main", &[("a", "2")], "unsigned");
    wait::until(
        Duration::from_secs(10),
        "the unsigned commit refused",
        || refusals(&gs, "unsigned") == Some(1.0),
    );
    assert!(is_published(&root, &c1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "1"
    );
    let logs = gs.logs();
    assert!(
        logs.lines().any(|l| l.contains("signature refused")
            && l.contains(&c2)
            && l.contains("unsigned")
            && l.contains("the commit is not signed")),
        "{logs}"
    );
    // Held back: later polls neither fetch it again nor count it again.
    let held = gs
        .metric("gitsync_syncs_total{result=\"held_back\"}")
        .unwrap_or(0.0);
    wait::until(
        Duration::from_secs(10),
        "more polls on the refused revision",
        || gs.metric("gitsync_syncs_total{result=\"held_back\"}") >= Some(held + 3.0),
    );
    assert_eq!(refusals(&gs, "unsigned"), Some(1.0));
    assert_eq!(
        gs.metric("gitsync_syncs_total{result=\"signature_refused\"}"),
        Some(1.0)
    );
    // Readiness follows the staleness rule: no good sync for --stale-after, not ready.
    wait::until(Duration::from_secs(10), "not ready once stale", || {
        !gs.ready()
    });
    let (_, body) = http_get(gs.admin_port, "/readyz");
    assert!(body.contains("no successful sync"), "{body}");
    assert!(is_published(&root, &c1));

    // A commit signed by a key nobody trusts yet.
    let c3 = fx.commit_signed("main", &[("a", "3")], "signed by bob", &bob.signing());
    wait::until(Duration::from_secs(10), "the unknown key refused", || {
        refusals(&gs, "unknown_key") == Some(1.0)
    });
    assert!(is_published(&root, &c1));
    assert!(
        gs.logs()
            .contains("no allowed-signers entry for the SSH key SHA256:")
    );

    // Trusting bob (the file is re-read when it changes) lets the same revision through.
    let both = format!(
        "{}{}",
        alice.allowed_signers_line("alice@example.invalid", ""),
        bob.allowed_signers_line("bob@example.invalid", "namespaces=\"git\"")
    );
    std::fs::write(&signers, both).unwrap();
    wait::until(
        Duration::from_secs(10),
        "published after bob is trusted",
        || is_published(&root, &c3),
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "3"
    );
    wait::Wait::new("the key reload counted once")
        .timeout(Duration::from_secs(5))
        .context(|| gs.logs())
        .until(|| gs.metric("gitsync_trusted_keys_reloads_total{result=\"success\"}") == Some(1.0));
    wait::until(Duration::from_secs(5), "ready again", || gs.ready());

    // A broken key file is refused and the keys in use stay.
    std::fs::write(&signers, "bob@example.invalid ssh-ed25519 not-a-key\n").unwrap();
    let c4 = fx.commit_signed(
        "main",
        &[("a", "4")],
        "signed by alice again",
        &alice.signing(),
    );
    wait::until(
        Duration::from_secs(10),
        "published with the keys in use",
        || is_published(&root, &c4),
    );
    wait::until(Duration::from_secs(5), "the failed reload counted", || {
        gs.metric("gitsync_trusted_keys_reloads_total{result=\"failure\"}") == Some(1.0)
    });
    assert!(gs.logs().contains("cannot use the changed trusted keys"));
}

#[test]
fn all_policy_refuses_an_unsigned_commit_below_a_signed_tip_head_policy_does_not() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let c1 = fx.commit_signed("main", &[("a", "1")], "one", &alice.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let args = |policy: &'static str| -> Vec<String> {
        [
            "--repo",
            &daemon.url("cfg.git"),
            "--ref",
            "main",
            "--verify-signatures",
            policy,
            "--allowed-signers-file",
            signers.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |root: &Path, policy: &'static str| {
        let a = args(policy);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        one_time(root, &a)
    };
    let root_all = dir.path().join("all");
    let root_head = dir.path().join("head");
    for root in [&root_all, &root_head] {
        let (status, logs) = run(root, "all");
        assert!(status.success(), "{logs}");
        assert!(is_published(root, &c1));
    }
    // Depth 1 fetches: the history between the published commit and the tip is fetched to
    // check it. Several signed commits, then an unsigned one, then a signed tip.
    fx.commit_signed("main", &[("a", "2")], "two", &alice.signing());
    let unsigned = fx.commit("main", &[("b", "x")], "slipped in unsigned");
    fx.commit_signed("main", &[("a", "3")], "three", &alice.signing());
    let tip = fx.commit_signed("main", &[("a", "4")], "four", &alice.signing());
    let (status, logs) = run(&root_all, "all");
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("commit {unsigned} (on the way to {tip})"))
            && logs.contains("the commit is not signed"),
        "{logs}"
    );
    assert!(is_published(&root_all, &c1));
    // head checks the tip only
    let (status, logs) = run(&root_head, "head");
    assert!(status.success(), "{logs}");
    assert!(is_published(&root_head, &tip));
    // all, from a published tree past the unsigned commit: only what came since is checked
    let c5 = fx.commit_signed("main", &[("a", "5")], "five", &alice.signing());
    let (status, logs) = run(&root_head, "all");
    assert!(status.success(), "{logs}");
    assert!(is_published(&root_head, &c5));
}

#[test]
fn tampered_commit_and_force_push_to_an_unsigned_commit_are_refused() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    fx.commit_signed("main", &[("a", "1")], "one", &alice.signing());
    let c2 = fx.commit_signed("main", &[("a", "2")], "two", &alice.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "100ms",
            "--verify-signatures",
            "all",
            "--allowed-signers-file",
            signers.to_str().unwrap(),
        ],
    );
    wait::until(Duration::from_secs(10), "published", || {
        is_published(&root, &c2)
    });

    let forged = fx.push_tampered_copy("main");
    wait::until(
        Duration::from_secs(10),
        "the tampered commit refused",
        || refusals(&gs, "bad_signature") == Some(1.0),
    );
    assert!(is_published(&root, &c2));
    let logs = gs.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(&forged) && l.contains("does not verify")),
        "{logs}"
    );

    // A force-push to an unsigned commit (--force-push=follow would follow it).
    git(&fx.work, &["reset", "-q", "--hard", &c2]);
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    wait::until(
        Duration::from_secs(10),
        "the rewritten unsigned commit refused",
        || refusals(&gs, "unsigned") == Some(1.0),
    );
    assert!(gs.logs().contains(&rewritten));
    assert!(is_published(&root, &c2));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    assert_eq!(
        gs.metrics().series("gitsync_force_pushes_total").count(),
        0,
        "a refused revision is not followed"
    );
}

#[test]
fn gnupg_good_unknown_revoked_and_expired_keys() {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let stranger = GpgKey::new("Stranger <stranger@example.invalid>", "never", None);
    // made on 2020-01-01 for two days, and used while it was valid
    let expired = GpgKey::new("Old <old@example.invalid>", "2d", Some("20200101T000000"));
    let c1 = fx.commit_signed("main", &[("a", "1")], "good", &good.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, format!("{}{}", good.export(), expired.export())).unwrap();
    let root = dir.path().join("root");
    let run = || {
        one_time(
            &root,
            &[
                "--repo",
                &daemon.url("cfg.git"),
                "--verify-signatures",
                "head",
                "--openpgp-keys-file",
                keys.to_str().unwrap(),
            ],
        )
    };
    let (status, logs) = run();
    assert!(status.success(), "{logs}");
    assert!(is_published(&root, &c1));
    assert!(
        logs.contains(&good.fingerprint),
        "the signer is logged: {logs}"
    );

    let c2 = fx.commit_signed("main", &[("a", "2")], "stranger", &stranger.signing());
    let (status, logs) = run();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&c2) && logs.contains("no trusted OpenPGP key"),
        "{logs}"
    );
    assert!(is_published(&root, &c1));

    let c3 = fx.commit_signed("main", &[("a", "3")], "expired", &expired.signing());
    let (status, logs) = run();
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&c3) && logs.contains("expired at 2020-01-03"),
        "{logs}"
    );
    assert!(is_published(&root, &c1));

    // The good key, revoked after it signed: its signatures are refused.
    let c4 = fx.commit_signed("main", &[("a", "4")], "good again", &good.signing());
    good.revoke();
    std::fs::write(&keys, good.export()).unwrap();
    let (status, logs) = run();
    assert!(!status.success(), "{logs}");
    assert!(logs.contains(&c4) && logs.contains("is revoked"), "{logs}");
    assert!(is_published(&root, &c1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "1"
    );
}

#[test]
fn signed_annotated_tags() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let mallory = SshSigningKey::new("mallory");
    let unsigned_commit = fx.commit("main", &[("a", "1")], "unsigned commit");
    fx.tag("v1", "main", Some(&alice.signing()));
    fx.tag("v1-unsigned", "main", None);
    git(&fx.work, &["tag", "v1-light", "main"]);
    git(&fx.work, &["push", "-q", "origin", "refs/tags/v1-light"]);
    let signed_commit = fx.commit_signed("main", &[("a", "2")], "signed", &alice.signing());
    fx.tag("v2-by-mallory", "main", Some(&mallory.signing()));
    fx.tag("v2", "main", Some(&alice.signing()));
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let run = |name: &str, reference: &str, policy: &str| {
        let root = dir.path().join(name);
        let (status, logs) = one_time(
            &root,
            &[
                "--repo",
                &daemon.url("cfg.git"),
                "--ref",
                reference,
                "--verify-signatures",
                policy,
                "--allowed-signers-file",
                signers.to_str().unwrap(),
            ],
        );
        (status, logs, published(&root, "current"))
    };
    // tag: the signed tag is enough, the commit under it is unsigned
    let (status, logs, got) = run("t1", "v1", "tag");
    assert!(status.success(), "{logs}");
    assert_eq!(got.as_deref(), Some(unsigned_commit.as_str()));
    assert!(logs.contains("tag signature verified"), "{logs}");
    let (status, logs, got) = run("t2", "v1-unsigned", "tag");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(logs.contains("the tag is not signed"), "{logs}");
    let (status, logs, got) = run("t3", "v1-light", "tag");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(
        logs.contains("needs --ref to name an annotated tag"),
        "{logs}"
    );
    // head: the tag and the commit
    let (status, logs, got) = run("t4", "v1", "head");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(logs.contains("the commit is not signed"), "{logs}");
    let (status, logs, got) = run("t5", "v2", "head");
    assert!(status.success(), "{logs}");
    assert_eq!(got.as_deref(), Some(signed_commit.as_str()));
    let (status, logs, got) = run("t6", "v2-by-mallory", "head");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(
        logs.contains("tag ") && logs.contains("no allowed-signers entry"),
        "{logs}"
    );
}

#[test]
fn a_tree_published_before_verification_was_turned_on_is_checked_at_start() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let c1 = fx.commit("main", &[("a", "1")], "unsigned");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &url,
            "--period",
            "100ms",
            "--verify-signatures",
            "head",
            "--allowed-signers-file",
            signers.to_str().unwrap(),
        ],
    );
    wait::until(
        Duration::from_secs(10),
        "the published tree refused",
        || refusals(&gs, "unsigned") == Some(1.0),
    );
    assert!(
        !gs.ready(),
        "an unverified tree must not make the pod ready"
    );
    assert!(
        is_published(&root, &c1),
        "the tree the app reads is left alone"
    );
    let c2 = fx.commit_signed("main", &[("a", "2")], "signed", &alice.signing());
    wait::until(
        Duration::from_secs(10),
        "the signed commit published",
        || is_published(&root, &c2),
    );
    wait::until(Duration::from_secs(5), "ready", || gs.ready());
}

/// `--one-time` with `--openpgp-keys-file`, for the GnuPG scenarios below.
fn one_time_openpgp(
    root: &Path,
    url: &str,
    reference: &str,
    policy: &str,
    keys: &Path,
) -> (std::process::ExitStatus, String) {
    one_time(
        root,
        &[
            "--repo",
            url,
            "--ref",
            reference,
            "--verify-signatures",
            policy,
            "--openpgp-keys-file",
            keys.to_str().unwrap(),
        ],
    )
}

#[test]
fn gnupg_unsigned_commit_on_signed_history_tampered_commit_and_force_push_are_refused() {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let c1 = fx.commit_signed("main", &[("a", "1")], "one", &good.signing());
    let daemon = GitDaemon::start(&fx.base());
    let url = daemon.url("cfg.git");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let root_all = dir.path().join("all");
    let root_head = dir.path().join("head");
    let run = |root: &Path, policy: &str| one_time_openpgp(root, &url, "main", policy, &keys);
    for (root, policy) in [(&root_all, "all"), (&root_head, "head")] {
        let (status, logs) = run(root, policy);
        assert!(status.success(), "{logs}");
        assert!(is_published(root, &c1));
        assert!(logs.contains(&good.fingerprint), "{logs}");
    }

    // An unsigned commit pushed on top of the signed history: it is the tip, so both refuse.
    let unsigned = fx.commit("main", &[("b", "x")], "slipped in unsigned");
    for (root, policy) in [(&root_all, "all"), (&root_head, "head")] {
        let (status, logs) = run(root, policy);
        assert!(!status.success(), "{policy}: {logs}");
        assert!(
            logs.contains(&unsigned) && logs.contains("the commit is not signed"),
            "{policy}: {logs}"
        );
        assert!(is_published(root, &c1), "{policy}");
    }
    // A signed commit on top of it: `all` still refuses the unsigned one on the way, `head`
    // checks the tip only and publishes.
    let c3 = fx.commit_signed("main", &[("a", "3")], "three", &good.signing());
    let (status, logs) = run(&root_all, "all");
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("commit {unsigned} (on the way to {c3})"))
            && logs.contains("the commit is not signed"),
        "{logs}"
    );
    assert!(is_published(&root_all, &c1));
    let (status, logs) = run(&root_head, "head");
    assert!(status.success(), "{logs}");
    assert!(is_published(&root_head, &c3));

    // The GnuPG-signed tip changed after signing (its signature kept): refused by both (from
    // c3, where the tampered copy is the only new commit).
    let forged = fx.push_tampered_copy("main");
    for policy in ["head", "all"] {
        let root = &root_head;
        let (status, logs) = run(root, policy);
        assert!(!status.success(), "{policy}: {logs}");
        assert!(
            logs.lines().any(|l| l.contains(&forged)
                && l.contains("bad_signature")
                && l.contains(&format!("the OpenPGP signature by {}", good.fingerprint))
                && l.contains("does not verify")),
            "{policy}: {logs}"
        );
        assert!(is_published(root, &c3), "{policy}");
    }

    // A force-push replacing the signed tip with an unsigned commit.
    git(&fx.work, &["reset", "-q", "--hard", &c3]);
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    let (status, logs) = run(&root_head, "head");
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&rewritten) && logs.contains("the commit is not signed"),
        "{logs}"
    );
    assert!(is_published(&root_head, &c3));
    assert_eq!(
        std::fs::read_to_string(root_head.join("current/a")).unwrap(),
        "3"
    );
    // `all` after the force-push: the rewritten commit is new history, checked and refused.
    let (status, logs) = run(&root_head, "all");
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&rewritten) && logs.contains("the commit is not signed"),
        "{logs}"
    );
    assert!(is_published(&root_head, &c3));
}

#[test]
fn gnupg_signed_annotated_tags() {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let stranger = GpgKey::new("Stranger <stranger@example.invalid>", "never", None);
    let unsigned_commit = fx.commit("main", &[("a", "1")], "unsigned commit");
    fx.tag("v1", "main", Some(&good.signing()));
    fx.tag("v1-by-stranger", "main", Some(&stranger.signing()));
    fx.tag("v1-unsigned", "main", None);
    let signed_commit = fx.commit_signed("main", &[("a", "2")], "signed", &good.signing());
    fx.tag("v2", "main", Some(&good.signing()));
    let daemon = GitDaemon::start(&fx.base());
    let url = daemon.url("cfg.git");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let run = |name: &str, reference: &str, policy: &str| {
        let root = dir.path().join(name);
        let (status, logs) = one_time_openpgp(&root, &url, reference, policy, &keys);
        (status, logs, published(&root, "current"))
    };
    // the tag is GnuPG-signed: enough for `tag`, the commit under it is not checked
    let (status, logs, got) = run("t1", "v1", "tag");
    assert!(status.success(), "{logs}");
    assert_eq!(got.as_deref(), Some(unsigned_commit.as_str()));
    assert!(
        logs.lines()
            .any(|l| l.contains("tag signature verified") && l.contains(&good.fingerprint)),
        "{logs}"
    );
    let (status, logs, got) = run("t2", "v1-by-stranger", "tag");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(
        logs.contains("tag ")
            && logs.contains("unknown_key")
            && logs.contains("no trusted OpenPGP key"),
        "{logs}"
    );
    let (status, logs, got) = run("t3", "v1-unsigned", "tag");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(logs.contains("the tag is not signed"), "{logs}");
    // head: the tag and the commit under it
    let (status, logs, got) = run("t4", "v1", "head");
    assert!(!status.success() && got.is_none(), "{logs}");
    assert!(logs.contains("the commit is not signed"), "{logs}");
    let (status, logs, got) = run("t5", "v2", "head");
    assert!(status.success(), "{logs}");
    assert_eq!(got.as_deref(), Some(signed_commit.as_str()));
    assert!(
        logs.contains("tag signature verified") && logs.contains("commit signature verified"),
        "{logs}"
    );
}

#[test]
fn gnupg_long_running_refusal_is_counted_written_to_the_error_file_goes_stale_and_a_new_key_publishes_it()
 {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let newcomer = GpgKey::new("Newcomer <new@example.invalid>", "never", None);
    let c1 = fx.commit_signed("main", &[("a", "1")], "one", &good.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let root = dir.path().join("root");
    let error_file = dir.path().join("termination-log");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "100ms",
            "--stale-after",
            "2s",
            "--verify-signatures",
            "head",
            "--openpgp-keys-file",
            keys.to_str().unwrap(),
            "--error-file",
            error_file.to_str().unwrap(),
        ],
    );
    wait::until(
        Duration::from_secs(10),
        "the signed commit published",
        || is_published(&root, &c1),
    );
    wait::until(Duration::from_secs(5), "ready", || gs.ready());

    // Signed by a key the file does not hold yet: refused, counted once, the tree stays.
    let c2 = fx.commit_signed(
        "main",
        &[("a", "2")],
        "by the newcomer",
        &newcomer.signing(),
    );
    wait::until(Duration::from_secs(10), "the unknown key refused", || {
        refusals(&gs, "unknown_key") == Some(1.0)
    });
    assert!(is_published(&root, &c1));
    // The refusal is the pod's termination message: which commit, and why.
    let refusal = format!("commit {c2} refused by --verify-signatures: no trusted OpenPGP key");
    let error_text = || std::fs::read_to_string(&error_file).unwrap_or_default();
    wait::Wait::new("the refusal in --error-file")
        .timeout(Duration::from_secs(10))
        .context(error_text)
        .until(|| error_text().contains(&refusal));
    let logs = gs.logs();
    assert!(
        logs.lines().any(|l| l.contains("signature refused")
            && l.contains(&c2)
            && l.contains("unknown_key")
            && l.contains("no trusted OpenPGP key")),
        "{logs}"
    );
    let held = gs
        .metric("gitsync_syncs_total{result=\"held_back\"}")
        .unwrap_or(0.0);
    wait::until(
        Duration::from_secs(10),
        "more polls on the refused revision",
        || gs.metric("gitsync_syncs_total{result=\"held_back\"}") >= Some(held + 3.0),
    );
    assert_eq!(refusals(&gs, "unknown_key"), Some(1.0));
    assert_eq!(
        gs.metric("gitsync_syncs_total{result=\"signature_refused\"}"),
        Some(1.0)
    );
    // held-back polls are not good syncs: the message stays
    assert!(error_text().contains(&refusal), "{}", error_text());
    // No good sync for --stale-after: not ready, and /readyz says why; the tree stays.
    wait::until(Duration::from_secs(10), "not ready once stale", || {
        !gs.ready()
    });
    let (status, body) = http_get(gs.admin_port, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no successful sync"), "{body}");
    assert!(is_published(&root, &c1));

    // The newcomer's key added to the file: re-read, the held-back revision published.
    replace_file(&keys, format!("{}{}", good.export(), newcomer.export()));
    wait::Wait::new("published once the key is trusted")
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| is_published(&root, &c2));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    assert_eq!(
        gs.metric("gitsync_trusted_keys_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert!(
        gs.logs()
            .lines()
            .any(|l| l.contains("commit signature verified") && l.contains(&newcomer.fingerprint)),
        "{}",
        gs.logs()
    );
    wait::until(Duration::from_secs(5), "ready again", || gs.ready());
    assert_eq!(refusals(&gs, "unknown_key"), Some(1.0));
    // a good sync empties the termination message
    wait::until(Duration::from_secs(5), "--error-file emptied", || {
        std::fs::metadata(&error_file).is_ok_and(|m| m.len() == 0)
    });
}

#[test]
fn ssh_key_past_valid_before_is_expired_and_a_revoked_key_is_refused_until_unrevoked() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let bob = SshSigningKey::new("bob");
    let c1 = fx.commit_signed("main", &[("a", "1")], "by alice", &alice.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    // bob's entry ended before any commit of this test was made
    std::fs::write(
        &signers,
        format!(
            "{}{}",
            alice.allowed_signers_line("alice@example.invalid", ""),
            bob.allowed_signers_line("bob@example.invalid", "valid-before=\"20200101\"")
        ),
    )
    .unwrap();
    let revoked = dir.path().join("revoked_keys");
    std::fs::write(&revoked, "# nothing revoked yet\n").unwrap();
    let root = dir.path().join("root");
    // the revoked-keys file from its environment variable, as a pod would set it
    let gs = GitSync::start_env(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "100ms",
            "--verify-signatures",
            "head",
            "--allowed-signers-file",
            signers.to_str().unwrap(),
        ],
        &[("GIT_SYNC_SSH_REVOKED_KEYS_FILE", revoked.to_str().unwrap())],
    );
    wait::until(Duration::from_secs(10), "alice's commit published", || {
        is_published(&root, &c1)
    });

    // bob signed after his entry's valid-before: expired_key, not not_allowed.
    let c2 = fx.commit_signed("main", &[("a", "2")], "by bob", &bob.signing());
    wait::Wait::new("bob's expired key refused")
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| refusals(&gs, "expired_key") == Some(1.0));
    let logs = gs.logs();
    assert!(
        logs.lines().any(|l| l.contains("signature refused")
            && l.contains(&c2)
            && l.contains("expired_key")
            && l.contains("the key expired at 2020-01-01T00:00:00Z")),
        "{logs}"
    );
    assert_eq!(refusals(&gs, "not_allowed"), None);
    assert!(is_published(&root, &c1));

    // alice's public key (as ssh-keygen wrote it, comment included) in the revoked-keys file:
    // re-read, and her next commit is refused although the allowed-signers file lists her.
    replace_file(
        &revoked,
        std::fs::read_to_string(alice.key.with_extension("pub")).unwrap(),
    );
    let c3 = fx.commit_signed("main", &[("a", "3")], "by alice, revoked", &alice.signing());
    wait::Wait::new("alice's revoked key refused")
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| refusals(&gs, "revoked_key") == Some(1.0));
    let logs = gs.logs();
    assert!(
        logs.lines().any(|l| l.contains(&c3)
            && l.contains("revoked_key")
            && l.contains(&format!("is revoked ({}:1)", revoked.display()))),
        "{logs}"
    );
    assert!(is_published(&root, &c1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "1"
    );
    assert_eq!(
        gs.metric("gitsync_trusted_keys_reloads_total{result=\"success\"}"),
        Some(1.0)
    );

    // A binary KRL is not read: the reload fails and alice stays revoked.
    replace_file(&revoked, b"SSHKRL\n\0\0\0\0\x01");
    wait::until(Duration::from_secs(10), "the KRL reload refused", || {
        gs.metric("gitsync_trusted_keys_reloads_total{result=\"failure\"}") == Some(1.0)
    });
    assert!(gs.logs().contains("binary KRL"), "{}", gs.logs());
    assert!(is_published(&root, &c1));

    // Revocation lifted: the held-back revision is tried again and published.
    replace_file(&revoked, "");
    wait::Wait::new("published once alice is no longer revoked")
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| is_published(&root, &c3));
    assert_eq!(refusals(&gs, "revoked_key"), Some(1.0));
}

#[test]
fn ssh_revoked_key_is_refused_in_one_time_mode() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let c1 = fx.commit_signed("main", &[("a", "1")], "by alice", &alice.signing());
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        alice.allowed_signers_line("alice@example.invalid", ""),
    )
    .unwrap();
    let revoked = dir.path().join("revoked_keys");
    std::fs::copy(alice.key.with_extension("pub"), &revoked).unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--verify-signatures",
            "all",
            "--allowed-signers-file",
            signers.to_str().unwrap(),
            "--ssh-revoked-keys-file",
            revoked.to_str().unwrap(),
        ],
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&c1) && logs.contains("revoked_key") && logs.contains("is revoked"),
        "{logs}"
    );
    assert_eq!(published(&root, "current"), None);
}
