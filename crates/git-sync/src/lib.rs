//! git-sync: keeps a shared volume on the latest good revision of a git repository.
//!
//! The pieces, in the order a sync uses them: [`git`] asks the remote and fetches into a
//! private bare repository with libgit2, [`export`] writes the revision's tree into a staging
//! directory, the validation gate ([`sidecar_kit::command`]) runs on it, [`publish`] swaps the
//! symlink with rename(2), and [`sidecar_kit::notify`] tells the app. [`service`] is the loop
//! that decides when, and
//! [`trigger`] is the authenticated `POST /sync`. The network half of each sync runs in a
//! [`worker`] process, so `--sync-timeout` can always stop it.

pub mod config;
pub mod credentials;
pub mod error_file;
pub mod export;
pub mod git;
pub mod history;
pub mod known_hosts;
pub mod metrics;
pub mod publish;
pub mod schedule;
pub mod selection;
pub mod service;
pub mod signature;
pub mod submodules;
pub mod syncer;
pub mod transport;
pub mod tree_policy;
pub mod trigger;
pub mod worker;

pub use config::{Cli, Config, INFO};
pub use service::serve;
