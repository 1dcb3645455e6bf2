//! Free ports on the loopback interface.
//!
//! A port found free is released before the caller's server binds it, so something else can
//! take it in between. Ports are therefore handed out below the kernel's ephemeral range (32768
//! and up by default), where no connection is given a port: in that range any of the many
//! connections tests make, in this process or in a test process running beside it (nextest),
//! could take a port between the check and the bind. Each process walks the range from a
//! point of its own and never hands out a port twice, so two of its servers never get the same
//! port and two processes rarely meet. A harness that must not flake still retries its start
//! on "address in use" (see [`crate::process::NotReady::is_address_in_use`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The range handed out: below the ephemeral range, above the ports services usually take.
const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// The next candidate port of this process's walk through the range.
fn next_candidate() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = (std::process::id() as u64 ^ nanos()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    // The first caller fixes the starting point; later ones only step on.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (start % u64::from(COUNT)) as u32,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (FIRST + n % COUNT) as u16
}

/// A TCP port free on 127.0.0.1 right now, below the ephemeral range.
pub fn free_port() -> u16 {
    for _ in 0..COUNT {
        let port = next_candidate();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no TCP port free on 127.0.0.1 in {FIRST}..{}",
        FIRST + COUNT
    );
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

/// A port free for both UDP and TCP on 127.0.0.1 (a DNS server binds both).
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..COUNT {
        let port = next_candidate();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!(
        "no loopback port free for both UDP and TCP in {FIRST}..{}",
        FIRST + COUNT
    );
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
        let port = free_port();
        assert!((20_000..32_000).contains(&port));
        let port = free_udp_tcp_port();
        assert!((20_000..32_000).contains(&port));
        UdpSocket::bind(loopback(port)).expect("udp");
        let base = free_port_range(3);
        for i in 0..3 {
            TcpListener::bind(loopback(base + i)).expect("range");
        }
    }

    #[test]
    fn a_process_never_hands_out_a_port_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            assert!(seen.insert(free_port()), "a port handed out twice");
        }
    }
}
