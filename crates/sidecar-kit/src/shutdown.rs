//! Graceful shutdown: what components see of it.
//!
//! The sequence, driven by [`crate::run`]: on SIGTERM or SIGINT (or `POST /shutdown` from
//! loopback) readiness fails at once, the kit waits the shutdown delay, then cancels
//! [`Shutdown::token`] so components stop accepting new work, and waits for every
//! [`InFlight`] guard and every task of [`Shutdown::tracker`] to finish, up to the grace period.
//! A second signal exits at once.
//!
//! ```
//! # async fn demo(shutdown: sidecar_kit::shutdown::Shutdown, listener: tokio::net::TcpListener) {
//! let token = shutdown.token();
//! loop {
//!     tokio::select! {
//!         _ = token.cancelled() => break, // stop accepting; the listener is dropped
//!         accepted = listener.accept() => {
//!             let Ok((stream, _)) = accepted else { continue };
//!             let in_flight = shutdown.in_flight(); // the drain waits for this guard
//!             tokio::spawn(async move {
//!                 let _in_flight = in_flight;
//!                 drop(stream); // serve the connection here
//!             });
//!         }
//!     }
//! }
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

/// The shutdown handle shared by the kit and every component. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop_accepting: CancellationToken,
    requested: CancellationToken,
    tracker: TaskTracker,
    request_notify: Arc<Notify>,
}

/// A guard for one piece of in-flight work; the drain waits until it is dropped.
#[derive(Debug)]
pub struct InFlight {
    _token: TaskTrackerToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new handle, not shutting down.
    pub fn new() -> Self {
        Self {
            stop_accepting: CancellationToken::new(),
            requested: CancellationToken::new(),
            tracker: TaskTracker::new(),
            request_notify: Arc::new(Notify::new()),
        }
    }

    /// Cancelled when components must stop accepting new work (after the shutdown delay).
    pub fn token(&self) -> CancellationToken {
        self.stop_accepting.clone()
    }

    /// Cancelled as soon as shutdown is requested, before the delay; for components that want
    /// to act early (for instance send HTTP/1 `Connection: close` on new responses).
    pub fn requested(&self) -> CancellationToken {
        self.requested.clone()
    }

    /// Registers one piece of in-flight work.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            _token: self.tracker.token(),
        }
    }

    /// The tracker whose tasks the drain waits for.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Asks for a graceful shutdown, exactly as a SIGTERM would.
    pub fn request(&self) {
        self.request_notify.notify_one();
    }

    /// Whether shutdown has been requested.
    pub fn is_shutting_down(&self) -> bool {
        self.requested.is_cancelled()
    }

    pub(crate) async fn wait_for_request(&self) {
        self.request_notify.notified().await;
    }

    pub(crate) fn mark_requested(&self) {
        self.requested.cancel();
    }

    pub(crate) fn stop_accepting(&self) {
        self.stop_accepting.cancel();
        self.tracker.close();
    }

    /// Number of tasks and in-flight guards still alive.
    pub fn in_flight_count(&self) -> usize {
        self.tracker.len()
    }

    pub(crate) async fn drained(&self) {
        self.tracker.wait().await;
    }
}
