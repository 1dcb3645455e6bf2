//! The loop: refresh what is due, render and publish when a secret changed, tell the app,
//! keep readiness and metrics current; or, with `--one-time`, render everything once and exit.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use sidecar_kit::Sidecar;
use sidecar_kit::notify::{Change, Notifier};
use sidecar_kit::readiness::ReadyCheck;
use sidecar_kit::watch::{WatchOptions, watch_files};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::agent::Agent;
use crate::config::Config;
use crate::metrics::{Metrics, unix};
use crate::publish::{Outcome, Publisher};
use crate::schedule::backoff;

/// Runs the agent until shutdown (or, with `--one-time`, until everything is rendered).
pub async fn serve(config: Config, sidecar: Sidecar) -> anyhow::Result<()> {
    let metrics = Metrics::register(sidecar.registry()).context("registering metrics")?;
    let ready = sidecar.readiness().register("secrets");
    let token = sidecar.shutdown().token();
    let config = Arc::new(config);
    let dir = config.output_dir.clone();
    let publisher = tokio::task::spawn_blocking(move || Publisher::open(&dir))
        .await
        .context("opening --output-dir")?
        .with_context(|| format!("preparing --output-dir {}", config.output_dir.display()))?;
    let publisher = Arc::new(publisher);
    let mut agent = Agent::new(&config, metrics.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        addr = %config.endpoint.addr,
        auth = config.auth.label(),
        secrets = config.secrets.len(),
        files = config.renderer.files().len(),
        output = %config.output_dir.display(),
        one_time = config.one_time,
        "secrets-agent started"
    );
    let notifier = (!config.notify.is_empty()).then(|| {
        Notifier::<Changed>::spawn(
            config.notify.clone(),
            Some(metrics.hooks.clone()),
            sidecar.shutdown(),
        )
    });
    let output = Output {
        publisher,
        notifier,
        dir: config.output_dir.display().to_string(),
    };
    if config.one_time {
        let result = one_time(&config, &mut agent, &output, &metrics, &token).await;
        output.finish().await;
        return result;
    }

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut credentials = watch_files(
        config.auth.files(),
        WatchOptions::default(),
        token.child_token(),
    );
    let mut state = PublishState::default();
    loop {
        let changed = agent.run_due().await;
        metrics
            .consecutive_failures
            .set(i64::from(agent.failures()));
        if agent.complete() && (changed || state.pending) {
            state.pending = false;
            match render_and_publish(&config, &agent, &output, &metrics).await {
                Ok(_) => {
                    state.published = true;
                    state.last_error = None;
                    // Only now may the leases the files used until this set be revoked.
                    agent.published();
                }
                Err(Failed::Render(e)) => {
                    // The same data would fail again: wait for a change.
                    tracing::error!(error = %e, "cannot render; the files stay as they are");
                    state.last_error = Some(format!("cannot render: {e}"));
                }
                Err(Failed::Publish(e)) => {
                    state.last_error = Some(format!("cannot publish: {e}"));
                    state.failures += 1;
                    state.pending = true;
                    state.retry_at = Some(
                        Instant::now() + backoff(state.failures, config.backoff_max, config.jitter),
                    );
                    tracing::error!(error = %e, "cannot publish; the files stay as they are");
                }
            }
            if !state.pending {
                state.failures = 0;
                state.retry_at = None;
            }
        }
        update_readiness(&ready, &agent, &state);

        let mut wake = agent.next_due();
        if let Some(at) = state.retry_at {
            wake = wake.min(at);
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = token.cancelled() => break,
            got = hup.recv() => {
                if got.is_some() {
                    tracing::info!("SIGHUP: reading the KV secrets again");
                    agent.poll_now();
                }
            }
            changed = credentials.changed() => {
                if changed {
                    tracing::info!("a credential file changed: logging in again");
                    agent.login_now();
                }
            }
        }
    }
    output.finish().await;
    Ok(())
}

/// Where rendered files go: the publisher, and the hooks that tell the app.
struct Output {
    publisher: Arc<Publisher>,
    notifier: Option<Notifier<Changed>>,
    dir: String,
}

impl Output {
    /// Sends what the notifier still holds.
    async fn finish(self) {
        if let Some(notifier) = self.notifier {
            notifier.finish().await;
        }
    }
}

/// The files a publish changed, as the hooks tell it: names only, never content.
#[derive(Debug)]
struct Changed {
    files: BTreeSet<String>,
    dir: String,
}

impl Change for Changed {
    fn merge(&mut self, later: Self) {
        self.files.extend(later.files);
    }

    fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({ "files": self.files, "dir": self.dir })
    }

    fn command_env(&self) -> Vec<(String, String)> {
        let files: Vec<&str> = self.files.iter().map(String::as_str).collect();
        vec![
            ("SECRETS_AGENT_CHANGED_FILES".to_owned(), files.join(" ")),
            ("SECRETS_AGENT_OUTPUT_DIR".to_owned(), self.dir.clone()),
        ]
    }
}

#[derive(Debug, Default)]
struct PublishState {
    /// Some set was published (or was found in place) since start.
    published: bool,
    /// A publish failed and is to be tried again.
    pending: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// Why the latest data is not in the files, if it is not.
    last_error: Option<String>,
}

fn update_readiness(ready: &ReadyCheck, agent: &Agent, state: &PublishState) {
    if !state.published {
        let why = match agent.errors().first() {
            Some((what, e)) => format!("nothing published yet: {what}: {e}"),
            None => "nothing published yet".to_owned(),
        };
        ready.set_not_ready(why);
        return;
    }
    match agent.readiness(state.retry_at) {
        Ok(()) => ready.set_ready(),
        Err(why) => match &state.last_error {
            Some(e) => ready.set_not_ready(format!("{why}; {e}")),
            None => ready.set_not_ready(why),
        },
    }
}

#[derive(Debug)]
enum Failed {
    Render(String),
    Publish(String),
}

/// Renders every file from the current data and publishes the set if it differs.
async fn render_and_publish(
    config: &Config,
    agent: &Agent,
    output: &Output,
    metrics: &Metrics,
) -> Result<Vec<PathBuf>, Failed> {
    let rendered = match config.renderer.render(&agent.snapshot()) {
        Ok(r) => r,
        Err(e) => {
            metrics.renders.with_label_values(&["render_failed"]).inc();
            return Err(Failed::Render(e.to_string()));
        }
    };
    // fsync and friends: off the runtime's one thread, so the admin server keeps answering.
    let publisher = output.publisher.clone();
    let published = tokio::task::spawn_blocking(move || publisher.publish(&rendered))
        .await
        .map_err(|e| Failed::Publish(format!("the publishing thread failed: {e}")))?;
    match published {
        Ok(Outcome::Unchanged) => {
            metrics.renders.with_label_values(&["unchanged"]).inc();
            tracing::debug!("rendered; no file changed");
            Ok(Vec::new())
        }
        Ok(Outcome::Published { changed }) => {
            metrics.renders.with_label_values(&["published"]).inc();
            metrics.publishes.inc();
            metrics.last_publish.set(unix(SystemTime::now()));
            for path in &changed {
                metrics
                    .file_writes
                    .with_label_values(&[&path.to_string_lossy()])
                    .inc();
            }
            let names: BTreeSet<String> = changed
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            tracing::info!(files = ?names, dir = %output.dir, "published");
            if let Some(notifier) = &output.notifier {
                notifier.notify(Changed {
                    files: names,
                    dir: output.dir.clone(),
                });
            }
            Ok(changed)
        }
        Err(e) => {
            metrics.renders.with_label_values(&["publish_failed"]).inc();
            Err(Failed::Publish(e.to_string()))
        }
    }
}

async fn one_time(
    config: &Config,
    agent: &mut Agent,
    output: &Output,
    metrics: &Metrics,
    token: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.one_time_timeout;
    loop {
        agent.run_due().await;
        if agent.complete() {
            break;
        }
        if agent.has_permanent_error() || Instant::now() >= deadline {
            let errors: Vec<String> = agent
                .errors()
                .iter()
                .map(|(what, e)| format!("{what}: {e}"))
                .collect();
            bail!("cannot fetch every secret: {}", errors.join("; "));
        }
        tokio::select! {
            () = tokio::time::sleep_until(agent.next_due().min(deadline)) => {}
            () = token.cancelled() => bail!("stopped before every secret was fetched"),
        }
    }
    match render_and_publish(config, agent, output, metrics).await {
        Ok(changed) => {
            tracing::info!(
                files = config.renderer.files().len(),
                changed = changed.len(),
                "one-time render done"
            );
            Ok(())
        }
        Err(Failed::Render(e)) => bail!("cannot render: {e}"),
        Err(Failed::Publish(e)) => bail!("cannot publish: {e}"),
    }
}
