//! `/metrics`: every series a registered Prometheus type with its HELP and TYPE. Request counts
//! and latencies are recorded as requests end; the batchers' and engines' own figures are read
//! when scraped, so gauges are current.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::{Atomic, Collector, GenericCounter, Number};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::repository::{Served, ServedModel};
use crate::error::{Cause, Error, Result};
use crate::infer::Prediction;

/// The server's registered metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    samples: IntCounterVec,
    queued: HistogramVec,
    computed: HistogramVec,
    batcher_queue_depth: IntGaugeVec,
    batcher_requests: IntCounterVec,
    batcher_refused: IntCounterVec,
    batcher_timed_out: IntCounterVec,
    batches: IntCounterVec,
    batcher_latency: GaugeVec,
    tokens: IntCounterVec,
    steps: IntCounterVec,
    generation_queue_depth: IntGaugeVec,
    generation_running: IntGaugeVec,
    generation_occupancy: GaugeVec,
    time_to_first_token: GaugeVec,
    inter_token: GaugeVec,
    /// Held while the models' figures are copied in, so that two scrapes count nothing twice.
    refreshing: Mutex<()>,
}

fn registering(e: prometheus::Error) -> Error {
    Error::Serving {
        details: "registering the metrics".into(),
        source: Some(Cause::new(e)),
    }
}

/// A counter brought up to `total` (a running total kept elsewhere); never down.
fn advance<P: Atomic>(counter: &GenericCounter<P>, total: P::T)
where
    P::T: Number + PartialOrd + std::ops::Sub<Output = P::T>,
{
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Metrics {
    pub fn new(models: &BTreeMap<String, ServedModel>) -> Result<Self> {
        let registry = Registry::new();
        fn add<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C> {
            registry
                .register(Box::new(c.clone()))
                .map_err(registering)?;
            Ok(c)
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            add(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).map_err(registering)?,
            )
        };
        let int_gauge = |name: &str, help: &str| {
            add(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["model"]).map_err(registering)?,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            add(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).map_err(registering)?,
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], start: f64, count: usize| {
            let buckets =
                prometheus::exponential_buckets(start, 2.0, count).map_err(registering)?;
            add(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .map_err(registering)?,
            )
        };
        let metrics = Metrics {
            requests: counter(
                "wgnn_requests_total",
                "Requests answered, by model, endpoint and outcome (ok, bad_request, overloaded, error; a stream the client left: cancelled)",
                &["model", "endpoint", "outcome"],
            )?,
            latency: histogram(
                "wgnn_request_duration_seconds",
                "From a request's arrival to its last byte handed to the connection (a stream's last event)",
                &["model", "endpoint"],
                0.0005,
                18,
            )?,
            samples: counter(
                "wgnn_infer_samples_total",
                "Classifiers: samples answered",
                &["model"],
            )?,
            queued: histogram(
                "wgnn_queue_duration_seconds",
                "Classifiers: a request's wait in the batcher before its replay",
                &["model"],
                0.0001,
                18,
            )?,
            computed: histogram(
                "wgnn_compute_duration_seconds",
                "Classifiers: the replays that answered a request",
                &["model"],
                0.0001,
                18,
            )?,
            batcher_queue_depth: int_gauge(
                "wgnn_batcher_queue_depth",
                "Classifiers: requests waiting in the batcher now",
            )?,
            batcher_requests: counter(
                "wgnn_batcher_requests_total",
                "Classifiers: batcher submissions answered",
                &["model"],
            )?,
            batcher_refused: counter(
                "wgnn_batcher_refused_total",
                "Classifiers: batcher submissions refused, by reason",
                &["model", "reason"],
            )?,
            batcher_timed_out: counter(
                "wgnn_batcher_timed_out_total",
                "Classifiers: batcher submissions past their deadline",
                &["model"],
            )?,
            batches: counter(
                "wgnn_batches_total",
                "Classifiers: replays, by their number of samples",
                &["model", "size"],
            )?,
            batcher_latency: gauge(
                "wgnn_batcher_latency_seconds",
                "Classifiers: a submission's time from asking to answer, at a quantile since start",
                &["model", "quantile"],
            )?,
            tokens: counter(
                "wgnn_tokens_generated_total",
                "Language models: tokens generated",
                &["model"],
            )?,
            steps: counter(
                "wgnn_generation_steps_total",
                "Language models: decode steps run",
                &["model"],
            )?,
            generation_queue_depth: int_gauge(
                "wgnn_generation_queue_depth",
                "Language models: requests waiting for a slot now",
            )?,
            generation_running: int_gauge(
                "wgnn_generation_running",
                "Language models: sequences generating now",
            )?,
            generation_occupancy: gauge(
                "wgnn_generation_occupancy",
                "Language models: sequences generating now over the slots, in [0, 1]",
                &["model"],
            )?,
            time_to_first_token: gauge(
                "wgnn_time_to_first_token_seconds",
                "Language models: from submission to the first token, at a quantile since start",
                &["model", "quantile"],
            )?,
            inter_token: gauge(
                "wgnn_inter_token_latency_seconds",
                "Language models: between consecutive tokens of a sequence, at a quantile since start",
                &["model", "quantile"],
            )?,
            refreshing: Mutex::new(()),
            registry,
        };
        // Every model's series exist from the start (at 0), so a dashboard sees them at once.
        for name in models.keys() {
            metrics.samples.with_label_values(&[name]);
        }
        Ok(metrics)
    }

    /// One request's outcome and its time from arrival to its answer's end.
    pub fn observe_request(&self, model: &str, endpoint: &str, outcome: &str, seconds: f64) {
        self.requests
            .with_label_values(&[model, endpoint, outcome])
            .inc();
        self.latency
            .with_label_values(&[model, endpoint])
            .observe(seconds);
    }

    /// A classifier request's predictions: its samples, its wait in the queue and its replays.
    pub fn observe_predictions(&self, model: &str, predictions: &[Prediction]) {
        self.samples
            .with_label_values(&[model])
            .inc_by(predictions.len() as u64);
        if let Some(p) = predictions.first() {
            self.queued
                .with_label_values(&[model])
                .observe(p.queued.as_secs_f64());
            self.computed
                .with_label_values(&[model])
                .observe(p.computed.as_secs_f64());
        }
    }

    /// The text exposition of every series, with the models' figures read now.
    pub fn render(&self, models: &BTreeMap<String, ServedModel>) -> Result<String> {
        {
            let _one = self
                .refreshing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for m in models.values() {
                self.refresh(m);
            }
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|e| Error::Serving {
                details: "encoding the metrics".into(),
                source: Some(Cause::new(e)),
            })?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    fn refresh(&self, m: &ServedModel) {
        let n = m.name.as_str();
        let quantiles = |v: &GaugeVec, values: [(&str, f64); 3]| {
            for (q, seconds) in values {
                v.with_label_values(&[n, q]).set(seconds);
            }
        };
        let count = |v: &IntCounterVec, labels: &[&str], total: u64| {
            advance(&v.with_label_values(labels), total);
        };
        match &m.served {
            Served::Classifier { batcher, .. } => {
                let s = batcher.stats();
                self.batcher_queue_depth
                    .with_label_values(&[n])
                    .set(batcher.queue_depth().try_into().unwrap_or(i64::MAX));
                count(&self.batcher_requests, &[n], s.requests);
                count(&self.batcher_refused, &[n, "queue_full"], s.refused_full);
                count(&self.batcher_refused, &[n, "shape"], s.refused_shape);
                count(&self.batcher_timed_out, &[n], s.timed_out);
                for (size, total) in &s.batch_sizes {
                    count(&self.batches, &[n, &size.to_string()], *total);
                }
                let (p50, p95, p99) = s.latency_ms;
                quantiles(
                    &self.batcher_latency,
                    [("0.5", p50 / 1e3), ("0.95", p95 / 1e3), ("0.99", p99 / 1e3)],
                );
            }
            Served::Language { engine, .. } => {
                let s = engine.stats();
                count(&self.tokens, &[n], s.tokens);
                count(&self.steps, &[n], s.steps);
                let gauge_of = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
                self.generation_queue_depth
                    .with_label_values(&[n])
                    .set(gauge_of(s.queue_depth));
                self.generation_running
                    .with_label_values(&[n])
                    .set(gauge_of(s.running));
                self.generation_occupancy
                    .with_label_values(&[n])
                    .set(s.running as f64 / s.capacity.max(1) as f64);
                for (v, l) in [
                    (&self.time_to_first_token, s.time_to_first_token),
                    (&self.inter_token, s.inter_token),
                ] {
                    quantiles(
                        v,
                        [
                            ("0.5", l.p50.as_secs_f64()),
                            ("0.95", l.p95.as_secs_f64()),
                            ("0.99", l.p99.as_secs_f64()),
                        ],
                    );
                }
            }
        }
    }
}
