//! Which part of the repository is published: `--subpath` (one directory becomes the root of
//! the published tree) and `--sparse-path` (only these paths under it are exported, with their
//! parent directories; like git's sparse checkout, without the cone mode's files at the root).

/// The wanted part of each revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// `a/b`: no leading, trailing or doubled slashes; None for the whole repository.
    pub subpath: Option<String>,
    /// Paths relative to the subpath, same form; empty for everything under it.
    pub sparse: Vec<String>,
}

/// What to do with one path of the published tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wanted, with everything under it.
    All,
    /// A directory on the way to wanted paths: created, its entries decided one by one.
    Partial,
    Skip,
}

impl Selection {
    pub fn parse(subpath: Option<&str>, sparse: &[String]) -> Result<Selection, String> {
        let subpath = subpath
            .map(|s| normalize(s).map_err(|e| format!("--subpath {s:?}: {e}")))
            .transpose()?
            .filter(|s| !s.is_empty());
        let mut paths = Vec::new();
        for p in sparse {
            let n = normalize(p).map_err(|e| format!("--sparse-path {p:?}: {e}"))?;
            if n.is_empty() {
                return Err(format!(
                    "--sparse-path {p:?} names the whole tree: leave --sparse-path out"
                ));
            }
            paths.push(n);
        }
        paths.sort();
        paths.dedup();
        Ok(Selection {
            subpath,
            sparse: paths,
        })
    }

    pub fn is_everything(&self) -> bool {
        self.subpath.is_none() && self.sparse.is_empty()
    }

    /// `rel`: a path of the published tree ("" for its root).
    pub fn decide(&self, rel: &str) -> Decision {
        if self.sparse.is_empty() {
            return Decision::All;
        }
        let mut decision = Decision::Skip;
        for wanted in &self.sparse {
            if within(rel, wanted) {
                return Decision::All;
            }
            if rel.is_empty() || within(wanted, rel) {
                decision = Decision::Partial;
            }
        }
        decision
    }

    /// The path in the repository of a path of the published tree.
    pub fn repo_path(&self, rel: &str) -> String {
        match (&self.subpath, rel.is_empty()) {
            (Some(sub), true) => sub.clone(),
            (Some(sub), false) => format!("{sub}/{rel}"),
            (None, _) => rel.to_string(),
        }
    }

    /// Whether anything at or under `repo_path` (a path in the repository) is published:
    /// a submodule there needs fetching.
    pub fn touches(&self, repo_path: &str) -> bool {
        let rel = match &self.subpath {
            None => repo_path,
            Some(sub) if repo_path == sub => "",
            Some(sub) => match repo_path
                .strip_prefix(sub.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                Some(r) => r,
                // a submodule that holds the subpath is not supported (the export refuses it)
                None => return false,
            },
        };
        self.decide(rel) != Decision::Skip
    }
}

/// `path` equals `dir` or lies under it.
fn within(path: &str, dir: &str) -> bool {
    path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

fn normalize(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts
        .iter()
        .any(|p| *p == ".." || p.eq_ignore_ascii_case(".git"))
    {
        return Err("must stay inside the repository (no `..` or `.git`)".into());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_escapes_refused() {
        let s = Selection::parse(
            Some("/apps//web/"),
            &["./conf/".into(), "conf".into(), "b".into()],
        )
        .unwrap();
        assert_eq!(s.subpath.as_deref(), Some("apps/web"));
        assert_eq!(s.sparse, vec!["b", "conf"]);
        assert!(
            Selection::parse(Some("a/../b"), &[])
                .unwrap_err()
                .contains("--subpath")
        );
        assert!(Selection::parse(None, &[".git/config".into()]).is_err());
        assert!(
            Selection::parse(None, &["/".into()])
                .unwrap_err()
                .contains("whole tree")
        );
        assert!(Selection::parse(Some("/"), &[]).unwrap().is_everything());
    }

    #[test]
    fn decisions() {
        let s = Selection::parse(None, &["services/api".into(), "shared/lib.yaml".into()]).unwrap();
        assert_eq!(s.decide(""), Decision::Partial);
        assert_eq!(s.decide("services"), Decision::Partial);
        assert_eq!(s.decide("services/api"), Decision::All);
        assert_eq!(s.decide("services/api/x/y"), Decision::All);
        assert_eq!(s.decide("services/apis"), Decision::Skip);
        assert_eq!(s.decide("services/web"), Decision::Skip);
        assert_eq!(s.decide("shared"), Decision::Partial);
        assert_eq!(s.decide("shared/lib.yaml"), Decision::All);
        assert_eq!(s.decide("README"), Decision::Skip);
        assert_eq!(Selection::default().decide("anything"), Decision::All);
    }

    #[test]
    fn submodules_are_wanted_when_the_selection_reaches_them() {
        let s = Selection::parse(Some("apps"), &["web".into()]).unwrap();
        assert_eq!(s.repo_path("web/x"), "apps/web/x");
        assert!(s.touches("apps/web/vendor"));
        assert!(s.touches("apps"));
        assert!(!s.touches("apps/api/vendor"));
        assert!(!s.touches("lib"));
        assert!(Selection::default().touches("lib"));
    }
}
