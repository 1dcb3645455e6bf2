//! Choosing the endpoint for one try: a due probe first, then power of two choices over peak-EWMA cost
//! (or round robin), among endpoints the breaker allows and, for a retry, preferably not tried already.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use super::config::BalancerKind;
use super::endpoint::{Availability, EndpointState};

#[derive(Debug)]
pub(crate) struct Balancer {
    kind: BalancerKind,
    decay: Duration,
    next: AtomicUsize,
}

#[derive(Debug)]
pub(crate) enum Pick {
    Endpoint {
        state: Arc<EndpointState>,
        probe: bool,
    },
    /// Discovery has no endpoint for the route (yet).
    NoEndpoints,
    /// Every endpoint is ejected by its circuit breaker (and fail-open is off).
    AllEjected,
}

impl Balancer {
    pub(crate) fn new(kind: BalancerKind, decay: Duration) -> Self {
        Self {
            kind,
            decay,
            next: AtomicUsize::new(0),
        }
    }

    /// Chooses the endpoint for a try: one whose probe is due (with `allow_probe`), else a
    /// healthy one not in `tried` (any healthy one once all were tried; with `fail_open`, any).
    /// `now` is the caller's one clock reading for the try (its start and deadline use it too).
    pub(crate) fn pick(
        &self,
        endpoints: &[Arc<EndpointState>],
        tried: &[SocketAddr],
        fail_open: bool,
        allow_probe: bool,
        now: Instant,
    ) -> Pick {
        if endpoints.is_empty() {
            return Pick::NoEndpoints;
        }
        let untried = |e: &&Arc<EndpointState>| !tried.contains(&e.addr());
        // An endpoint whose ejection ran out gets the next request as its one probe, so it returns promptly.
        for endpoint in endpoints.iter().filter(untried).filter(|_| allow_probe) {
            if endpoint.availability(now) == Availability::ProbeDue && endpoint.try_start_probe(now)
            {
                return Pick::Endpoint {
                    state: Arc::clone(endpoint),
                    probe: true,
                };
            }
        }
        let healthy = |e: &&Arc<EndpointState>| e.availability(now) == Availability::Healthy;
        let mut candidates: Vec<&Arc<EndpointState>> =
            endpoints.iter().filter(untried).filter(healthy).collect();
        if candidates.is_empty() {
            // Every healthy endpoint was tried already: trying one again beats giving up.
            candidates = endpoints.iter().filter(healthy).collect();
        }
        if candidates.is_empty() {
            if !fail_open {
                return Pick::AllEjected;
            }
            candidates = endpoints.iter().collect();
        }
        let chosen = match self.kind {
            BalancerKind::RoundRobin => {
                candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            BalancerKind::PeakEwma => self.power_of_two(&candidates, now),
        };
        Pick::Endpoint {
            state: Arc::clone(chosen),
            probe: false,
        }
    }

    fn power_of_two<'a>(
        &self,
        candidates: &[&'a Arc<EndpointState>],
        now: Instant,
    ) -> &'a Arc<EndpointState> {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates.len());
        // A second index distinct from the first, uniformly.
        let b = (a + rng.random_range(1..candidates.len())) % candidates.len();
        let (ea, eb) = (candidates[a], candidates[b]);
        if ea.cost(self.decay, now) <= eb.cost(self.decay, now) {
            ea
        } else {
            eb
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::config::{BreakerConfig, PeakEwmaConfig};
    use crate::resilience::endpoint::TryOutcome;
    use crate::resilience::metrics::Metrics;

    fn endpoints(n: u8) -> Vec<Arc<EndpointState>> {
        let metrics = Metrics::register(&prometheus::Registry::new()).expect("fresh registry");
        (1..=n)
            .map(|i| {
                EndpointState::new(
                    SocketAddr::from(([127, 0, 0, i], 80)),
                    &PeakEwmaConfig::default(),
                    metrics.route("r"),
                )
            })
            .collect()
    }

    fn picked(pick: Pick) -> Arc<EndpointState> {
        match pick {
            Pick::Endpoint { state, .. } => state,
            other => panic!("expected an endpoint, got {other:?}"),
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let eps = endpoints(3);
        let balancer = Balancer::new(BalancerKind::RoundRobin, Duration::from_secs(10));
        let seen: Vec<SocketAddr> = (0..6)
            .map(|_| picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr())
            .collect();
        assert_eq!(seen[..3], seen[3..]);
        assert_eq!(
            seen.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
    }

    #[test]
    fn peak_ewma_avoids_the_slow_and_the_busy() {
        let eps = endpoints(3);
        let balancer = Balancer::new(BalancerKind::PeakEwma, Duration::from_secs(10));
        // Endpoint 0 answered slowly once: its peak sticks.
        let guard = eps[0].start_try(false, Instant::now());
        std::thread::sleep(Duration::from_millis(60));
        guard.finish(
            TryOutcome::Success,
            &BreakerConfig::default(),
            &PeakEwmaConfig::default(),
        );
        let picks: Vec<SocketAddr> = (0..300)
            .map(|_| picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr())
            .collect();
        let slow = picks.iter().filter(|a| **a == eps[0].addr()).count();
        assert_eq!(
            slow, 0,
            "with two choices among three, the slowest is never preferred"
        );
        // Endpoint 1 has many requests pending: endpoint 2 wins whenever the two are compared.
        let _pending: Vec<_> = (0..10)
            .map(|_| eps[1].start_try(false, Instant::now()))
            .collect();
        let picks: Vec<SocketAddr> = (0..300)
            .map(|_| picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr())
            .collect();
        let busy = picks.iter().filter(|a| **a == eps[1].addr()).count();
        let idle = picks.iter().filter(|a| **a == eps[2].addr()).count();
        assert!(idle > busy * 3, "idle {idle} vs busy {busy}");
    }

    #[test]
    fn retries_prefer_untried_endpoints_and_ejected_ones_are_skipped() {
        let eps = endpoints(2);
        let balancer = Balancer::new(BalancerKind::PeakEwma, Duration::from_secs(10));
        for _ in 0..20 {
            let first = picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr();
            let second = picked(balancer.pick(&eps, &[first], false, true, Instant::now())).addr();
            assert_ne!(first, second);
        }
        let cfg = BreakerConfig {
            consecutive_failures: 1,
            ..Default::default()
        };
        eps[0].start_try(false, Instant::now()).finish(
            TryOutcome::Failure,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        for _ in 0..20 {
            assert_eq!(
                picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr(),
                eps[1].addr()
            );
        }
        eps[1].start_try(false, Instant::now()).finish(
            TryOutcome::Failure,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        assert!(matches!(
            balancer.pick(&eps, &[], false, true, Instant::now()),
            Pick::AllEjected
        ));
        assert!(
            matches!(
                balancer.pick(&eps, &[], true, true, Instant::now()),
                Pick::Endpoint { probe: false, .. }
            ),
            "fail-open"
        );
        assert!(matches!(
            balancer.pick(&[], &[], true, true, Instant::now()),
            Pick::NoEndpoints
        ));
    }

    #[test]
    fn a_due_probe_goes_first_and_only_once() {
        let eps = endpoints(2);
        let balancer = Balancer::new(BalancerKind::RoundRobin, Duration::from_secs(10));
        let cfg = BreakerConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_millis(5),
            ..Default::default()
        };
        eps[0].start_try(false, Instant::now()).finish(
            TryOutcome::Failure,
            &cfg,
            &PeakEwmaConfig::default(),
        );
        std::thread::sleep(Duration::from_millis(10));
        let Pick::Endpoint { state, probe: true } =
            balancer.pick(&eps, &[], false, true, Instant::now())
        else {
            panic!("probe expected")
        };
        assert_eq!(state.addr(), eps[0].addr());
        for _ in 0..10 {
            assert_eq!(
                picked(balancer.pick(&eps, &[], false, true, Instant::now())).addr(),
                eps[1].addr(),
                "probe in flight: no more traffic"
            );
        }
    }
}
