//! Prometheus metrics, registered once in the kit's registry; every component gets a clone.
//! Labels carry input, pipeline and sink names from the configuration, file paths the inputs
//! matched, and HTTP statuses: never a URL, a token or a log line.

use prometheus::{Gauge, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use sidecar_kit::metrics::{counter_vec, float_gauge, gauge, gauge_vec, histogram_vec};

/// Batch latencies: 1 ms to 5 minutes (a retried batch waits through backoff).
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// input
    pub lines_read: IntCounterVec,
    /// input
    pub bytes_read: IntCounterVec,
    /// input, code: the HTTP receiver's answers
    pub receiver_requests: IntCounterVec,
    /// sink
    pub lines_sent: IntCounterVec,
    /// sink: request bodies before compression
    pub bytes_sent: IntCounterVec,
    /// sink, reason: buffer_full (drop_oldest policy), dead_letter_failed
    pub lines_dropped: IntCounterVec,
    /// input, reason: truncated (bytes a truncation took before they were read)
    pub bytes_dropped: IntCounterVec,
    /// sink: lines of refused batches written to the dead-letter file
    pub lines_dead_lettered: IntCounterVec,
    /// input: events cut to the maximum event size
    pub events_truncated: IntCounterVec,
    /// pipeline, stage: parser, timestamp
    pub parse_errors: IntCounterVec,
    /// sink: time from a batch closing to its acknowledgement
    pub batch_latency: HistogramVec,
    /// sink, status: an HTTP status, or timeout / connect / io
    pub sink_errors: IntCounterVec,
    /// sink
    pub buffer_bytes: IntGaugeVec,
    /// sink
    pub buffer_lines: IntGaugeVec,
    /// input, path
    pub file_lag_bytes: IntGaugeVec,
    /// input
    pub files_tracked: IntGaugeVec,
    /// input, kind: rename, delete, copytruncate, truncate
    pub rotations: IntCounterVec,
    /// Seconds since the checkpoints were last written.
    pub checkpoint_age: Gauge,
    pub checkpoint_writes: IntCounterVec,
    /// result: ok, error
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
}

impl Metrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            lines_read: counter_vec(
                r,
                "log_shipper_lines_read_total",
                "Lines read by an input",
                &["input"],
            )?,
            bytes_read: counter_vec(
                r,
                "log_shipper_bytes_read_total",
                "Bytes read by an input",
                &["input"],
            )?,
            receiver_requests: counter_vec(
                r,
                "log_shipper_receiver_requests_total",
                "Requests to an HTTP receiver by status code (200: the lines are safe; 413 too large; 503 busy or not acknowledged in time)",
                &["input", "code"],
            )?,
            lines_sent: counter_vec(
                r,
                "log_shipper_lines_sent_total",
                "Events a sink acknowledged as delivered",
                &["sink"],
            )?,
            bytes_sent: counter_vec(
                r,
                "log_shipper_bytes_sent_total",
                "Request bytes a sink delivered (before compression)",
                &["sink"],
            )?,
            lines_dropped: counter_vec(
                r,
                "log_shipper_lines_dropped_total",
                "Events dropped on purpose, by reason (buffer_full: the disk buffer was full under the drop_oldest policy)",
                &["sink", "reason"],
            )?,
            bytes_dropped: counter_vec(
                r,
                "log_shipper_bytes_dropped_total",
                "Bytes of a file lost before they were read (truncated: the file was truncated with no copy to read them from)",
                &["input", "reason"],
            )?,
            lines_dead_lettered: counter_vec(
                r,
                "log_shipper_lines_dead_lettered_total",
                "Events of batches a sink refused for good, written to the dead-letter file",
                &["sink"],
            )?,
            events_truncated: counter_vec(
                r,
                "log_shipper_events_truncated_total",
                "Events cut to the maximum event size (shipped, marked truncated)",
                &["input"],
            )?,
            parse_errors: counter_vec(
                r,
                "log_shipper_parse_errors_total",
                "Events a parser or the timestamp extraction could not read (shipped as they were)",
                &["pipeline", "stage"],
            )?,
            batch_latency: histogram_vec(
                r,
                "log_shipper_batch_latency_seconds",
                "Time from a batch closing to its acknowledgement by the sink, retries included",
                &["sink"],
                BATCH_BUCKETS,
            )?,
            sink_errors: counter_vec(
                r,
                "log_shipper_sink_errors_total",
                "Failed sink requests, by HTTP status or timeout/connect/io",
                &["sink", "status"],
            )?,
            buffer_bytes: gauge_vec(
                r,
                "log_shipper_buffer_bytes",
                "Bytes in a sink's disk buffer",
                &["sink"],
            )?,
            buffer_lines: gauge_vec(
                r,
                "log_shipper_buffer_lines",
                "Events in a sink's disk buffer",
                &["sink"],
            )?,
            file_lag_bytes: gauge_vec(
                r,
                "log_shipper_file_lag_bytes",
                "Bytes of a file not yet acknowledged by every sink (size minus checkpoint)",
                &["input", "path"],
            )?,
            files_tracked: gauge_vec(
                r,
                "log_shipper_files_tracked",
                "Files an input has open",
                &["input"],
            )?,
            rotations: counter_vec(
                r,
                "log_shipper_rotations_total",
                "Rotations and truncations followed, by kind (rename, delete, copytruncate, truncate)",
                &["input", "kind"],
            )?,
            checkpoint_age: float_gauge(
                r,
                "log_shipper_checkpoint_age_seconds",
                "Seconds since the checkpoints were last written to the state directory",
            )?,
            checkpoint_writes: counter_vec(
                r,
                "log_shipper_checkpoint_writes_total",
                "Checkpoint writes by result",
                &["result"],
            )?,
            config_reloads: counter_vec(
                r,
                "log_shipper_config_reloads_total",
                "Reloads of the YAML configuration by result (error: the old configuration stays)",
                &["result"],
            )?,
            config_generation: gauge(
                r,
                "log_shipper_config_generation",
                "0 for the configuration loaded at start, +1 for each reload applied",
            )?,
        })
    }

    /// Metrics in a registry of their own, for tests and benchmarks.
    pub fn detached() -> Self {
        // Registering into a fresh registry cannot collide.
        Self::register(&Registry::new()).unwrap_or_else(|e| panic!("metrics: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_under_its_name() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.lines_read.with_label_values(&["a"]).inc();
        m.batch_latency.with_label_values(&["s"]).observe(0.2);
        m.checkpoint_age.set(1.5);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [
            "log_shipper_lines_read_total",
            "log_shipper_batch_latency_seconds",
            "log_shipper_checkpoint_age_seconds",
            "log_shipper_config_generation",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(
            Metrics::register(&registry).is_err(),
            "a second registration collides"
        );
    }
}
