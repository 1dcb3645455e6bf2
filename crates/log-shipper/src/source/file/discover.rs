//! Which files an input reads: glob patterns, minus exclusions, and the directories to watch
//! for events (the part of each pattern before its first wildcard).

use std::path::{Path, PathBuf};

/// Include and exclude patterns.
#[derive(Debug, Clone)]
pub struct Globs {
    include: Vec<String>,
    /// Matched against the file name and the full path.
    exclude: Vec<glob::Pattern>,
}

impl Globs {
    /// Checks the patterns; the error names the pattern.
    pub fn new(include: Vec<String>, exclude: &[String]) -> Result<Self, String> {
        for p in &include {
            glob::Pattern::new(p).map_err(|e| format!("`{p}`: {e}"))?;
            if !Path::new(p).is_absolute() {
                return Err(format!("`{p}`: give an absolute path"));
            }
        }
        let exclude = exclude
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("`{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { include, exclude })
    }

    /// The regular files the patterns match now.
    pub fn matches(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.include {
            let Ok(paths) = glob::glob(pattern) else {
                continue;
            };
            for path in paths.filter_map(Result::ok) {
                if self.excluded(&path) || !path.is_file() {
                    continue;
                }
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
        out
    }

    fn excluded(&self, path: &Path) -> bool {
        let name = path.file_name().map(Path::new);
        self.exclude
            .iter()
            .any(|p| p.matches_path(path) || name.is_some_and(|n| p.matches_path(n)))
    }

    /// Directories to watch for events, and whether recursively.
    pub fn watch_roots(&self) -> Vec<(PathBuf, bool)> {
        let mut roots: Vec<(PathBuf, bool)> = Vec::new();
        for pattern in &self.include {
            let path = Path::new(pattern);
            let mut base = PathBuf::new();
            let mut rest = 0;
            let components: Vec<_> = path.components().collect();
            for (i, c) in components.iter().enumerate() {
                let s = c.as_os_str().to_string_lossy();
                if s.contains(['*', '?', '[', '{']) {
                    rest = components.len() - i;
                    break;
                }
                base.push(c);
            }
            // A pattern without wildcards names a file: watch its directory.
            let (dir, recursive) = if rest == 0 {
                (base.parent().map(Path::to_path_buf).unwrap_or(base), false)
            } else {
                (base, rest > 1)
            };
            if let Some(existing) = roots.iter_mut().find(|(d, _)| *d == dir) {
                existing.1 |= recursive;
            } else {
                roots.push((dir, recursive));
            }
        }
        roots
    }
}

/// Default exclusions: rotated files that were compressed.
pub const DEFAULT_EXCLUDE: &[&str] = &["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_minus_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.log", "b.log", "c.log.gz", "d.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.log")).unwrap();
        let pattern = format!("{}/*.log*", dir.path().display());
        let exclude: Vec<String> = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        let globs = Globs::new(vec![pattern], &exclude).unwrap();
        let mut got = globs.matches();
        got.sort();
        assert_eq!(
            got,
            vec![dir.path().join("a.log"), dir.path().join("b.log")]
        );
    }

    #[test]
    fn watch_roots_stop_at_the_first_wildcard() {
        let g = Globs::new(
            vec![
                "/var/log/app/*.log".into(),
                "/var/log/app/x.log".into(),
                "/data/*/logs/*.log".into(),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            g.watch_roots(),
            vec![
                (PathBuf::from("/var/log/app"), false),
                (PathBuf::from("/data"), true)
            ]
        );
        assert!(Globs::new(vec!["relative/*.log".into()], &[]).is_err());
        assert!(Globs::new(vec!["/a/[".into()], &[]).is_err());
    }
}
