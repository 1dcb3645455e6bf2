//! The body types requests travel with, in both directions.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Errors of a body, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies: streamed from the other side, or a small body of our own (a body buffered
/// for a retry).
pub type ProxyBody = Either<Incoming, Full<Bytes>>;
