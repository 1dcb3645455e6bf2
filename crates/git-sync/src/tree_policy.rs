//! What a repository may put in the published tree: a repository is input from whoever can
//! push, and the app reads the tree with its own privileges.
//!
//! - Symlinks must resolve inside the published tree (`--symlinks`): an absolute target, a
//!   `../` that climbs out, a chain through other links that does, or a loop, is refused (the
//!   revision is not published), dropped (the link is left out) or allowed as it is.
//! - Names that could escape or confuse (`..`, `.git` at any depth, `/`, NUL, control
//!   characters such as a newline) refuse the revision, whatever `--symlinks` says.
//! - `--max-file-size`, `--max-tree-size` and `--max-fetch-size` bound what a revision may
//!   cost on the volume and on the network.
//!
//! A refusal keeps the published tree and holds the revision back until the ref moves.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// `--symlinks`.
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
pub enum SymlinkPolicy {
    /// A revision holding a link that leaves the tree is not published.
    #[default]
    Refuse,
    /// Links that leave the tree are left out of it (counted and logged).
    Drop,
    /// Links are published as the repository has them.
    Allow,
}

/// Limits applied by the export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeLimits {
    pub symlinks: SymlinkPolicy,
    /// Largest file (blob) in bytes.
    pub max_file_size: Option<u64>,
    /// Largest published tree: the sum of its files' sizes.
    pub max_tree_size: Option<u64>,
}

/// Limits applied by the network worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchLimits {
    /// Most bytes one fetch may receive.
    pub max_fetch_size: Option<u64>,
    /// `--submodule-url-allow`: when not empty, a submodule URL must start with one of these.
    pub submodule_urls: Vec<String>,
}

/// Why a revision was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RefusalReason {
    SymlinkEscape,
    UnsafeName,
    FileSize,
    TreeSize,
    FetchSize,
    SubmoduleUrl,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 6] = [
        RefusalReason::SymlinkEscape,
        RefusalReason::UnsafeName,
        RefusalReason::FileSize,
        RefusalReason::TreeSize,
        RefusalReason::FetchSize,
        RefusalReason::SubmoduleUrl,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::SymlinkEscape => "symlink_escape",
            RefusalReason::UnsafeName => "unsafe_name",
            RefusalReason::FileSize => "file_size",
            RefusalReason::TreeSize => "tree_size",
            RefusalReason::FetchSize => "fetch_size",
            RefusalReason::SubmoduleUrl => "submodule_url",
        }
    }
}

/// A revision the policy does not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{detail}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

/// Whether a tree entry name may be written; `Err` names the problem.
pub fn check_name(bytes: &[u8]) -> Result<&str, Refusal> {
    let shown = || format!("{:?}", String::from_utf8_lossy(bytes));
    let refuse = |why: &str| {
        Err(Refusal::new(
            RefusalReason::UnsafeName,
            format!("the tree holds an unsafe name {}: {why}", shown()),
        ))
    };
    let Ok(name) = std::str::from_utf8(bytes) else {
        return refuse("not UTF-8");
    };
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return refuse("it could leave its directory");
    }
    if name.eq_ignore_ascii_case(".git") {
        return refuse("a .git directory would be taken for a repository by git tools");
    }
    if name.chars().any(char::is_control) {
        return refuse(
            "control characters (a newline, NUL) mislead tools that read names line by line",
        );
    }
    Ok(name)
}

/// Most links followed while resolving one (Linux's MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Where a link in the tree leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCheck {
    /// Inside the tree (or dangling inside it).
    Inside,
    /// Out of the tree, with why.
    Escapes(String),
}

/// Resolves the link at `rel` (relative to `tree`) as the kernel would, following the links it
/// meets on the way, without ever leaving `tree` on disk: every step is checked.
pub fn check_link(tree: &Path, rel: &Path) -> std::io::Result<LinkCheck> {
    let mut at: Vec<OsString> = rel
        .parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut hops = 0usize;
    // Reads one link and queues its target; Some(why) when the target alone leaves the tree.
    let mut follow = |link: &Path, pending: &mut VecDeque<OsString>| {
        hops += 1;
        if hops > MAX_HOPS {
            return Ok(Some(format!(
                "more than {MAX_HOPS} links in a row (a loop)"
            )));
        }
        let target = std::fs::read_link(tree.join(link))?;
        if target.is_absolute() {
            return Ok(Some(format!(
                "{} points at the absolute path {}",
                link.display(),
                target.display()
            )));
        }
        for part in target.components().rev() {
            match part {
                Component::Normal(n) => pending.push_front(n.to_os_string()),
                Component::ParentDir => pending.push_front(OsString::from("..")),
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(None)
    };
    if let Some(why) = follow(rel, &mut pending)? {
        return Ok(LinkCheck::Escapes(why));
    }
    // Once a component is missing, the rest is checked as plain names: nothing can be there.
    let mut missing = false;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if at.pop().is_none() {
                return Ok(LinkCheck::Escapes(format!(
                    "{} climbs out of the tree with ..",
                    rel.display()
                )));
            }
            continue;
        }
        at.push(part);
        if missing {
            continue;
        }
        let here: PathBuf = at.iter().collect();
        match std::fs::symlink_metadata(tree.join(&here)) {
            Ok(meta) if meta.file_type().is_symlink() => {
                at.pop();
                if let Some(why) = follow(&here, &mut pending)? {
                    return Ok(LinkCheck::Escapes(format!(
                        "{} leads through {}",
                        rel.display(),
                        why
                    )));
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = true,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => missing = true,
            Err(e) => return Err(e),
        }
    }
    Ok(LinkCheck::Inside)
}

/// Where a URL's host is, as far as its text says (a name resolving to an internal address is
/// not seen: `--submodule-url-allow` is the strict form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostClass {
    /// localhost, 127.0.0.0/8, ::1, 0.0.0.0, ::.
    Loopback,
    /// 169.254.0.0/16 and fe80::/10: where cloud metadata services answer.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7.
    Private,
    /// Any other address or name.
    Other,
}

/// The host of `scheme://[user@]host[:port]/path` or scp-like `[user@]host:path`.
pub fn url_host(url: &str) -> Option<String> {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest,
        None if url.contains(':') => url,
        None => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = if url.contains("://") {
        authority
    } else {
        rest.split(':').next().unwrap_or("")
    };
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then(|| host.trim_end_matches('.').to_ascii_lowercase())
}

pub fn host_class(host: &str) -> HostClass {
    use std::net::IpAddr;
    if host == "localhost" || host.ends_with(".localhost") {
        return HostClass::Loopback;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let [a, b, ..] = ip.octets();
            if ip.is_loopback() || ip.is_unspecified() {
                HostClass::Loopback
            } else if ip.is_link_local() {
                HostClass::LinkLocal
            } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
                HostClass::Private
            } else {
                HostClass::Other
            }
        }
        Ok(IpAddr::V6(ip)) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return host_class(&v4.to_string());
            }
            let first = ip.segments()[0];
            if ip.is_loopback() || ip.is_unspecified() {
                HostClass::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                HostClass::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                HostClass::Private
            } else {
                HostClass::Other
            }
        }
        Err(_) => HostClass::Other,
    }
}

/// A submodule URL's host against its superproject's: an internal address (loopback,
/// link-local, private) is refused unless the superproject is on one of the same kind.
pub fn check_submodule_host(parent: &str, url: &str) -> Result<(), String> {
    let Some(host) = url_host(url) else {
        return Ok(());
    };
    let class = host_class(&host);
    if class == HostClass::Other {
        return Ok(());
    }
    let parent_class = url_host(parent).map_or(HostClass::Other, |h| host_class(&h));
    if parent_class == class {
        return Ok(());
    }
    Err(format!(
        "its host {host} is a {} address and the superproject's is not: give --submodule-url-allow to allow it",
        match class {
            HostClass::Loopback => "loopback",
            HostClass::LinkLocal => "link-local",
            _ => "private",
        }
    ))
}

/// `--max-*-size` values: bytes, or with a K, M or G suffix (powers of 1024, an optional
/// `i` and `B`: `512K`, `10MiB`, `1G`); 0 means no limit.
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with K, M or G)"))?;
    let unit = unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit (K, M or G)")),
    };
    let bytes = n
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    Ok((bytes > 0).then_some(bytes))
}

/// A name for logs: the tree path with anything odd escaped.
pub fn shown(path: &Path) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(&path.as_os_str().to_os_string().into_vec())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/file"), "x").unwrap();
        dir
    }

    fn check(t: &Path, link: &str, target: &str) -> LinkCheck {
        symlink(target, t.join(link)).unwrap();
        check_link(t, Path::new(link)).unwrap()
    }

    #[test]
    fn links_inside_the_tree_pass_and_escapes_are_found() {
        let dir = tree();
        let t = dir.path();
        assert_eq!(check(t, "a/ok", "b/file"), LinkCheck::Inside);
        assert_eq!(check(t, "a/b/up", "../../a/b/file"), LinkCheck::Inside);
        assert_eq!(check(t, "dangling", "nothing/here"), LinkCheck::Inside);
        assert_eq!(check(t, "self", "."), LinkCheck::Inside);
        assert!(matches!(
            check(t, "abs", "/etc/passwd"),
            LinkCheck::Escapes(_)
        ));
        assert!(matches!(
            check(t, "a/up", "../../etc"),
            LinkCheck::Escapes(_)
        ));
        assert!(matches!(
            check(t, "gone", "missing/../../x"),
            LinkCheck::Escapes(_)
        ));
        // `self/..` is the tree's parent on disk, though `self/..` looks like the tree itself
        assert!(matches!(
            check(t, "sneaky", "self/.."),
            LinkCheck::Escapes(_)
        ));
        assert!(matches!(check(t, "via", "abs"), LinkCheck::Escapes(_)));
        symlink("loop2", t.join("loop1")).unwrap();
        assert!(matches!(check(t, "loop2", "loop1"), LinkCheck::Escapes(_)));
    }

    #[test]
    fn names_that_could_escape_or_mislead_are_refused() {
        for bad in [
            &b".."[..],
            b".",
            b"",
            b".git",
            b".GIT",
            b"a/b",
            b"a\nb",
            b"a\0b",
            b"\xff",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["README", "..x", ".gitignore", "a b", "é"] {
            assert_eq!(check_name(good.as_bytes()).unwrap(), good);
        }
    }

    #[test]
    fn internal_submodule_hosts_need_an_internal_superproject() {
        assert_eq!(
            url_host("https://u@Git.Example.com:8443/r.git").unwrap(),
            "git.example.com"
        );
        assert_eq!(url_host("git@host:org/r.git").unwrap(), "host");
        assert_eq!(url_host("ssh://[::1]:22/r").unwrap(), "::1");
        let public = "https://git.example.com/super.git";
        for internal in [
            "http://169.254.169.254/latest/meta-data",
            "git://127.0.0.1/r",
            "https://localhost/r",
            "ssh://git@10.0.0.5/r",
            "git@192.168.1.1:r",
            "https://[fe80::1]/r",
            "https://[::ffff:127.0.0.1]/r",
            "http://0.0.0.0/r",
        ] {
            assert!(
                check_submodule_host(public, internal).is_err(),
                "{internal}"
            );
        }
        assert!(check_submodule_host(public, "https://github.com/o/r").is_ok());
        assert!(check_submodule_host("git://127.0.0.1:9/s", "git://127.0.0.1:10/r").is_ok());
        assert!(check_submodule_host("git://127.0.0.1:9/s", "http://169.254.169.254/").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), None);
        assert_eq!(parse_size("1024").unwrap(), Some(1024));
        assert_eq!(parse_size("512K").unwrap(), Some(512 << 10));
        assert_eq!(parse_size("10MiB").unwrap(), Some(10 << 20));
        assert_eq!(parse_size("2G").unwrap(), Some(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5T").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
