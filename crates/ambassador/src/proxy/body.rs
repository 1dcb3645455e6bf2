//! The body types requests travel with, in both directions.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Errors of a body, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies: streamed from the other side, or a small body of our own (a body buffered
/// for a retry).
pub type ProxyBody = Either<Counted<Incoming>, Full<Bytes>>;

/// A request body that counts the bytes read from it, when its exchange is logged.
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    counter: Option<Arc<AtomicU64>>,
}

impl<B> Counted<B> {
    pub fn new(body: B, counter: Option<Arc<AtomicU64>>) -> Self {
        Self { body, counter }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(counter), Poll::Ready(Some(Ok(frame)))) = (&this.counter, &poll)
            && let Some(data) = frame.data_ref()
        {
            counter.fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
