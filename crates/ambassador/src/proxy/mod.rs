//! The shared layer: what both directions use to proxy, below `inbound` and `outbound`, which
//! build on it and never on each other.
//!
//! - [`serve`]: serving an accepted HTTP connection with hyper, HTTP/1.1 or HTTP/2.
//! - [`policy`]: what every request goes through: checks, metrics, access log, drain.
//! - [`forward`]: hop-by-hop headers, the ambassador's own answers, upgrades.
//! - [`conn`]: one accepted connection's activity, the limits and drain applied to it, tunnels.
//! - [`client`]: the next hop: pooled HTTP/1.1 and shared HTTP/2 connections, their bodies.
//! - [`body`], [`error`], [`tls`]: request bodies, why a request could not be sent, why a
//!   handshake failed.
//!
//! Each module here imports only modules listed after it (and `config`, `metrics`).

pub mod access_log;
pub mod body;
pub mod client;
pub mod conn;
pub mod error;
pub mod forward;
pub mod policy;
pub mod serve;
pub mod tls;
