//! Free ports on the loopback interface.
//!
//! A port found free is released before the caller's server binds it, so another process can
//! take it in between. The kernel hands out ports from its ephemeral range in turn, which makes
//! that rare; a harness that must not flake retries its start on "address in use" (see
//! [`crate::process::Process::try_wait_ready`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `127.0.0.1:<a free port>`; also an address where nothing listens (a refused connection).
pub fn free_addr() -> SocketAddr {
    loopback(free_port())
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A TCP port free on both 127.0.0.1 and ::1 (a name can then point at either loopback
/// address with the same port).
pub fn free_dual_stack_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no TCP port free on both 127.0.0.1 and ::1 in 100 tries");
}

/// A port free for both UDP and TCP on 127.0.0.1 (a DNS server binds both), chosen below the
/// kernel's ephemeral range (32768 and up by default): an ephemeral port can be taken at any
/// moment by one of the many connections tests make, and a test that reserves a port for a
/// server it starts later needs it to stay free.
pub fn free_udp_tcp_port() -> u16 {
    let mut seed = std::process::id() as u64 ^ nanos();
    for _ in 0..1000 {
        // xorshift: any spread over the range will do.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20_000 + (seed % 12_000) as u16;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP in 20000..32000");
}

/// The first port of `count` consecutive TCP ports free on 127.0.0.1 right now, for a program
/// that takes a base port and numbers its listeners from it.
pub fn free_port_range(count: u16) -> u16 {
    (20_000..60_000u16)
        .step_by(97)
        .find(|base| (0..count).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok()))
        .unwrap_or_else(|| panic!("no {count} consecutive free ports in 20000..60000"))
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0)
        | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_found_free_can_be_bound() {
        TcpListener::bind(free_addr()).expect("free_addr");
        let port = free_udp_tcp_port();
        assert!((20_000..32_000).contains(&port));
        UdpSocket::bind(loopback(port)).expect("udp");
        let base = free_port_range(3);
        for i in 0..3 {
            TcpListener::bind(loopback(base + i)).expect("range");
        }
    }
}
