//! The demo's processes: each in a process group of its own, logging to a file, stopped
//! gracefully (SIGTERM, then a kill) when the demo ends.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Processes {
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Processes {
    pub fn new(logs: PathBuf) -> Self {
        Self {
            children: Vec::new(),
            logs,
        }
    }

    pub fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<()> {
        self.spawn_with_env(name, program, args, &[])
    }

    pub fn spawn_with_env(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let log_path = self.logs.join(log_name(name));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        // A process group of its own: a Ctrl-C in the terminal then reaches the demo only, which
        // stops each child with one SIGTERM and a graceful drain (a second signal, the terminal's
        // SIGINT on top, would make the sidecars exit at once, status 130).
        let child = Command::new(program)
            .args(args)
            .process_group(0)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Whether the process called `name` has exited (it is reaped and its status kept).
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, child)| child.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        println!("  stopped {name:<22} ({status})");
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        println!("  killed  {name:<22} (did not stop in time)");
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pod-b/app` logs to `pod-b-app.log`.
pub fn log_name(process: &str) -> String {
    format!("{}.log", process.replace('/', "-"))
}

pub fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace first (scripts/demo.sh does)",
            path.display()
        );
    }
    Ok(path)
}

pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}
