//! The long-running part: metrics, the topology, the checkpointer, configuration reloads and
//! the shutdown (stop reading, flush within the kit's grace, write the checkpoints, exit 0).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sidecar_kit::Sidecar;
use sidecar_kit::watch::{WatchOptions, watch_files};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointFile, FileCheckpoint};
use crate::config::{Config, load_file};
use crate::metrics::Metrics;
use crate::sink::http::SinkContext;
use crate::topology::{Tables, Topology};

/// Runs the shipper until shutdown.
pub async fn serve(config: Config, sidecar: Sidecar) -> anyhow::Result<()> {
    let metrics = Metrics::register(sidecar.registry()).context("registering metrics")?;
    let ready = sidecar.readiness().register("inputs");
    let token = sidecar.shutdown().token();
    let ctx = SinkContext {
        registry: sidecar.registry().clone(),
        shutdown: token.clone(),
        tls: Arc::default(),
    };
    let state_dir = config.state.path.clone();
    let mut plan = config.plan.clone();
    let mut topology = Topology::start(&plan, &state_dir, &ctx, &metrics)?;
    let tables: Tables = Arc::new(Mutex::new(topology.tables.clone()));
    let checkpointer = Arc::new(Checkpointer::new(
        &state_dir,
        tables.clone(),
        metrics.clone(),
    ));
    let checkpoints_stop = CancellationToken::new();
    let ticker = tokio::spawn(
        checkpointer
            .clone()
            .run(config.checkpoint_interval, checkpoints_stop.clone()),
    );
    ready.set_ready();
    tracing::info!(
        inputs = plan.inputs.len(),
        sinks = plan.sinks.len(),
        state_dir = %state_dir.display(),
        "log-shipper started"
    );

    let mut changes = config
        .config_file
        .as_ref()
        .map(|path| watch_files(vec![path.clone()], WatchOptions::default(), token.clone()));
    let mut generation = 0;
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(c) => c.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = token.cancelled() => break,
            still = changed => {
                if !still {
                    continue;
                }
                let Some(path) = config.config_file.as_ref() else { continue };
                let new = match load_file(path, &config.cli) {
                    Ok(p) => p,
                    Err(e) => {
                        metrics.config_reloads.with_label_values(&["error"]).inc();
                        tracing::error!(error = %e, "configuration refused; the running one stays");
                        continue;
                    }
                };
                tracing::info!(file = %path.display(), "configuration changed: stopping reading, flushing, starting again");
                topology.stop(config.flush_time).await;
                checkpointer.write().await;
                match Topology::start(&new, &state_dir, &ctx, &metrics) {
                    Ok(t) => {
                        topology = t;
                        plan = new;
                        generation += 1;
                        metrics.config_generation.set(generation);
                        metrics.config_reloads.with_label_values(&["ok"]).inc();
                    }
                    Err(e) => {
                        metrics.config_reloads.with_label_values(&["error"]).inc();
                        tracing::error!(error = %e, "the new configuration cannot start; the old one starts again");
                        topology = Topology::start(&plan, &state_dir, &ctx, &metrics)?;
                    }
                }
                *tables.lock().unwrap_or_else(|p| p.into_inner()) = topology.tables.clone();
            }
        }
    }
    tracing::info!("stopping: reading stopped, flushing");
    topology.stop(config.flush_time).await;
    checkpoints_stop.cancel();
    let _ = ticker.await;
    checkpointer.write().await;
    tracing::info!("checkpoints written");
    Ok(())
}

/// Writes the inputs' checkpoints when they change, and the lag and age metrics.
#[derive(Debug)]
struct Checkpointer {
    file: CheckpointFile,
    tables: Tables,
    metrics: Metrics,
    state: tokio::sync::Mutex<CheckpointState>,
}

#[derive(Debug)]
struct CheckpointState {
    written: Option<Vec<FileCheckpoint>>,
    current_since: Instant,
    lag_labels: HashSet<(String, String)>,
}

impl Checkpointer {
    fn new(state_dir: &std::path::Path, tables: Tables, metrics: Metrics) -> Self {
        Self {
            file: CheckpointFile::new(state_dir),
            tables,
            metrics,
            state: tokio::sync::Mutex::new(CheckpointState {
                written: None,
                current_since: Instant::now(),
                lag_labels: HashSet::new(),
            }),
        }
    }

    async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
            self.write().await;
        }
    }

    /// Writes the checkpoints if they changed.
    async fn write(&self) {
        let mut state = self.state.lock().await;
        let tables: Vec<_> = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut files = Vec::new();
        let mut lag = Vec::new();
        for table in &tables {
            let snapshot = table.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
            for (cp, size) in snapshot {
                if !cp.finished {
                    lag.push((
                        cp.input.clone(),
                        cp.path.display().to_string(),
                        size.saturating_sub(cp.offset),
                    ));
                }
                files.push(cp);
            }
        }
        files.sort_by(|a, b| (&a.input, a.dev, a.inode).cmp(&(&b.input, b.dev, b.inode)));
        self.lag(&mut state, lag);
        if state.written.as_ref() != Some(&files) {
            let file = self.file.clone();
            let to_write = files.clone();
            let result = tokio::task::spawn_blocking(move || file.save(&to_write)).await;
            match result {
                Ok(Ok(())) => {
                    state.written = Some(files);
                    state.current_since = Instant::now();
                    self.metrics
                        .checkpoint_writes
                        .with_label_values(&["ok"])
                        .inc();
                }
                Ok(Err(e)) => {
                    self.metrics
                        .checkpoint_writes
                        .with_label_values(&["error"])
                        .inc();
                    tracing::error!(error = %e, "cannot write the checkpoints");
                }
                Err(e) => tracing::error!(error = %e, "checkpoint writer panicked"),
            }
        } else {
            state.current_since = Instant::now();
        }
        self.metrics
            .checkpoint_age
            .set(state.current_since.elapsed().as_secs_f64());
    }

    fn lag(&self, state: &mut CheckpointState, lag: Vec<(String, String, u64)>) {
        let mut labels = HashSet::new();
        for (input, path, bytes) in lag {
            self.metrics
                .file_lag_bytes
                .with_label_values(&[&input, &path])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            labels.insert((input, path));
        }
        for old in state.lag_labels.difference(&labels) {
            let _ = self
                .metrics
                .file_lag_bytes
                .remove_label_values(&[&old.0, &old.1]);
        }
        state.lag_labels = labels;
    }
}
