//! Dynamic batching: requests from many threads are grouped into one replay, up to a maximum
//! batch or a maximum wait, whichever comes first.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::InferenceSession;
use crate::error::{Error, Result};

/// How a [`Batcher`] groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most samples in one replay (at most the session's `max_batch`).
    pub max_batch: usize,
    /// Longest the first request of a group waits for others.
    pub max_wait: Duration,
    /// Requests waiting at most; past it a request is refused with [`Error::Overloaded`].
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch: 64,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
        }
    }
}

/// One sample's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class probabilities.
    pub probabilities: Vec<f32>,
    /// The most probable class.
    pub class: u32,
    /// The best (class, probability) pairs, best first.
    pub top_k: Vec<(u32, f32)>,
}

/// What a [`Batcher`] has served.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatcherStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests refused because the queue was full.
    pub refused_full: u64,
    /// Requests refused for their shape.
    pub refused_shape: u64,
    /// Latency from submission to answer, in milliseconds: median, 95th and 99th percentile.
    pub latency_ms: (f64, f64, f64),
    /// Answered requests per second since the batcher started.
    pub throughput: f64,
    /// How many replays ran with each batch size.
    pub batch_sizes: BTreeMap<usize, u64>,
}

struct Request {
    x: Vec<f32>,
    submitted: Instant,
    reply: mpsc::Sender<Result<Prediction>>,
}

#[derive(Default)]
struct Record {
    latencies_ms: Vec<f64>,
    batch_sizes: BTreeMap<usize, u64>,
    refused_full: u64,
    refused_shape: u64,
}

/// Latencies kept for the percentiles (the most recent).
const KEPT_LATENCIES: usize = 1 << 20;

/// Groups single-sample requests from many threads into batched replays of an
/// [`InferenceSession`], and hands each caller its own result.
pub struct Batcher {
    sender: Mutex<Option<SyncSender<Request>>>,
    worker: Option<JoinHandle<()>>,
    record: Arc<Mutex<Record>>,
    per_sample: usize,
    capacity: usize,
    started: Instant,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts a batcher (and its worker thread) over `session`.
    pub fn new(session: Arc<InferenceSession>, config: BatcherConfig) -> Result<Self> {
        if config.max_batch == 0 || config.queue_capacity == 0 {
            return Err(Error::InvalidArgument {
                op: "Batcher::new",
                details: "max_batch and queue_capacity must be positive".into(),
            });
        }
        let max_batch = config.max_batch.min(session.options().max_batch);
        let per_sample = session.input_shape().iter().product();
        let (sender, receiver) = mpsc::sync_channel::<Request>(config.queue_capacity);
        let record = Arc::new(Mutex::new(Record::default()));
        let worker_record = record.clone();
        let worker = std::thread::Builder::new()
            .name("wgnn-batcher".into())
            .spawn(move || {
                // Ends when every sender is gone and the queue is drained: nothing accepted is lost.
                while let Ok(first) = receiver.recv() {
                    let deadline = first.submitted + config.max_wait;
                    let mut group = vec![first];
                    while group.len() < max_batch {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match receiver.recv_timeout(left) {
                            Ok(r) => group.push(r),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                    serve(&session, group, &worker_record);
                }
            })
            .map_err(|e| Error::Gpu(format!("could not start the batcher thread: {e}")))?;
        Ok(Batcher {
            sender: Mutex::new(Some(sender)),
            worker: Some(worker),
            record,
            per_sample,
            capacity: config.queue_capacity,
            started: Instant::now(),
        })
    }

    /// Predicts one sample (the session's input shape, row-major), waiting for its group's replay.
    /// A full queue gives [`Error::Overloaded`]; a sample of the wrong size gives
    /// [`Error::ShapeMismatch`] at once, and the batcher serves everyone else as before.
    pub fn predict(&self, x: &[f32]) -> Result<Prediction> {
        if x.len() != self.per_sample {
            if let Ok(mut r) = self.record.lock() {
                r.refused_shape += 1;
            }
            return Err(Error::ShapeMismatch {
                op: "Batcher::predict",
                details: format!("a sample has {} values, got {}", self.per_sample, x.len()),
            });
        }
        let (reply, answer) = mpsc::channel();
        let request = Request {
            x: x.to_vec(),
            submitted: Instant::now(),
            reply,
        };
        let sender =
            self.sender
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .ok_or(Error::InvalidArgument {
                    op: "Batcher::predict",
                    details: "the batcher is shut down".into(),
                })?;
        match sender.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if let Ok(mut r) = self.record.lock() {
                    r.refused_full += 1;
                }
                return Err(Error::Overloaded {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::InvalidArgument {
                    op: "Batcher::predict",
                    details: "the batcher is shut down".into(),
                })
            }
        }
        answer
            .recv()
            .map_err(|_| Error::Gpu("the batcher stopped before answering".into()))?
    }

    /// Statistics so far.
    pub fn stats(&self) -> BatcherStats {
        let Ok(r) = self.record.lock() else {
            return BatcherStats::default();
        };
        let mut sorted = r.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            sorted[((sorted.len() - 1) as f64 * q).round() as usize]
        };
        let requests: u64 = r.batch_sizes.iter().map(|(size, n)| *size as u64 * n).sum();
        BatcherStats {
            requests,
            refused_full: r.refused_full,
            refused_shape: r.refused_shape,
            latency_ms: (pick(0.5), pick(0.95), pick(0.99)),
            throughput: requests as f64 / self.started.elapsed().as_secs_f64(),
            batch_sizes: r.batch_sizes.clone(),
        }
    }

    /// Stops accepting requests, answers every request already accepted, and returns the final
    /// statistics.
    pub fn shutdown(mut self) -> BatcherStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(session: &InferenceSession, group: Vec<Request>, record: &Mutex<Record>) {
    let x: Vec<f32> = group.iter().flat_map(|r| r.x.iter().copied()).collect();
    let result = session.predict(&x);
    let classes = session.classes();
    let now = Instant::now();
    if let Ok(mut r) = record.lock() {
        *r.batch_sizes.entry(group.len()).or_default() += 1;
        if r.latencies_ms.len() >= KEPT_LATENCIES {
            r.latencies_ms.drain(..KEPT_LATENCIES / 2);
        }
        for req in &group {
            r.latencies_ms
                .push((now - req.submitted).as_secs_f64() * 1e3);
        }
    }
    match result {
        Ok(p) => {
            for (i, req) in group.into_iter().enumerate() {
                let _ = req.reply.send(Ok(Prediction {
                    probabilities: p.probabilities[i * classes..(i + 1) * classes].to_vec(),
                    class: p.classes[i],
                    top_k: p.top_k[i].clone(),
                }));
            }
        }
        Err(e) => {
            for req in group {
                let _ = req.reply.send(Err(e.clone()));
            }
        }
    }
}
