//! The config repository, made and changed with git2 (no git program needed).

use std::path::Path;

use git2::{Repository, Signature};

pub fn init(dir: &Path) -> anyhow::Result<Repository> {
    let mut options = git2::RepositoryInitOptions::new();
    options.initial_head("main");
    Ok(Repository::init_opts(dir, &options)?)
}

pub fn commit(repo: &Repository, file: &str, content: &str, message: &str) -> anyhow::Result<()> {
    let workdir = repo
        .workdir()
        .ok_or_else(|| anyhow::anyhow!("the config repository has no work tree"))?;
    std::fs::write(workdir.join(file), content)?;
    let mut index = repo.index()?;
    index.add_path(Path::new(file))?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let author = Signature::now("demo", "demo@demo.local")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &author, &author, message, &tree, &parents)?;
    Ok(())
}
