//! Submodules, fetched by the network worker so that the export publishes them in the tree.
//!
//! For each gitlink of the new revision that `.gitmodules` names and the selection reaches,
//! the submodule's commit is fetched into a bare repository of its own under
//! `.git-sync/modules/` (one per URL, kept across syncs): nothing when it is already there,
//! else the commit by id at `--depth` (servers that allow it: GitHub, GitLab), else the
//! remote's HEAD at `--depth` (the usual case: the submodule is on its default branch's tip),
//! else every branch and tag with full history. `--submodules recursive` does the same inside
//! each submodule.
//!
//! URLs come from `.gitmodules`, that is from whoever can push: relative ones (`../lib.git`)
//! are resolved against the superproject's URL as git does; `file://` and local paths are
//! refused unless the superproject itself is local (git's `protocol.file.allow=user`), and
//! so is anything that is not http(s), ssh or git. A username, password or bearer token goes
//! only to the superproject's own origin; TLS settings, proxies and the SSH key apply to all.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid};
use sha2::{Digest, Sha256};

use crate::export::Submodule;
use crate::git::{Cancel, GitError, PrivateRepo, RefTarget, Source, UNSHALLOW};
use crate::selection::Selection;
use crate::transport::HttpUrl;
use crate::tree_policy::{Refusal, RefusalReason, check_submodule_host};

/// `--submodules`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SubmoduleMode {
    /// Submodules and theirs, to any depth (as `git submodule update --init --recursive`).
    #[default]
    Recursive,
    /// The superproject's own submodules only.
    TopLevel,
    /// None: gitlinks are left out of the published tree.
    Off,
}

/// Deeper nesting than this is refused (a cycle, or a mistake).
const MAX_NESTING: usize = 8;

/// What the worker needs to fetch submodules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubmoduleRequest {
    pub mode: SubmoduleMode,
    pub selection: Selection,
    /// Where the submodules' repositories live (`.git-sync/modules`).
    pub dir: PathBuf,
}

/// One `[submodule "name"]` section of `.gitmodules`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleEntry {
    pub name: String,
    pub path: String,
    pub url: String,
    /// `shallow = true`: fetched at depth 1.
    pub shallow: bool,
    /// `update = none`: not checked out by git, not published by git-sync.
    pub skip: bool,
}

/// Fetches the submodules of `commit` (in `repo`, fetched from `source`) that the request
/// wants; returns them outermost first.
pub fn fetch_submodules(
    repo: &PrivateRepo,
    source: &Source,
    commit: Oid,
    request: &SubmoduleRequest,
    cancel: &Cancel,
) -> Result<Vec<Submodule>, GitError> {
    let mut walk = Walk {
        request,
        cancel,
        found: Vec::new(),
    };
    if request.mode != SubmoduleMode::Off {
        walk.repository(repo, source, commit, "", 0)?;
    }
    Ok(walk.found)
}

struct Walk<'a> {
    request: &'a SubmoduleRequest,
    cancel: &'a Cancel,
    found: Vec<Submodule>,
}

impl Walk<'_> {
    /// The submodules of `commit` in `repo`, whose paths start with `prefix`.
    fn repository(
        &mut self,
        repo: &PrivateRepo,
        source: &Source,
        commit: Oid,
        prefix: &str,
        nesting: usize,
    ) -> Result<(), GitError> {
        let (request, cancel) = (self.request, self.cancel);
        let git = repo.repository();
        let tree = git
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| corrupt(format!("reading commit {commit}"), e))?;
        let Some(entry) = tree.get_name(".gitmodules") else {
            return Ok(());
        };
        let blob = git
            .find_blob(entry.id())
            .map_err(|e| corrupt(format!("reading .gitmodules of {commit}"), e))?;
        let modules = parse_gitmodules(&String::from_utf8_lossy(blob.content())).map_err(|e| {
            GitError::Git {
                context: format!("{prefix}.gitmodules of commit {commit}"),
                message: e,
                corrupt: false,
            }
        })?;
        for module in modules {
            let path = format!("{prefix}{}", module.path);
            let Ok(gitlink) = tree.get_path(Path::new(&module.path)) else {
                continue; // a stale entry: nothing at that path
            };
            if gitlink.kind() != Some(ObjectType::Commit)
                || module.skip
                || !request.selection.touches(&path)
            {
                continue;
            }
            if nesting >= MAX_NESTING {
                return Err(GitError::Git {
                    context: format!("submodule {path}"),
                    message: format!("submodules nest deeper than {MAX_NESTING} levels"),
                    corrupt: false,
                });
            }
            let url = resolve_url(&source.url, &module.url);
            let failed = |message: String| GitError::Git {
                context: format!(
                    "submodule {path} ({})",
                    crate::credentials::redact_url(&url)
                ),
                message,
                corrupt: false,
            };
            check_url(&source.url, &url, &source.limits.submodule_urls).map_err(|why| {
                GitError::Refused(Refusal::new(
                    RefusalReason::SubmoduleUrl,
                    format!(
                        "submodule {path} ({}) is not fetched: {why}",
                        crate::credentials::redact_url(&url)
                    ),
                ))
            })?;
            let depth = if module.shallow { 1 } else { source.depth };
            let sub_source = submodule_source(source, url.clone(), gitlink.id(), depth);
            let dir = request.dir.join(repo_name(&url));
            let (sub_repo, _) = PrivateRepo::open_or_init(&dir, None)?;
            fetch_commit(&sub_repo, &sub_source, gitlink.id(), cancel).map_err(|e| match e {
                GitError::Cancelled => GitError::Cancelled,
                other => failed(other.to_string()),
            })?;
            tracing::debug!(path = %path, commit = %gitlink.id(), "submodule fetched");
            self.found.push(Submodule {
                path: path.clone(),
                repo: dir,
                commit: gitlink.id(),
            });
            if request.mode == SubmoduleMode::Recursive {
                self.repository(
                    &sub_repo,
                    &sub_source,
                    gitlink.id(),
                    &format!("{path}/"),
                    nesting + 1,
                )?;
            }
        }
        Ok(())
    }
}

fn corrupt(context: String, e: git2::Error) -> GitError {
    GitError::Git {
        context,
        message: e.message().to_string(),
        corrupt: true,
    }
}

/// The commit into the submodule's repository, as shallow as the server allows.
fn fetch_commit(
    repo: &PrivateRepo,
    source: &Source,
    commit: Oid,
    cancel: &Cancel,
) -> Result<(), GitError> {
    if repo.has_commit(commit) {
        return Ok(());
    }
    let depth = if source.depth == 0 || !source.transport_allows_depth() {
        0
    } else {
        i32::try_from(source.depth).unwrap_or(i32::MAX)
    };
    // By id (servers with uploadpack.allowReachableSHA1InWant and the like), then the remote's
    // HEAD (where a submodule usually points), then everything.
    let by_id = [format!("+{commit}:refs/git-sync/target")];
    let head = ["+HEAD:refs/git-sync/head".to_string()];
    let all = [
        "+refs/heads/*:refs/git-sync/heads/*".to_string(),
        "+refs/tags/*:refs/git-sync/tags/*".to_string(),
    ];
    let mut last = None;
    for (specs, shallow) in [(&by_id[..], true), (&head[..], true), (&all[..], false)] {
        let depth = match (shallow, repo.repository().is_shallow()) {
            (true, _) => depth,
            // the earlier attempts may have left a shallow repository: deepen it entirely
            (false, true) => UNSHALLOW,
            (false, false) => 0,
        };
        match repo.fetch_specs(source, specs, depth, cancel) {
            Err(GitError::Cancelled) => return Err(GitError::Cancelled),
            Err(e) => last = Some(e),
            Ok(()) => {}
        }
        if repo.has_commit(commit) {
            return Ok(());
        }
    }
    Err(GitError::Git {
        context: format!("fetching commit {commit}"),
        message: match last {
            Some(e) => format!("not on any branch or tag of the remote ({e})"),
            None => "not on any branch or tag of the remote".to_string(),
        },
        corrupt: false,
    })
}

/// The submodule's source: the superproject's settings, its login only for the same origin.
fn submodule_source(parent: &Source, url: String, commit: Oid, depth: u32) -> Source {
    let same_origin = match (HttpUrl::parse(&parent.url), HttpUrl::parse(&url)) {
        (Some(a), Some(b)) => a.origin == b.origin,
        _ => false,
    };
    let mut credentials = parent.credentials.clone();
    let mut http = parent.http.clone();
    if !same_origin {
        credentials.username = None;
        credentials.password_file = None;
        http.bearer_token_file = None;
    }
    Source {
        url,
        target: RefTarget::Sha(commit),
        depth,
        credentials,
        http,
        limits: parent.limits.clone(),
    }
}

/// The directory name of a URL's repository under `.git-sync/modules`.
fn repo_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    format!("{}.git", hex::encode(&digest[..12]))
}

fn is_local(url: &str) -> bool {
    url.starts_with("file://") || url.starts_with('/') || url.starts_with('.')
}

/// Refuses what a hostile `.gitmodules` could use to reach into the container.
fn check_url(parent: &str, url: &str, allow: &[String]) -> Result<(), String> {
    if url.is_empty() || url.starts_with('-') {
        return Err(format!("the URL {url:?} is not allowed"));
    }
    if !allow.is_empty() {
        return if allow.iter().any(|prefix| url.starts_with(prefix.as_str())) {
            Ok(())
        } else {
            Err("it is not under any --submodule-url-allow prefix".to_string())
        };
    }
    if is_local(url) {
        return if is_local(parent) {
            Ok(())
        } else {
            Err(format!(
                "the local URL {url:?} is not allowed for a remote superproject (as git's protocol.file.allow=user)"
            ))
        };
    }
    let allowed = ["https://", "http://", "ssh://", "git+ssh://", "git://"]
        .iter()
        .any(|p| url.len() > p.len() && url[..p.len()].eq_ignore_ascii_case(p));
    let scp_like = !url.contains("://") && url.contains(':') && !url.contains("::");
    if allowed || scp_like {
        check_submodule_host(parent, url)
    } else {
        Err(format!(
            "the URL {:?} is not allowed: https, http, ssh and git only",
            crate::credentials::redact_url(url)
        ))
    }
}

/// git's resolution of a submodule URL against its superproject's (`../lib.git`, `./sub`).
pub fn resolve_url(base: &str, url: &str) -> String {
    if !url.starts_with("./") && !url.starts_with("../") {
        return url.to_string();
    }
    let mut base = base.trim_end_matches('/').to_string();
    // scp-like `host:path`: the colon separates like a slash
    let scp_like = !base.contains("://") && base.contains(':');
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let authority_end = base.find("://").map_or(0, |i| {
                i + 3 + base[i + 3..].find('/').unwrap_or(base.len() - i - 3)
            });
            let cut = base[authority_end..]
                .rfind(|c| c == '/' || (scp_like && c == ':'))
                .map(|i| i + authority_end);
            match cut {
                Some(i) if base.as_bytes()[i] == b':' => base.truncate(i + 1),
                Some(i) => base.truncate(i),
                None if authority_end > 0 => base.truncate(authority_end),
                None => base.clear(),
            }
        } else {
            break;
        }
    }
    if base.is_empty() {
        return rest.to_string();
    }
    if base.ends_with(':') {
        format!("{base}{rest}")
    } else {
        format!("{base}/{rest}")
    }
}

/// `.gitmodules` (git's config format): `[submodule "name"]` sections with `path`, `url`,
/// `shallow` and `update`; `#` and `;` comments; quoted values.
pub fn parse_gitmodules(text: &str) -> Result<Vec<ModuleEntry>, String> {
    let mut modules: Vec<ModuleEntry> = Vec::new();
    let mut in_submodule = false;
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: unterminated section header", index + 1))?
                .trim();
            in_submodule = false;
            if let Some(name) = header.strip_prefix("submodule") {
                let name = name.trim();
                let name = name
                    .strip_prefix('"')
                    .and_then(|n| n.strip_suffix('"'))
                    .ok_or_else(|| format!("line {}: expected [submodule \"name\"]", index + 1))?;
                modules.push(ModuleEntry {
                    name: name.to_string(),
                    ..ModuleEntry::default()
                });
                in_submodule = true;
            }
            continue;
        }
        if !in_submodule {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), unquote(v.trim())),
            None => (line.to_ascii_lowercase(), "true".to_string()),
        };
        let Some(module) = modules.last_mut() else {
            continue;
        };
        match key.as_str() {
            "path" => module.path = value.trim_matches('/').to_string(),
            "url" => module.url = value,
            "shallow" => {
                module.shallow = matches!(
                    value.to_ascii_lowercase().as_str(),
                    "true" | "yes" | "on" | "1"
                )
            }
            "update" => module.skip = value == "none",
            _ => {}
        }
    }
    for module in &modules {
        if module.path.is_empty() || module.url.is_empty() {
            return Err(format!(
                "[submodule \"{}\"] needs both a path and a url",
                module.name
            ));
        }
    }
    Ok(modules)
}

fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '#' | ';' if !in_quotes => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {}
            '\\' => {
                if let Some(next) = chars.next() {
                    out.push(match next {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_sections() {
        let text = "# top\n[core]\n\tbare = false\n[submodule \"lib\"]\n\tpath = vendor/lib/\n\turl = ../lib.git ; relative\n[submodule \"docs\"]\n\tpath = docs\n\turl = \"https://example.com/d.git\"\n\tshallow = true\n\tupdate = none\n";
        let m = parse_gitmodules(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].name.as_str(), m[0].path.as_str(), m[0].url.as_str()),
            ("lib", "vendor/lib", "../lib.git")
        );
        assert!(!m[0].shallow && !m[0].skip);
        assert_eq!(m[1].url, "https://example.com/d.git");
        assert!(m[1].shallow && m[1].skip);
        assert!(
            parse_gitmodules("[submodule \"x\"]\npath = x\n")
                .unwrap_err()
                .contains("url")
        );
    }

    #[test]
    fn relative_urls_resolve_as_git_does() {
        for (base, url, want) in [
            (
                "https://host/org/super.git",
                "../lib.git",
                "https://host/org/lib.git",
            ),
            (
                "https://host/org/super.git/",
                "../../other/lib.git",
                "https://host/other/lib.git",
            ),
            ("https://host/super", "./sub", "https://host/super/sub"),
            (
                "git://127.0.0.1:9418/super.git",
                "../lib.git",
                "git://127.0.0.1:9418/lib.git",
            ),
            (
                "git@host:org/super.git",
                "../lib.git",
                "git@host:org/lib.git",
            ),
            ("git@host:super.git", "../lib.git", "git@host:lib.git"),
            ("/srv/git/super.git", "../lib.git", "/srv/git/lib.git"),
            (
                "https://host/a.git",
                "https://elsewhere/b.git",
                "https://elsewhere/b.git",
            ),
        ] {
            assert_eq!(resolve_url(base, url), want, "{base} + {url}");
        }
    }

    #[test]
    fn hostile_urls_are_refused() {
        let remote = "https://host/super.git";
        assert!(check_url(remote, "https://host/lib.git", &[]).is_ok());
        assert!(check_url(remote, "git@host:lib.git", &[]).is_ok());
        assert!(check_url(remote, "git://host/lib.git", &[]).is_ok());
        assert!(
            check_url(remote, "file:///etc", &[])
                .unwrap_err()
                .contains("protocol.file.allow")
        );
        assert!(check_url(remote, "/var/run/secrets", &[]).is_err());
        assert!(check_url(remote, "ext::sh -c touch% /tmp/pwned", &[]).is_err());
        assert!(check_url(remote, "-uhost:x", &[]).is_err());
        assert!(check_url(remote, "ftp://host/x", &[]).is_err());
        assert!(check_url("/srv/super.git", "/srv/lib.git", &[]).is_ok());
        assert!(check_url(remote, "http://169.254.169.254/latest", &[]).is_err());
        let allow = ["https://host/".to_string()];
        assert!(check_url(remote, "https://host/lib.git", &allow).is_ok());
        assert!(check_url(remote, "https://host.evil/lib.git", &allow).is_err());
        assert!(check_url(remote, "https://github.com/o/r", &allow).is_err());
    }

    #[test]
    fn a_login_goes_to_the_superprojects_origin_only() {
        let parent = Source {
            url: "https://git.example.com/org/super.git".into(),
            target: RefTarget::Head,
            depth: 1,
            credentials: crate::credentials::Credentials {
                username: Some("u".into()),
                password_file: Some("/pw".into()),
                ssh_key_file: Some("/key".into()),
                ssh_known_hosts: None,
            },
            http: crate::transport::HttpSettings {
                bearer_token_file: Some("/token".into()),
                ca_file: Some("/ca".into()),
                ..Default::default()
            },
            limits: Default::default(),
        };
        let same = submodule_source(
            &parent,
            "https://git.example.com/org/lib.git".into(),
            Oid::ZERO_SHA1,
            1,
        );
        assert!(same.credentials.password_file.is_some() && same.http.bearer_token_file.is_some());
        let other = submodule_source(
            &parent,
            "https://other.example.com/lib.git".into(),
            Oid::ZERO_SHA1,
            1,
        );
        assert!(other.credentials.username.is_none() && other.credentials.password_file.is_none());
        assert!(other.http.bearer_token_file.is_none());
        assert_eq!(other.http.ca_file.as_deref(), Some(Path::new("/ca")));
        assert_eq!(
            other.credentials.ssh_key_file.as_deref(),
            Some(Path::new("/key"))
        );
    }
}
