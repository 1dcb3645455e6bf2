//! xml-adapter benchmark, one run, figures side by side:
//!
//! 1. throughput on BIND's tasks.xml repeated to 10 MB and 100 MB: the adapter's engine with the
//!    shipped BIND 9 mapping vs a bare quick-xml streaming parse of the same bytes (medians);
//! 2. peak resident memory of the real adapter binary while it serves the 100 MB document
//!    streamed from an upstream (VmHWM from /proc);
//! 3. added latency: a 32 KB status page (BIND server.xml) fetched directly and through the
//!    adapter, interleaved, 100 requests per second; p50/p99 of both and of the difference.
//!
//! 4. JSON throughput: BIND's JSON tasks repeated to 10 MB, the adapter's engine with the
//!    shipped BIND 9 JSON mapping vs a bare json-event-parser parse of the same bytes (medians).
//!
//! Run: `crates/xml-adapter/benches/run.sh` (or `cargo bench -p xml-adapter --bench adapter`).
//! `BENCH_ONLY=latency` (or `throughput`, `memory`, `json`, comma-separated) runs only those parts.

// A benchmark harness: a failed setup should stop it loudly.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufReader;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_xml::Reader;
use quick_xml::events::Event;
use xml_adapter::engine::Engine;
use xml_adapter::mapping::Mapping;

const TASKS: &[u8] = include_bytes!("../tests/fixtures/bind9/tasks.xml");
const SERVER: &[u8] = include_bytes!("../tests/fixtures/bind9/server.xml");

/// tasks.xml with its `<task>` records repeated until the document reaches `target` bytes.
fn repeated_tasks(target: usize) -> Vec<u8> {
    let text = std::str::from_utf8(TASKS).unwrap();
    let open = text.find("<tasks>").unwrap() + "<tasks>".len();
    let close = text.find("</tasks>").unwrap();
    let (head, body, tail) = (&text[..open], &text[open..close], &text[close..]);
    let mut out = String::with_capacity(target + body.len());
    out.push_str(head);
    while out.len() + body.len() + tail.len() <= target {
        out.push_str(body);
    }
    out.push_str(tail);
    out.into_bytes()
}

fn bare_parse(bytes: &[u8]) -> u64 {
    let mut reader = Reader::from_reader(BufReader::with_capacity(64 * 1024, bytes));
    let mut buf = Vec::with_capacity(8192);
    let mut events = 0u64;
    loop {
        match reader.read_event_into(&mut buf).unwrap() {
            Event::Eof => break,
            _ => events += 1,
        }
        buf.clear();
    }
    events
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// The bare parse and the adapter over `doc`, interleaved `runs` times so both see the same
/// machine noise: their median MB/s and the records the adapter matched.
fn side_by_side(
    engine: &Engine,
    doc: &[u8],
    runs: usize,
    bare_parse: impl Fn(&[u8]),
) -> (f64, f64, f64) {
    let mb = doc.len() as f64 / 1e6;
    let (mut bare, mut adapter) = (Vec::new(), Vec::new());
    let mut records = 0.0;
    for _ in 0..runs {
        let t = Instant::now();
        bare_parse(doc);
        bare.push(mb / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = engine
            .translate(BufReader::with_capacity(64 * 1024, doc))
            .unwrap();
        adapter.push(mb / t.elapsed().as_secs_f64());
        records = out.records as f64;
    }
    (median(bare), median(adapter), records)
}

fn throughput(engine: &Engine, size: usize, runs: usize) {
    let doc = repeated_tasks(size);
    let mb = doc.len() as f64 / 1e6;
    let (b, a, tasks) = side_by_side(engine, &doc, runs, |d| {
        std::hint::black_box(bare_parse(d));
    });
    println!(
        "| tasks.xml x{:.0} ({mb:.1} MB, {tasks:.0} records) | {b:.0} MB/s | {a:.0} MB/s | {:.2} |",
        mb / (TASKS.len() as f64 / 1e6),
        a / b
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    const PARTS: [&str; 4] = ["throughput", "memory", "latency", "json"];
    if let Some(bad) = only
        .split(',')
        .map(str::trim)
        .find(|p| !p.is_empty() && !PARTS.contains(p))
    {
        eprintln!("BENCH_ONLY: no part named {bad:?}; the parts are {PARTS:?}");
        std::process::exit(2);
    }
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    let mapping_path = common::manifest_path("examples/mappings/bind9.yaml");
    if part("throughput") {
        let engine = Engine::new(Mapping::load(&mapping_path).unwrap());
        throughput_part(&engine);
    }
    if part("json") {
        let json_mapping = common::manifest_path("examples/mappings/bind9-json.yaml");
        let engine = Engine::new(Mapping::load(&json_mapping).unwrap());
        json_part(&engine);
    }
    if part("memory") {
        memory_part(&mapping_path).await;
    }
    if part("latency") {
        latency_part(&mapping_path).await;
    }
}

/// BIND's JSON tasks section, its tasks repeated until the document reaches `target` bytes.
pub fn json_tasks(target: usize) -> Vec<u8> {
    let task = r#"{"id":"0x7f9e3be88440","name":"server","references":8,"state":"idle","quantum":25,"events":0}"#;
    let (head, tail) = (
        r#"{"json-stats-version":"1.7","taskmgr":{"thread-model":"threaded","default-quantum":25,"tasks":["#,
        "]}}\n",
    );
    let mut out = String::with_capacity(target + task.len());
    out.push_str(head);
    let mut first = true;
    while out.len() + task.len() + 1 + tail.len() <= target {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(task);
    }
    out.push_str(tail);
    out.into_bytes()
}

fn bare_json_parse(bytes: &[u8]) -> u64 {
    let mut parser = json_event_parser::SliceJsonParser::new(bytes);
    let mut events = 0u64;
    loop {
        match parser.parse_next().unwrap() {
            json_event_parser::JsonEvent::Eof => break,
            _ => events += 1,
        }
    }
    events
}

fn json_part(engine: &Engine) {
    println!(
        "## JSON throughput (medians; ratio = adapter / bare json-event-parser, target >= 0.5)\n"
    );
    println!("| document | bare json-event-parser parse | adapter (BIND 9 JSON mapping) | ratio |");
    println!("|---|---|---|---|");
    let doc = json_tasks(10_000_000);
    let mb = doc.len() as f64 / 1e6;
    let (b, a, records) = side_by_side(engine, &doc, 15, |d| {
        std::hint::black_box(bare_json_parse(d));
    });
    println!(
        "| BIND JSON tasks ({mb:.1} MB, {records:.0} records) | {b:.0} MB/s | {a:.0} MB/s | {:.2} |\n",
        a / b
    );
}

fn throughput_part(engine: &Engine) {
    println!("## Throughput (medians; ratio = adapter / bare quick-xml, target >= 0.5)\n");
    println!("| document | bare quick-xml parse | adapter (BIND 9 mapping) | ratio |");
    println!("|---|---|---|---|");
    throughput(engine, 10_000_000, 15);
    throughput(engine, 100_000_000, 5);
}

async fn memory_part(mapping_path: &std::path::Path) {
    println!(
        "\n## Peak memory of the adapter binary serving the 100 MB document (target <= 32 MiB)\n"
    );
    let doc = Arc::new(repeated_tasks(100_000_000));
    let up = common::start_upstream(common::Behaviour::Body(doc.clone())).await;
    let a = common::start_adapter(
        mapping_path,
        &up.url(),
        &[
            "--max-body-bytes",
            "200000000",
            "--timeout",
            "120s",
            "--log-level",
            "warn",
        ],
    )
    .await;
    let before = vm_hwm_kib(a.proc.pid());
    let t = Instant::now();
    let page = common::get_text(&a.url("/metrics")).await;
    let took = t.elapsed();
    let page = test_support::metrics::Metrics::parse(&page).expect("a metrics page");
    assert_eq!(page.value("bind_up"), Some(1.0));
    let peak = vm_hwm_kib(a.proc.pid());
    println!("| measure | value |\n|---|---|");
    println!("| VmHWM after start | {:.1} MiB |", before as f64 / 1024.0);
    println!(
        "| VmHWM after scraping {:.0} MB | {:.1} MiB |",
        doc.len() as f64 / 1e6,
        peak as f64 / 1024.0
    );
    println!(
        "| scrape over HTTP (fetch + translate) | {:.2} s ({:.0} MB/s) |",
        took.as_secs_f64(),
        doc.len() as f64 / 1e6 / took.as_secs_f64()
    );
}

async fn latency_part(mapping_path: &std::path::Path) {
    println!(
        "\n## Added latency, 32 KB page (BIND server.xml), 100 requests/s, interleaved (target p99 added <= 2 ms)\n"
    );
    let up = common::start_upstream(common::Behaviour::Body(Arc::new(SERVER.to_vec()))).await;
    let a = common::start_adapter(mapping_path, &up.url(), &["--log-level", "warn"]).await;
    let client = common::http();
    let (direct_url, adapter_url) = (up.url(), a.url("/metrics"));
    for _ in 0..50 {
        client
            .get(&adapter_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        client
            .get(&direct_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let n = 3000;
    let (mut direct, mut via, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..n {
        tick.tick().await;
        // Alternate which goes first so neither always pays for a cold cache.
        let order = [(i % 2 == 0), (i % 2 != 0)];
        let (mut d, mut v) = (0.0, 0.0);
        for adapter_first in order {
            let url = if adapter_first {
                &adapter_url
            } else {
                &direct_url
            };
            let t = Instant::now();
            let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(!body.is_empty());
            if adapter_first { v = ms } else { d = ms }
        }
        direct.push(d);
        via.push(v);
        added.push(v - d);
    }
    println!("| path | p50 | p99 |\n|---|---|---|");
    println!(
        "| direct to the upstream | {:.3} ms | {:.3} ms |",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
    println!(
        "| through the adapter (/metrics) | {:.3} ms | {:.3} ms |",
        percentile(&via, 0.5),
        percentile(&via, 0.99)
    );
    println!(
        "| added (per request pair) | {:.3} ms | {:.3} ms |",
        percentile(&added, 0.5),
        percentile(&added, 0.99)
    );
    println!("\n({n} request pairs)");
}
