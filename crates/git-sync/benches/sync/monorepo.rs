//! A monorepo of GITSYNC_BENCH_MONO_FILES (100,000) small files in 100 directories: git-sync
//! publishing all of it against `--subpath` to one directory (1,000 files), side by side with
//! the git CLI's full shallow clone and its partial clone with a sparse checkout of that
//! directory (which libgit2 cannot do: it fetches every blob).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use rand::{Rng, SeedableRng};

use crate::{Cost, Proxy, git, measure};

/// One measured way of getting the wanted directory onto disk.
pub struct Row {
    pub cost: Vec<Cost>,
    /// Bytes both ways through the counting proxy, per run.
    pub bytes: Vec<u64>,
    /// Files and bytes of the tree left for the app.
    pub files: u64,
    pub tree_bytes: u64,
}

pub struct Monorepo {
    pub files: usize,
    pub dir_files: usize,
    pub runs: usize,
    pub full_gs: Row,
    pub subpath_gs: Row,
    pub full_cli: Row,
    pub sparse_cli: Row,
}

/// The directory `--subpath` publishes.
const WANTED: &str = "m042";

pub fn generate(srv: &Path, t: &Path, files: usize) {
    let bare = srv.join("mono.git");
    git(
        t,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    git(&bare, &["config", "gc.auto", "0"]);
    // the git CLI's partial clone asks for a blob filter
    git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    let work = t.join("mono-work");
    git(t, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
    git(&work, &["config", "gc.auto", "0"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 =:\n";
    for i in 0..files {
        let dir = work.join(format!("m{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..200)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect();
        let mut f = std::fs::File::create(dir.join(format!("f{i:06}.conf"))).unwrap();
        f.write_all(&body).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "monorepo"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
}

/// Files and bytes under `dir`, leaving out `.git`.
fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

pub fn run(t: &Path, bin: &str, proxy: &Proxy, url: &str, files: usize, runs: usize) -> Monorepo {
    let mut rows: Vec<Row> = (0..4)
        .map(|_| Row {
            cost: Vec::new(),
            bytes: Vec::new(),
            files: 0,
            tree_bytes: 0,
        })
        .collect();
    let gs = |root: &Path, subpath: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "--one-time",
            "--root",
            root.to_str().unwrap(),
            "--repo",
            url,
            "--depth",
            "1",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ]
        .map(String::from)
        .to_vec();
        if subpath {
            a.extend(["--subpath".to_string(), WANTED.to_string()]);
        }
        a
    };
    for i in 0..runs {
        for (k, row) in rows.iter_mut().enumerate() {
            let before = proxy.bytes.load(Ordering::SeqCst);
            let dest = t.join(format!("mono-{k}-{i}"));
            let cost = match k {
                0 | 1 => {
                    let a = gs(&dest, k == 1);
                    let args: Vec<&str> = a.iter().map(String::as_str).collect();
                    measure(t, bin, &args)
                }
                2 => measure(
                    t,
                    "git",
                    &["clone", "-q", "--depth", "1", url, dest.to_str().unwrap()],
                ),
                _ => measure(
                    t,
                    "sh",
                    &[
                        "-c",
                        &format!(
                            "git clone -q --depth 1 --filter=blob:none --sparse {url} {d} && git -C {d} sparse-checkout set {WANTED}",
                            d = dest.display()
                        ),
                    ],
                ),
            };
            row.cost.push(cost);
            row.bytes.push(proxy.bytes.load(Ordering::SeqCst) - before);
            let tree = if k < 2 {
                dest.join("current")
            } else {
                dest.clone()
            };
            let (f, b) = tree_size(&tree);
            (row.files, row.tree_bytes) = (f, b);
            if k == 1 {
                assert_eq!(
                    f as usize,
                    files / 100,
                    "--subpath published the wanted directory only"
                );
            }
            // Keep the disk small: each run starts from nothing anyway.
            let _ = std::fs::remove_dir_all(&dest);
        }
    }
    let mut rows = rows.into_iter();
    let mut next = || rows.next().unwrap();
    Monorepo {
        files,
        dir_files: files / 100,
        runs,
        full_gs: next(),
        subpath_gs: next(),
        full_cli: next(),
        sparse_cli: next(),
    }
}

impl Monorepo {
    pub fn print(&self) {
        let med = |r: &Row, f: fn(&Cost) -> f64| crate::median(r.cost.iter().map(f).collect());
        let rss = |r: &Row| r.cost.iter().map(|c| c.rss_sum_kib).max().unwrap_or(0) as f64 / 1024.0;
        let mb = |r: &Row| crate::median(r.bytes.iter().map(|b| *b as f64).collect()) / 1e6;
        let rows = [
            &self.full_gs,
            &self.subpath_gs,
            &self.full_cli,
            &self.sparse_cli,
        ];
        println!();
        println!(
            "## monorepo: {} files in 100 directories, one directory of {} files wanted ({} runs, medians)",
            self.files, self.dir_files, self.runs
        );
        println!();
        println!(
            "| measure | git-sync, everything | git-sync --subpath {WANTED} | git CLI clone --depth 1 | git CLI partial clone + sparse-checkout {WANTED} | --subpath / everything |"
        );
        println!("|---|---|---|---|---|---|");
        let line = |name: &str, v: [f64; 4], unit: &str, digits: usize| {
            println!(
                "| {name} | {:.digits$} {unit} | {:.digits$} {unit} | {:.digits$} {unit} | {:.digits$} {unit} | {:.2}x |",
                v[0],
                v[1],
                v[2],
                v[3],
                v[1] / v[0]
            );
        };
        line("first sync, wall", rows.map(|r| med(r, |c| c.wall)), "s", 2);
        line("first sync, CPU", rows.map(|r| med(r, |c| c.cpu)), "s", 2);
        line("peak RSS (all processes, sampled)", rows.map(rss), "MiB", 1);
        line("received from the server", rows.map(mb), "MB", 1);
        line(
            "files on disk for the app",
            rows.map(|r| r.files as f64),
            "",
            0,
        );
        line(
            "bytes on disk for the app",
            rows.map(|r| r.tree_bytes as f64 / 1e6),
            "MB",
            1,
        );
    }
}
