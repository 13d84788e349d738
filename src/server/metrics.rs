//! `/metrics` in the Prometheus text format, so an operator running several server processes
//! sees load and health in one place.
//!
//! Two kinds of numbers:
//! - **this process** (counters and histograms kept in memory): HTTP requests by route and
//!   status and their latency, feedback batches, records stored / already stored / refused,
//!   and ingest lag (server time of storing minus the reviewer's decision time);
//! - **the whole deployment** (read from the store at scrape time, identical on every
//!   process: aggregate them with `max`, not `sum`): training runs by status, training jobs
//!   by state, devices by model version, devices by drift state, feedback stored.
//!
//! Built on the `prometheus` crate (TiKV's client, the reference Rust implementation of the
//! format) without its protobuf feature.

use super::store::{ServerStore, StoreStats};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The metrics of one server process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route, method and status.
    pub requests: IntCounterVec,
    /// HTTP request latency, by route.
    pub latency: HistogramVec,
    /// Feedback batches accepted.
    pub sync_batches: IntCounter,
    /// Feedback records by result (`new`, `duplicate`, `refused`).
    pub sync_records: IntCounterVec,
    /// Seconds from the reviewer's decision to its storing on the server.
    pub ingest_lag: HistogramVec,
    /// What ingest refused, by reason: `invalid_record` (a batch refused with a 400) and
    /// `foreign_supersedes` (a record stored without a `supersedes` naming another
    /// device's decision).
    pub ingest_refusals: IntCounterVec,
    runs: IntGaugeVec,
    jobs: IntGaugeVec,
    versions: IntGaugeVec,
    drift: IntGaugeVec,
    feedback: IntGauge,
    devices: IntGauge,
    store_up: IntGauge,
}

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set (names are constants: registering cannot fail).
    ///
    /// Long because it is the list of every metric this process exports, each with its
    /// help text and buckets, read top to bottom; splitting it would scatter the list.
    pub fn new() -> Metrics {
        let reg = Registry::new();
        let requests = counter_vec(
            &reg,
            "outpost_http_requests_total",
            "HTTP requests answered by this process, by route, method and status.",
            &["route", "method", "status"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "outpost_http_request_duration_seconds",
                "Time to answer an HTTP request, by route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        reg.register(Box::new(latency.clone()))
            .expect("registered once");
        let sync_batches = IntCounter::new(
            "outpost_sync_batches_total",
            "Feedback batches accepted by this process.",
        )
        .expect("valid metric");
        reg.register(Box::new(sync_batches.clone()))
            .expect("registered once");
        let sync_records = counter_vec(
            &reg,
            "outpost_sync_records_total",
            "Feedback records received by this process: new (stored now), duplicate (stored before, acknowledged again), refused.",
            &["result"],
        );
        let ingest_refusals = counter_vec(
            &reg,
            "outpost_ingest_refusals_total",
            "What feedback ingest refused, by reason: invalid_record (batch refused with 400), foreign_supersedes (supersedes naming another device's decision, dropped).",
            &["reason"],
        );
        let ingest_lag = HistogramVec::new(
            HistogramOpts::new(
                "outpost_ingest_lag_seconds",
                "Seconds from the reviewer's decision (device clock) to its storing on the server, per new record.",
            )
            .buckets(vec![
                1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6.0 * 3600.0, 86400.0, 7.0 * 86400.0,
                30.0 * 86400.0,
            ]),
            &["via"],
        )
        .expect("valid metric");
        reg.register(Box::new(ingest_lag.clone()))
            .expect("registered once");
        let runs = gauge_vec(
            &reg,
            "outpost_training_runs",
            "Training runs recorded, by model and status (whole deployment).",
            &["model", "status"],
        );
        let jobs = gauge_vec(
            &reg,
            "outpost_training_jobs",
            "Training jobs, by state (whole deployment).",
            &["state"],
        );
        let versions = gauge_vec(
            &reg,
            "outpost_devices_by_version",
            "Devices by the model version they last reported serving (whole deployment).",
            &["model", "version"],
        );
        let drift = gauge_vec(
            &reg,
            "outpost_devices_by_drift_state",
            "Devices by the state of their latest drift window, per model (whole deployment).",
            &["model", "state"],
        );
        let feedback = gauge(
            &reg,
            "outpost_feedback_stored",
            "Feedback records in the store (whole deployment).",
        );
        let devices = gauge(
            &reg,
            "outpost_devices_enrolled",
            "Enrolled devices that are not revoked (whole deployment).",
        );
        let store_up = gauge(
            &reg,
            "outpost_store_up",
            "1 if the last scrape could read the store, else 0.",
        );
        Metrics {
            registry: reg,
            requests,
            latency,
            sync_batches,
            sync_records,
            ingest_lag,
            ingest_refusals,
            runs,
            jobs,
            versions,
            drift,
            feedback,
            devices,
            store_up,
        }
    }

    /// Sets the deployment-wide gauges from the store.
    fn set_stats(&self, s: &StoreStats) {
        for g in [&self.runs, &self.jobs, &self.versions, &self.drift] {
            g.reset();
        }
        for (model, status, n) in &s.runs {
            self.runs.with_label_values(&[model, status]).set(*n);
        }
        for (state, n) in &s.jobs {
            self.jobs.with_label_values(&[state]).set(*n);
        }
        for (model, version, n) in &s.versions {
            self.versions.with_label_values(&[model, version]).set(*n);
        }
        for (model, state, n) in &s.drift {
            self.drift.with_label_values(&[model, state]).set(*n);
        }
        self.feedback.set(s.feedback);
        self.devices.set(s.devices);
    }

    /// The text exposition: reads the store (blocking) for the deployment-wide gauges.
    pub fn render(&self, store: &dyn ServerStore) -> String {
        match store.stats() {
            Ok(s) => {
                self.set_stats(&s);
                self.store_up.set(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the store");
                self.store_up.set(0);
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics: cannot encode");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Records what one feedback batch did; `lags` are seconds per new record.
    pub fn record_batch(&self, new: usize, duplicates: usize, refused: usize, lags: &[f64]) {
        self.sync_batches.inc();
        self.sync_records
            .with_label_values(&["new"])
            .inc_by(new as u64);
        self.sync_records
            .with_label_values(&["duplicate"])
            .inc_by(duplicates as u64);
        self.sync_records
            .with_label_values(&["refused"])
            .inc_by(refused as u64);
        let h = self.ingest_lag.with_label_values(&["http"]);
        for l in lags {
            h.observe(l.max(0.0));
        }
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
