//! xml-adapter: reads a legacy application's XML status page and serves it as Prometheus
//! metrics (text 0.0.4 and OpenMetrics 1.0) and JSON, driven by a YAML mapping.

pub mod config;
pub mod encode;
pub mod engine;
pub mod fetch;
pub mod http;
pub mod lint;
pub mod mapping;
pub mod path;
pub mod probe;
pub mod probe_serve;
pub mod serve;
pub mod stats;
pub mod transform;
