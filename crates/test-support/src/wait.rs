//! Waiting for a condition instead of sleeping: poll it until it holds or a deadline passes,
//! then fail with a message that says what never happened (and, if asked, the logs).
//!
//! ```
//! use std::time::Duration;
//! use test_support::wait::{self, Wait};
//!
//! let start = std::time::Instant::now();
//! wait::until(Duration::from_secs(5), "100 ms to pass", || {
//!     start.elapsed() >= Duration::from_millis(100)
//! });
//! let took = Wait::new("the flag")
//!     .timeout(Duration::from_secs(5))
//!     .every(Duration::from_millis(5))
//!     .elapsed(|| true);
//! assert!(took.is_some());
//! ```
//!
//! Every check that starts before the deadline counts, and the condition is always checked at
//! least once, so a timeout measured from an earlier instant (possibly already spent) is fine.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often a condition is checked unless [`Wait::every`] says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; panics after `timeout` naming `what`.
#[track_caller]
pub fn until(timeout: Duration, what: impl Display, condition: impl FnMut() -> bool) {
    Wait::new(what).timeout(timeout).until(condition);
}

/// Polls `f` until it returns `Some`, and returns that; panics after `timeout` naming `what`.
#[track_caller]
pub fn value<T>(timeout: Duration, what: impl Display, f: impl FnMut() -> Option<T>) -> T {
    Wait::new(what).timeout(timeout).value(f)
}

/// [`until`] from async code, with an async condition (the runtime keeps running while it
/// waits: a condition served by a task of the test's own runtime can come true).
pub fn until_async(
    timeout: Duration,
    what: impl Display,
    condition: impl AsyncFnMut() -> bool,
) -> impl Future<Output = ()> {
    Wait::new(what).timeout(timeout).until_async(condition)
}

/// Checks that `condition` holds at every check for the whole of `window`; panics naming
/// `what` at the first check where it does not. For claims that something does *not* happen,
/// where no later event can show it never will.
#[track_caller]
pub fn holds_for(window: Duration, what: impl Display, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    loop {
        assert!(
            condition(),
            "{what}: stopped holding after {:?} (watched for {window:?})",
            started.elapsed()
        );
        if started.elapsed() >= window {
            return;
        }
        std::thread::sleep(DEFAULT_INTERVAL.min(window.saturating_sub(started.elapsed())));
    }
}

/// A wait: what is awaited (for the failure message), how long, how often to check, and what
/// else to print on failure.
pub struct Wait<'a> {
    what: String,
    timeout: Duration,
    interval: Duration,
    context: Option<Box<dyn Fn() -> String + 'a>>,
}

impl std::fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("what", &self.what)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl<'a> Wait<'a> {
    /// A wait for `what`, 10 s by default.
    pub fn new(what: impl Display) -> Self {
        Wait {
            what: what.to_string(),
            timeout: Duration::from_secs(10),
            interval: DEFAULT_INTERVAL,
            context: None,
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Text added to the failure message (typically a process's log), made only on failure.
    pub fn context(mut self, context: impl Fn() -> String + 'a) -> Self {
        self.context = Some(Box::new(context));
        self
    }

    /// Polls until `condition` holds; panics on timeout.
    #[track_caller]
    pub fn until(self, mut condition: impl FnMut() -> bool) {
        self.value(|| condition().then_some(()));
    }

    /// Polls until `f` returns `Some`; panics on timeout.
    #[track_caller]
    pub fn value<T>(self, mut f: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            let checked_at = started.elapsed();
            if let Some(v) = f() {
                return v;
            }
            if checked_at >= self.timeout {
                self.fail();
            }
            std::thread::sleep(self.interval);
        }
    }

    /// How long until `condition` held, or `None` if it did not within the timeout. Never
    /// panics: for tests that judge the time it took.
    pub fn elapsed(self, mut condition: impl FnMut() -> bool) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let checked_at = started.elapsed();
            if condition() {
                return Some(started.elapsed());
            }
            if checked_at >= self.timeout {
                return None;
            }
            std::thread::sleep(self.interval);
        }
    }

    /// [`Wait::until`] from async code, with an async condition.
    pub async fn until_async(self, mut condition: impl AsyncFnMut() -> bool) {
        self.value_async(async || condition().await.then_some(()))
            .await;
    }

    /// [`Wait::value`] from async code, with an async check.
    pub async fn value_async<T>(self, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            let checked_at = started.elapsed();
            if let Some(v) = f().await {
                return v;
            }
            if checked_at >= self.timeout {
                self.fail();
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// [`Wait::elapsed`] from async code, with an async condition.
    pub async fn elapsed_async(self, mut condition: impl AsyncFnMut() -> bool) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let checked_at = started.elapsed();
            if condition().await {
                return Some(started.elapsed());
            }
            if checked_at >= self.timeout {
                return None;
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    fn fail(&self) -> ! {
        let context = self.context.as_ref().map(|c| c()).unwrap_or_default();
        let sep = if context.is_empty() { "" } else { "\n" };
        panic!(
            "timed out after {:?} waiting for {}{sep}{context}",
            self.timeout, self.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_once_the_condition_holds() {
        let mut n = 0;
        until(Duration::from_secs(5), "three checks", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible\nthe logs")]
    fn a_timeout_names_what_and_adds_the_context() {
        Wait::new("the impossible")
            .timeout(Duration::from_millis(50))
            .context(|| "the logs".to_owned())
            .until(|| false);
    }

    #[test]
    fn a_spent_timeout_still_checks_once() {
        let mut checked = false;
        Wait::new("one check").timeout(Duration::ZERO).until(|| {
            checked = true;
            true
        });
        assert!(checked);
        assert_eq!(
            Wait::new("never").timeout(Duration::ZERO).elapsed(|| false),
            None
        );
    }

    #[test]
    #[should_panic(expected = "the flag: stopped holding")]
    fn holds_for_fails_at_the_first_false() {
        let mut n = 0;
        holds_for(Duration::from_secs(5), "the flag", || {
            n += 1;
            n < 3
        });
    }

    #[tokio::test]
    async fn value_async_returns_the_value() {
        let mut n = 0;
        let got = Wait::new("a value")
            .value_async(async || {
                tokio::task::yield_now().await;
                n += 1;
                (n == 2).then_some("two")
            })
            .await;
        assert_eq!(got, "two");
    }
}
