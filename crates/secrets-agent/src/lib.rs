//! secrets-agent: renders secrets and short-lived certificates from OpenBao (or Vault) into
//! files, and keeps them renewed and rotated.
//!
//! The pieces, in the order a refresh uses them: [`openbao`] is the HTTP client and its error
//! classes, [`auth`] logs in (token file, AppRole, JWT, TLS certificate) and keeps the token
//! renewed, [`secrets`] fetches KV, dynamic and PKI secrets and renews their leases, [`render`]
//! turns them into file contents (templates and ready formats), [`publish`] swaps the set into
//! the output directory in the Kubernetes `..data` layout. [`agent`] holds the state of every
//! secret and decides what is due; [`service`] is the loop around it (readiness, metrics,
//! notifications, one-time mode).

mod agent;
mod auth;
mod cli;
mod config;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod openbao;
mod publish;
mod render;
mod schedule;
mod secrets;
mod sensitive;
mod service;

pub use cli::{Cli, INFO};
pub use config::Config;
pub use service::serve;
