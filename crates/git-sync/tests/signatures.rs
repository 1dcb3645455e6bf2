//! `--verify-signatures` against commits and tags signed by the real tools: `git commit -S`
//! with `gpg.format=ssh` (ssh-keygen -Y sign) and with GnuPG in a throwaway GNUPGHOME. A
//! refused revision is never published: the old tree stays, the refusal is logged with the
//! commit and the reason and counted, and readiness follows the staleness rule.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use common::*;

const ALICE: &str = "alice@example.invalid";
const BOB: &str = "bob@example.invalid";

fn is_published(root: &Path, sha: &str) -> bool {
    published(root, "current").as_deref() == Some(sha)
}

/// Serves the fixture's repositories: the daemon (to keep while git-sync runs), the URL of
/// cfg.git, and a scratch folder for git-sync's root and the key files.
fn serve(fx: &Fixture) -> (GitDaemon, String, tempfile::TempDir) {
    let daemon = GitDaemon::start(&fx.base());
    let url = daemon.url("cfg.git");
    (daemon, url, tempfile::tempdir().unwrap())
}

/// The content of `file` in the published tree.
fn published_file(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join("current").join(file)).unwrap()
}

/// Replaces a key file in one rename, as a Secret volume update does: git-sync re-reads it
/// on every sync and must never see it half written.
fn replace_file(path: &Path, content: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes `dir/allowed_signers` with `lines`; returns its path.
fn write_allowed_signers(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("allowed_signers");
    std::fs::write(&path, lines.concat()).unwrap();
    path
}

/// Whether one line of `logs` holds every one of `needles`.
fn has_line(logs: &str, needles: &[&str]) -> bool {
    logs.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

fn refusals(gs: &GitSync, reason: &str) -> Option<f64> {
    gs.metric(&format!(
        "gitsync_signature_refusals_total{{reason=\"{reason}\"}}"
    ))
}

/// The flags that trust the SSH keys in the allowed-signers file `signers`.
fn ssh_keys(signers: &Path) -> [&str; 2] {
    ["--allowed-signers-file", signers.to_str().unwrap()]
}

/// The flags that trust the OpenPGP keys in the armored file `keys`.
fn openpgp_keys(keys: &Path) -> [&str; 2] {
    ["--openpgp-keys-file", keys.to_str().unwrap()]
}

/// git-sync polling `url` every 100 ms into `root` with `--verify-signatures policy` and
/// `keys` (the flags naming the trusted keys), plus the flags `more` and the environment
/// `envs`.
fn start_verifying(
    root: &Path,
    url: &str,
    policy: &str,
    keys: &[&str],
    more: &[&str],
    envs: &[(&str, &str)],
) -> GitSync {
    let mut args = vec![
        "--repo",
        url,
        "--period",
        "100ms",
        "--verify-signatures",
        policy,
    ];
    args.extend_from_slice(keys);
    args.extend_from_slice(more);
    GitSync::start_env(root, &args, envs)
}

fn wait_published(gs: &GitSync, sha: &str, what: &str) {
    wait::Wait::new(what)
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| is_published(&gs.root, sha));
}

fn wait_ready(gs: &GitSync, what: &str) {
    wait::until(Duration::from_secs(5), what, || gs.ready());
}

/// Waits for the first refusal for `reason`.
fn wait_refused(gs: &GitSync, reason: &str, what: &str) {
    wait::Wait::new(what)
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| refusals(gs, reason) == Some(1.0));
}

/// The refusal is logged on one line with the commit, the reason and what is wrong.
fn assert_refusal_logged(gs: &GitSync, commit: &str, reason: &str, detail: &str) {
    let logs = gs.logs();
    assert!(
        has_line(&logs, &["signature refused", commit, reason, detail]),
        "{logs}"
    );
}

/// Held back: later polls neither fetch the refused revision again nor count it again.
fn assert_held_back_and_counted_once(gs: &GitSync, reason: &str) {
    let held_back = || gs.metric("gitsync_syncs_total{result=\"held_back\"}");
    let held = held_back().unwrap_or(0.0);
    wait::until(
        Duration::from_secs(10),
        "more polls on the refused revision",
        || held_back() >= Some(held + 3.0),
    );
    assert_eq!(refusals(gs, reason), Some(1.0));
    assert_eq!(
        gs.metric("gitsync_syncs_total{result=\"signature_refused\"}"),
        Some(1.0)
    );
}

/// Readiness follows the staleness rule: no good sync for --stale-after, not ready, and
/// /readyz says why.
fn assert_goes_stale(gs: &GitSync) {
    wait::until(Duration::from_secs(10), "not ready once stale", || {
        !gs.ready()
    });
    let (status, body) = http_get(gs.admin_port, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no successful sync"), "{body}");
}

/// A finished `--one-time` run: its exit status, its logs and the commit it left published.
struct OneTime {
    /// Names the run in failure messages.
    label: String,
    status: ExitStatus,
    logs: String,
    published: Option<String>,
}

/// `--one-time` from `url` (at `reference`, or the default ref) into `root` with
/// `--verify-signatures policy` and `keys`, the flags naming the trusted keys.
fn verify_once(
    root: &Path,
    url: &str,
    reference: Option<&str>,
    policy: &str,
    keys: &[&str],
) -> OneTime {
    let mut args = vec!["--repo", url];
    if let Some(reference) = reference {
        args.extend(["--ref", reference]);
    }
    args.extend(["--verify-signatures", policy]);
    args.extend_from_slice(keys);
    let (status, logs) = one_time(root, &args);
    OneTime {
        label: format!("{policy} at {}", reference.unwrap_or("the default ref")),
        status,
        logs,
        published: published(root, "current"),
    }
}

impl OneTime {
    /// It succeeded and published `sha`.
    fn assert_published(&self, sha: &str) {
        let OneTime { label, logs, .. } = self;
        assert!(self.status.success(), "{label}: {logs}");
        assert_eq!(self.published.as_deref(), Some(sha), "{label}: {logs}");
    }

    /// It failed, its logs hold every one of `needles`, and the tree published before it
    /// (`kept`; None: none) is left alone.
    fn assert_refused(&self, needles: &[&str], kept: Option<&str>) {
        let OneTime { label, logs, .. } = self;
        assert!(!self.status.success(), "{label}: {logs}");
        self.assert_logged(needles);
        assert_eq!(self.published.as_deref(), kept, "{label}: {logs}");
    }

    /// It failed on the unsigned commit `unsigned` below the signed tip `tip` (`all` checks
    /// what came since the published tree), and `kept` is still published.
    fn assert_refused_unsigned_on_the_way(&self, unsigned: &str, tip: &str, kept: &str) {
        let on_the_way = format!("commit {unsigned} (on the way to {tip})");
        self.assert_refused(&[&on_the_way, "the commit is not signed"], Some(kept));
    }

    /// Its logs hold every one of `needles`.
    fn assert_logged(&self, needles: &[&str]) {
        let OneTime { label, logs, .. } = self;
        for needle in needles {
            assert!(logs.contains(needle), "{label}: no {needle:?} in {logs}");
        }
    }

    /// One line of its logs holds every one of `needles`.
    fn assert_line(&self, needles: &[&str]) {
        let OneTime { label, logs, .. } = self;
        assert!(has_line(logs, needles), "{label}: {logs}");
    }
}

#[test]
fn ssh_signed_commits_publish_unsigned_and_unknown_keys_are_refused_and_keys_are_reread() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let bob = SshSigningKey::new("bob");
    let c1 = fx.commit_signed("main", &[("a", "1")], "signed by alice", &alice.signing());
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let root = dir.path().join("root");
    let gs = start_verifying(
        &root,
        &url,
        "head",
        &ssh_keys(&signers),
        &["--ref", "main", "--stale-after", "2s"],
        &[],
    );
    wait_published(&gs, &c1, "the signed commit published");
    wait_ready(&gs, "ready");

    // An unsigned commit on top: refused, counted once, the signed tree stays.
    let c2 = fx.commit("main", &[("a", "2")], "unsigned");
    wait_refused(&gs, "unsigned", "the unsigned commit refused");
    assert!(is_published(&root, &c1));
    assert_eq!(published_file(&root, "a"), "1");
    assert_refusal_logged(&gs, &c2, "unsigned", "the commit is not signed");
    assert_held_back_and_counted_once(&gs, "unsigned");
    assert_goes_stale(&gs);
    assert!(is_published(&root, &c1));

    // A commit signed by a key nobody trusts yet.
    let c3 = fx.commit_signed("main", &[("a", "3")], "signed by bob", &bob.signing());
    wait_refused(&gs, "unknown_key", "the unknown key refused");
    assert!(is_published(&root, &c1));
    assert!(
        gs.logs()
            .contains("no allowed-signers entry for the SSH key SHA256:")
    );

    // Trusting bob (the file is re-read when it changes) lets the same revision through.
    let both = [
        alice.allowed_signers_line(ALICE, ""),
        bob.allowed_signers_line(BOB, "namespaces=\"git\""),
    ];
    std::fs::write(&signers, both.concat()).unwrap();
    wait_published(&gs, &c3, "published after bob is trusted");
    assert_eq!(published_file(&root, "a"), "3");
    wait::Wait::new("the key reload counted once")
        .timeout(Duration::from_secs(5))
        .context(|| gs.logs())
        .until(|| gs.metric("gitsync_trusted_keys_reloads_total{result=\"success\"}") == Some(1.0));
    wait_ready(&gs, "ready again");

    // A broken key file is refused and the keys in use stay.
    std::fs::write(&signers, "bob@example.invalid ssh-ed25519 not-a-key\n").unwrap();
    let c4 = fx.commit_signed(
        "main",
        &[("a", "4")],
        "signed by alice again",
        &alice.signing(),
    );
    wait_published(&gs, &c4, "published with the keys in use");
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
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let run = |root: &Path, policy: &str| {
        verify_once(root, &url, Some("main"), policy, &ssh_keys(&signers))
    };
    let root_all = dir.path().join("all");
    let root_head = dir.path().join("head");
    for root in [&root_all, &root_head] {
        run(root, "all").assert_published(&c1);
    }
    // Depth 1 fetches: the history between the published commit and the tip is fetched to
    // check it. Several signed commits, then an unsigned one, then a signed tip.
    fx.commit_signed("main", &[("a", "2")], "two", &alice.signing());
    let unsigned = fx.commit("main", &[("b", "x")], "slipped in unsigned");
    fx.commit_signed("main", &[("a", "3")], "three", &alice.signing());
    let tip = fx.commit_signed("main", &[("a", "4")], "four", &alice.signing());
    run(&root_all, "all").assert_refused_unsigned_on_the_way(&unsigned, &tip, &c1);
    // head checks the tip only
    run(&root_head, "head").assert_published(&tip);
    // all, from a published tree past the unsigned commit: only what came since is checked
    let c5 = fx.commit_signed("main", &[("a", "5")], "five", &alice.signing());
    run(&root_head, "all").assert_published(&c5);
}

#[test]
fn tampered_commit_and_force_push_to_an_unsigned_commit_are_refused() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    fx.commit_signed("main", &[("a", "1")], "one", &alice.signing());
    let c2 = fx.commit_signed("main", &[("a", "2")], "two", &alice.signing());
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let root = dir.path().join("root");
    let gs = start_verifying(&root, &url, "all", &ssh_keys(&signers), &[], &[]);
    wait_published(&gs, &c2, "published");

    let forged = fx.push_tampered_copy("main");
    wait_refused(&gs, "bad_signature", "the tampered commit refused");
    assert!(is_published(&root, &c2));
    let logs = gs.logs();
    assert!(has_line(&logs, &[&forged, "does not verify"]), "{logs}");

    // A force-push to an unsigned commit (--force-push=follow would follow it).
    git(&fx.work, &["reset", "-q", "--hard", &c2]);
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    wait_refused(&gs, "unsigned", "the rewritten unsigned commit refused");
    assert!(gs.logs().contains(&rewritten));
    assert!(is_published(&root, &c2));
    assert_eq!(published_file(&root, "a"), "2");
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
    let (_daemon, url, dir) = serve(&fx);
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, format!("{}{}", good.export(), expired.export())).unwrap();
    let root = dir.path().join("root");
    let run = || verify_once(&root, &url, None, "head", &openpgp_keys(&keys));
    let first = run();
    first.assert_published(&c1);
    // the signer is logged
    first.assert_logged(&[&good.fingerprint]);

    let c2 = fx.commit_signed("main", &[("a", "2")], "stranger", &stranger.signing());
    run().assert_refused(&[&c2, "no trusted OpenPGP key"], Some(&c1));

    let c3 = fx.commit_signed("main", &[("a", "3")], "expired", &expired.signing());
    run().assert_refused(&[&c3, "expired at 2020-01-03"], Some(&c1));

    // The good key, revoked after it signed: its signatures are refused.
    let c4 = fx.commit_signed("main", &[("a", "4")], "good again", &good.signing());
    good.revoke();
    std::fs::write(&keys, good.export()).unwrap();
    run().assert_refused(&[&c4, "is revoked"], Some(&c1));
    assert_eq!(published_file(&root, "a"), "1");
}

/// The release history of both tag scenarios, signed with `signing`: `v1` (a signed tag) and
/// `v1-unsigned` on an unsigned commit, then `v2` (a signed tag) on a signed commit. Returns
/// the two commits.
fn release_history(fx: &Fixture, signing: &Signing) -> (String, String) {
    let unsigned_commit = fx.commit("main", &[("a", "1")], "unsigned commit");
    fx.tag("v1", "main", Some(signing));
    fx.tag("v1-unsigned", "main", None);
    let signed_commit = fx.commit_signed("main", &[("a", "2")], "signed", signing);
    fx.tag("v2", "main", Some(signing));
    (unsigned_commit, signed_commit)
}

/// `--one-time` runs from `url` trusting `trusted`, each into its own `dir/name`:
/// `run(name, reference, policy)`.
fn one_time_runs<'a>(
    dir: &'a Path,
    url: &'a str,
    trusted: &'a [&'a str],
) -> impl Fn(&str, &str, &str) -> OneTime + 'a {
    move |name, reference, policy| {
        verify_once(&dir.join(name), url, Some(reference), policy, trusted)
    }
}

/// What any signer makes of [`release_history`]: `tag` publishes the unsigned commit under
/// the signed `v1` and refuses `v1-unsigned`; `head` also checks the commit under `v1`, and
/// publishes `v2`. Returns the runs of `v1` under `tag` and of `v2` under `head`, for what
/// each signer logs.
fn assert_release_history_rules(
    run: impl Fn(&str, &str, &str) -> OneTime,
    (unsigned_commit, signed_commit): &(String, String),
) -> (OneTime, OneTime) {
    // tag: the signed tag is enough, the commit under it is not checked
    let v1 = run("tag-v1", "v1", "tag");
    v1.assert_published(unsigned_commit);
    v1.assert_logged(&["tag signature verified"]);
    run("tag-v1-unsigned", "v1-unsigned", "tag").assert_refused(&["the tag is not signed"], None);
    // head: the tag and the commit under it
    run("head-v1", "v1", "head").assert_refused(&["the commit is not signed"], None);
    let v2 = run("head-v2", "v2", "head");
    v2.assert_published(signed_commit);
    (v1, v2)
}

#[test]
fn signed_annotated_tags() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let mallory = SshSigningKey::new("mallory");
    let history = release_history(&fx, &alice.signing());
    let (unsigned_commit, signed_commit) = &history;
    git(&fx.work, &["tag", "v1-light", unsigned_commit]);
    git(&fx.work, &["push", "-q", "origin", "refs/tags/v1-light"]);
    fx.tag("v2-by-mallory", signed_commit, Some(&mallory.signing()));
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let trusted = ssh_keys(&signers);
    let run = one_time_runs(dir.path(), &url, &trusted);
    assert_release_history_rules(&run, &history);
    // tag: a lightweight tag carries no signature
    run("tag-v1-light", "v1-light", "tag")
        .assert_refused(&["needs --ref to name an annotated tag"], None);
    // head: a tag by a key nobody trusts
    run("head-v2-by-mallory", "v2-by-mallory", "head")
        .assert_refused(&["tag ", "no allowed-signers entry"], None);
}

#[test]
fn a_tree_published_before_verification_was_turned_on_is_checked_at_start() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let c1 = fx.commit("main", &[("a", "1")], "unsigned");
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let root = dir.path().join("root");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    let gs = start_verifying(&root, &url, "head", &ssh_keys(&signers), &[], &[]);
    wait_refused(&gs, "unsigned", "the published tree refused");
    assert!(
        !gs.ready(),
        "an unverified tree must not make the pod ready"
    );
    assert!(
        is_published(&root, &c1),
        "the tree the app reads is left alone"
    );
    let c2 = fx.commit_signed("main", &[("a", "2")], "signed", &alice.signing());
    wait_published(&gs, &c2, "the signed commit published");
    wait_ready(&gs, "ready");
}

#[test]
fn gnupg_unsigned_commit_on_signed_history_tampered_commit_and_force_push_are_refused() {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let c1 = fx.commit_signed("main", &[("a", "1")], "one", &good.signing());
    let (_daemon, url, dir) = serve(&fx);
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let root_all = dir.path().join("all");
    let root_head = dir.path().join("head");
    let run = |root: &Path, policy: &str| {
        verify_once(root, &url, Some("main"), policy, &openpgp_keys(&keys))
    };
    for (root, policy) in [(&root_all, "all"), (&root_head, "head")] {
        let first = run(root, policy);
        first.assert_published(&c1);
        first.assert_logged(&[&good.fingerprint]);
    }

    // An unsigned commit pushed on top of the signed history: it is the tip, so both refuse.
    let unsigned = fx.commit("main", &[("b", "x")], "slipped in unsigned");
    for (root, policy) in [(&root_all, "all"), (&root_head, "head")] {
        run(root, policy).assert_refused(&[&unsigned, "the commit is not signed"], Some(&c1));
    }
    // A signed commit on top of it: `all` still refuses the unsigned one on the way, `head`
    // checks the tip only and publishes.
    let c3 = fx.commit_signed("main", &[("a", "3")], "three", &good.signing());
    run(&root_all, "all").assert_refused_unsigned_on_the_way(&unsigned, &c3, &c1);
    run(&root_head, "head").assert_published(&c3);

    // The GnuPG-signed tip changed after signing (its signature kept): refused by both (from
    // c3, where the tampered copy is the only new commit).
    let forged = fx.push_tampered_copy("main");
    for policy in ["head", "all"] {
        let refused = run(&root_head, policy);
        refused.assert_refused(&[], Some(&c3));
        refused.assert_line(&[
            &forged,
            "bad_signature",
            &format!("the OpenPGP signature by {}", good.fingerprint),
            "does not verify",
        ]);
    }

    // A force-push replacing the signed tip with an unsigned commit.
    git(&fx.work, &["reset", "-q", "--hard", &c3]);
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    run(&root_head, "head").assert_refused(&[&rewritten, "the commit is not signed"], Some(&c3));
    assert_eq!(published_file(&root_head, "a"), "3");
    // `all` after the force-push: the rewritten commit is new history, checked and refused.
    run(&root_head, "all").assert_refused(&[&rewritten, "the commit is not signed"], Some(&c3));
}

#[test]
fn gnupg_signed_annotated_tags() {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let stranger = GpgKey::new("Stranger <stranger@example.invalid>", "never", None);
    let history = release_history(&fx, &good.signing());
    fx.tag("v1-by-stranger", &history.0, Some(&stranger.signing()));
    let (_daemon, url, dir) = serve(&fx);
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let trusted = openpgp_keys(&keys);
    let run = one_time_runs(dir.path(), &url, &trusted);
    let (v1, v2) = assert_release_history_rules(&run, &history);
    // the GnuPG signatures verified, by the trusted key
    v1.assert_line(&["tag signature verified", &good.fingerprint]);
    v2.assert_logged(&["tag signature verified", "commit signature verified"]);
    // tag: a tag by a key the file does not hold
    run("tag-v1-by-stranger", "v1-by-stranger", "tag")
        .assert_refused(&["tag ", "unknown_key", "no trusted OpenPGP key"], None);
}

#[test]
fn gnupg_long_running_refusal_is_counted_written_to_the_error_file_goes_stale_and_a_new_key_publishes_it()
 {
    let fx = Fixture::new("cfg.git");
    let good = GpgKey::new("Good <good@example.invalid>", "never", None);
    let newcomer = GpgKey::new("Newcomer <new@example.invalid>", "never", None);
    let c1 = fx.commit_signed("main", &[("a", "1")], "one", &good.signing());
    let (_daemon, url, dir) = serve(&fx);
    let keys = dir.path().join("keys.asc");
    std::fs::write(&keys, good.export()).unwrap();
    let root = dir.path().join("root");
    let error_file = dir.path().join("termination-log");
    let gs = start_verifying(
        &root,
        &url,
        "head",
        &openpgp_keys(&keys),
        &[
            "--stale-after",
            "2s",
            "--error-file",
            error_file.to_str().unwrap(),
        ],
        &[],
    );
    wait_published(&gs, &c1, "the signed commit published");
    wait_ready(&gs, "ready");

    // Signed by a key the file does not hold yet: refused, counted once, the tree stays.
    let c2 = fx.commit_signed(
        "main",
        &[("a", "2")],
        "by the newcomer",
        &newcomer.signing(),
    );
    wait_refused(&gs, "unknown_key", "the unknown key refused");
    assert!(is_published(&root, &c1));
    // The refusal is the pod's termination message: which commit, and why.
    let refusal = format!("commit {c2} refused by --verify-signatures: no trusted OpenPGP key");
    let error_text = || std::fs::read_to_string(&error_file).unwrap_or_default();
    wait::Wait::new("the refusal in --error-file")
        .timeout(Duration::from_secs(10))
        .context(error_text)
        .until(|| error_text().contains(&refusal));
    assert_refusal_logged(&gs, &c2, "unknown_key", "no trusted OpenPGP key");
    assert_held_back_and_counted_once(&gs, "unknown_key");
    // held-back polls are not good syncs: the message stays
    assert!(error_text().contains(&refusal), "{}", error_text());
    assert_goes_stale(&gs);
    assert!(is_published(&root, &c1));

    // The newcomer's key added to the file: re-read, the held-back revision published.
    replace_file(&keys, format!("{}{}", good.export(), newcomer.export()));
    wait_published(&gs, &c2, "published once the key is trusted");
    assert_eq!(published_file(&root, "a"), "2");
    assert_eq!(
        gs.metric("gitsync_trusted_keys_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    let logs = gs.logs();
    assert!(
        has_line(&logs, &["commit signature verified", &newcomer.fingerprint]),
        "{logs}"
    );
    wait_ready(&gs, "ready again");
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
    let (_daemon, url, dir) = serve(&fx);
    // bob's entry ended before any commit of this test was made
    let signers = write_allowed_signers(
        dir.path(),
        &[
            alice.allowed_signers_line(ALICE, ""),
            bob.allowed_signers_line(BOB, "valid-before=\"20200101\""),
        ],
    );
    let revoked = dir.path().join("revoked_keys");
    std::fs::write(&revoked, "# nothing revoked yet\n").unwrap();
    let root = dir.path().join("root");
    // the revoked-keys file from its environment variable, as a pod would set it
    let gs = start_verifying(
        &root,
        &url,
        "head",
        &ssh_keys(&signers),
        &[],
        &[("GIT_SYNC_SSH_REVOKED_KEYS_FILE", revoked.to_str().unwrap())],
    );
    wait_published(&gs, &c1, "alice's commit published");

    // bob signed after his entry's valid-before: expired_key, not not_allowed.
    let c2 = fx.commit_signed("main", &[("a", "2")], "by bob", &bob.signing());
    wait_refused(&gs, "expired_key", "bob's expired key refused");
    assert_refusal_logged(
        &gs,
        &c2,
        "expired_key",
        "the key expired at 2020-01-01T00:00:00Z",
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
    wait_refused(&gs, "revoked_key", "alice's revoked key refused");
    assert_refusal_logged(
        &gs,
        &c3,
        "revoked_key",
        &format!("is revoked ({}:1)", revoked.display()),
    );
    assert!(is_published(&root, &c1));
    assert_eq!(published_file(&root, "a"), "1");
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
    wait_published(&gs, &c3, "published once alice is no longer revoked");
    assert_eq!(refusals(&gs, "revoked_key"), Some(1.0));
}

#[test]
fn ssh_revoked_key_is_refused_in_one_time_mode() {
    let fx = Fixture::new("cfg.git");
    let alice = SshSigningKey::new("alice");
    let c1 = fx.commit_signed("main", &[("a", "1")], "by alice", &alice.signing());
    let (_daemon, url, dir) = serve(&fx);
    let signers = write_allowed_signers(dir.path(), &[alice.allowed_signers_line(ALICE, "")]);
    let revoked = dir.path().join("revoked_keys");
    std::fs::copy(alice.key.with_extension("pub"), &revoked).unwrap();
    let keys = [
        &ssh_keys(&signers)[..],
        &["--ssh-revoked-keys-file", revoked.to_str().unwrap()],
    ]
    .concat();
    verify_once(&dir.path().join("root"), &url, None, "all", &keys)
        .assert_refused(&[&c1, "revoked_key", "is revoked"], None);
}
