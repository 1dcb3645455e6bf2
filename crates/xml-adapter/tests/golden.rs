//! Golden outputs for real documents: each mapping in `tests/mappings` (and the shipped BIND 9
//! mapping) run over real status pages, compared with `tests/golden/*.prom`, and each golden
//! checked by `promtool check metrics`. Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`.

use std::path::{Path, PathBuf};
use std::process::Command;

use xml_adapter::encode::{Format, encode};
use xml_adapter::engine::Engine;
use xml_adapter::mapping::Mapping;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(mapping: &str) -> Engine {
    Engine::new(Mapping::load(&root().join(mapping)).expect("mapping loads"))
}

fn translate(engine: &Engine, fixture: &str) -> xml_adapter::engine::Translation {
    let f = std::fs::File::open(root().join("tests/fixtures").join(fixture)).expect("fixture");
    engine
        .translate(std::io::BufReader::new(f))
        .unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed for this test");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn golden(name: &str, text: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "output differs from {}", path.display());
    promtool_check(text, name);
}

fn check_golden(mapping: &str, fixture: &str, golden_name: &str) -> String {
    let e = engine(mapping);
    let t = translate(&e, fixture);
    let fams: Vec<_> = t.families.iter().collect();
    let text = encode(&fams, Format::Text004);
    golden(golden_name, &text);
    // The OpenMetrics rendering of the same samples must be accepted too.
    let om = encode(&fams, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"));
    text
}

fn parse_expected(path: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn bind9_reproduces_bind_exporter_samples() {
    let mapping = "examples/mappings/bind9.yaml";
    let mut all = String::new();
    for (fixture, g) in [
        ("bind9/server.xml", "bind9_server.prom"),
        ("bind9/zones.xml", "bind9_zones.prom"),
        ("bind9/tasks.xml", "bind9_tasks.prom"),
    ] {
        all.push_str(&check_golden(mapping, fixture, g));
    }
    let served: Vec<(String, f64)> = all
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (s, v) = l.rsplit_once(' ').unwrap();
            (s.to_string(), v.parse::<f64>().unwrap())
        })
        .collect();
    let expected = parse_expected(&root().join("tests/fixtures/bind9/bind_exporter_expected_subset.txt"));
    assert!(expected.len() > 30);
    for (series, value) in expected {
        assert!(
            served.iter().any(|(s, v)| *s == series && *v == value),
            "bind_exporter serves `{series} {value}`; the adapter does not"
        );
    }
}
