//! One endpoint of a route: its latency estimate (peak-EWMA), pending requests and circuit breaker.
//!
//! All mutable state sits behind one short-held std mutex: every operation is a few arithmetic steps, and
//! the balancer reads two endpoints per pick, so contention stays far below a request's cost.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::config::{BreakerConfig, PeakEwmaConfig};
use super::metrics::{EndpointMetrics, Health, RouteMetrics};

/// The address the caller sends one try to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
}

/// Whether an endpoint may take a try now, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Availability {
    Healthy,
    /// Ejection is over: the next try is the one probe.
    ProbeDue,
    Unavailable,
}

#[derive(Debug)]
struct Inner {
    rtt_ns: f64,
    rtt_updated: Instant,
    /// False until the first response: the estimate is only an assumption (the default, or the peers'
    /// average), which the first real latency replaces outright rather than being averaged with.
    measured: bool,
    health: Health,
    consecutive_failures: u32,
    /// Ejections in a row without a successful probe in between: the exponent of the ejection backoff.
    ejections_in_a_row: u32,
    /// Last outcomes (true = success) for the optional success-rate rule.
    recent: VecDeque<bool>,
}

#[derive(Debug)]
pub struct EndpointState {
    endpoint: Endpoint,
    label: String,
    inner: Mutex<Inner>,
    pending: AtomicUsize,
    /// Lock-free copy of the breaker state for the balancer's per-request checks (written under the lock).
    health_code: AtomicU8,
    /// While ejected: the end of the ejection, in nanoseconds since [`epoch`].
    ejected_until: AtomicU64,
    /// Per-endpoint metric handles, looked up once instead of per try.
    handles: EndpointMetrics,
    /// Set once discovery no longer lists the endpoint: no new tries, in-flight ones finish.
    removed: AtomicBool,
    metrics: RouteMetrics,
}

impl EndpointState {
    #[cfg(test)]
    pub(crate) fn new(addr: SocketAddr, ewma: &PeakEwmaConfig, metrics: RouteMetrics) -> Arc<Self> {
        Self::with_rtt(addr, ewma.default_rtt, metrics)
    }

    /// An endpoint whose latency estimate starts at `rtt` (a newcomer starts at its peers' average, so it
    /// is neither shunned as "unknown, assume slow" nor flooded as "unknown, assume fast").
    pub(crate) fn with_rtt(addr: SocketAddr, rtt: Duration, metrics: RouteMetrics) -> Arc<Self> {
        let state = Arc::new(Self {
            endpoint: Endpoint { addr },
            label: addr.to_string(),
            inner: Mutex::new(Inner {
                rtt_ns: nanos(rtt),
                rtt_updated: Instant::now(),
                measured: false,
                health: Health::Healthy,
                consecutive_failures: 0,
                ejections_in_a_row: 0,
                recent: VecDeque::new(),
            }),
            pending: AtomicUsize::new(0),
            health_code: AtomicU8::new(HEALTHY),
            ejected_until: AtomicU64::new(0),
            handles: metrics.endpoint(&addr.to_string()),
            removed: AtomicBool::new(false),
            metrics,
        });
        state
            .metrics
            .set_endpoint_state(&state.label, Health::Healthy);
        state
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        self.lock().health
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.metrics.remove_endpoint_state(&self.label);
    }

    /// A drained endpoint has left the metrics; late outcomes must not bring it back.
    fn publish_state(&self, health: Health) {
        if !self.is_removed() {
            self.metrics.set_endpoint_state(&self.label, health);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update of plain numbers; they stay usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn availability(&self, now: Instant) -> Availability {
        match self.health_code.load(Ordering::Acquire) {
            HEALTHY => Availability::Healthy,
            EJECTED if self.ejected_until.load(Ordering::Acquire) <= since_epoch(now) => {
                Availability::ProbeDue
            }
            _ => Availability::Unavailable,
        }
    }

    /// Sets the breaker state; called with the lock held so the lock-free copy never goes stale.
    fn set_health(&self, inner: &mut Inner, health: Health) {
        inner.health = health;
        match health {
            Health::Healthy => self.health_code.store(HEALTHY, Ordering::Release),
            Health::Probing => self.health_code.store(PROBING, Ordering::Release),
            Health::Ejected { until } => {
                self.ejected_until
                    .store(since_epoch(until), Ordering::Release);
                self.health_code.store(EJECTED, Ordering::Release);
            }
        }
    }

    /// Claims the one probe after an ejection; false if another request got it first.
    pub(crate) fn try_start_probe(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.health {
            Health::Ejected { until } if until <= now => {
                self.set_health(&mut inner, Health::Probing);
                drop(inner);
                self.publish_state(Health::Probing);
                true
            }
            _ => false,
        }
    }

    /// Peak-EWMA cost as tower and linkerd2-proxy compute it: the latency estimate, decayed towards zero
    /// since its last update so a once-slow endpoint is tried again, times (pending requests + 1).
    pub(crate) fn cost(&self, decay: Duration, now: Instant) -> f64 {
        let mut inner = self.lock();
        let estimate = update_estimate(&mut inner, 0.0, decay, now);
        estimate * (self.pending() as f64 + 1.0)
    }

    /// Marks a try as started; the guard records its outcome (or its cancellation) exactly once.
    /// `now` is the caller's clock reading for this try (one per try, shared with the pick).
    pub(crate) fn start_try(self: &Arc<Self>, probe: bool, now: Instant) -> TryGuard {
        self.pending.fetch_add(1, Ordering::Relaxed);
        TryGuard {
            endpoint: Arc::clone(self),
            started: now,
            probe,
            finished: false,
        }
    }

    fn finish(
        &self,
        outcome: Option<TryOutcome>,
        started: Instant,
        probe: bool,
        breaker: &BreakerConfig,
        ewma: &PeakEwmaConfig,
    ) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        let mut inner = self.lock();
        let Some(outcome) = outcome else {
            // Cancelled (the caller went away): it proves nothing, so a probe is simply due again.
            if probe && inner.health == Health::Probing {
                self.set_health(&mut inner, Health::Ejected { until: now });
                drop(inner);
                self.publish_state(Health::Ejected { until: now });
            }
            return;
        };
        let success = outcome == TryOutcome::Success;
        if outcome != TryOutcome::ConnectFailure {
            // A connection refused in microseconds must not look like the fastest endpoint.
            if inner.measured {
                update_estimate(&mut inner, nanos(elapsed), ewma.decay, now);
            } else {
                inner.rtt_ns = nanos(elapsed);
                inner.rtt_updated = now;
                inner.measured = true;
            }
        }
        self.handles.observe(success, elapsed);
        if !breaker.enabled {
            return;
        }
        if let Some(rate) = &breaker.success_rate {
            inner.recent.push_back(success);
            while inner.recent.len() > rate.window {
                inner.recent.pop_front();
            }
        }
        let new_health = if success {
            inner.consecutive_failures = 0;
            if inner.health == Health::Probing {
                inner.ejections_in_a_row = 0;
                inner.recent.clear();
                Some(Health::Healthy)
            } else {
                None
            }
        } else {
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            let low_rate = breaker.success_rate.as_ref().is_some_and(|rate| {
                let total = inner.recent.len();
                let ok = inner.recent.iter().filter(|s| **s).count();
                total >= rate.min_requests.max(1) && (ok as f64) < rate.threshold * total as f64
            });
            let eject = match inner.health {
                Health::Probing => true,
                Health::Healthy => {
                    inner.consecutive_failures >= breaker.consecutive_failures || low_rate
                }
                // Tries sent before the ejection finishing now change nothing.
                Health::Ejected { .. } => false,
            };
            if eject {
                let backoff = ejection_backoff(breaker, inner.ejections_in_a_row);
                inner.ejections_in_a_row = inner.ejections_in_a_row.saturating_add(1);
                inner.consecutive_failures = 0;
                inner.recent.clear();
                self.metrics.ejection(&self.label);
                tracing::warn!(
                    endpoint = %self.label,
                    route = %self.metrics.route(),
                    ejection_ms = backoff.as_millis() as u64,
                    "endpoint ejected after failures"
                );
                Some(Health::Ejected {
                    until: now + backoff,
                })
            } else {
                None
            }
        };
        if let Some(health) = new_health {
            if health == Health::Healthy {
                tracing::info!(endpoint = %self.label, route = %self.metrics.route(), "endpoint back after a good probe");
            }
            self.set_health(&mut inner, health);
            drop(inner);
            self.publish_state(health);
        }
    }

    pub(crate) fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(self.lock().rtt_ns as u64)
    }
}

const HEALTHY: u8 = 0;
const EJECTED: u8 = 1;
const PROBING: u8 = 2;

/// A fixed point in time the lock-free ejection deadlines are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Ejection length: base * 2^n capped at the maximum, plus up to 10% jitter so endpoints ejected together
/// are not probed together.
fn ejection_backoff(breaker: &BreakerConfig, ejections_in_a_row: u32) -> Duration {
    let factor = 2u32.saturating_pow(ejections_in_a_row.min(20));
    let base = breaker
        .base_ejection
        .saturating_mul(factor)
        .min(breaker.max_ejection);
    base + base.mul_f64(rand::random::<f64>() * 0.1)
}

fn update_estimate(inner: &mut Inner, rtt_ns: f64, decay: Duration, now: Instant) -> f64 {
    if inner.rtt_ns < rtt_ns {
        // Peak: a slower response is believed at once.
        inner.rtt_ns = rtt_ns;
    } else {
        let elapsed = nanos(now.saturating_duration_since(inner.rtt_updated));
        let weight = (-elapsed / nanos(decay)).exp();
        inner.rtt_ns = inner.rtt_ns * weight + rtt_ns * (1.0 - weight);
    }
    inner.rtt_updated = now;
    inner.rtt_ns
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// What one try amounted to, for the breaker and the latency estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    Success,
    /// No connection could be made: nothing reached the endpoint.
    ConnectFailure,
    /// A failure status, an error after connecting, or a timeout.
    Failure,
}

/// An in-flight try on one endpoint; counts as pending until finished or dropped.
#[derive(Debug)]
pub struct TryGuard {
    endpoint: Arc<EndpointState>,
    started: Instant,
    probe: bool,
    finished: bool,
}

impl TryGuard {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    pub(crate) fn finish(
        mut self,
        outcome: TryOutcome,
        breaker: &BreakerConfig,
        ewma: &PeakEwmaConfig,
    ) {
        self.finished = true;
        self.endpoint
            .finish(Some(outcome), self.started, self.probe, breaker, ewma);
    }
}

impl Drop for TryGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.finish(
                None,
                self.started,
                self.probe,
                &BreakerConfig::default(),
                &PeakEwmaConfig::default(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::config::SuccessRateConfig;
    use crate::resilience::metrics::Metrics;

    fn endpoint() -> Arc<EndpointState> {
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("fresh registry");
        EndpointState::new(
            "127.0.0.1:1".parse().expect("addr"),
            &PeakEwmaConfig::default(),
            metrics.route("r"),
        )
    }

    fn fail(ep: &Arc<EndpointState>, cfg: &BreakerConfig) {
        ep.start_try(false, Instant::now()).finish(
            TryOutcome::Failure,
            cfg,
            &PeakEwmaConfig::default(),
        );
    }

    #[test]
    fn consecutive_failures_eject_and_one_probe_decides() {
        let ep = endpoint();
        let cfg = BreakerConfig {
            base_ejection: Duration::from_millis(20),
            ..Default::default()
        };
        for _ in 0..4 {
            fail(&ep, &cfg);
        }
        assert_eq!(
            ep.health(),
            Health::Healthy,
            "four failures are below the threshold of five"
        );
        ep.start_try(false, Instant::now()).finish(
            TryOutcome::Success,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        for _ in 0..4 {
            fail(&ep, &cfg);
        }
        assert_eq!(
            ep.health(),
            Health::Healthy,
            "a success in between resets the count"
        );
        fail(&ep, &cfg);
        assert!(matches!(ep.health(), Health::Ejected { .. }));
        assert_eq!(ep.availability(Instant::now()), Availability::Unavailable);
        std::thread::sleep(Duration::from_millis(25));
        let now = Instant::now();
        assert_eq!(ep.availability(now), Availability::ProbeDue);
        assert!(ep.try_start_probe(now));
        assert!(!ep.try_start_probe(now), "only one probe at a time");
        assert_eq!(ep.availability(now), Availability::Unavailable);
        // The probe fails: ejected again, for twice as long.
        ep.start_try(true, Instant::now()).finish(
            TryOutcome::Failure,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        let Health::Ejected { until } = ep.health() else {
            panic!("probe failure must eject")
        };
        assert!(until.saturating_duration_since(Instant::now()) > Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(50));
        assert!(ep.try_start_probe(Instant::now()));
        ep.start_try(true, Instant::now()).finish(
            TryOutcome::Success,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        assert_eq!(ep.health(), Health::Healthy);
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_request_probe() {
        let ep = endpoint();
        let cfg = BreakerConfig {
            base_ejection: Duration::from_millis(1),
            consecutive_failures: 1,
            ..Default::default()
        };
        fail(&ep, &cfg);
        std::thread::sleep(Duration::from_millis(5));
        assert!(ep.try_start_probe(Instant::now()));
        drop(ep.start_try(true, Instant::now()));
        assert_eq!(ep.pending(), 0);
        assert_eq!(ep.availability(Instant::now()), Availability::ProbeDue);
    }

    #[test]
    fn low_success_rate_ejects_even_without_a_failure_streak() {
        let ep = endpoint();
        let cfg = BreakerConfig {
            consecutive_failures: 100,
            success_rate: Some(SuccessRateConfig {
                window: 20,
                min_requests: 10,
                threshold: 0.6,
            }),
            ..Default::default()
        };
        for _ in 0..10 {
            ep.start_try(false, Instant::now()).finish(
                TryOutcome::Success,
                &cfg,
                &PeakEwmaConfig::default(),
            );
            fail(&ep, &cfg);
        }
        assert!(
            matches!(ep.health(), Health::Ejected { .. }),
            "50% success is below 60%"
        );
    }

    #[test]
    fn the_first_response_replaces_the_assumed_latency() {
        let ep = endpoint();
        assert_eq!(
            ep.rtt_estimate(),
            Duration::from_millis(30),
            "the default before any response"
        );
        ep.start_try(false, Instant::now()).finish(
            TryOutcome::Success,
            &BreakerConfig::default(),
            &PeakEwmaConfig::default(),
        );
        assert!(
            ep.rtt_estimate() < Duration::from_millis(5),
            "{:?}",
            ep.rtt_estimate()
        );
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let ep = endpoint();
        let decay = Duration::from_millis(100);
        {
            let mut inner = ep.lock();
            let now = Instant::now();
            update_estimate(&mut inner, 200e6, decay, now);
            assert_eq!(inner.rtt_ns, 200e6, "a peak replaces the estimate");
            update_estimate(&mut inner, 1e6, decay, now + Duration::from_millis(100));
            let expected = 200e6 * (-1.0f64).exp() + 1e6 * (1.0 - (-1.0f64).exp());
            assert!(
                (inner.rtt_ns - expected).abs() < 1.0,
                "{} vs {expected}",
                inner.rtt_ns
            );
        }
        let pending_guard = ep.start_try(false, Instant::now());
        let cost_busy = ep.cost(decay, Instant::now());
        drop(pending_guard);
        let cost_idle = ep.cost(decay, Instant::now());
        assert!(
            cost_busy > cost_idle * 1.5,
            "pending requests raise the cost: {cost_busy} vs {cost_idle}"
        );
        assert!(ep.rtt_estimate() < Duration::from_millis(200));
    }
}
