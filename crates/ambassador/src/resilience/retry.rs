//! Retry policy: which failures may be retried, the retry budget, backoff, and the replayable request body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::config::RetryConfig;

/// Errors of any body or connection, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Methods RFC 9110 calls idempotent: sending them twice has the effect of sending them once.
pub fn is_idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key("idempotency-key")
}

/// Backoff before retry number `retry` (0-based): base * 2^retry capped at max, "equal jitter" (half fixed,
/// half random) so retries spread out but never fire at once.
pub fn backoff(config: &RetryConfig, retry: u32) -> Duration {
    let ceiling = config
        .backoff_base
        .saturating_mul(2u32.saturating_pow(retry.min(16)))
        .min(config.backoff_max);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// A retry budget as linkerd2-proxy and finagle keep one: within a sliding window, retries may be at most
/// `ratio` of the requests plus `min_per_second` per second. When a whole route fails, retries therefore add
/// at most that fraction of load instead of multiplying it by the retry count.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    slot: Duration,
    window_slots: usize,
    slots: Mutex<VecDeque<Slot>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    requests: u64,
    retries: u64,
}

/// The window is kept as ten slots so old requests leave it gradually rather than all at once.
const SLOTS: u32 = 10;

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            ratio: config.budget_ratio,
            floor: config.budget_min_per_second * config.budget_window.as_secs_f64(),
            slot: config.budget_window / SLOTS,
            window_slots: SLOTS as usize,
            slots: Mutex::new(VecDeque::new()),
        }
    }

    fn with_current<T>(&self, now: Instant, f: impl FnOnce(&mut VecDeque<Slot>) -> T) -> T {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = slots
            .back()
            .is_none_or(|last| now.saturating_duration_since(last.start) >= self.slot);
        if fresh {
            slots.push_back(Slot {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        let window = self.slot * SLOTS;
        while slots.len() > self.window_slots
            || slots
                .front()
                .is_some_and(|first| now.saturating_duration_since(first.start) >= window)
        {
            slots.pop_front();
        }
        f(&mut slots)
    }

    /// Counts one original request (deposits into the budget) arriving at `now`.
    pub fn deposit(&self, now: Instant) {
        self.with_current(now, |slots| {
            if let Some(last) = slots.back_mut() {
                last.requests += 1;
            }
        });
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_withdraw(&self) -> bool {
        self.with_current(Instant::now(), |slots| {
            let (requests, retries) = slots
                .iter()
                .fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
            let allowed = self.floor + self.ratio * requests as f64;
            if (retries + 1) as f64 <= allowed {
                if let Some(last) = slots.back_mut() {
                    last.retries += 1;
                }
                true
            } else {
                false
            }
        })
    }
}

/// A request body kept for retries when small enough, otherwise passed through once.
///
/// Replayable bodies are read fully before the first try (up to the cap): that costs the time to receive
/// at most 64 KiB by default, and buys retries without the caller resending anything.
#[derive(Debug)]
pub struct ReplayBody<B> {
    inner: ReplayInner<B>,
}

#[derive(Debug)]
enum ReplayInner<B> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: B,
    },
}

/// A request body as read before the first try.
#[derive(Debug)]
pub enum PreparedBody<B> {
    /// Fully buffered: every try gets a copy.
    Replayable {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Above the cap: the first bytes read so far, then the rest, for a single try.
    OneShot { prefix: Bytes, rest: B },
    /// The one-shot body went to a try: there is nothing left to send again.
    Spent,
}

impl<B> PreparedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads the body up to `cap` bytes; a body announcing more than `cap` is not read at all.
    pub async fn read(mut body: B, cap: usize) -> Result<Self, BoxError> {
        if body.size_hint().lower() > cap as u64 {
            return Ok(PreparedBody::OneShot {
                prefix: Bytes::new(),
                rest: body,
            });
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Into::into)?;
            match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > cap {
                        return Ok(PreparedBody::OneShot {
                            prefix: buf.freeze(),
                            rest: body,
                        });
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok(PreparedBody::Replayable {
                            data: buf.freeze(),
                            trailers: Some(trailers),
                        });
                    }
                }
            }
        }
        Ok(PreparedBody::Replayable {
            data: buf.freeze(),
            trailers: None,
        })
    }

    /// Like [`PreparedBody::read`], but a body whose length is not known in advance is not read at all:
    /// it goes through untouched, once, instead of waiting for it.
    pub async fn read_known_length(body: B, cap: usize) -> Result<Self, BoxError> {
        match body.size_hint().upper() {
            Some(upper) if upper <= cap as u64 => Self::read(body, cap).await,
            _ => Ok(PreparedBody::OneShot {
                prefix: Bytes::new(),
                rest: body,
            }),
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, PreparedBody::Replayable { .. })
    }

    /// A body for the next try: a copy if replayable, else the one-shot body (after which `self` is spent).
    pub(crate) fn take_for_try(&mut self) -> Option<ReplayBody<B>> {
        match self {
            PreparedBody::Replayable { data, trailers } => Some(ReplayBody {
                inner: ReplayInner::Buffered {
                    data: (!data.is_empty()).then(|| data.clone()),
                    trailers: trailers.clone(),
                },
            }),
            PreparedBody::OneShot { .. } => match std::mem::replace(self, PreparedBody::Spent) {
                PreparedBody::OneShot { prefix, rest } => Some(ReplayBody {
                    inner: ReplayInner::Streaming {
                        prefix: (!prefix.is_empty()).then_some(prefix),
                        rest,
                    },
                }),
                PreparedBody::Replayable { .. } | PreparedBody::Spent => None,
            },
            PreparedBody::Spent => None,
        }
    }
}

impl<B> ReplayBody<B> {
    /// The body as either the untouched original or a whole buffered copy; `None` for a partly read
    /// original (only [`PreparedBody::read`] makes those, never `read_known_length`). Trailers of a
    /// buffered body are dropped.
    pub fn into_original_or_full(
        self,
    ) -> Option<http_body_util::Either<B, http_body_util::Full<Bytes>>> {
        match self.inner {
            ReplayInner::Buffered { data, .. } => Some(http_body_util::Either::Right(
                http_body_util::Full::new(data.unwrap_or_default()),
            )),
            ReplayInner::Streaming { prefix: None, rest } => {
                Some(http_body_util::Either::Left(rest))
            }
            ReplayInner::Streaming {
                prefix: Some(_), ..
            } => None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            ReplayInner::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            ReplayInner::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ReplayInner::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            ReplayInner::Streaming { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ReplayInner::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReplayInner::Streaming { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn idempotency_follows_the_method_or_the_key() {
        let get = Request::get("/").body(()).expect("request");
        let post = Request::post("/").body(()).expect("request");
        let keyed = Request::post("/")
            .header("Idempotency-Key", "abc")
            .body(())
            .expect("request");
        assert!(is_idempotent(&get));
        assert!(!is_idempotent(&post));
        assert!(is_idempotent(&keyed));
        assert!(!is_idempotent(
            &Request::patch("/").body(()).expect("request")
        ));
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let cfg = RetryConfig::default();
        for _ in 0..50 {
            let first = backoff(&cfg, 0);
            assert!(
                first >= Duration::from_micros(12_500) && first <= Duration::from_millis(25),
                "{first:?}"
            );
            let third = backoff(&cfg, 2);
            assert!(
                third >= Duration::from_millis(50) && third <= Duration::from_millis(100),
                "{third:?}"
            );
            assert!(backoff(&cfg, 30) <= cfg.backoff_max);
        }
    }

    #[test]
    fn budget_allows_the_floor_plus_a_ratio_of_requests() {
        let cfg = RetryConfig {
            budget_ratio: 0.2,
            budget_min_per_second: 1.0,
            budget_window: Duration::from_secs(10),
            ..Default::default()
        };
        let budget = RetryBudget::new(&cfg);
        // No traffic: only the floor (1/s over 10s = 10 retries).
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        // 100 requests add 20 more.
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 20);
    }

    #[test]
    fn budget_window_forgets_old_traffic() {
        let cfg = RetryConfig {
            budget_ratio: 1.0,
            budget_min_per_second: 0.0,
            budget_window: Duration::from_secs(1),
            ..Default::default()
        };
        let budget = RetryBudget::new(&cfg);
        for _ in 0..5 {
            budget.deposit(Instant::now());
        }
        assert!(budget.try_withdraw());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            !budget.try_withdraw(),
            "requests older than the window no longer pay for retries"
        );
    }

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_pass_once() {
        let mut prepared = PreparedBody::read(Full::new(Bytes::from_static(b"hello")), 16)
            .await
            .expect("read");
        assert!(prepared.is_replayable());
        for _ in 0..2 {
            let body = prepared.take_for_try().expect("replayable");
            assert_eq!(body.size_hint().exact(), Some(5));
            assert_eq!(
                body.collect().await.expect("collect").to_bytes(),
                Bytes::from_static(b"hello")
            );
        }
        // Streamed in chunks, above the cap: read up to the cap, then passed through whole, once.
        let chunks: Vec<Bytes> = (0..10).map(|i| Bytes::from(vec![b'a' + i; 10])).collect();
        let stream = Chunked(chunks.into_iter());
        let mut prepared = PreparedBody::read(stream, 25).await.expect("read");
        assert!(!prepared.is_replayable());
        let body = prepared.take_for_try().expect("one try");
        let all = body.collect().await.expect("collect").to_bytes();
        assert_eq!(all.len(), 100);
        assert_eq!(&all[..10], &[b'a'; 10]);
        assert_eq!(&all[90..], &[b'j'; 10]);
        assert!(
            prepared.take_for_try().is_none(),
            "a one-shot body cannot be sent twice"
        );
        // A body announcing more than the cap is not read at all.
        let prepared = PreparedBody::read(Full::new(Bytes::from(vec![0u8; 100])), 10)
            .await
            .expect("read");
        assert!(matches!(prepared, PreparedBody::OneShot { ref prefix, .. } if prefix.is_empty()));
    }

    /// A body that arrives in chunks, as a streamed upload does.
    struct Chunked(std::vec::IntoIter<Bytes>);

    impl Body for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
        }
    }
}
