//! When to act next: renewal at a fraction of a lifetime, backoff with jitter after failures.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// `base` spread by ±`fraction` (0.2 = ±20%), so a fleet of pods does not retry in lockstep.
pub fn jittered(base: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    if fraction == 0.0 || base.is_zero() {
        return base;
    }
    let factor = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    base.mul_f64(factor)
}

/// The wait after `failures` consecutive failures: 1s, 2s, 4s... capped at `max`, jittered.
pub fn backoff(failures: u32, max: Duration, fraction: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = Duration::from_secs(1).saturating_mul(1u32 << exp).min(max);
    jittered(base, fraction).min(max)
}

/// When something obtained at `start` and living `lifetime` is renewed: after `fraction` of it.
pub fn renew_at(start: Instant, lifetime: Duration, fraction: f64) -> Instant {
    start + lifetime.mul_f64(fraction.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.2);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(10), 0.0),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(60), 0.0), s(1));
        assert_eq!(backoff(3, s(60), 0.0), s(4));
        assert_eq!(backoff(30, s(60), 0.0), s(60));
        assert!(backoff(30, s(60), 0.5) <= s(60));
    }

    #[test]
    fn renewal_at_two_thirds() {
        let start = Instant::now();
        let at = renew_at(start, Duration::from_secs(90), 2.0 / 3.0);
        assert_eq!(at - start, Duration::from_secs(60));
    }
}
