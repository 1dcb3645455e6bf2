//! Endpoint discovery: a static list, or a DNS name re-resolved in the background.
//!
//! The DNS task never blocks the route: until the first answer arrives the route is simply empty (requests
//! get a fast 503), and a failing resolver keeps the last good answer. Refreshes follow the answer's TTL,
//! clamped to a floor (a TTL of 0 must not spin) and a ceiling (a long TTL must not hide a scale-down), with
//! jitter so sidecars started together do not query together.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{ConfigError, DiscoveryConfig, EndpointsConfig, split_dns_target};
use super::metrics::RouteMetrics;

/// The current endpoint addresses of a route, sorted and without duplicates.
pub type EndpointList = Vec<SocketAddr>;

/// Starts discovery for one route and returns the receiver of its endpoint lists.
pub(crate) fn start(
    endpoints: &EndpointsConfig,
    discovery: &DiscoveryConfig,
    metrics: RouteMetrics,
    token: CancellationToken,
) -> Result<watch::Receiver<EndpointList>, ConfigError> {
    endpoints.validate()?;
    match endpoints {
        EndpointsConfig::Static(addrs) => {
            let (tx, rx) = watch::channel(normalise(addrs.clone()));
            // A static list never changes; keeping the sender alive keeps the receiver "open".
            tokio::spawn(async move {
                token.cancelled().await;
                drop(tx);
            });
            Ok(rx)
        }
        EndpointsConfig::Dns(target) => {
            discovery.validate()?;
            let (name, port) = split_dns_target(target)?;
            let resolver = build_resolver(discovery)?;
            let (tx, rx) = watch::channel(Vec::new());
            let refresher = DnsRefresher {
                name: name.to_owned(),
                port,
                config: discovery.clone(),
                resolver,
                metrics,
            };
            tokio::spawn(refresher.run(tx, token));
            Ok(rx)
        }
    }
}

fn normalise(mut addrs: Vec<SocketAddr>) -> EndpointList {
    addrs.sort();
    addrs.dedup();
    addrs
}

fn build_resolver(config: &DiscoveryConfig) -> Result<TokioResolver, ConfigError> {
    let mut builder = match config.nameserver {
        Some(ns) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = ns.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = ns.port();
            let servers = vec![NameServerConfig::new(ns.ip(), true, vec![udp, tcp])];
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            // An explicit nameserver means "ask it": /etc/hosts must not shadow its answers.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            ConfigError::new(
                "discovery.nameserver",
                format!("cannot read the system resolver configuration: {e}"),
            )
        })?,
    };
    let options = builder.options_mut();
    options.timeout = config.lookup_timeout;
    options.attempts = 1;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| {
        ConfigError::new(
            "discovery.nameserver",
            format!("cannot build the DNS resolver: {e}"),
        )
    })
}

struct DnsRefresher {
    name: String,
    port: u16,
    config: DiscoveryConfig,
    resolver: TokioResolver,
    metrics: RouteMetrics,
}

/// What one lookup yielded.
#[derive(Debug, PartialEq)]
enum Answer {
    Addresses {
        addrs: EndpointList,
        ttl: Duration,
    },
    /// The name exists no more, or has no address: an authoritative "zero endpoints" (a scaled-to-zero
    /// headless Service answers NXDOMAIN).
    NoRecords,
    /// Timeout, refused, SERVFAIL...: says nothing about the endpoints.
    Failed(String),
}

impl DnsRefresher {
    async fn run(self, tx: watch::Sender<EndpointList>, token: CancellationToken) {
        let mut failures_in_a_row = 0u32;
        loop {
            let wait = match self.lookup().await {
                Answer::Addresses { addrs, ttl } => {
                    failures_in_a_row = 0;
                    self.metrics.dns_refresh("ok");
                    publish(&tx, addrs, &self.name);
                    clamp(ttl, &self.config)
                }
                Answer::NoRecords => {
                    failures_in_a_row = 0;
                    self.metrics.dns_refresh("empty");
                    if !tx.borrow().is_empty() {
                        tracing::warn!(name = %self.name, route = %self.metrics.route(), "DNS has no address for the route any more: draining its endpoints");
                    }
                    publish(&tx, Vec::new(), &self.name);
                    self.config.ttl_floor
                }
                Answer::Failed(error) => {
                    failures_in_a_row = failures_in_a_row.saturating_add(1);
                    self.metrics.dns_refresh("error");
                    tracing::warn!(
                        name = %self.name,
                        route = %self.metrics.route(),
                        %error,
                        kept = tx.borrow().len(),
                        "DNS lookup failed; keeping the last good answer"
                    );
                    // Retry soon, then back off towards the ceiling while the resolver stays down.
                    let factor = 2u32.saturating_pow(failures_in_a_row.saturating_sub(1).min(16));
                    self.config
                        .ttl_floor
                        .saturating_mul(factor)
                        .min(self.config.ttl_ceiling)
                }
            };
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(jitter(wait, self.config.jitter)) => {}
            }
        }
    }

    async fn lookup(&self) -> Answer {
        // The resolver's cache would hand back the same answer until its TTL ends, defeating the ceiling.
        self.resolver.clear_cache();
        let started = Instant::now();
        match tokio::time::timeout(
            self.config.lookup_timeout,
            self.resolver.lookup_ip(self.name.as_str()),
        )
        .await
        {
            Err(_) => Answer::Failed(format!("no answer within {:?}", self.config.lookup_timeout)),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => Answer::NoRecords,
            Ok(Err(e)) => Answer::Failed(e.to_string()),
            Ok(Ok(lookup)) => {
                let addrs: EndpointList = normalise(
                    lookup
                        .iter()
                        .map(|ip| SocketAddr::new(ip, self.port))
                        .collect(),
                );
                if addrs.is_empty() {
                    return Answer::NoRecords;
                }
                let ttl = lookup.valid_until().saturating_duration_since(started);
                Answer::Addresses { addrs, ttl }
            }
        }
    }
}

fn publish(tx: &watch::Sender<EndpointList>, addrs: EndpointList, name: &str) {
    tx.send_if_modified(|current| {
        if *current == addrs {
            return false;
        }
        tracing::info!(name, from = ?current, to = ?addrs, "DNS answer changed");
        *current = addrs;
        true
    });
}

fn clamp(ttl: Duration, config: &DiscoveryConfig) -> Duration {
    ttl.clamp(config.ttl_floor, config.ttl_ceiling)
}

/// Spreads `wait` uniformly by up to `fraction` either way.
fn jitter(wait: Duration, fraction: f64) -> Duration {
    let spread = (rand::random::<f64>() * 2.0 - 1.0) * fraction;
    wait.mul_f64((1.0 + spread).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_and_jittered_within_bounds() {
        let cfg = DiscoveryConfig {
            ttl_floor: Duration::from_secs(2),
            ttl_ceiling: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(clamp(Duration::ZERO, &cfg), Duration::from_secs(2));
        assert_eq!(clamp(Duration::from_secs(5), &cfg), Duration::from_secs(5));
        assert_eq!(
            clamp(Duration::from_secs(3600), &cfg),
            Duration::from_secs(10)
        );
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10), 0.1);
            assert!(
                j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                "{j:?}"
            );
        }
        assert_eq!(jitter(Duration::from_secs(1), 0.0), Duration::from_secs(1));
    }

    #[test]
    fn static_lists_are_sorted_and_deduplicated() {
        let a: SocketAddr = "127.0.0.2:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(normalise(vec![a, b, a]), vec![b, a]);
    }
}
