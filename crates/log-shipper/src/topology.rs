//! A running configuration: sinks first, then for each input its pipeline and its source (the
//! receivers' sockets are bound here: a taken port fails the start, naming the input).
//! Stopping goes the other way and loses nothing: sources stop reading, pipelines flush what
//! they hold, sinks deliver (or, failing, write to their disk buffers) until the flush time is
//! up; whatever is still unacknowledged then is read again from the files next time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointFile;
use crate::config::{InputKind, Plan};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::sink::driver::{self, SinkHandle, Stop};
use crate::sink::http::SinkContext;
use crate::source::Source;
use crate::source::file::{FileSource, SharedTable};
use crate::source::http::HttpSource;
use crate::source::syslog::SyslogSource;

#[derive(Debug)]
pub struct Topology {
    stop_reading: CancellationToken,
    sink_stop: Stop,
    sources: Vec<JoinHandle<anyhow::Result<()>>>,
    pipelines: Vec<JoinHandle<()>>,
    sinks: Vec<SinkHandle>,
    /// The inputs' file tables, for the checkpointer.
    pub tables: Vec<SharedTable>,
}

impl Topology {
    /// Starts `plan`, resuming from the checkpoints in `state_dir`.
    pub fn start(
        plan: &Plan,
        state_dir: &Path,
        ctx: &SinkContext,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let loaded = CheckpointFile::new(state_dir).load()?;
        let stop_reading = CancellationToken::new();
        let sink_stop = Stop::default();
        let mut sinks = Vec::new();
        for spec in &plan.sinks {
            let sink = crate::sink::build(&spec.kind, ctx)
                .map_err(|e| anyhow::anyhow!("sink {}: {e}", spec.name))?;
            sinks.push(driver::start(
                &spec.name,
                spec.delivery,
                sink,
                state_dir,
                metrics.clone(),
                sink_stop.clone(),
            )?);
        }
        let mut sources = Vec::new();
        let mut pipelines = Vec::new();
        let mut tables = Vec::new();
        for input in &plan.inputs {
            let spec = plan
                .pipelines
                .get(&input.pipeline)
                .ok_or_else(|| anyhow::anyhow!("no pipeline {}", input.pipeline))?
                .clone();
            let outputs: Vec<mpsc::Sender<_>> = spec
                .sinks
                .iter()
                .filter_map(|name| sinks.iter().find(|s| s.name == *name))
                .map(|s| s.input.clone())
                .collect();
            let (tx, rx) = mpsc::channel(4);
            let pipeline = Pipeline::new(spec, input.name().to_owned(), outputs, metrics.clone());
            pipelines.push(tokio::spawn(pipeline.run(rx)));
            match &input.kind {
                InputKind::File(file) => {
                    let table = SharedTable::default();
                    tables.push(table.clone());
                    let source = Box::new(FileSource {
                        spec: file.clone(),
                        checkpoints: loaded
                            .files
                            .iter()
                            .filter(|c| c.input == file.name)
                            .cloned()
                            .collect(),
                        first_start: !loaded.existed,
                        table,
                        metrics: metrics.clone(),
                    });
                    sources.push(source.start(tx, stop_reading.clone()));
                }
                InputKind::Http(http) => {
                    let source =
                        HttpSource::bind(http.clone(), metrics.clone(), sink_stop.deadline.clone())
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "input {}: cannot listen on {}: {e}",
                                    http.name,
                                    http.address
                                )
                            })?;
                    sources.push(Box::new(source).start(tx, stop_reading.clone()));
                }
                InputKind::Syslog(syslog) => {
                    let source =
                        SyslogSource::bind(syslog.clone(), metrics.clone()).map_err(|e| {
                            anyhow::anyhow!("input {}: cannot listen: {e}", syslog.name)
                        })?;
                    sources.push(Box::new(source).start(tx, stop_reading.clone()));
                }
            }
        }
        // The pipelines hold the only senders now: a sink's intake ends when they are done.
        for sink in &mut sinks {
            let (closed, _) = mpsc::channel(1);
            sink.input = closed;
        }
        Ok(Self {
            stop_reading,
            sink_stop,
            sources,
            pipelines,
            sinks,
            tables,
        })
    }

    /// Stops reading and flushes, for at most `flush_time`.
    pub async fn stop(self, flush_time: Duration) {
        self.stop_reading.cancel();
        self.sink_stop.stopping.cancel();
        let deadline = self.sink_stop.deadline.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(flush_time).await;
            tracing::warn!(
                ?flush_time,
                "flush time over: what is not delivered will be read again at the next start"
            );
            deadline.cancel();
        });
        for source in self.sources {
            match source.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "input failed"),
                Err(e) => tracing::error!(error = %e, "input thread panicked"),
            }
        }
        for pipeline in self.pipelines {
            let _ = pipeline.await;
        }
        for sink in self.sinks {
            sink.finish().await;
        }
        timer.abort();
    }
}

/// The current tables, replaced on reload.
pub type Tables = Arc<Mutex<Vec<SharedTable>>>;
