//! Local rate limits: a token bucket per route, or one per caller (its SPIFFE ID or its JWT
//! `sub`), kept as GCRA (one "theoretical arrival time" per bucket instead of a token count and
//! a refill time).
//!
//! Keyed buckets live in a table of at most `max_keys` entries whatever the callers send: a
//! bucket that has filled up again says no more than an absent one, so it is dropped when room
//! is needed, and a caller that finds the table full of busy buckets shares one overflow bucket
//! with every other such caller. Rotating keys therefore neither grows the table nor escapes
//! the limit. Keys are stored as 64-bit SipHash digests under a per-process random key, so an
//! entry's size does not depend on the caller's identity.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Whose requests share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateKey {
    /// One bucket for the whole route.
    #[default]
    Route,
    /// One per caller workload: its SPIFFE ID (or DNS name) from mTLS.
    Peer,
    /// One per end user (the JWT's `sub`); requests without one are keyed by their peer.
    User,
}

/// `rate_limit:` of an inbound route, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second each bucket allows.
    pub requests_per_second: f64,
    /// Requests a full bucket allows at once [default: requests_per_second, at least 1].
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub key: RateKey,
    /// Buckets kept at most for a keyed limit [default: 10000].
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    10_000
}

impl RateLimitConfig {
    /// Why the settings cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err(format!(
                "rate_limit.requests_per_second: {} must be more than 0",
                self.requests_per_second
            ));
        }
        // Below one per ~31 years the interval no longer fits the clock's nanoseconds.
        if self.requests_per_second < 1e-9 {
            return Err("rate_limit.requests_per_second: too small".to_owned());
        }
        if self.burst == Some(0) {
            return Err("rate_limit.burst: 0 would refuse everything".to_owned());
        }
        if self.key != RateKey::Route && self.max_keys == 0 {
            return Err("rate_limit.max_keys: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Table shards: callers on different threads rarely wait for each other's lock.
const SHARDS: usize = 16;

/// One route's rate limit.
#[derive(Debug)]
pub struct RateLimiter {
    key: RateKey,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a bucket's arrival time may run: `burst` intervals.
    tolerance: u64,
    /// The route's bucket, or the overflow bucket of a keyed limit.
    shared: AtomicU64,
    keyed: Option<Keyed>,
    base: Instant,
}

#[derive(Debug)]
struct Keyed {
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Key digest to its bucket's theoretical arrival time.
    buckets: HashMap<u64, u64>,
    /// While the shard is full, the earliest time one of its buckets can be dropped.
    next_sweep: u64,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        let interval = (1e9 / config.requests_per_second).round().max(1.0) as u64;
        let burst = config
            .burst
            .unwrap_or_else(|| config.requests_per_second.ceil().clamp(1.0, 1e9) as u32)
            .max(1);
        let keyed = (config.key != RateKey::Route).then(|| {
            let per_shard = config.max_keys.div_ceil(SHARDS).max(1);
            Keyed {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                per_shard,
            }
        });
        Self {
            key: config.key,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            shared: AtomicU64::new(0),
            keyed,
            base: Instant::now(),
        }
    }

    pub fn key(&self) -> RateKey {
        self.key
    }

    /// Takes one request from `key`'s bucket (ignored for a route-wide limit); `Err` holds the
    /// time until the bucket allows one again.
    pub fn acquire(&self, key: &str) -> Result<(), Duration> {
        self.acquire_at(key, self.now())
    }

    /// [`RateLimiter::acquire`] at `now` (see [`RateLimiter::now`]).
    fn acquire_at(&self, key: &str, now: u64) -> Result<(), Duration> {
        let Some(keyed) = &self.keyed else {
            return self.acquire_shared(now);
        };
        let digest = keyed.hasher.hash_one(key);
        let shard = &keyed.shards[(digest as usize) % SHARDS];
        // A poisoned lock only means another request panicked mid-update of plain integers.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = shard.buckets.get_mut(&digest) {
            return self.take(tat, now);
        }
        if shard.buckets.len() >= keyed.per_shard && !self.sweep(&mut shard, now) {
            drop(shard);
            return self.acquire_shared(now);
        }
        let mut tat = now;
        let taken = self.take(&mut tat, now);
        shard.buckets.insert(digest, tat);
        taken
    }

    /// Buckets held now (keyed limits).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keyed.as_ref().map_or(0, |k| {
            k.shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).buckets.len())
                .sum()
        })
    }

    fn now(&self) -> u64 {
        // Offset by one tolerance so that a fresh bucket (arrival time 0) starts full.
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(self.tolerance)
    }

    /// GCRA on one bucket's arrival time.
    fn take(&self, tat: &mut u64, now: u64) -> Result<(), Duration> {
        let next = (*tat).max(now).saturating_add(self.interval);
        if next - now > self.tolerance {
            return Err(Duration::from_nanos(next - self.tolerance - now));
        }
        *tat = next;
        Ok(())
    }

    fn acquire_shared(&self, now: u64) -> Result<(), Duration> {
        let mut current = self.shared.load(Ordering::Relaxed);
        loop {
            let mut tat = current;
            self.take(&mut tat, now)?;
            match self.shared.compare_exchange_weak(
                current,
                tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Drops the buckets that have filled up again; whether room was made. A full shard of busy
    /// buckets is swept again only once the first of them can have filled up.
    fn sweep(&self, shard: &mut Shard, now: u64) -> bool {
        if now < shard.next_sweep {
            return false;
        }
        shard.buckets.retain(|_, tat| *tat > now);
        let freed = shard.buckets.len() < self.keyed.as_ref().map_or(0, |k| k.per_shard);
        if !freed {
            shard.next_sweep = shard.buckets.values().copied().min().unwrap_or(0);
        }
        freed
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32, key: RateKey, max_keys: usize) -> RateLimiter {
        let config = RateLimitConfig {
            requests_per_second: rps,
            burst: Some(burst),
            key,
            max_keys,
        };
        config.validate().unwrap();
        RateLimiter::new(&config)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let l = limiter(0.01, 3, RateKey::Route, 1);
        for _ in 0..3 {
            assert!(l.acquire("").is_ok());
        }
        let wait = l.acquire("").unwrap_err();
        // One request per 100 s: the next is allowed once one interval has passed.
        assert!(wait > Duration::from_secs(99) && wait <= Duration::from_secs(100));
        assert_eq!(retry_after_seconds(wait), 100);
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let l = limiter(10.0, 2, RateKey::Route, 1);
        let t0 = l.tolerance;
        let ms = |n: u64| t0 + n * 1_000_000;
        assert!(l.acquire_at("", ms(0)).is_ok());
        assert!(l.acquire_at("", ms(0)).is_ok());
        assert_eq!(l.acquire_at("", ms(0)), Err(Duration::from_millis(100)));
        assert!(l.acquire_at("", ms(100)).is_ok());
        assert!(l.acquire_at("", ms(100)).is_err());
        // Never more than the burst, however long it rested.
        assert!(l.acquire_at("", ms(5000)).is_ok());
        assert!(l.acquire_at("", ms(5000)).is_ok());
        assert!(l.acquire_at("", ms(5000)).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let l = limiter(0.01, 2, RateKey::Peer, 100);
        assert!(l.acquire("spiffe://td/a").is_ok());
        assert!(l.acquire("spiffe://td/a").is_ok());
        assert!(l.acquire("spiffe://td/a").is_err());
        assert!(l.acquire("spiffe://td/b").is_ok());
    }

    #[test]
    fn rotating_keys_neither_grows_the_table_nor_escapes_the_limit() {
        let max_keys = 64;
        let l = limiter(0.01, 1, RateKey::User, max_keys);
        let mut allowed = 0;
        for i in 0..100_000 {
            if l.acquire(&format!("attacker-{i}")).is_ok() {
                allowed += 1;
            }
        }
        let held = l.len();
        assert!(
            held <= max_keys.div_ceil(SHARDS) * SHARDS,
            "{held} buckets for max_keys {max_keys}"
        );
        // Each new key got one request from its own bucket while there was room, then the
        // overflow bucket's single one: nowhere near one per key.
        assert!(allowed <= held + 1, "{allowed} allowed with {held} buckets");
        // A caller already in the table keeps its own bucket.
        let l = limiter(0.01, 1, RateKey::User, max_keys);
        assert!(l.acquire("alice").is_ok());
        for i in 0..10_000 {
            let _ = l.acquire(&format!("attacker-{i}"));
        }
        assert!(l.acquire("alice").is_err());
    }

    #[test]
    fn filled_buckets_make_room_for_new_keys() {
        let l = limiter(10.0, 1, RateKey::Peer, SHARDS);
        let t0 = l.tolerance;
        for i in 0..1000 {
            let _ = l.acquire_at(&format!("k{i}"), t0);
        }
        // 200 ms later every bucket has filled again: new keys get buckets of their own.
        let later = t0 + 200_000_000;
        let fresh: usize = (0..SHARDS * 4)
            .filter(|i| l.acquire_at(&format!("new{i}"), later).is_ok())
            .count();
        assert!(fresh > 1, "{fresh}");
        assert!(l.len() <= SHARDS);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = RateLimitConfig {
            requests_per_second: 0.0,
            burst: None,
            key: RateKey::Route,
            max_keys: 1,
        };
        assert!(c.validate().unwrap_err().contains("requests_per_second"));
        c.requests_per_second = 5.0;
        c.burst = Some(0);
        assert!(c.validate().unwrap_err().contains("burst"));
        c.burst = None;
        c.key = RateKey::Peer;
        c.max_keys = 0;
        assert!(c.validate().unwrap_err().contains("max_keys"));
    }
}
