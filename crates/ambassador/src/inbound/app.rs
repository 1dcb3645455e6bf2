//! The pooled client to the app on localhost.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::AppProtocol;
use crate::proxy::ProxyBody;

/// Connects to one fixed address whatever the URI says, so a `CONNECT host:port` from a peer
/// still reaches the app (which decides what to do with it), never an address of the peer's
/// choosing.
#[derive(Debug, Clone)]
pub struct FixedConnector {
    addr: SocketAddr,
}

impl tower::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Keep-alive connections to the app, shared by every inbound connection of a route.
#[derive(Debug, Clone)]
pub struct AppClient {
    client: Client<FixedConnector, ProxyBody>,
}

impl AppClient {
    pub fn new(addr: SocketAddr, protocol: AppProtocol) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(protocol == AppProtocol::H2c);
        Self {
            client: builder.build(FixedConnector { addr }),
        }
    }

    pub async fn request(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}
