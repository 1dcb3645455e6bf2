//! The body types requests travel with, in both directions, and the pace a client must keep
//! while it sends one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Errors of a body, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies: streamed from the other side, or a small body of our own (a body buffered
/// for a retry).
pub type ProxyBody = Either<Counted<Incoming>, Full<Bytes>>;

/// A request body that counts the bytes read from it, when its exchange is logged, and cuts it
/// when its client sends it slower than the [`Pace`] allows.
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    counter: Option<Arc<AtomicU64>>,
    pace: Option<Pacing>,
}

impl<B> Counted<B> {
    pub fn new(body: B, counter: Option<Arc<AtomicU64>>, pace: Option<&Pace>) -> Self {
        Self {
            body,
            counter,
            pace: pace.map(Pacing::new),
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                if let Some(counter) = &this.counter {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                if let Some(pace) = &mut this.pace {
                    pace.arrived(n);
                }
            }
            Poll::Pending => {
                if let Some(pace) = &mut this.pace
                    && pace.too_slow(cx)
                {
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                }
            }
            _ => {}
        }
        poll.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The slowest a request body may come: `bytes_per_second` on average over the time spent
/// waiting for it, after `grace`. 0 bytes a second: not checked.
#[derive(Debug, Clone, Copy)]
pub struct MinBodyRate {
    pub bytes_per_second: u64,
    pub grace: Duration,
}

/// The pace one request's body is held to, shared with its handler: the handler says when the
/// response head has arrived (from then on the exchange is a stream the app accepted, not a
/// request waiting for its body), and learns whether the body was cut for slowness.
#[derive(Debug, Clone)]
pub struct Pace {
    min: MinBodyRate,
    state: Arc<PaceState>,
}

#[derive(Debug, Default)]
struct PaceState {
    answered: AtomicBool,
    cut: AtomicBool,
}

impl Pace {
    /// None when the rate is not checked.
    pub fn new(min: MinBodyRate) -> Option<Self> {
        (min.bytes_per_second > 0).then(|| Self {
            min,
            state: Arc::default(),
        })
    }

    /// The response head arrived: the body is no longer held to the pace.
    pub fn answered(&self) {
        self.state.answered.store(true, Ordering::Relaxed);
    }

    /// Whether the body was cut for coming too slowly.
    pub fn was_cut(&self) -> bool {
        self.state.cut.load(Ordering::Relaxed)
    }
}

impl Pace {
    /// The pace `req`'s body is held to under `limits`: none for gRPC, whose streams send
    /// messages when they have them.
    pub fn for_request<B>(req: &http::Request<B>, limits: &crate::config::Limits) -> Option<Self> {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            return None;
        }
        Self::new(MinBodyRate {
            bytes_per_second: limits.min_body_rate,
            grace: limits.header_read_timeout,
        })
    }
}

/// A request body that came slower than `min_body_rate`.
#[derive(Debug, thiserror::Error)]
#[error("the request body came slower than min_body_rate")]
pub struct BodyTooSlow;

/// One body's account: only the time spent waiting for the client counts, not the time the
/// next hop took to ask for more.
#[derive(Debug)]
struct Pacing {
    pace: Pace,
    bytes: u64,
    waited: Duration,
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Pacing {
    fn new(pace: &Pace) -> Self {
        Self {
            pace: pace.clone(),
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    fn arrived(&mut self, n: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.bytes = self.bytes.saturating_add(n);
    }

    /// Called when the body has nothing to give: true when the wait so far is past what the
    /// bytes received allow; otherwise the timer wakes the task when it will be.
    fn too_slow(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pace.state.answered.load(Ordering::Relaxed) {
            self.timer = None;
            return false;
        }
        let now = tokio::time::Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let min = self.pace.min;
        let allowed =
            min.grace + Duration::from_secs_f64(self.bytes as f64 / min.bytes_per_second as f64);
        let spent = self.waited + now.saturating_duration_since(since);
        if spent >= allowed {
            self.pace.state.cut.store(true, Ordering::Relaxed);
            return true;
        }
        let deadline = now + (allowed - spent);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        if timer.as_mut().poll(cx).is_ready() {
            self.pace.state.cut.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed through a channel.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed() -> (mpsc::Sender<Bytes>, Fed) {
        let (tx, rx) = mpsc::channel(1);
        (tx, Fed(rx))
    }

    fn pace(bytes_per_second: u64, grace_ms: u64) -> Pace {
        Pace::new(MinBodyRate {
            bytes_per_second,
            grace: Duration::from_millis(grace_ms),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_and_a_steady_one_is_not() {
        // One byte every 400 ms against 100 bytes/s after a 200 ms grace.
        let (tx, body) = fed();
        let p = pace(100, 200);
        tokio::spawn(async move {
            for _ in 0..10 {
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let mut counted = Counted::new(body, None, Some(&p));
        let mut got = 0;
        let err = loop {
            match counted.frame().await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("the trickle was never cut"),
            }
        };
        assert!(err.is::<BodyTooSlow>() && p.was_cut(), "{err}");
        assert!(got < 10, "cut after {got} bytes");

        // 1,000 bytes every 500 ms keeps up with 100 bytes/s.
        let (tx, body) = fed();
        let p = pace(100, 200);
        tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let collected = Counted::new(body, None, Some(&p)).collect().await.unwrap();
        assert_eq!(collected.to_bytes().len(), 5000);
        assert!(!p.was_cut());
    }

    #[tokio::test]
    async fn an_answered_exchange_is_no_longer_paced() {
        let (tx, body) = fed();
        let p = pace(100, 200);
        p.answered();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Bytes::from_static(b"late")).await.unwrap();
        });
        let collected = Counted::new(body, None, Some(&p)).collect().await.unwrap();
        assert_eq!(collected.to_bytes().len(), 4);
    }
}
