#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The Elasticsearch, Splunk HEC and Loki sinks against a receiver that checks every request
//! against the documented API and answers as those stores do (see `stores/apis.rs`):
//! partial `_bulk` failures (only the failed items sent again, a refused item set aside), HEC's
//! indexer acknowledgement and an invalid event named by number, Loki streams grouped by label
//! values with their entries in order; and one run with two kinds of sink, each holding the
//! checkpoint with its own acknowledgements.

mod common;
mod stores;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Shipper, account, parse_seq, report};
use stores::apis::ApiReceiver;
use test_support::wait;

fn write(dir: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `{"msg":"<tag> seq=N<suffix>","level":..,"pod":..}` for N in 0..n.
fn json_lines(tag: &str, n: u64, suffix: impl Fn(u64) -> &'static str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let level = ["info", "warn", "error"][(i % 3) as usize];
            format!(
                "{{\"msg\":\"{tag} seq={i:08}{}\",\"level\":\"{level}\",\"pod\":\"pod-{}\"}}",
                suffix(i),
                i % 2
            )
        })
        .collect()
}

fn config(dir: &Path, sinks: &str, names: &str) -> String {
    let path = dir.join("shipper.yaml");
    std::fs::write(
        &path,
        format!(
            r#"inputs:
  app: {{ type: file, include: ["{log}"], pipeline: app }}
pipelines:
  app:
    parser: {{ type: json, message_key: msg }}
    sinks: [{names}]
sinks:
{sinks}"#,
            log = dir.join("app.log").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn counts<'a>(messages: impl Iterator<Item = &'a str>, tag: &str) -> HashMap<u64, u32> {
    let mut c = HashMap::new();
    for m in messages {
        if let Some((t, seq)) = parse_seq(m)
            && t == tag
        {
            *c.entry(seq).or_default() += 1;
        }
    }
    c
}

const FAST: &str =
    "    batch: { max_lines: 100, timeout: 100ms }\n    retry: { initial: 100ms, max: 500ms }\n";

#[test]
fn elasticsearch_bulk_sends_again_only_the_failed_items_and_sets_refused_ones_aside() {
    let dir = tempfile::tempdir().unwrap();
    let es = ApiReceiver::start("-");
    let key = dir.path().join("es-api-key");
    std::fs::write(
        &key,
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==\n",
    )
    .unwrap();
    let sinks = format!(
        "  search:\n    type: elasticsearch\n    url: \"{}\"\n    index: \"logs-app-%Y.%m.%d\"\n    token_file: \"{}\"\n    gzip: true\n{FAST}",
        es.url(),
        key.display()
    );
    let config = config(dir.path(), &sinks, "search");
    // Every 50th line is refused once with 429; line 123 is refused for good (400).
    let lines = json_lines("es", 500, |i| match i {
        123 => " POISON",
        i if i % 50 == 7 => " BUSY",
        _ => "",
    });
    write(dir.path(), &lines);
    let state = dir.path().join("state");
    let shipper = Shipper::start(&state, &["--config", &config]);
    wait::Wait::new("499 documents stored")
        .timeout(Duration::from_secs(30))
        .context(|| shipper.proc.log())
        .until(|| es.seen.es_docs.lock().unwrap().len() >= 499);
    wait::until(
        Duration::from_secs(10),
        "the refused item set aside",
        || shipper.metric(r#"log_shipper_lines_dead_lettered_total{sink="search"}"#) == 1.0,
    );
    shipper.stop();
    es.assert_no_violation();
    let docs = es.seen.es_docs.lock().unwrap().clone();
    let stored = counts(
        docs.iter().map(|(_, d)| d["message"].as_str().unwrap()),
        "es",
    );
    let a = account(&stored, 500);
    assert_eq!((a.unique, a.duplicated), (499, 0), "{a:?}");
    assert!(!stored.contains_key(&123));
    // Only the failed items went again: a 429'd item twice, every other item once.
    let sent = es.seen.es_sent.lock().unwrap().clone();
    for (message, n) in &sent {
        let want = if message.contains("BUSY") { 2 } else { 1 };
        assert_eq!(*n, want, "{message} sent {n} times");
    }
    assert_eq!(sent.len(), 500);
    // The index has the event's date; the documents carry @timestamp and the fields.
    let today = time::OffsetDateTime::now_utc();
    let index = format!(
        "logs-app-{:04}.{:02}.{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    assert!(docs.iter().all(|(i, _)| *i == index), "{:?}", docs[0].0);
    assert_eq!(docs[0].1["level"], "info");
    assert!(
        es.seen
            .authorization
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==")
    );
    assert!(es.seen.gzip_requests.load(Ordering::Relaxed) > 0);
    let letters = std::fs::read_to_string(state.join("dead-letter/search.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["event"]["message"], "es seq=00000123 POISON");
    assert_eq!(letter["status"], "400");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("400 mapper_parsing_exception"),
        "{letter}"
    );
}

#[test]
fn splunk_hec_waits_for_indexer_acknowledgement_and_sets_an_invalid_event_aside() {
    let dir = tempfile::tempdir().unwrap();
    let hec = ApiReceiver::start("11111111-2222-3333-4444-555555555555");
    let token = dir.path().join("hec-token");
    std::fs::write(&token, "11111111-2222-3333-4444-555555555555\n").unwrap();
    let sinks = format!(
        "  splunk:\n    type: splunk_hec\n    url: \"{}\"\n    token_file: \"{}\"\n    index: main\n    sourcetype: checkout\n    indexed_fields: [pod]\n    gzip: true\n{FAST}",
        hec.url(),
        token.display()
    );
    let config = config(dir.path(), &sinks, "splunk");
    let lines = json_lines("hec", 300, |i| if i == 42 { " POISON" } else { "" });
    write(dir.path(), &lines);
    let state = dir.path().join("state");
    let shipper = Shipper::start(&state, &["--config", &config]);
    wait::Wait::new("299 events indexed")
        .timeout(Duration::from_secs(30))
        .context(|| shipper.proc.log())
        .until(|| hec.seen.hec_events.lock().unwrap().len() >= 299);
    wait::until(Duration::from_secs(10), "299 lines delivered", || {
        shipper.metric(r#"log_shipper_lines_sent_total{sink="splunk"}"#) == 299.0
    });
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_dead_lettered_total{sink="splunk"}"#),
        1.0
    );
    shipper.stop();
    hec.assert_no_violation();
    let events = hec.seen.hec_events.lock().unwrap().clone();
    let a = account(
        &counts(
            events
                .iter()
                .map(|e| e["event"]["message"].as_str().unwrap()),
            "hec",
        ),
        300,
    );
    assert_eq!((a.unique, a.duplicated), (299, 0), "{a:?}");
    // Every batch was acknowledged after at least one "not yet".
    let batches = hec.seen.hec_channels.lock().unwrap().len() as u64;
    assert!(hec.seen.hec_ack_queries.load(Ordering::Relaxed) >= batches);
    let channels = hec.seen.hec_channels.lock().unwrap().clone();
    assert!(channels.iter().all(|c| *c == channels[0]));
    let e = events
        .iter()
        .find(|e| e["event"]["message"] == "hec seq=00000001")
        .unwrap();
    assert_eq!(e["index"], "main");
    assert_eq!(e["sourcetype"], "checkout");
    assert_eq!(e["host"], "pod-a");
    assert_eq!(e["event"]["level"], "warn");
    assert_eq!(e["fields"]["pod"], "pod-1");
    assert!(e["event"].get("pod").is_none());
    let letters = std::fs::read_to_string(state.join("dead-letter/splunk.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["event"]["message"], "hec seq=00000042 POISON");
    assert!(letter["reason"].as_str().unwrap().starts_with("HEC code 6"));
}

#[test]
fn loki_streams_are_grouped_by_labels_with_their_entries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let loki = ApiReceiver::start("-");
    let sinks = format!(
        "  loki:\n    type: loki\n    url: \"{}\"\n    labels: {{ app: checkout, level: \"{{level}}\" }}\n    structured_metadata: {{ pod: \"{{pod}}\" }}\n    line: message\n    gzip: true\n{FAST}",
        loki.url()
    );
    let config = config(dir.path(), &sinks, "loki");
    write(dir.path(), &json_lines("loki", 600, |_| ""));
    let shipper = Shipper::start(&dir.path().join("state"), &["--config", &config]);
    let entries = || -> usize {
        loki.seen
            .loki_requests
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|(_, e)| e.len())
            .sum()
    };
    wait::Wait::new("600 entries")
        .timeout(Duration::from_secs(30))
        .context(|| shipper.proc.log())
        .until(|| entries() >= 600);
    shipper.stop();
    loki.assert_no_violation();
    let requests = loki.seen.loki_requests.lock().unwrap().clone();
    let mut all = Vec::new();
    for streams in &requests {
        // One stream per label set in a request.
        let labels: Vec<&serde_json::Value> = streams.iter().map(|(l, _)| l).collect();
        for (i, l) in labels.iter().enumerate() {
            assert!(!labels[..i].contains(l), "two streams for {l}");
        }
        for (labels, entries) in streams {
            let level = labels["level"].as_str().unwrap();
            assert_eq!(labels["app"], "checkout");
            let mut last = None;
            for (ns, line, metadata) in entries {
                let (_, seq) = parse_seq(line).unwrap();
                // The entry is in the stream of its own level, after the ones read before it.
                assert_eq!(level, ["info", "warn", "error"][(seq % 3) as usize]);
                assert!(last < Some(seq), "{seq} after {last:?}");
                last = Some(seq);
                assert!(ns.parse::<u128>().unwrap() > 1_600_000_000_000_000_000);
                assert_eq!(
                    metadata.as_ref().unwrap()["pod"],
                    format!("pod-{}", seq % 2)
                );
                all.push(line.clone());
            }
        }
    }
    let a = account(&counts(all.iter().map(String::as_str), "loki"), 600);
    report("loki", &a);
    assert_eq!((a.unique, a.duplicated), (600, 0), "{a:?}");
    assert!(requests.iter().any(|r| r.len() == 3), "levels grouped");
}

#[test]
fn two_kinds_of_sink_in_one_run_each_hold_the_checkpoint_until_they_have_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let stores = ApiReceiver::start("-");
    let key = dir.path().join("es-key");
    std::fs::write(&key, "a2V5\n").unwrap();
    let sinks = format!(
        "  search:\n    type: elasticsearch\n    url: \"{url}\"\n    token_file: \"{key}\"\n    buffer: {{ max_bytes: 0 }}\n{FAST}  loki:\n    type: loki\n    url: \"{url}\"\n    buffer: {{ max_bytes: 0 }}\n{FAST}",
        url = stores.url(),
        key = key.display()
    );
    let config = config(dir.path(), &sinks, "search, loki");
    let args = ["--config", config.as_str(), "--shutdown-grace", "4s"];
    stores.seen.loki_down.store(true, Ordering::Relaxed);
    write(dir.path(), &json_lines("two", 50, |_| ""));
    let state = dir.path().join("state");
    let shipper = Shipper::start(&state, &args);
    let es_docs = || stores.seen.es_docs.lock().unwrap().len();
    wait::until(Duration::from_secs(20), "Elasticsearch to have 50", || {
        es_docs() == 50
    });
    wait::until(Duration::from_secs(20), "Loki to be refusing", || {
        shipper.metric(r#"log_shipper_sink_errors_total{sink="loki",status="503"}"#) >= 2.0
    });
    // Loki does not have the lines: the checkpoint stays, whatever Elasticsearch has.
    shipper.stop();
    let checkpoints = std::fs::read_to_string(state.join("checkpoints.json")).unwrap_or_default();
    stores.seen.loki_down.store(false, Ordering::Relaxed);
    let shipper = Shipper::start(&state, &args);
    let loki_lines = || -> Vec<String> {
        stores
            .seen
            .loki_requests
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .flat_map(|(_, e)| e.iter().map(|(_, line, _)| line.clone()))
            .collect()
    };
    wait::Wait::new("Loki to have 50")
        .timeout(Duration::from_secs(30))
        .context(|| format!("checkpoints before: {checkpoints}\n{}", shipper.proc.log()))
        .until(|| loki_lines().len() >= 50);
    wait::until(
        Duration::from_secs(20),
        "Elasticsearch to have them again",
        || es_docs() == 100,
    );
    shipper.stop();
    stores.assert_no_violation();
    let messages: Vec<String> = loki_lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let loki = account(&counts(messages.iter().map(String::as_str), "two"), 50);
    let docs = stores.seen.es_docs.lock().unwrap().clone();
    let es = account(
        &counts(
            docs.iter().map(|(_, d)| d["message"].as_str().unwrap()),
            "two",
        ),
        50,
    );
    report("two_kinds_loki", &loki);
    report("two_kinds_elasticsearch", &es);
    assert_eq!((loki.unique, loki.duplicated), (50, 0), "{loki:?}");
    // Read again for Loki's sake: Elasticsearch got them twice, as documented.
    assert_eq!((es.unique, es.duplicated), (50, 50), "{es:?}");
}
