//! Hostile documents: the real adapter binary against a local upstream that streams documents
//! built to hurt a parser (nested without end, millions of siblings, a huge attribute or text
//! node, invalid UTF-8, a document that never ends). Each must be refused or read with bounded
//! memory (the adapter's peak RSS, from /proc), served as `up 0` when refused, and the adapter
//! must stay up and serve the next good document.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Adapter, scrape, start_adapter};
use test_support::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MAPPING: &str = "\
up_metric: hostile_up
limits: {max_depth: 64}
rules:
  - name: hostile_value
    help: The value of the document's v element.
    type: gauge
    path: /doc/v
    value: \"@n\"
";

const GOOD: &str = "<doc><v n=\"7\"/></doc>";

const MIB: u64 = 1 << 20;

/// What the upstream streams (chunked) for each request.
#[derive(Clone)]
enum Doc {
    /// `head`, `unit` `count` times, `tail`.
    Repeat {
        head: Vec<u8>,
        unit: Vec<u8>,
        count: u64,
        tail: Vec<u8>,
    },
    /// `head`, then `unit` every `every`, without end.
    Drip {
        head: Vec<u8>,
        unit: Vec<u8>,
        every: Duration,
    },
}

fn doc(head: &str, unit: &str, count: u64, tail: &str) -> Doc {
    Doc::Repeat {
        head: head.into(),
        unit: unit.into(),
        count,
        tail: tail.into(),
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

async fn send(sock: &mut tokio::net::TcpStream, d: &Doc) -> std::io::Result<()> {
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    match d {
        Doc::Repeat {
            head,
            unit,
            count,
            tail,
        } => {
            sock.write_all(&chunk(head)).await?;
            // About 64 KiB per chunk, generated while it is sent: the test holds no document.
            let per = (65536 / unit.len().max(1)).max(1) as u64;
            let batch = unit.repeat(per as usize);
            let mut left = *count;
            while left > 0 {
                let k = left.min(per);
                sock.write_all(&chunk(&batch[..k as usize * unit.len()]))
                    .await?;
                left -= k;
            }
            sock.write_all(&chunk(tail)).await?;
            sock.write_all(b"0\r\n\r\n").await
        }
        Doc::Drip { head, unit, every } => {
            sock.write_all(&chunk(head)).await?;
            loop {
                tokio::time::sleep(*every).await;
                sock.write_all(&chunk(unit)).await?;
            }
        }
    }
}

struct Upstream {
    port: u16,
    doc: Arc<Mutex<Doc>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let doc = Arc::new(Mutex::new(doc(GOOD, "", 0, "")));
        let shared = doc.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut bytes = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut bytes).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&bytes[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let d = shared.lock().unwrap().clone();
                        if send(&mut sock, &d).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream { port, doc, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/status.xml", self.port)
    }

    fn set(&self, d: Doc) {
        *self.doc.lock().unwrap() = d;
    }
}

/// A process's resident set and its peak, in bytes (/proc/<pid>/status).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Setup {
    up: Upstream,
    adapter: Adapter,
    _dir: tempfile::TempDir,
    /// The resident set after a good scrape: what the hostile documents are measured against.
    baseline: u64,
}

async fn setup(extra: &[&str]) -> Setup {
    setup_with(MAPPING, extra).await
}

/// [`setup`] with another mapping (which must serve `hostile_value 7` for [`GOOD`]).
async fn setup_with(mapping_text: &str, extra: &[&str]) -> Setup {
    if !std::path::Path::new("/proc/self/status").exists() {
        panic!("these tests measure the adapter's memory through /proc, which this system lacks");
    }
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("hostile.yaml");
    std::fs::write(&mapping, mapping_text).unwrap();
    let up = Upstream::start().await;
    let adapter = start_adapter(&mapping, &up.url(), extra).await;
    let page = scrape(&adapter.url("/metrics")).await;
    assert_eq!(page.value("hostile_value"), Some(7.0), "{page}");
    let (baseline, _) = rss(adapter.proc.pid());
    Setup {
        up,
        adapter,
        _dir: dir,
        baseline,
    }
}

impl Setup {
    /// Scrapes `d`; returns the page and the adapter's peak RSS so far, and checks it still
    /// serves a good document afterwards (it did not crash, nothing stuck).
    async fn scrape(&self, what: &str, d: Doc) -> (Metrics, u64) {
        self.up.set(d);
        let started = Instant::now();
        let page = scrape(&self.adapter.url("/metrics")).await;
        let (_, peak) = rss(self.adapter.proc.pid());
        eprintln!(
            "{what}: up {:?}, {:.1} s, peak RSS {} MiB (baseline {} MiB)",
            page.value("hostile_up"),
            started.elapsed().as_secs_f64(),
            peak / MIB,
            self.baseline / MIB
        );
        self.up.set(doc(GOOD, "", 0, ""));
        let after = scrape(&self.adapter.url("/metrics")).await;
        assert_eq!(
            after.value("hostile_value"),
            Some(7.0),
            "after {what}: {after}"
        );
        (page, peak)
    }

    /// Peak RSS stays within `allowance` of the baseline.
    fn bounded(&self, what: &str, peak: u64, allowance: u64) {
        assert!(
            peak <= self.baseline + allowance,
            "{what}: peak RSS {} MiB over the baseline {} MiB + {} MiB\n{}",
            peak / MIB,
            self.baseline / MIB,
            allowance / MIB,
            self.adapter.proc.log()
        );
    }
}

fn refused(page: &Metrics, kind: &str) {
    assert_eq!(page.value("hostile_up"), Some(0.0), "{page}");
    assert_eq!(page.value("xml_adapter_up"), Some(0.0), "{page}");
    assert!(
        !page.text().contains("hostile_value"),
        "a refused document serves no samples: {page}"
    );
    assert!(
        page.value(&format!(
            "xml_adapter_scrape_errors_total{{kind=\"{kind}\"}}"
        ))
        .unwrap_or(0.0)
            >= 1.0,
        "counted as {kind}: {page}"
    );
}

#[tokio::test]
async fn max_depth_is_enforced_at_the_limit() {
    let s = setup(&[]).await;
    // 63 wrappers inside <doc> is depth 64 (doc is 1): the deepest allowed.
    let at_limit = doc(
        "<doc><v n=\"3\"/>",
        "<a>",
        62,
        &format!("{}</doc>", "</a>".repeat(62)),
    );
    let (page, _) = s.scrape("nested to max_depth", at_limit).await;
    assert_eq!(page.value("hostile_value"), Some(3.0), "{page}");
    let over = doc(
        "<doc><v n=\"3\"/>",
        "<a>",
        64,
        &format!("{}</doc>", "</a>".repeat(64)),
    );
    let (page, _) = s.scrape("nested past max_depth", over).await;
    refused(&page, "malformed");
    s.adapter
        .proc
        .wait_log("nested deeper than max_depth 64", Duration::from_secs(10));
}

#[tokio::test]
async fn deeply_nested_document_is_refused_with_bounded_memory() {
    let s = setup(&[]).await;
    // 10 million open elements (30 MB), never closed.
    let (page, peak) = s
        .scrape(
            "10M nested elements",
            doc("<doc>", "<a>", 10_000_000, "</doc>"),
        )
        .await;
    refused(&page, "malformed");
    s.bounded("10M nested elements", peak, 16 * MIB);
}

#[tokio::test]
async fn millions_of_siblings_stream_through_with_bounded_memory() {
    // A generous timeout: a debug build on a loaded machine reads these slowly.
    let s = setup(&["--timeout", "300s"]).await;
    // 2 million siblings (20 MB) after the value: a valid document, read to its end.
    let (page, peak) = s
        .scrape(
            "2M siblings",
            doc("<doc><v n=\"5\"/>", "<s x=\"1\"/>", 2_000_000, "</doc>"),
        )
        .await;
    assert_eq!(page.value("hostile_up"), Some(1.0), "{page}");
    assert_eq!(page.value("hostile_value"), Some(5.0), "{page}");
    s.bounded("2M siblings", peak, 16 * MIB);
    // 1.2 million siblings that are records: max_records (1M) truncates, visibly.
    let (page, peak) = s
        .scrape(
            "1.2M sibling records",
            doc("<doc>", "<v n=\"1\"/>", 1_200_000, "</doc>"),
        )
        .await;
    s.bounded("1.2M sibling records", peak, 16 * MIB);
    assert_eq!(
        page.value("xml_adapter_cap_truncations_total{cap=\"records\"}"),
        Some(1.0),
        "{page}"
    );
    // The gauge is the records the document matched; those past the cap were not read.
    assert_eq!(
        page.value("xml_adapter_records"),
        Some(1_200_000.0),
        "{page}"
    );
}

#[tokio::test]
async fn huge_attribute_and_text_are_refused_with_bounded_memory() {
    let s = setup(&["--timeout", "300s"]).await;
    // 24 MiB inside one attribute, then inside one text node: under the 64 MiB body cap.
    let size = 24 * MIB;
    let (page, peak) = s
        .scrape(
            "24 MiB attribute",
            doc("<doc><v n=\"1\" junk=\"", "A", size, "\"/></doc>"),
        )
        .await;
    refused(&page, "malformed");
    s.bounded("24 MiB attribute", peak, 16 * MIB);
    s.adapter
        .proc
        .wait_log("longer than max_record_bytes", Duration::from_secs(10));
    let (page, peak) = s
        .scrape(
            "24 MiB text node",
            doc("<doc><v n=\"1\"/><t>", "A", size, "</t></doc>"),
        )
        .await;
    refused(&page, "malformed");
    s.bounded("24 MiB text node", peak, 16 * MIB);
}

#[tokio::test]
async fn invalid_utf8_is_refused() {
    let s = setup(&[]).await;
    let cases: [(&str, &[u8], &[u8]); 4] = [
        (
            "in a text node",
            b"<doc><v n=\"1\"/><t>",
            b"\xC3\x28</t></doc>",
        ),
        (
            "in an attribute value",
            b"<doc><v n=\"1\" x=\"",
            b"\xFF\xFE\"/></doc>",
        ),
        (
            "in an element name",
            b"<doc><v n=\"1\"/><t",
            b"\xE2\x82/></doc>",
        ),
        (
            "an overlong encoding",
            b"<doc><v n=\"1\"/><t>",
            b"\xC0\xAF</t></doc>",
        ),
    ];
    for (what, head, tail) in cases {
        let d = Doc::Repeat {
            head: head.to_vec(),
            unit: Vec::new(),
            count: 0,
            tail: tail.to_vec(),
        };
        let (page, _) = s.scrape(&format!("invalid UTF-8 {what}"), d).await;
        refused(&page, "malformed");
    }
}

#[tokio::test]
async fn a_document_that_never_ends_is_cut_off() {
    // Slow drip: one element every 100 ms, without end: the fetch times out.
    let s = setup(&["--timeout", "3s"]).await;
    let drip = Doc::Drip {
        head: b"<doc><v n=\"1\"/>".to_vec(),
        unit: b"<s/>".to_vec(),
        every: Duration::from_millis(100),
    };
    let started = Instant::now();
    let (page, peak) = s.scrape("slow drip", drip).await;
    refused(&page, "timeout");
    s.bounded("slow drip", peak, 16 * MIB);
    // The answer comes once the timeout is over, not when the upstream stops (it never does);
    // the bound is generous for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the slow drip was cut off after {:?}",
        started.elapsed()
    );
    drop(s);

    // A fast stream without end: cut off at the body cap.
    let s = setup(&["--max-body-bytes", "16777216", "--timeout", "300s"]).await;
    let unit = format!("<s>{}</s>", "x".repeat(1000));
    let (page, peak) = s
        .scrape(
            "endless stream",
            doc("<doc><v n=\"1\"/>", &unit, u64::MAX, "</doc>"),
        )
        .await;
    refused(&page, "body_cap");
    s.bounded("endless stream", peak, 16 * MIB);
}

/// Mappings for nested elements with huge attributes: records below them, the events allowed
/// up to 8 MiB; the second also reads an attribute of an ancestor.
macro_rules! nested_mapping {
    () => {
        "\
up_metric: hostile_up
limits: {max_depth: 64, max_record_bytes: 8388608}
rules:
  - name: hostile_value
    help: The value of the document's v element.
    type: gauge
    path: //v
    value: \"@n\"
"
    };
}

const NESTED_MAPPING: &str = nested_mapping!();

const NESTED_ANCESTOR_MAPPING: &str = concat!(
    nested_mapping!(),
    "  - name: hostile_wrapped
    help: The value, labelled with its wrapper's id.
    type: gauge
    path: //v
    labels: {wrapper: \"ancestor::a/@id\"}
    value: \"@n\"
"
);

/// Five nested elements, each with a 4 MiB attribute, around the record.
fn nested_huge_attributes() -> Doc {
    let unit = format!("<a id=\"w\" pad=\"{}\">", "A".repeat(4 << 20));
    doc(
        "<doc>",
        &unit,
        5,
        &format!("<v n=\"2\"/>{}</doc>", "</a>".repeat(5)),
    )
}

#[tokio::test]
async fn ancestors_huge_attributes_are_not_held() {
    // Nobody reads the ancestors' attributes: only their names are kept, the document is read.
    let s = setup_with(NESTED_MAPPING, &["--timeout", "300s"]).await;
    let (page, peak) = s
        .scrape("5 nested 4 MiB attributes", nested_huge_attributes())
        .await;
    assert_eq!(page.value("hostile_up"), Some(1.0), "{page}");
    assert_eq!(page.value("hostile_value"), Some(2.0), "{page}");
    // The window holds one 4 MiB tag at a time (it grows to twice that), never all five
    // (holding them took 27 MiB over the baseline in a debug build).
    s.bounded("5 nested 4 MiB attributes", peak, 20 * MIB);
    drop(s);

    // A path reads an ancestor's attribute: the open elements' tags are held, up to
    // max_record_bytes (8 MiB) together; past that the document is refused.
    let s = setup_with(NESTED_ANCESTOR_MAPPING, &["--timeout", "300s"]).await;
    let (page, peak) = s
        .scrape(
            "5 nested 4 MiB attributes, read from below",
            nested_huge_attributes(),
        )
        .await;
    refused(&page, "malformed");
    s.bounded("5 nested 4 MiB attributes, read from below", peak, 20 * MIB);
    s.adapter.proc.wait_log(
        "open elements hold more than max_record_bytes",
        Duration::from_secs(10),
    );
}
