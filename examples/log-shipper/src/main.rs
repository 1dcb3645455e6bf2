//! A custom sidecar built on sidecar-kit: tails a log file that the app writes on a shared
//! volume (following rotation) and POSTs batches of JSON lines to an HTTP endpoint, with
//! readiness, metrics, and a flush of the last batch on shutdown.
//!
//! Everything a sidecar needs besides its own job (flags with env fallbacks, admin server,
//! probes, metrics, signals and the drain) comes from the kit: this file is only the job.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use prometheus::{IntCounter, IntCounterVec, Opts};
use sidecar_kit::{KitArgs, Sidecar, SidecarInfo};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const INFO: SidecarInfo = SidecarInfo {
    name: "log-shipper",
    env_prefix: "LOG_SHIPPER",
    admin_port: 9904,
    version: env!("CARGO_PKG_VERSION"),
    description: "Tails a log file on a shared volume and ships its lines as JSON over HTTP",
    worker_threads: 0,
};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    kit: KitArgs,
    /// The log file the app writes (rotation by rename or truncation is followed).
    #[arg(long, env = "FILE")]
    file: PathBuf,
    /// Where batches are POSTed, as newline-delimited JSON.
    #[arg(long, env = "ENDPOINT")]
    endpoint: reqwest::Url,
    /// Lines per batch at most.
    #[arg(long, env = "BATCH_LINES", default_value_t = 500)]
    batch_lines: usize,
    /// Longest time a line waits before its batch is sent.
    #[arg(long, env = "FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
    /// Read the file from its start instead of its end when the shipper starts.
    #[arg(long, env = "FROM_START")]
    from_start: bool,
}

struct Metrics {
    lines: IntCounter,
    batches: IntCounterVec,
    rotations: IntCounter,
    dropped: IntCounter,
}

impl Metrics {
    fn register(sidecar: &Sidecar) -> prometheus::Result<Self> {
        let lines = IntCounter::new("log_shipper_lines_shipped_total", "Lines delivered.")?;
        let batches = IntCounterVec::new(
            Opts::new("log_shipper_batches_total", "Batch POSTs by result."),
            &["result"],
        )?;
        let rotations = IntCounter::new("log_shipper_rotations_total", "Rotations followed.")?;
        let dropped = IntCounter::new(
            "log_shipper_dropped_lines_total",
            "Lines dropped because the endpoint failed for too long.",
        )?;
        let registry = sidecar.registry();
        registry.register(Box::new(lines.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(rotations.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Self {
            lines,
            batches,
            rotations,
            dropped,
        })
    }
}

/// The file being tailed: where we are in it, and which inode it is.
struct Tail {
    path: PathBuf,
    file: File,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    async fn open(path: &PathBuf, at_end: bool) -> std::io::Result<Self> {
        let mut file = File::open(path).await?;
        let meta = file.metadata().await?;
        let pos = if at_end {
            file.seek(SeekFrom::End(0)).await?
        } else {
            0
        };
        Ok(Self {
            path: path.clone(),
            file,
            inode: meta.ino(),
            pos,
            partial: Vec::new(),
        })
    }

    /// Reads what was appended; complete lines go to `out`.
    async fn read_lines(&mut self, out: &mut Vec<String>) -> std::io::Result<()> {
        if self.file.metadata().await?.len() < self.pos {
            // Truncated in place (copytruncate): start over.
            self.file.seek(SeekFrom::Start(0)).await?;
            self.pos = 0;
        }
        let mut buf = Vec::new();
        self.pos += self.file.read_to_end(&mut buf).await? as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            out.push(
                String::from_utf8_lossy(&line[..end])
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// True when the path now names another file (rotation by rename).
    async fn rotated(&self) -> bool {
        tokio::fs::metadata(&self.path)
            .await
            .is_ok_and(|m| m.ino() != self.inode)
    }
}

struct Shipper {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    host: String,
    file: String,
    metrics: Metrics,
}

impl Shipper {
    /// POSTs `lines` as JSON lines; on failure keeps them for the next attempt.
    async fn ship(&self, lines: &mut Vec<String>) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut body = String::new();
        for line in lines.iter() {
            let record =
                serde_json::json!({"ts": ts, "host": self.host, "file": self.file, "line": line});
            body.push_str(&record.to_string());
            body.push('\n');
        }
        let sent = self
            .client
            .post(self.endpoint.clone())
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let result = if sent.is_ok() { "ok" } else { "error" };
        self.metrics.batches.with_label_values(&[result]).inc();
        sent.with_context(|| format!("POST {} lines to {}", lines.len(), self.endpoint))?;
        self.metrics.lines.inc_by(lines.len() as u64);
        lines.clear();
        Ok(())
    }
}

async fn run(cli: Cli, sidecar: Sidecar) -> anyhow::Result<()> {
    let tailing = sidecar.readiness().register("tail");
    let delivering = sidecar.readiness().register("endpoint");
    delivering.set_ready();
    let shipper = Shipper {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        endpoint: cli.endpoint.clone(),
        host: hostname(),
        file: cli.file.display().to_string(),
        metrics: Metrics::register(&sidecar)?,
    };
    let stop = sidecar.shutdown().token();
    let _in_flight = sidecar.shutdown().in_flight(); // the drain waits for the last flush
    let mut tail = None;
    let mut batch = Vec::new();
    let mut last_flush = tokio::time::Instant::now();
    loop {
        let stopping = stop.is_cancelled();
        match tail.as_mut() {
            None => match Tail::open(&cli.file, !cli.from_start).await {
                Ok(t) => {
                    tail = Some(t);
                    tailing.set_ready();
                }
                Err(e) => tailing.set_not_ready(format!("cannot open {}: {e}", cli.file.display())),
            },
            Some(t) => {
                if let Err(e) = t.read_lines(&mut batch).await {
                    tailing.set_not_ready(format!("cannot read {}: {e}", cli.file.display()));
                    tail = None;
                    continue;
                }
                if t.rotated().await {
                    // The old file was fully read just above; continue with the new one from its start.
                    shipper.metrics.rotations.inc();
                    tail = Tail::open(&cli.file, false).await.ok();
                    continue;
                }
            }
        }
        if batch.len() > cli.batch_lines * 20 {
            // The endpoint has been failing for a while: bound memory, oldest lines first.
            let excess = batch.len() - cli.batch_lines * 20;
            batch.drain(..excess);
            shipper.metrics.dropped.inc_by(excess as u64);
        }
        if batch.len() >= cli.batch_lines || last_flush.elapsed() >= cli.flush_interval || stopping
        {
            match shipper.ship(&mut batch).await {
                Ok(()) => delivering.set_ready(),
                Err(e) if stopping => return Err(e.context("final flush on shutdown")),
                Err(e) => delivering.set_not_ready(format!("{e:#}")),
            }
            last_flush = tokio::time::Instant::now();
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse(&INFO);
    let kit = cli.kit.clone();
    sidecar_kit::run(&INFO, &kit, |sidecar| run(cli, sidecar))
}
