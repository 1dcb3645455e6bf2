//! When to sync next: the poll period with jitter, and backoff with jitter after failures.

use std::time::Duration;

use rand::Rng;

/// `base` spread by ±`fraction` (0.1 = ±10%), so a fleet of pods does not poll in lockstep.
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
        assert_eq!(
            backoff(1, Duration::from_secs(60), 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff(3, Duration::from_secs(60), 0.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoff(30, Duration::from_secs(60), 0.0),
            Duration::from_secs(60)
        );
        assert!(backoff(30, Duration::from_secs(60), 0.5) <= Duration::from_secs(60));
    }
}
