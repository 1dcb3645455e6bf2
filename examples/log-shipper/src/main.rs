//! A custom sidecar built on sidecar-kit, in one page: it follows one file on a shared volume
//! and forwards each new line to an HTTP endpoint, with a readiness check, two metrics and a
//! graceful stop. Flags, env fallbacks, the admin server, signals and the drain come from the
//! kit; this file is only the job.
//!
//! A demo of the kit, not a log shipper: it keeps no checkpoint, a line that fails to send is
//! dropped (and counted), and rotation is not followed. The real one is `crates/log-shipper`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use prometheus::IntCounterVec;
use sidecar_kit::{KitArgs, Sidecar, SidecarInfo};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

const INFO: SidecarInfo = SidecarInfo {
    name: "tail-demo",
    env_prefix: "TAIL_DEMO",
    admin_port: 9990,
    version: env!("CARGO_PKG_VERSION"),
    description: "Forwards the new lines of one file to an HTTP endpoint (a sidecar-kit demo)",
    worker_threads: 1,
};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    kit: KitArgs,
    /// The file to follow (from its end).
    #[arg(long, env = "FILE")]
    file: PathBuf,
    /// Where each line is POSTed.
    #[arg(long, env = "ENDPOINT")]
    endpoint: reqwest::Url,
}

async fn run(cli: Cli, sidecar: Sidecar) -> anyhow::Result<()> {
    let lines = IntCounterVec::new(
        prometheus::Opts::new("tail_demo_lines_total", "Lines by result: sent, dropped"),
        &["result"],
    )?;
    sidecar.registry().register(Box::new(lines.clone()))?;
    let ready = sidecar.readiness().register("file");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let stop = sidecar.shutdown().token();

    let mut file = tokio::fs::File::open(&cli.file).await?;
    file.seek(std::io::SeekFrom::End(0)).await?;
    let mut reader = BufReader::new(file);
    ready.set_ready();
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            read = reader.read_line(&mut line) => read?,
            () = stop.cancelled() => return Ok(()),
        };
        if read == 0 || !line.ends_with('\n') {
            // At the end: look again shortly (a partial line stays in `line` until it ends).
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                () = stop.cancelled() => return Ok(()),
            }
        }
        // The drain waits for a send in progress.
        let _in_flight = sidecar.shutdown().in_flight();
        let sent = client
            .post(cli.endpoint.clone())
            .body(line.trim_end().to_owned())
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let result = if sent.is_ok() { "sent" } else { "dropped" };
        lines.with_label_values(&[result]).inc();
    }
}

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse(&INFO);
    let kit = cli.kit.clone();
    sidecar_kit::run(&INFO, &kit, |sidecar| run(cli, sidecar))
}
