//! HTTP forwarding both directions do alike: hop-by-hop headers, the ambassador's own
//! answers, and upgrades (WebSocket, CONNECT) turned into tunnels.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::proxy::client::UpstreamBody;
use crate::proxy::conn::{Activity, Tracked, TunnelEnd, tunnel};

/// Responses: the next hop's, or the ambassador's own answer.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// An answer from the ambassador itself, with a plain-text body that says what went wrong.
pub fn answer<B>(status: StatusCode, message: String) -> Response<Either<B, Full<Bytes>>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert("x-ambassador-error", HeaderValue::from_static("1"));
    response
}

/// The answer to a request whose body came slower than `min_body_rate`; an HTTP/1 connection
/// is closed after it (the rest of the body would be read as the next request).
pub fn body_too_slow<B>(route: &str, http1: bool) -> Response<Either<B, Full<Bytes>>> {
    let mut response = answer(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "ambassador: {route}: the request body came slower than min_body_rate allows (min_body_rate)\n"
        ),
    );
    if http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether the request asks to leave HTTP: an `Upgrade` (WebSocket) or a `CONNECT`.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE)
}

/// The hop-by-hop headers besides `Connection`, `TE` and `Upgrade` (each handled on its own).
const OTHER_HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the headers that belong to one connection (RFC 9110 7.6.1), and those the
/// `Connection` header names. With `keep_upgrade`, `Upgrade` and `Connection: upgrade` stay,
/// so the next hop sees the same upgrade request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these or only `Connection: keep-alive` (nginx's answers): one
    // scan of the few names present, then a removal only for those found, rather than a hash
    // lookup per hop-by-hop name on every message.
    let (mut connection, mut te, mut upgrade, mut other) = (false, false, false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if OTHER_HOP_BY_HOP.contains(name) {
            other = true;
        }
    }
    if connection {
        // Names listed in `Connection` go too; `close`, `keep-alive` and `upgrade` are not
        // headers of their own, and `te` and `upgrade` are handled below (an HTTP/1.1 client
        // that sends `TE: trailers` must name it in `Connection`), so only other names need
        // collecting.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.is_empty()
                    && !name.eq_ignore_ascii_case("close")
                    && !name.eq_ignore_ascii_case("keep-alive")
                    && !name.eq_ignore_ascii_case("upgrade")
                    && !name.eq_ignore_ascii_case("te")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if te {
        // `TE: trailers` says the client accepts trailers; it is the one TE value HTTP/2 allows
        // and gRPC servers require it, so it goes on to the next hop (as Envoy does), the rest
        // not.
        let accepts_trailers = headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| {
                let coding = token.split(';').next().unwrap_or_default().trim();
                coding.eq_ignore_ascii_case("trailers")
            });
        headers.remove(header::TE);
        if accepts_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if other {
        for name in &OTHER_HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Whether the response accepts the upgrade the request asked for.
pub fn upgrade_accepted(method: &Method, status: StatusCode) -> bool {
    if method == Method::CONNECT {
        status.is_success()
    } else {
        status == StatusCode::SWITCHING_PROTOCOLS
    }
}

/// Joins the client's and the upstream's upgraded connections into a tunnel, on a task the
/// drain tracks. Each side's EOF is passed on as a half-close.
pub fn spawn_tunnel(
    tracker: &tokio_util::task::TaskTracker,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
    stop: CancellationToken,
    route: String,
) {
    tracker.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(route, error = %e, "upgrade did not complete");
                return;
            }
        };
        let activity = Activity::new(false);
        let client = Tracked::new(TokioIo::new(client), activity.clone());
        match tunnel(client, TokioIo::new(upstream), &activity, idle, &stop).await {
            Ok(TunnelEnd::Done) => {}
            Ok(end) => tracing::debug!(route, ?end, "tunnel closed"),
            Err(e) => tracing::debug!(route, error = %e, "tunnel ended with an error"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
        assert!(plain.contains_key("x-keep"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(!h.contains_key("x-secret"));
        let mut untouched = HeaderMap::new();
        untouched.insert("x-keep", HeaderValue::from_static("1"));
        untouched.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut untouched, false);
        assert_eq!(untouched.len(), 2);
        let mut only_keep_alive = HeaderMap::new();
        only_keep_alive.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        only_keep_alive.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut only_keep_alive, false);
        assert!(only_keep_alive.is_empty());
    }

    #[test]
    fn te_trailers_goes_on_and_other_te_codings_do_not() {
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        strip_hop_by_hop(&mut grpc, false);
        assert_eq!(grpc.get(header::TE).unwrap(), "trailers");
        let mut gzip_only = HeaderMap::new();
        gzip_only.insert(header::TE, HeaderValue::from_static("gzip, deflate"));
        strip_hop_by_hop(&mut gzip_only, false);
        assert!(gzip_only.is_empty());
        // With other hop-by-hop headers beside it, `TE: trailers` still goes on.
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TE, HeaderValue::from_static("trailers"));
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        chunked.insert(header::CONNECTION, HeaderValue::from_static("te"));
        strip_hop_by_hop(&mut chunked, false);
        assert_eq!(chunked.len(), 1);
        assert_eq!(chunked.get(header::TE).unwrap(), "trailers");
    }
}
