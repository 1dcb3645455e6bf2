//! `run`: the straight line every sidecar's main ends in (logs, admin, serve, drain, exit).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminState};
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::{KitArgs, SidecarInfo, telemetry};

/// What a running sidecar's components share: metrics registry, readiness, shutdown and the
/// admin server's extra routes. Cheap to clone.
#[derive(Clone)]
pub struct Sidecar {
    info: &'static SidecarInfo,
    registry: Registry,
    readiness: Readiness,
    shutdown: Shutdown,
    extra_routes: Arc<ArcSwap<Router>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// A sidecar context that is not attached to a process's signals or admin server: for tests
    /// and for embedding components in another program.
    pub fn detached(info: &'static SidecarInfo) -> Self {
        Self {
            info,
            registry: Registry::new(),
            readiness: Readiness::default(),
            shutdown: Shutdown::new(),
            extra_routes: Arc::new(ArcSwap::from_pointee(Router::new())),
        }
    }

    /// Who this sidecar is.
    pub fn info(&self) -> &'static SidecarInfo {
        self.info
    }

    /// The Prometheus registry served on the admin `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The readiness checks served on the admin `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The shutdown handle: a token to stop accepting, and in-flight registration.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Adds routes to the admin server (it serves them as soon as this returns). Wrap routes
    /// that change state in [`admin::loopback_only`], or authenticate callers in them.
    pub fn add_admin_routes(&self, routes: Router) {
        let merged = Router::clone(&self.extra_routes.load()).merge(routes);
        self.extra_routes.store(Arc::new(merged));
    }

    /// The admin server's router, for serving it somewhere else (tests, embedding).
    pub fn admin_router(&self) -> Router {
        admin::router(AdminState {
            info: self.info,
            registry: self.registry.clone(),
            readiness: self.readiness.clone(),
            shutdown: self.shutdown.clone(),
            extra: self.extra_routes.clone(),
        })
    }
}

/// Runs a sidecar: logging, the admin server, `serve`, signals, the drain; returns the exit code.
///
/// `serve` gets the [`Sidecar`] and should return once [`Shutdown::token`] is cancelled and its
/// work has drained, or earlier when its job is done (one-shot mode). The exit code is 0 when it
/// returns `Ok` or the drain completes within the grace period, 1 when it fails (the error chain
/// is logged) or work is still in flight at the end of the grace period, 130 on a second signal.
pub fn run<F, Fut, E>(info: &'static SidecarInfo, args: &KitArgs, serve: F) -> ExitCode
where
    F: FnOnce(Sidecar) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    telemetry::init_logging(&args.log_level, args.log_format);
    crate::tls::install_default_provider();
    let runtime = match build_runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run_async(info, args.clone(), serve));
    // Tasks that ignored the drain must not hold the exit up.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// `--worker-threads`: 0 is tokio's default (one worker per core, or `TOKIO_WORKER_THREADS`);
/// 1 is a current-thread runtime, where a task woken by I/O runs on the thread that polled the
/// I/O, so a request never waits for another thread to be scheduled.
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

async fn run_async<F, Fut, E>(info: &'static SidecarInfo, args: KitArgs, serve: F) -> u8
where
    F: FnOnce(Sidecar) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let sidecar = Sidecar::detached(info);
    if let Err(e) = register_process_metrics(&sidecar) {
        tracing::warn!(error = %e, "cannot register process metrics");
    }
    let mut sigterm = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return 1;
        }
    };
    let mut sigint = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGINT handler");
            return 1;
        }
    };

    // SIGHUP's default action kills the process. Sidecars that use it (git-sync: sync now)
    // listen for it themselves; holding a listener here for the whole run means one that
    // arrives early, or at a sidecar that ignores it, does no harm.
    let _sighup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler");
            return 1;
        }
    };

    let listener = match TcpListener::bind(args.admin_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %args.admin_addr, error = %e, "cannot listen for the admin server");
            return 1;
        }
    };
    // The bound address, so that `--admin-addr 127.0.0.1:0` is usable too.
    let admin_addr = listener.local_addr().unwrap_or(args.admin_addr);
    tracing::info!(
        sidecar = info.name,
        version = info.version,
        admin = %admin_addr,
        "starting"
    );
    let admin = sidecar
        .admin_router()
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    // The drain itself is a readiness check: it fails the moment a signal arrives.
    let running = sidecar.readiness().register("shutdown");
    running.set_ready();
    let shutdown = sidecar.shutdown().clone();
    let mut app = shutdown
        .tracker()
        .spawn(serve(sidecar.clone()))
        .into_future_result();

    let reason = tokio::select! {
        result = &mut app => return finished(result),
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        () = shutdown.wait_for_request() => "admin request",
    };
    let started = tokio::time::Instant::now();
    let deadline = started + args.shutdown_grace;
    tracing::info!(
        signal = reason,
        delay = ?args.shutdown_delay,
        grace = ?args.shutdown_grace,
        "shutting down: readiness now failing"
    );
    running.set_not_ready(format!("shutting down ({reason})"));
    shutdown.mark_requested();

    let second_signal = async {
        tokio::select! {
            _ = sigterm.recv() => (),
            _ = sigint.recv() => (),
        }
    };
    tokio::pin!(second_signal);
    let delay_end = (started + args.shutdown_delay).min(deadline);
    tokio::select! {
        () = tokio::time::sleep_until(delay_end) => {}
        () = &mut second_signal => return exit_at_once(),
    }
    tracing::info!(
        in_flight = shutdown.in_flight_count(),
        "no longer accepting; draining"
    );
    shutdown.stop_accepting();

    let app_result = tokio::select! {
        result = &mut app => Some(result),
        () = tokio::time::sleep_until(deadline) => None,
        () = &mut second_signal => return exit_at_once(),
    };
    if let Some(Err(e)) = app_result
        .as_ref()
        .map(|r| r.as_ref().map_err(|e| e.to_string()))
    {
        tracing::error!(error = %e, "failed while shutting down");
        return 1;
    }
    tokio::select! {
        () = shutdown.drained() => {
            tracing::info!(took = ?started.elapsed(), "drained; exiting");
            0
        }
        () = tokio::time::sleep_until(deadline) => {
            tracing::error!(
                in_flight = shutdown.in_flight_count(),
                grace = ?args.shutdown_grace,
                "grace period over with work still in flight; exiting"
            );
            1
        }
        () = &mut second_signal => exit_at_once(),
    }
}

fn exit_at_once() -> u8 {
    tracing::warn!("second signal: exiting at once");
    130
}

fn finished(result: Result<(), String>) -> u8 {
    match result {
        Ok(()) => {
            tracing::info!("finished");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "failed");
            1
        }
    }
}

fn register_process_metrics(sidecar: &Sidecar) -> prometheus::Result<()> {
    telemetry::register_build_info(sidecar.info, sidecar.registry())?;
    sidecar.registry().register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}

/// Flattens a spawned serve future's outcome into `Result<(), String>` with the error chain.
trait IntoFutureResult {
    fn into_future_result(
        self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

impl<E> IntoFutureResult for tokio::task::JoinHandle<Result<(), E>>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    fn into_future_result(
        self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            match self.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(crate::error_chain(e.into().as_ref())),
                Err(join) => Err(format!(
                    "the sidecar's task panicked or was cancelled: {join}"
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::build_runtime;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_thread_is_a_current_thread_runtime() {
        let rt = build_runtime(1).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Tasks spawned from the served future still run (timers and I/O are enabled).
        let got = rt.block_on(async {
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                7
            })
            .await
        });
        assert_eq!(got.unwrap(), 7);
    }

    #[test]
    fn several_worker_threads_are_that_many() {
        let rt = build_runtime(3).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        let rt = build_runtime(0).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
    }
}
