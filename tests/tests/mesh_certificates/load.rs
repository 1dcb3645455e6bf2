//! The load: clients calling every route through the ambassadors, over and over.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use test_support::http;

use crate::pod::Pod;
use crate::{CLIENTS, PAUSE, peer_of, spiffe};

/// A route a client calls: from `pod`'s app through its ambassador to the peer.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) from: &'static str,
    pub(crate) fresh_handshake: bool,
    pub(crate) addr: SocketAddr,
}

impl Target {
    pub(crate) fn label(&self) -> String {
        let route = if self.fresh_handshake { "tcp" } else { "http" };
        format!("{}->{} {route}", self.from, peer_of(self.from))
    }
}

#[derive(Default, Clone)]
pub(crate) struct Stats {
    /// Requests per target label.
    pub(crate) sent: Vec<(String, u64)>,
    pub(crate) failures: Vec<String>,
    /// (caller, client certificate hash the peer's app saw) pairs.
    pub(crate) presented: BTreeSet<(String, String)>,
    /// When each caller's last request over a new handshake succeeded.
    pub(crate) fresh: Vec<(String, SystemTime)>,
}

impl Stats {
    pub(crate) fn hashes_presented_by(&self, pod: &str) -> BTreeSet<String> {
        self.presented
            .iter()
            .filter(|(from, _)| from == pod)
            .map(|(_, hash)| hash.clone())
            .collect()
    }

    pub(crate) fn last_fresh_handshake(&self, pod: &str) -> Option<SystemTime> {
        self.fresh
            .iter()
            .find(|(from, _)| from == pod)
            .map(|(_, at)| *at)
    }

    pub(crate) fn summary(&self) -> String {
        let total: u64 = self.sent.iter().map(|(_, n)| n).sum();
        let routes: Vec<String> = self.sent.iter().map(|(t, n)| format!("{t} {n}")).collect();
        format!(
            "{total} requests ({}), {} failed",
            routes.join(", "),
            self.failures.len()
        )
    }

    pub(crate) fn record(
        &mut self,
        target: &Target,
        started: Instant,
        result: Result<String, String>,
    ) {
        let label = target.label();
        match self.sent.iter_mut().find(|(t, _)| *t == label) {
            Some((_, n)) => *n += 1,
            None => self.sent.push((label.clone(), 1)),
        }
        match result {
            Ok(hash) => {
                self.presented.insert((target.from.to_owned(), hash));
                if target.fresh_handshake {
                    let now = SystemTime::now();
                    match self.fresh.iter_mut().find(|(from, _)| from == target.from) {
                        Some((_, at)) => *at = now,
                        None => self.fresh.push((target.from.to_owned(), now)),
                    }
                }
            }
            Err(e) => self.failures.push(format!(
                "{:>7.3}s {label}: {e}",
                started.elapsed().as_secs_f64()
            )),
        }
    }
}

/// Clients calling every route, over and over, until stopped.
pub(crate) struct Load {
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(pods: &[Pod]) -> Load {
        let targets: Vec<Target> = pods
            .iter()
            .flat_map(|p| {
                [
                    Target {
                        from: p.name,
                        fresh_handshake: false,
                        addr: p.outbound_http,
                    },
                    Target {
                        from: p.name,
                        fresh_handshake: true,
                        addr: p.outbound_tcp,
                    },
                ]
            })
            .collect();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let clients = (0..CLIENTS)
            .map(|n| {
                let (targets, stats, stop) = (targets.clone(), stats.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = n;
                    while !stop.load(Ordering::Relaxed) {
                        let target = &targets[i % targets.len()];
                        i += 1;
                        let result = call(target);
                        stats.lock().unwrap().record(target, started, result);
                        std::thread::sleep(PAUSE);
                    }
                })
            })
            .collect();
        Load {
            stats,
            stop,
            clients,
        }
    }

    pub(crate) fn hashes_presented_by(&self, pod: &str) -> BTreeSet<String> {
        self.stats.lock().unwrap().hashes_presented_by(pod)
    }

    pub(crate) fn summary(&self) -> String {
        self.stats.lock().unwrap().summary()
    }

    pub(crate) fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        self.stats.lock().unwrap().clone()
    }
}

/// One request through `target`: the hash of the caller's certificate that the peer's app was
/// told (X-Forwarded-Client-Cert), or what went wrong.
pub(crate) fn call(target: &Target) -> Result<String, String> {
    let r = http::get(target.addr, "/").map_err(|e| e.to_string())?;
    let peer = peer_of(target.from);
    let caller = format!("URI={}", spiffe(target.from));
    if r.status != 200
        || !r.body.contains(&format!("hello from {peer}"))
        || !r.body.contains(&caller)
    {
        return Err(format!("{} {:?}", r.status, r.body));
    }
    r.body
        .split("Hash=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no certificate hash in {:?}", r.body))
}
