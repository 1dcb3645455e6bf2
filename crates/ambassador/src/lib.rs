//! The ambassador: an mTLS proxy sidecar.
//!
//! - `inbound`: peers connect with mTLS; allowed identities reach the app on localhost.
//! - `outbound`: the app calls a plain listener on localhost; the ambassador originates mTLS to
//!   the remote service and checks its identity.
//!
//! [`serve`] runs both under sidecar-kit (admin server, reload, drain).
//!
//! The modules form layers, each importing only the ones below it (linkerd2-proxy's layout:
//! its inbound and outbound never import each other; what they share lives below them):
//!
//! 1. `lib` ([`serve`]): binds every listener of the [`Config`].
//! 2. `inbound`, `outbound`: one direction each; they never import each other.
//! 3. `proxy`: what both directions use: serving a connection, per-request policy (checks,
//!    metrics, access log), forwarding, the client pools of the next hop, refusal reasons.
//! 4. [`resilience`] (endpoint choice, retries, circuit breaking), `config`, `authz`, `jwt`
//!    (end-user authentication), `metrics`, `shard`: no knowledge of connections or directions.

mod authz;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod inbound;
mod jwt;
#[cfg(test)]
mod layers;
mod metrics;
mod outbound;
mod proxy;
mod ratelimit;
pub mod resilience;
mod shard;
mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use sidecar_kit::reload::CredentialReloader;
use sidecar_kit::{Sidecar, SidecarInfo};

pub use config::{Cli, Config};

/// Who the ambassador is to sidecar-kit.
pub const INFO: SidecarInfo = SidecarInfo {
    name: "ambassador",
    env_prefix: "AMBASSADOR",
    admin_port: 9901,
    version: env!("CARGO_PKG_VERSION"),
    description: "mTLS ambassador sidecar: terminates mTLS for the app (inbound) and originates \
                  it for the app's calls (outbound), checking identities both ways",
    // One per core the process may use, each thread a shard with its own event loop (`shard`
    // says why).
    worker_threads: 0,
};

/// Runs every listener of `config` until the kit asks to stop, then drains.
pub async fn serve(config: Config, sidecar: Sidecar) -> anyhow::Result<()> {
    sidecar_kit::tls::install_default_provider();
    let shards =
        Arc::new(shard::Shards::start(config.threads).context("starting the worker threads")?);
    tracing::info!(worker_threads = shards.len(), "worker threads started");
    let ready = sidecar.readiness().register("listeners");
    let metrics = metrics::Metrics::register(sidecar.registry()).context("registering metrics")?;
    let reloader = CredentialReloader::load(config.tls.clone(), sidecar.registry())
        .context("loading the certificates")?;
    reloader.spawn_watcher(Default::default(), sidecar.shutdown().token());

    let resilience = outbound::Runtime::new(
        sidecar.registry(),
        config.discovery.clone(),
        sidecar.shutdown().token(),
    )
    .context("registering resilience metrics")?;

    let mut loops: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    for route in &config.inbound {
        let accept = inbound::bind(
            route.clone(),
            config.limits,
            config.telemetry(),
            &reloader,
            &metrics,
            &shards,
            &sidecar,
        )
        .await?;
        loops.push(Box::pin(accept));
    }
    loops.extend(
        outbound::bind_all(&config, &reloader, &metrics, &resilience, &shards, &sidecar).await?,
    );
    let tracker = sidecar.shutdown().tracker();
    let handles: Vec<_> = loops.into_iter().map(|l| tracker.spawn(l)).collect();
    ready.set_ready();
    for handle in handles {
        // An accept loop only ends when the shutdown token is cancelled.
        let _ = handle.await;
    }
    Ok(())
}
