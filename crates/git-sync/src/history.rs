//! The history between the published revision and the new one, read from the commit objects:
//! is the new one a fast-forward (or a force-push), and which commits came in since (for
//! `--verify-signatures=all`). A shallow private repository is deepened, first by a bounded
//! step, then entirely, until the answer is known.
//!
//! Parent links are read as written in the commit objects, not through the shallow grafts, so a
//! depth-1 fetch on top of the previously fetched revision still shows how the two relate.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use git2::{ObjectType, Odb, Oid};

use crate::git::{
    Advertised, Cancel, DEEPEN_STEP, GitError, PrivateRepo, Source, TARGET_REF, UNSHALLOW,
};

/// How the new revision relates to the previously published one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancestry {
    /// Nothing was published before.
    First,
    Same,
    FastForward,
    /// The old revision is not an ancestor of the new one (force-push, or a switch to another branch).
    Rewritten,
}

enum Reach {
    Yes,
    No,
    Unknown,
}

/// The commits reachable from the new revision and not from the old one.
enum Since {
    Complete(Vec<Oid>),
    /// A commit of the range has a parent that is not in the repository (shallow).
    Incomplete,
}

impl PrivateRepo {
    /// Is `old` an ancestor of `new`?
    pub fn ancestry(
        &self,
        source: &Source,
        advertised: &Advertised,
        old: Option<Oid>,
        new: Oid,
        cancel: &Cancel,
    ) -> Result<Ancestry, GitError> {
        let Some(old) = old else {
            return Ok(Ancestry::First);
        };
        if old == new {
            return Ok(Ancestry::Same);
        }
        let mut deepen = [DEEPEN_STEP, UNSHALLOW].into_iter();
        loop {
            match reaches(&self.odb()?, new, old) {
                Reach::Yes => return Ok(Ancestry::FastForward),
                Reach::No => return Ok(Ancestry::Rewritten),
                Reach::Unknown => {}
            }
            if !self.deepen(source, advertised, deepen.next(), cancel)? {
                return Ok(Ancestry::Rewritten);
            }
        }
    }

    /// Every commit reachable from `new` and not from `old`, on all parents, `new` first; just
    /// `new` when nothing was published. The history is deepened until the range is complete:
    /// a commit whose parent is missing could hide an unchecked commit.
    pub fn commits_since(
        &self,
        source: &Source,
        advertised: &Advertised,
        old: Option<Oid>,
        new: Oid,
        cancel: &Cancel,
    ) -> Result<Vec<Oid>, GitError> {
        let Some(old) = old else {
            return Ok(vec![new]);
        };
        let mut deepen = [DEEPEN_STEP, UNSHALLOW].into_iter();
        loop {
            if let Since::Complete(commits) = since(&self.odb()?, new, old)? {
                return Ok(commits);
            }
            if !self.deepen(source, advertised, deepen.next(), cancel)? {
                return Err(GitError::Git {
                    context: format!("listing the commits between {old} and {new}"),
                    message: "the history is incomplete and cannot be fetched deeper".into(),
                    corrupt: false,
                });
            }
        }
    }

    fn odb(&self) -> Result<Odb<'_>, GitError> {
        self.repo.odb().map_err(|e| GitError::Git {
            context: "opening the object database".into(),
            message: e.message().to_string(),
            corrupt: true,
        })
    }

    /// Fetches more of the target's history. Ok(false): it cannot be deepened further.
    fn deepen(
        &self,
        source: &Source,
        advertised: &Advertised,
        depth: Option<i32>,
        cancel: &Cancel,
    ) -> Result<bool, GitError> {
        let (Some(depth), Some(refname)) = (depth, &advertised.refname) else {
            return Ok(false);
        };
        if !source.transport_allows_depth() {
            return Ok(false);
        }
        tracing::debug!(depth, "deepening the shallow history");
        self.fetch_specs(source, &[format!("+{refname}:{TARGET_REF}")], depth, cancel)?;
        Ok(true)
    }
}

/// Breadth-first from `from` over parent links; Unknown when an object on the way is missing.
fn reaches(odb: &Odb<'_>, from: Oid, wanted: Oid) -> Reach {
    let mut queue = VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    let mut missing = false;
    while let Some(oid) = queue.pop_front() {
        if oid == wanted {
            return Reach::Yes;
        }
        let Some(commit) = read_commit(odb, oid) else {
            missing = true;
            continue;
        };
        for parent in commit.parents {
            if seen.insert(parent) {
                queue.push_back(parent);
            }
        }
    }
    if missing { Reach::Unknown } else { Reach::No }
}

const NEW: u8 = 1;
const OLD: u8 = 2;

/// git's "paint down" walk (as `git rev-list new ^old`): commits newest first by committer
/// time, each marked with the sides it is reachable from; the walk ends when every commit
/// still queued is reachable from `old`. Marks only ever say what is true, so a commit of the
/// range is never left out; clock skew can at worst keep an old commit in the range (a
/// refusal, never a pass).
fn since(odb: &Odb<'_>, new: Oid, old: Oid) -> Result<Since, GitError> {
    let mut marks: HashMap<Oid, u8> = HashMap::from([(new, NEW)]);
    *marks.entry(old).or_default() |= OLD;
    let mut queue = BinaryHeap::new();
    let mut times: HashMap<Oid, i64> = HashMap::new();
    for oid in [new, old] {
        if let Some(c) = read_commit(odb, oid) {
            times.insert(oid, c.time);
            queue.push((c.time, oid));
        } else if oid == new {
            return Err(GitError::Git {
                context: format!("reading commit {new}"),
                message: "not in the private repository".into(),
                corrupt: true,
            });
        }
    }
    let mut parents_of: HashMap<Oid, Vec<Oid>> = HashMap::new();
    while queue
        .iter()
        .any(|(_, oid)| marks.get(oid).is_some_and(|m| m & OLD == 0))
    {
        let Some((_, oid)) = queue.pop() else { break };
        let mark = marks.get(&oid).copied().unwrap_or(0);
        let parents = match parents_of.get(&oid) {
            Some(p) => p.clone(),
            None => match read_commit(odb, oid) {
                Some(c) => {
                    parents_of.insert(oid, c.parents.clone());
                    c.parents
                }
                // Only a commit of the range needs its parents; one of old's side may be cut.
                None if mark & OLD == 0 => return Ok(Since::Incomplete),
                None => continue,
            },
        };
        for parent in parents {
            let before = marks.get(&parent).copied().unwrap_or(0);
            let after = before | mark;
            if after == before {
                continue;
            }
            marks.insert(parent, after);
            let time = match times.get(&parent) {
                Some(t) => *t,
                None => match read_commit(odb, parent) {
                    Some(c) => {
                        times.insert(parent, c.time);
                        parents_of.insert(parent, c.parents);
                        c.time
                    }
                    None if after & OLD == 0 => return Ok(Since::Incomplete),
                    None => continue,
                },
            };
            queue.push((time, parent));
        }
    }
    let mut range: Vec<(i64, Oid)> = marks
        .iter()
        .filter(|(_, m)| **m == NEW)
        .map(|(oid, _)| (times.get(oid).copied().unwrap_or(0), *oid))
        .collect();
    range.sort_by(|a, b| b.cmp(a));
    // A range commit whose parents were never read (the walk ended first) is still complete:
    // its parents are reachable from old, or they would be in the queue.
    Ok(Since::Complete(
        range.into_iter().map(|(_, oid)| oid).collect(),
    ))
}

struct RawCommit {
    parents: Vec<Oid>,
    /// The committer's Unix time.
    time: i64,
}

fn read_commit(odb: &Odb<'_>, oid: Oid) -> Option<RawCommit> {
    let object = odb.read(oid).ok()?;
    if object.kind() != ObjectType::Commit {
        return None;
    }
    Some(parse_commit(object.data()))
}

/// Parent ids and committer time as written in a raw commit object.
fn parse_commit(data: &[u8]) -> RawCommit {
    let mut commit = RawCommit {
        parents: Vec::new(),
        time: 0,
    };
    for line in data.split(|b| *b == b'\n') {
        if line.is_empty() {
            break; // end of the header
        }
        if let Some(hex) = line.strip_prefix(b"parent ")
            && let Some(oid) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| Oid::from_str(h).ok())
        {
            commit.parents.push(oid);
        } else if let Some(rest) = line.strip_prefix(b"committer ")
            && let Some(gt) = rest.iter().rposition(|b| *b == b'>')
        {
            commit.time = std::str::from_utf8(&rest[gt + 1..])
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
        }
    }
    commit
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Repository;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn raw_commit_header_only() {
        let data = format!(
            "tree {}\nparent {}\nparent {}\nauthor a <a@b> 5 +0000\ncommitter c <c@d> 1700000000 +0200\n\nparent {}\n",
            oid(9),
            oid(1),
            oid(2),
            oid(3)
        );
        let c = parse_commit(data.as_bytes());
        assert_eq!(c.parents, vec![oid(1), oid(2)]);
        assert_eq!(c.time, 1_700_000_000);
    }

    /// Writes a commit with these parents at this time (empty tree).
    fn commit(repo: &Repository, parents: &[Oid], time: i64) -> Oid {
        let tree = repo.treebuilder(None).unwrap().write().unwrap();
        let sig =
            git2::Signature::new("t", "t@example.invalid", &git2::Time::new(time, 0)).unwrap();
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, "m", &repo.find_tree(tree).unwrap(), &refs)
            .unwrap()
    }

    fn range(repo: &Repository, new: Oid, old: Oid) -> Vec<Oid> {
        match since(&repo.odb().unwrap(), new, old).unwrap() {
            Since::Complete(c) => c,
            Since::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn since_lists_all_parents_of_merges_but_not_what_old_has() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let root = commit(&repo, &[], 100);
        let old = commit(&repo, &[root], 200);
        // a side branch forked before old, merged after it
        let side1 = commit(&repo, &[root], 150);
        let side2 = commit(&repo, &[side1], 250);
        let main1 = commit(&repo, &[old], 300);
        let merge = commit(&repo, &[main1, side2], 400);
        let new = commit(&repo, &[merge], 500);
        let got: HashSet<Oid> = range(&repo, new, old).into_iter().collect();
        assert_eq!(got, HashSet::from([new, merge, main1, side2, side1]));
        assert_eq!(range(&repo, new, old)[0], new);
        // same revision: nothing new; old ahead of new: nothing new either
        assert!(range(&repo, old, old).is_empty());
        assert!(range(&repo, old, new).is_empty());
        // a force-push: a sibling of old, back to their common parent
        let rewritten = commit(&repo, &[root], 210);
        assert_eq!(range(&repo, rewritten, old), vec![rewritten]);
    }

    #[test]
    fn since_is_incomplete_when_a_range_parent_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let root = commit(&repo, &[], 100);
        let new = commit(&repo, &[root], 200);
        // old is unknown here and new's parent is present: the whole history counts
        let missing = oid(7);
        assert_eq!(
            range(&repo, new, missing)
                .into_iter()
                .collect::<HashSet<_>>(),
            HashSet::from([new, root])
        );
        // a parent that is not in the repository (a shallow boundary)
        let data = format!(
            "tree {}\nparent {missing}\nauthor t <t> 300 +0000\ncommitter t <t> 300 +0000\n\nm\n",
            repo.treebuilder(None).unwrap().write().unwrap()
        );
        let shallow = repo
            .odb()
            .unwrap()
            .write(ObjectType::Commit, data.as_bytes())
            .unwrap();
        assert!(matches!(
            since(&repo.odb().unwrap(), shallow, root).unwrap(),
            Since::Incomplete
        ));
    }
}
