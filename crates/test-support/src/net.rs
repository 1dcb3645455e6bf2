//! What the kernel knows about a loopback connection: whether the server at the other end has
//! read what the test sent. A test that needs "the request is in the server's hands" before it
//! acts (a signal during a request in flight) waits for that instead of sleeping.
//!
//! Linux only: it reads `/proc/net/tcp` and `/proc/net/tcp6`, where each socket's receive
//! queue is the count of bytes that arrived and were not read yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Bytes sent on `stream` that the socket at its other end (on this host) has not read yet;
/// `None` when that socket is not found (not on this host, or closed).
pub fn unread_by_peer(stream: &TcpStream) -> Option<u64> {
    let me = stream.local_addr().ok()?;
    let peer = stream.peer_addr().ok()?;
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| receive_queue(&text, peer, me))
}

/// Waits until the server at the other end of `stream` has read everything sent on it so far
/// (its socket must stay open meanwhile: a request in flight); panics after `timeout`.
#[track_caller]
pub fn wait_read_by_peer(stream: &TcpStream, timeout: Duration) {
    let last = std::cell::Cell::new(None);
    crate::wait::Wait::new(format_args!(
        "the server at {:?} to read what was sent",
        stream.peer_addr().ok()
    ))
    .timeout(timeout)
    .every(Duration::from_millis(5))
    .context(|| format!("bytes it had not read at the last check: {:?}", last.get()))
    .until(|| {
        last.set(unread_by_peer(stream));
        last.get() == Some(0)
    });
}

/// The receive queue of the socket `local` <- `remote` in a `/proc/net/tcp*` table.
fn receive_queue(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if parse_addr(l)? != local || parse_addr(r)? != remote {
            return None;
        }
        let (_, rx) = queues.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address in the machine's byte order, the port in plain hex.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A v4 peer on a dual-stack socket is listed as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sees_the_server_read_the_bytes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client.write_all(b"hello").expect("write");
        let (mut server, _) = listener.accept().expect("accept");
        crate::wait::until(Duration::from_secs(5), "the bytes in the queue", || {
            unread_by_peer(&client) == Some(5)
        });
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).expect("read");
        wait_read_by_peer(&client, Duration::from_secs(5));
    }

    #[test]
    fn addresses_parse_as_the_kernel_prints_them() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_addr("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().expect("addr"))
            );
            assert_eq!(
                parse_addr("00000000000000000000000001000000:0050"),
                Some("[::1]:80".parse().expect("addr"))
            );
        }
    }
}
