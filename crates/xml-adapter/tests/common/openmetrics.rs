//! The real binary's `check`, and Python prometheus_client's strict OpenMetrics parser, which
//! refuses a whole scrape for one fault that promtool (the 0.0.4 text format only) does not see.

use std::path::Path;
use std::process::{Command, Stdio};

/// `xml-adapter check --format FORMAT`: (exit code, stdout, stderr).
pub fn check(mapping: &Path, input: &Path, format: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .arg("check")
        .arg("--config")
        .arg(mapping)
        .arg("--input")
        .arg(input)
        .args(["--format", format])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The strict parser must be there: a missing one is a broken setup, said plainly.
pub fn require_strict_parser() {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs Python's prometheus_client (PyPI prometheus-client): run scripts/install-test-deps.sh"
    );
}

/// Runs the Python `script` (which imports the strict parser as `p` and reads the page from
/// stdin) on `text`: its stdout, or the parser's error.
pub fn strict_parser(script: &str, text: &str) -> Result<String, String> {
    let script = format!(
        "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n{script}"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
