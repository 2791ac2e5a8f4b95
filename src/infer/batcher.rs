//! Dynamic batching: requests from many threads are grouped into one replay, up to a maximum
//! batch or a maximum wait, whichever comes first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{InferenceSession, Predictions};
use crate::error::{Error, Result};

/// How a [`Batcher`] groups requests. [`Batcher::new`] checks every field against the ranges
/// given here and refuses a value outside them with [`Error::InvalidArgument`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most samples in one replay: at least 1. A value above the session's
    /// [`super::SessionOptions::max_batch`] is lowered to it.
    pub max_batch: usize,
    /// Longest the first request of a group waits for others: 0 (no waiting) to
    /// [`BatcherConfig::MAX_WAIT`].
    pub max_wait: Duration,
    /// Requests waiting at most: 1 to [`BatcherConfig::MAX_QUEUE_CAPACITY`]; past it a request is
    /// refused with [`Error::Overloaded`]. Nothing is allocated for it up front: memory follows
    /// the requests actually waiting.
    pub queue_capacity: usize,
    /// Longest a caller of [`Batcher::predict`] waits for its answer, from the moment it asks:
    /// more than 0 and at most [`BatcherConfig::MAX_REQUEST_TIMEOUT`]. Past it the caller gets
    /// [`Error::Timeout`], and a request still queued is dropped without being computed.
    pub request_timeout: Duration,
}

impl BatcherConfig {
    /// The longest `max_wait`: 10 s.
    pub const MAX_WAIT: Duration = Duration::from_secs(10);
    /// The largest `queue_capacity`: 2^20 requests.
    pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
    /// The longest `request_timeout`: one hour.
    pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

    /// Checks every field against its range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |details: String| {
            Err(Error::InvalidArgument {
                op: "Batcher::new",
                details,
            })
        };
        if self.max_batch == 0 {
            return invalid("max_batch must be at least 1, got 0".into());
        }
        if self.max_wait > Self::MAX_WAIT {
            return invalid(format!(
                "max_wait must be at most {:?}, got {:?}",
                Self::MAX_WAIT,
                self.max_wait
            ));
        }
        if self.queue_capacity == 0 || self.queue_capacity > Self::MAX_QUEUE_CAPACITY {
            return invalid(format!(
                "queue_capacity must be in 1..={}, got {}",
                Self::MAX_QUEUE_CAPACITY,
                self.queue_capacity
            ));
        }
        super::check_timeout(
            "Batcher::new",
            "request_timeout",
            self.request_timeout,
            Self::MAX_REQUEST_TIMEOUT,
        )
    }
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch: 64,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One sample's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class probabilities (classifier head) or the model's outputs (raw head).
    pub outputs: Vec<f32>,
    /// The most probable class (classifier head; `None` for raw outputs).
    pub class: Option<u32>,
    /// The best (class, probability) pairs, best first (classifier head; empty for raw outputs).
    pub top_k: Vec<(u32, f32)>,
    /// From the request's arrival to the start of its group's replay: time spent waiting for the
    /// group to form and for the replay before it.
    pub queued: Duration,
    /// The group's replay, from its start to its answer (shared by the group's requests).
    pub computed: Duration,
}

/// What a [`Batcher`] has served.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatcherStats {
    /// Requests answered with a prediction.
    pub requests: u64,
    /// Requests refused because the queue was full.
    pub refused_full: u64,
    /// Requests refused for their shape.
    pub refused_shape: u64,
    /// Requests whose deadline passed before their answer.
    pub timed_out: u64,
    /// Latency from asking to answer of the answered requests, in milliseconds: median, 95th and
    /// 99th percentile (from a histogram with 3 significant digits, 1 µs to 1 hour).
    pub latency_ms: (f64, f64, f64),
    /// Answered requests per second since the batcher started.
    pub throughput: f64,
    /// How many replays ran with each batch size.
    pub batch_sizes: BTreeMap<usize, u64>,
}

/// One submission: one or more samples, answered together.
struct Request {
    x: Vec<f32>,
    rows: usize,
    asked: Instant,
    deadline: Instant,
    reply: mpsc::Sender<Result<Vec<Prediction>>>,
}

struct Record {
    /// Microseconds from asking to answer.
    latency_us: Histogram<u64>,
    batch_sizes: BTreeMap<usize, u64>,
    requests: u64,
    refused_full: u64,
    refused_shape: u64,
    timed_out: u64,
}

impl Record {
    fn new() -> Self {
        Record {
            // 1 µs to 1 hour with 3 significant digits: a fixed ~100 KiB, whatever the traffic.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            batch_sizes: BTreeMap::new(),
            requests: 0,
            refused_full: 0,
            refused_shape: 0,
            timed_out: 0,
        }
    }
}

/// Groups requests from many threads into batched replays of an [`InferenceSession`], and hands
/// each caller its own result. A request of several samples ([`Batcher::predict_rows`]) enters
/// as one submission: it batches with others, is split only at the session's `max_batch`, and is
/// answered whole or refused whole.
///
/// Share it between threads with an `Arc`: [`Batcher::predict`] and [`Batcher::shutdown`] take
/// `&self`.
pub struct Batcher {
    sender: Mutex<Option<Sender<Request>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    record: Arc<Mutex<Record>>,
    /// Requests sent and not yet taken by the worker.
    waiting: Arc<AtomicUsize>,
    per_sample: usize,
    config: BatcherConfig,
    started: Instant,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts a batcher (and its worker thread) over `session`. `config` is checked first (see
    /// [`BatcherConfig`] for each field's range).
    pub fn new(session: Arc<InferenceSession>, config: BatcherConfig) -> Result<Self> {
        config.validate()?;
        let max_batch = config.max_batch.min(session.options().max_batch);
        let per_sample = session.input_shape().iter().product();
        let (sender, receiver) = mpsc::channel::<Request>();
        let record = Arc::new(Mutex::new(Record::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (worker_record, worker_waiting) = (record.clone(), waiting.clone());
        let worker = std::thread::Builder::new()
            .name("wgnn-batcher".into())
            .spawn(move || {
                // Ends when every sender is gone and the queue is drained: nothing accepted is lost.
                while let Ok(first) = receiver.recv() {
                    worker_waiting.fetch_sub(1, Ordering::AcqRel);
                    // max_wait is at most MAX_WAIT: the sum cannot overflow an Instant.
                    let until = first.asked + config.max_wait;
                    let mut rows = first.rows;
                    let mut group = vec![first];
                    while rows < max_batch {
                        let left = until.saturating_duration_since(Instant::now());
                        match receiver.recv_timeout(left) {
                            Ok(r) => {
                                worker_waiting.fetch_sub(1, Ordering::AcqRel);
                                rows += r.rows;
                                group.push(r);
                            }
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                    serve(&session, group, max_batch, &worker_record);
                }
            })
            .map_err(|e| Error::Thread {
                what: "the batcher thread",
                source: crate::error::Cause::new(e),
            })?;
        Ok(Batcher {
            sender: Mutex::new(Some(sender)),
            worker: Mutex::new(Some(worker)),
            record,
            waiting,
            per_sample,
            config,
            started: Instant::now(),
        })
    }

    /// The configuration in force (`max_batch` as given, before the session's cap).
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// Requests waiting now (queued, not yet in a replay).
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Predicts one sample (the session's input shape, row-major), waiting for its group's replay
    /// at most the configured `request_timeout`. A full queue gives [`Error::Overloaded`], a
    /// sample of the wrong size [`Error::ShapeMismatch`], a batcher that was shut down
    /// [`Error::ShutDown`], a missed deadline [`Error::Timeout`]; the batcher serves everyone
    /// else as before.
    pub fn predict(&self, x: &[f32]) -> Result<Prediction> {
        self.predict_within(x, self.config.request_timeout)
    }

    /// [`Self::predict`] with this request's own deadline, `timeout` from now (more than 0 and at
    /// most [`BatcherConfig::MAX_REQUEST_TIMEOUT`]).
    pub fn predict_within(&self, x: &[f32], timeout: Duration) -> Result<Prediction> {
        if x.len() != self.per_sample {
            self.count(|r| r.refused_shape += 1);
            return Err(Error::ShapeMismatch {
                op: "Batcher::predict",
                details: format!(
                    "a sample has {} values, the request has {}",
                    self.per_sample,
                    x.len()
                ),
            });
        }
        let mut one = self.predict_rows_within(x, timeout)?;
        one.pop().ok_or(Error::ShutDown {
            op: "Batcher: the batcher answered without a prediction",
        })
    }

    /// Predicts `x.len() / sample size` samples (1 to [`Batcher::MAX_ROWS`], row-major) as one
    /// submission: it shares replays with other requests, is split only at the session's
    /// `max_batch`, and is answered whole (a prediction per sample, in order) or refused whole.
    /// It counts as one request against `queue_capacity`. Errors as for [`Self::predict`].
    pub fn predict_rows(&self, x: &[f32]) -> Result<Vec<Prediction>> {
        self.predict_rows_within(x, self.config.request_timeout)
    }

    /// The most samples one [`Self::predict_rows`] request may carry: 2^16.
    pub const MAX_ROWS: usize = 1 << 16;

    /// [`Self::predict_rows`] with this request's own deadline, `timeout` from now (more than 0
    /// and at most [`BatcherConfig::MAX_REQUEST_TIMEOUT`]).
    pub fn predict_rows_within(&self, x: &[f32], timeout: Duration) -> Result<Vec<Prediction>> {
        const OP: &str = "Batcher::predict";
        super::check_timeout(
            OP,
            "the timeout",
            timeout,
            BatcherConfig::MAX_REQUEST_TIMEOUT,
        )?;
        let rows = x.len() / self.per_sample.max(1);
        if x.is_empty() || rows * self.per_sample != x.len() || rows > Self::MAX_ROWS {
            self.count(|r| r.refused_shape += 1);
            return Err(Error::ShapeMismatch {
                op: OP,
                details: format!(
                    "{} values are not 1 to {} samples of {} values",
                    x.len(),
                    Self::MAX_ROWS,
                    self.per_sample
                ),
            });
        }
        let sender = self
            .sender
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or(Error::ShutDown { op: OP })?;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.queue_capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.count(|r| r.refused_full += 1);
            return Err(Error::Overloaded {
                capacity: self.config.queue_capacity,
            });
        }
        let (reply, answer) = mpsc::channel();
        let asked = Instant::now();
        let request = Request {
            x: x.to_vec(),
            rows,
            asked,
            // timeout is at most an hour: no overflow.
            deadline: asked + timeout,
            reply,
        };
        if sender.send(request).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ShutDown { op: OP });
        }
        drop(sender);
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                self.count(|r| r.timed_out += 1);
                Err(Error::Timeout {
                    op: OP,
                    after: timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::ShutDown {
                op: "Batcher: the batcher stopped before answering",
            }),
        }
    }

    fn count(&self, f: impl FnOnce(&mut Record)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }

    /// Statistics so far. Cheap: reads a fixed-size histogram, whatever the number of requests.
    pub fn stats(&self) -> BatcherStats {
        let Ok(r) = self.record.lock() else {
            return BatcherStats::default();
        };
        let quantile_ms = |q: f64| {
            if r.latency_us.is_empty() {
                0.0
            } else {
                r.latency_us.value_at_quantile(q) as f64 / 1e3
            }
        };
        BatcherStats {
            requests: r.requests,
            refused_full: r.refused_full,
            refused_shape: r.refused_shape,
            timed_out: r.timed_out,
            latency_ms: (quantile_ms(0.5), quantile_ms(0.95), quantile_ms(0.99)),
            throughput: r.requests as f64 / self.started.elapsed().as_secs_f64(),
            batch_sizes: r.batch_sizes.clone(),
        }
    }

    /// Stops accepting requests (later calls get [`Error::ShutDown`]), answers every request
    /// already accepted, waits for the worker to finish, and returns the final statistics. Any
    /// thread holding the batcher may call it; calls after the first return at once.
    pub fn shutdown(&self) -> BatcherStats {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            let _ = worker.join();
        }
        self.stats()
    }

    /// Whether [`Self::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.sender.lock().map_or(true, |s| s.is_none())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    session: &InferenceSession,
    group: Vec<Request>,
    max_batch: usize,
    record: &Mutex<Record>,
) {
    // Requests whose caller stopped waiting are answered without being computed.
    let now = Instant::now();
    let (group, late): (Vec<Request>, Vec<Request>) =
        group.into_iter().partition(|r| r.deadline > now);
    for req in late {
        let _ = req.reply.send(Err(Error::Timeout {
            op: "Batcher::predict",
            after: req.deadline - req.asked,
        }));
    }
    let Some(last_deadline) = group.iter().map(|r| r.deadline).max() else {
        return;
    };
    let x: Vec<f32> = group.iter().flat_map(|r| r.x.iter().copied()).collect();
    let rows: usize = group.iter().map(|r| r.rows).sum();
    let started = Instant::now();
    // Replays of at most max_batch rows (no more than the session's), in order; one failure
    // refuses the whole group.
    let per_sample = x.len() / rows;
    let mut sizes = Vec::new();
    let result = x
        .chunks(max_batch * per_sample)
        .try_fold(Vec::new(), |mut all: Vec<Predictions>, chunk| {
            sizes.push(chunk.len() / per_sample);
            all.push(session.predict_until(chunk, last_deadline)?);
            Ok::<_, Error>(all)
        })
        .map(|parts| Predictions {
            outputs: parts
                .iter()
                .flat_map(|p| p.outputs.iter().copied())
                .collect(),
            classes: parts
                .iter()
                .flat_map(|p| p.classes.iter().copied())
                .collect(),
            top_k: parts.into_iter().flat_map(|p| p.top_k).collect(),
        });
    let classes = session.classes();
    let now = Instant::now();
    if let Ok(mut r) = record.lock() {
        for size in sizes {
            *r.batch_sizes.entry(size).or_default() += 1;
        }
        if result.is_ok() {
            r.requests += group.len() as u64;
            for req in &group {
                let us = (now - req.asked).as_micros().clamp(1, 3_600_000_000) as u64;
                let _ = r.latency_us.record(us);
            }
        }
    }
    match result {
        Ok(p) => {
            let mut row = 0;
            for req in group {
                let answers = (row..row + req.rows)
                    .map(|i| Prediction {
                        outputs: p.outputs[i * classes..(i + 1) * classes].to_vec(),
                        class: p.classes.get(i).copied(),
                        top_k: p.top_k.get(i).cloned().unwrap_or_default(),
                        queued: started - req.asked,
                        computed: now - started,
                    })
                    .collect();
                row += req.rows;
                let _ = req.reply.send(Ok(answers));
            }
        }
        Err(e) => {
            for req in group {
                let _ = req.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latency record is a fixed-size histogram (2^20 latencies cost it nothing more, and
    /// stats() reads its buckets, not a sorted copy of every latency); its percentiles are within
    /// its 3 significant digits.
    #[test]
    fn latency_percentiles_come_from_a_fixed_histogram() {
        let mut r = Record::new();
        for us in 1..=(1u64 << 20) {
            r.latency_us.record(us).unwrap();
        }
        for (q, want) in [(0.5, 524_288.0), (0.95, 996_147.0), (0.99, 1_038_090.0)] {
            let got = r.latency_us.value_at_quantile(q) as f64;
            assert!(
                (got - want).abs() / want < 2e-3,
                "q {q}: {got} against {want}"
            );
        }
    }
}
