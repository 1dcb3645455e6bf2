//! When to try again: exponential backoff with jitter (backon), `Retry-After` honoured, and
//! the meaning of HTTP statuses shared by the HTTP sinks.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::sink::{Outcome, RetrySpec};

/// Delays between attempts at one batch.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    spec: RetrySpec,
}

impl Backoff {
    pub fn new(spec: RetrySpec) -> Self {
        let delays = ExponentialBuilder::default()
            .with_min_delay(spec.initial)
            .with_max_delay(spec.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Self { delays, spec }
    }

    /// The next delay: `after` (the server's `Retry-After`, capped) if given, else the backoff.
    pub fn next(&mut self, after: Option<Duration>) -> Duration {
        let backoff = self.delays.next().unwrap_or(self.spec.max);
        match after {
            Some(after) => after.min(self.spec.max_retry_after),
            None => backoff.min(self.spec.max),
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The shared meaning of a response status: 2xx stored; 408, 429 and 5xx (and anything else
/// unexpected) retried, honouring `Retry-After`; any other 4xx refused for good.
pub fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    bytes: u64,
) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered { bytes };
    }
    let reason = format!(
        "{status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
    );
    let code = status.as_u16().to_string();
    if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        return Outcome::Rejected {
            status: code,
            reason,
        };
    }
    Outcome::Retry {
        status: code,
        reason,
        after: retry_after(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn spec() -> RetrySpec {
        RetrySpec {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut b = Backoff::new(spec());
        let delays: Vec<Duration> = (0..10).map(|_| b.next(None)).collect();
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(250),
            "{delays:?}"
        );
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "{delays:?}"
        );
        assert!(delays[9] >= Duration::from_secs(1), "{delays:?}");
        assert_eq!(b.next(Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(
            b.next(Some(Duration::from_secs(700))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn statuses() {
        let mut h = HeaderMap::new();
        assert_eq!(
            classify_status(StatusCode::OK, &h, b"", 5),
            Outcome::Delivered { bytes: 5 }
        );
        assert!(
            matches!(classify_status(StatusCode::BAD_REQUEST, &h, b"bad", 5), Outcome::Rejected { status, .. } if status == "400")
        );
        assert!(matches!(
            classify_status(StatusCode::REQUEST_TIMEOUT, &h, b"", 5),
            Outcome::Retry { .. }
        ));
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &h, b"", 5),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, &h, b"", 5),
            Outcome::Retry { .. }
        ));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let after = retry_after(&h).unwrap();
        assert!(
            after > Duration::from_secs(25) && after <= Duration::from_secs(30),
            "{after:?}"
        );
    }
}
