//! Named readiness checks that components register and flip; `/readyz` reports them.
//!
//! ```
//! let readiness = sidecar_kit::readiness::Readiness::default();
//! let upstream = readiness.register("upstream");
//! assert!(!readiness.is_ready()); // a new check starts not ready
//! upstream.set_ready();
//! assert!(readiness.is_ready());
//! upstream.set_not_ready("connection refused");
//! assert_eq!(readiness.failing(), vec![("upstream".to_owned(), "connection refused".to_owned())]);
//! ```

use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug)]
struct CheckState {
    name: String,
    status: Mutex<Status>,
}

#[derive(Debug, Clone)]
struct Status {
    ready: bool,
    reason: String,
}

/// The set of readiness checks of one sidecar. Cheap to clone; clones share the checks.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<Arc<CheckState>>>>,
}

/// One named check. It starts not ready ("starting"); the component flips it.
#[derive(Debug, Clone)]
pub struct ReadyCheck {
    state: Arc<CheckState>,
}

/// One line of the readiness report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// Whether it passes.
    pub ready: bool,
    /// Why not, when it does not pass.
    pub reason: String,
}

impl Readiness {
    /// Registers a check named `name`, initially not ready. Registering a name twice gives two
    /// checks that must both pass.
    pub fn register(&self, name: impl Into<String>) -> ReadyCheck {
        let state = Arc::new(CheckState {
            name: name.into(),
            status: Mutex::new(Status {
                ready: false,
                reason: "starting".to_owned(),
            }),
        });
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(state.clone());
        ReadyCheck { state }
    }

    /// True when every registered check passes (and at least one is registered).
    pub fn is_ready(&self) -> bool {
        let report = self.report();
        !report.is_empty() && report.iter().all(|c| c.ready)
    }

    /// The failing checks with their reasons.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.report()
            .into_iter()
            .filter(|c| !c.ready)
            .map(|c| (c.name, c.reason))
            .collect()
    }

    /// Every check, in registration order.
    pub fn report(&self) -> Vec<CheckReport> {
        let checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        checks
            .iter()
            .map(|c| {
                let status = c
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                CheckReport {
                    name: c.name.clone(),
                    ready: status.ready,
                    reason: status.reason,
                }
            })
            .collect()
    }
}

impl ReadyCheck {
    /// Marks the check as passing.
    pub fn set_ready(&self) {
        self.set(true, String::new());
    }

    /// Marks the check as failing, with a reason shown by `/readyz?verbose`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(false, reason.into());
    }

    /// Whether the check passes now.
    pub fn is_ready(&self) -> bool {
        self.state
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    fn set(&self, ready: bool, reason: String) {
        let mut status = self
            .state
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if status.ready != ready {
            if ready {
                tracing::info!(check = %self.state.name, "ready");
            } else {
                tracing::warn!(check = %self.state.name, %reason, "not ready");
            }
        }
        *status = Status { ready, reason };
    }
}
