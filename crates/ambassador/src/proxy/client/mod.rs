//! The client side of a hop, shared by both directions: pooled HTTP/1.1 connections ([`h1`]),
//! shared HTTP/2 connections ([`h2`]), and the body of a response they bring back.

pub mod h1;
pub mod h2;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;

use self::h1::PooledBody;
use self::h2::H2Body;
use crate::proxy::body::BoxError;

/// A response body from the next hop: an HTTP/2 stream, an HTTP/1.1 connection of hyper's
/// pool (outbound, for remotes without h2 and for upgrades), or a connection of an [`h1`] pool.
#[derive(Debug)]
pub enum UpstreamBody {
    H2(H2Body),
    Http1(Incoming),
    Pooled(PooledBody),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::H2(body) => Pin::new(body).poll_frame(cx),
            Self::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Pooled(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H2(body) => body.is_end_stream(),
            Self::Http1(body) => body.is_end_stream(),
            Self::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::H2(body) => body.size_hint(),
            Self::Http1(body) => body.size_hint(),
            Self::Pooled(body) => body.size_hint(),
        }
    }
}
