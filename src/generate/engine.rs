//! The generation engine: a bounded queue in front of one worker thread that owns the
//! [`Decoder`], admits queued requests into the running batch between decode steps (their
//! prefill gives their first token), replays one captured step per iteration for every running
//! sequence, streams each token to its caller, and retires sequences on their stop condition,
//! cancellation or deadline. Queued requests' deadlines and cancellations are checked every
//! iteration too: a request that cannot start in time fails when its deadline passes, not when a
//! slot comes free.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{DecodeRow, Decoder};
use crate::error::{Error, Result};
use crate::ops::{self, SamplingSettings};

/// How the engine forms its running batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Iteration-level batching: sequences join after their prefill and leave when they finish,
    /// between any two decode steps.
    Continuous,
    /// A batch forms from the queue when the previous one has finished entirely: it waits for its
    /// longest sequence, computing the rows of those that finished (as a padded batch does) until
    /// then. The baseline continuous batching improves on.
    Static,
    /// One sequence at a time.
    OneAtATime,
}

/// How an [`Engine`] runs. [`Engine::new`] checks every field.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// How the running batch is formed.
    pub batching: Batching,
    /// Requests waiting at most: 1 to [`EngineOptions::MAX_QUEUE_CAPACITY`]; past it
    /// [`Engine::submit`] returns [`Error::Overloaded`].
    pub queue_capacity: usize,
    /// A token that ends a sequence (it is streamed, then the sequence finishes).
    pub end_token: Option<u32>,
    /// Each token id's text, for requests' stop strings (`None`: stop strings are refused).
    pub vocabulary: Option<Vec<String>>,
    /// Capture every running-batch size's step and run a one-token prefill when the engine
    /// starts, so the first requests do not pay for compiling them (on lavapipe 56 ms of the
    /// first request's first token).
    pub warm_up: bool,
    /// Prompt tokens a decode step carries per sequence decoding in it (chunked prefill), in
    /// [0, 64] (default 0.5). Whatever the share, prompts fill the rows the step's bucket
    /// computes anyway (its padding) and take at least one row, at most the decoder's
    /// `prefill_chunk`. 0 grows a step by no more than that (stall-free chunked prefill: the
    /// running sequences keep a plain step's pace, joining ones wait longer for their first
    /// token); higher gives joining sequences their first token sooner and lengthens the steps
    /// they ride in.
    pub prefill_share: f32,
}

impl EngineOptions {
    /// The largest `queue_capacity`: 65,536.
    pub const MAX_QUEUE_CAPACITY: usize = 1 << 16;
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batching: Batching::Continuous,
            queue_capacity: 256,
            end_token: None,
            vocabulary: None,
            warm_up: true,
            prefill_share: 0.5,
        }
    }
}

/// One generation: a prompt, how many tokens at most, how to sample them and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Token ids: 1 to the model's context of them, each within the vocabulary.
    pub prompt: Vec<u32>,
    /// New tokens at most: 1 to the model's context.
    pub max_tokens: usize,
    /// How each token is drawn (its `counter` is ignored: the engine numbers the draws 0, 1, …,
    /// so a seed gives the same text whatever runs beside it).
    pub sampling: SamplingSettings,
    /// Texts that end the sequence once the generated text contains one (at most 16, each 1 to
    /// 256 bytes; needs [`EngineOptions::vocabulary`]).
    pub stop: Vec<String>,
    /// Longest the request may take from submission, at most one hour (`None`: no limit); past it
    /// the stream ends with [`Error::Timeout`].
    pub timeout: Option<Duration>,
}

impl GenerationRequest {
    /// Greedy decoding of up to `max_tokens` after `prompt`, no stop strings, no timeout.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        GenerationRequest {
            prompt,
            max_tokens,
            sampling: SamplingSettings::greedy(),
            stop: Vec::new(),
            timeout: None,
        }
    }
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It made `max_tokens` tokens.
    MaxTokens,
    /// It made the engine's end token.
    EndToken,
    /// Its text contains one of its stop strings.
    StopString,
    /// It filled the model's context.
    ContextFull,
}

/// What a [`Generation`] receives, in order: tokens, then one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next token.
    Token(u32),
    /// The sequence ended normally.
    Finished(FinishReason),
    /// The sequence ended with an error (cancelled, timed out, shut down, a GPU error).
    Failed(Error),
}

/// The caller's end of one generation: tokens as they are made ([`Iterator`] of token ids, or
/// [`Generation::next_event`]), and [`Generation::cancel`]. Dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    events: Receiver<Event>,
    cancelled: Arc<AtomicBool>,
    finish: Option<std::result::Result<FinishReason, Error>>,
}

impl Generation {
    /// Asks the engine to stop this sequence: its stream ends with [`Error::Cancelled`] at the
    /// next step (tokens already made may still arrive before it).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// The next event, waiting at most `timeout`; `None` if none came in time or the stream has
    /// ended.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if self.finish.is_some() {
            return None;
        }
        let event = self.events.recv_timeout(timeout).ok()?;
        match &event {
            Event::Finished(r) => self.finish = Some(Ok(*r)),
            Event::Failed(e) => self.finish = Some(Err(e.clone())),
            Event::Token(_) => {}
        }
        Some(event)
    }

    /// How the stream ended, once it has.
    pub fn finish(&self) -> Option<&std::result::Result<FinishReason, Error>> {
        self.finish.as_ref()
    }

    /// Every remaining token and why the sequence finished (blocks until it does).
    pub fn wait(mut self) -> Result<(Vec<u32>, FinishReason)> {
        let tokens: Vec<u32> = self.by_ref().collect::<Result<_>>()?;
        match self.finish.take() {
            Some(Ok(reason)) => Ok((tokens, reason)),
            Some(Err(e)) => Err(e),
            None => Err(Error::ShutDown { op: "Generation" }),
        }
    }
}

impl Iterator for Generation {
    type Item = Result<u32>;

    /// The next token (blocking); an error ends the stream.
    fn next(&mut self) -> Option<Result<u32>> {
        if self.finish.is_some() {
            return None;
        }
        match self.events.recv() {
            Ok(Event::Token(t)) => Some(Ok(t)),
            Ok(Event::Finished(r)) => {
                self.finish = Some(Ok(r));
                None
            }
            Ok(Event::Failed(e)) => {
                self.finish = Some(Err(e.clone()));
                Some(Err(e))
            }
            Err(_) => {
                let e = Error::ShutDown { op: "Generation" };
                self.finish = Some(Err(e.clone()));
                Some(Err(e))
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Percentiles of one latency.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latencies {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Latencies {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |x: f64| Duration::from_micros(h.value_at_quantile(x));
        Latencies {
            count: h.len(),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: Duration::from_micros(h.max()),
        }
    }
}

/// The engine's own statistics since it started or since [`Engine::reset_stats`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineStats {
    /// From submission to the first token.
    pub time_to_first_token: Latencies,
    /// Between consecutive tokens of a sequence.
    pub inter_token: Latencies,
    /// Tokens made.
    pub tokens: u64,
    /// Tokens made per second of wall time.
    pub tokens_per_second: f64,
    /// Requests waiting now.
    pub queue_depth: usize,
    /// Sequences running now.
    pub running: usize,
    /// The running batch's capacity.
    pub capacity: usize,
    /// Decode steps.
    pub steps: u64,
    /// Mean running sequences per decode step over the capacity, in [0, 1].
    pub occupancy: f64,
    /// Sequences that finished normally.
    pub completed: u64,
    /// Sequences that ended with an error (cancelled, timed out, refused at admission).
    pub failed: u64,
}

#[derive(Debug)]
struct Counters {
    ttft: Histogram<u64>,
    inter_token: Histogram<u64>,
    tokens: u64,
    steps: u64,
    occupied: u64,
    completed: u64,
    failed: u64,
    since: Instant,
}

impl Counters {
    fn new() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds");
        Counters {
            ttft: histogram(),
            inter_token: histogram(),
            tokens: 0,
            steps: 0,
            occupied: 0,
            completed: 0,
            failed: 0,
            since: Instant::now(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 3_600_000_000)
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    queued: AtomicUsize,
    running: AtomicUsize,
    counters: Mutex<Counters>,
}

impl Shared {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A request on its way through the engine.
struct Job {
    request: GenerationRequest,
    events: Sender<Event>,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
    deadline: Option<Instant>,
}

impl Job {
    /// Why it must stop now, if it must.
    fn interrupted(&self, now: Instant) -> Option<Error> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Some(Error::Cancelled { op: "Engine" });
        }
        match (self.deadline, self.request.timeout) {
            (Some(d), Some(after)) if now >= d => Some(Error::Timeout {
                op: "Engine",
                after,
            }),
            _ => None,
        }
    }
}

/// A sequence in the running batch.
struct Sequence {
    job: Job,
    slot: usize,
    generated: Vec<u32>,
    text: String,
    /// Position of the last token (not yet in the cache).
    position: usize,
    last_token: Instant,
    /// Prompt tokens in the cache: below the prompt's length while its prefill rides in the
    /// decode steps, chunk by chunk.
    prefilled: usize,
    /// Static batching: finished, but its row is still computed until the whole batch is.
    done: bool,
}

/// Continuous batching over a [`Decoder`]: many threads [`Engine::submit`] requests, one worker
/// runs them. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    queue: Mutex<Option<Sender<Job>>>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    vocab: usize,
    context: usize,
    capacity: usize,
    queue_capacity: usize,
    has_vocabulary: bool,
}

const OP: &str = "Engine::submit";

impl Engine {
    /// Starts the worker thread, which owns `decoder`.
    pub fn new(mut decoder: Decoder, options: EngineOptions) -> Result<Self> {
        let (vocab, context) = (decoder.vocab(), decoder.context());
        if options.queue_capacity == 0 || options.queue_capacity > EngineOptions::MAX_QUEUE_CAPACITY
        {
            return Err(Error::InvalidArgument {
                op: "Engine::new",
                details: format!(
                    "queue_capacity must be in 1..={}, got {}",
                    EngineOptions::MAX_QUEUE_CAPACITY,
                    options.queue_capacity
                ),
            });
        }
        if !(options.prefill_share >= 0.0 && options.prefill_share <= 64.0) {
            return Err(Error::InvalidArgument {
                op: "Engine::new",
                details: format!(
                    "prefill_share must be in [0, 64], got {}",
                    options.prefill_share
                ),
            });
        }
        if let Some(t) = options.end_token {
            ops::check_ids("Engine::new (end_token)", &[t], vocab)?;
        }
        if let Some(v) = &options.vocabulary {
            if v.len() != vocab {
                return Err(Error::ShapeMismatch {
                    op: "Engine::new",
                    details: format!(
                        "the vocabulary has {} entries, the model {}",
                        v.len(),
                        vocab
                    ),
                });
            }
        }
        if options.warm_up {
            decoder.capture_all()?;
            // And the prefill's pipelines (the same for every prompt length): a one-token prompt
            // in slot 0, whose cache the first sequence placed there overwrites.
            decoder.prefill_and_sample(&[(0, &[0])], &[SamplingSettings::greedy()])?;
        }
        let capacity = match options.batching {
            Batching::OneAtATime => 1,
            _ => decoder.slots(),
        };
        // Unbounded: `Shared::queued` bounds the requests between submission and admission.
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            counters: Mutex::new(Counters::new()),
        });
        let worker = Worker {
            decoder,
            options: options.clone(),
            capacity,
            shared: shared.clone(),
            free: Vec::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
        };
        let handle = std::thread::Builder::new()
            .name("wgnn-generate".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Thread {
                what: "the engine's worker",
                source: crate::error::Cause::new(e),
            })?;
        Ok(Engine {
            queue: Mutex::new(Some(tx)),
            shared,
            worker: Mutex::new(Some(handle)),
            vocab,
            context,
            capacity,
            queue_capacity: options.queue_capacity,
            has_vocabulary: options.vocabulary.is_some(),
        })
    }

    fn check(&self, r: &GenerationRequest) -> Result<()> {
        if r.prompt.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "the prompt needs at least one token".into(),
            });
        }
        if r.prompt.len() > self.context {
            return Err(Error::LimitExceeded {
                what: format!("{OP}: prompt tokens (the model's context)"),
                requested: r.prompt.len() as u64,
                limit: self.context as u64,
            });
        }
        ops::check_ids(OP, &r.prompt, self.vocab)?;
        if r.max_tokens == 0 || r.max_tokens > self.context {
            return Err(Error::InvalidArgument {
                op: OP,
                details: format!(
                    "max_tokens must be in 1..={} (the context), got {}",
                    self.context, r.max_tokens
                ),
            });
        }
        r.sampling.validate(OP, 0, self.vocab)?;
        if !r.stop.is_empty() && !self.has_vocabulary {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "stop strings need the engine's vocabulary (EngineOptions::vocabulary)"
                    .into(),
            });
        }
        if r.stop.len() > 16 || r.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(Error::InvalidArgument {
                op: OP,
                details: "at most 16 stop strings of 1 to 256 bytes each".into(),
            });
        }
        if let Some(t) = r.timeout {
            if t.is_zero() || t > Duration::from_secs(3600) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    details: format!("timeout must be in (0, 1 h], got {t:?}"),
                });
            }
        }
        Ok(())
    }

    /// Queues `request` and returns its stream. A bad request is refused here with a typed
    /// error; a full queue with [`Error::Overloaded`]; a shut-down engine with
    /// [`Error::ShutDown`].
    pub fn submit(&self, request: GenerationRequest) -> Result<Generation> {
        self.check(&request)?;
        let (events, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let submitted = Instant::now();
        let job = Job {
            deadline: request.timeout.map(|t| submitted + t),
            request,
            events,
            cancelled: cancelled.clone(),
            submitted,
        };
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(tx) = queue.as_ref() else {
            return Err(Error::ShutDown { op: OP });
        };
        let capacity = self.queue_capacity;
        let counted = self
            .shared
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q < capacity).then_some(q + 1)
            });
        if counted.is_err() {
            return Err(Error::Overloaded { capacity });
        }
        match tx.send(job) {
            Ok(()) => Ok(Generation {
                events: rx,
                cancelled,
                finish: None,
            }),
            Err(_) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Error::ShutDown { op: OP })
            }
        }
    }

    /// Submits and waits for the whole generation.
    pub fn generate(&self, request: GenerationRequest) -> Result<(Vec<u32>, FinishReason)> {
        self.submit(request)?.wait()
    }

    /// The statistics so far (a short lock the worker also takes once per step: reading them
    /// does not stall generation).
    pub fn stats(&self) -> EngineStats {
        let c = self.shared.counters();
        let elapsed = c.since.elapsed().as_secs_f64().max(1e-9);
        EngineStats {
            time_to_first_token: Latencies::of(&c.ttft),
            inter_token: Latencies::of(&c.inter_token),
            tokens: c.tokens,
            tokens_per_second: c.tokens as f64 / elapsed,
            queue_depth: self.shared.queued.load(Ordering::Relaxed),
            running: self.shared.running.load(Ordering::Relaxed),
            capacity: self.capacity,
            steps: c.steps,
            occupancy: if c.steps == 0 {
                0.0
            } else {
                c.occupied as f64 / (c.steps as f64 * self.capacity as f64)
            },
            completed: c.completed,
            failed: c.failed,
        }
    }

    /// Starts the statistics afresh (a new load level, say).
    pub fn reset_stats(&self) {
        *self.shared.counters() = Counters::new();
    }

    /// Stops accepting requests, ends every queued and running sequence with
    /// [`Error::ShutDown`], and waits for the worker to exit. Later calls do nothing.
    pub fn shutdown(&self) {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.shared.stop.store(true, Ordering::Relaxed);
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    decoder: Decoder,
    options: EngineOptions,
    capacity: usize,
    shared: Arc<Shared>,
    free: Vec<usize>,
    running: Vec<Sequence>,
    /// Requests taken off the channel and not yet admitted, oldest first (counted in
    /// `Shared::queued` until they leave).
    waiting: VecDeque<Job>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        self.free = (0..self.decoder.slots()).rev().collect();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                self.shut_down(&rx);
                return;
            }
            self.retire_interrupted();
            self.receive(&rx);
            self.expire_waiting();
            let joining = self.admit();
            if !joining.is_empty() {
                let generating = self.running.iter().any(|s| !s.generated.is_empty());
                if generating && self.decoder.max_rows() > self.decoder.slots() {
                    // Chunked into the coming steps: the running sequences keep their pace.
                    for job in joining {
                        let slot = self.free.pop().expect("admission stays within the slots");
                        self.running.push(Sequence {
                            job,
                            slot,
                            generated: Vec::new(),
                            text: String::new(),
                            position: 0,
                            last_token: Instant::now(),
                            prefilled: 0,
                            done: false,
                        });
                    }
                } else {
                    // Nothing else to hold up: the whole prompts through the fused attention.
                    self.prefill(joining);
                }
            }
            if !self.running.is_empty() {
                self.step();
            }
            self.release_finished_batch();
            self.shared
                .running
                .store(self.running.len(), Ordering::Relaxed);
        }
    }

    fn fail(&self, job: &Job, error: Error) {
        // Counted before the caller can see it.
        self.shared.counters().failed += 1;
        let _ = job.events.send(Event::Failed(error));
    }

    fn shut_down(&mut self, rx: &Receiver<Job>) {
        for s in std::mem::take(&mut self.running) {
            if !s.done {
                self.fail(&s.job, Error::ShutDown { op: "Engine" });
            }
        }
        let waiting = std::mem::take(&mut self.waiting);
        for job in waiting.into_iter().chain(rx.try_iter()) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.fail(&job, Error::ShutDown { op: "Engine" });
        }
        self.shared.running.store(0, Ordering::Relaxed);
    }

    fn retire_interrupted(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].done {
                i += 1;
                continue;
            }
            match self.running[i].job.interrupted(now) {
                Some(e) => {
                    let s = self.running.swap_remove(i);
                    self.fail(&s.job, e);
                    self.free.push(s.slot);
                }
                None => i += 1,
            }
        }
    }

    /// Moves newly submitted requests into `waiting`; waits briefly for one when there is
    /// nothing to do.
    fn receive(&mut self, rx: &Receiver<Job>) {
        if self.running.is_empty() && self.waiting.is_empty() {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(job) => self.waiting.push_back(job),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    self.shared.stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.waiting.extend(rx.try_iter());
    }

    /// Fails the waiting requests that were cancelled or whose deadline has passed.
    fn expire_waiting(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiting.len() {
            match self.waiting[i].interrupted(now) {
                Some(e) => {
                    let job = self.waiting.remove(i).expect("i is in range");
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.fail(&job, e);
                }
                None => i += 1,
            }
        }
    }

    /// Requests to join the running batch now, oldest first, up to the capacity (static
    /// batching admits only into an empty batch).
    fn admit(&mut self) -> Vec<Job> {
        let mut joining = Vec::new();
        if self.options.batching == Batching::Static && !self.running.is_empty() {
            return joining;
        }
        while self.running.len() + joining.len() < self.capacity {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            joining.push(job);
        }
        joining
    }

    fn settings(job: &Job, counter: usize) -> SamplingSettings {
        SamplingSettings {
            counter: counter as u32,
            ..job.request.sampling
        }
    }

    fn prefill(&mut self, joining: Vec<Job>) {
        let slots: Vec<usize> = joining
            .iter()
            .map(|_| self.free.pop().expect("admission stays within the slots"))
            .collect();
        let prompts: Vec<(usize, &[u32])> = joining
            .iter()
            .zip(&slots)
            .map(|(j, &s)| (s, j.request.prompt.as_slice()))
            .collect();
        let settings: Vec<SamplingSettings> =
            joining.iter().map(|j| Self::settings(j, 0)).collect();
        let result = self.decoder.prefill_and_sample(&prompts, &settings);
        match result {
            Ok(tokens) => {
                for ((job, slot), token) in joining.into_iter().zip(slots).zip(tokens) {
                    let now = Instant::now();
                    {
                        let mut c = self.shared.counters();
                        c.ttft.saturating_record(micros(now - job.submitted));
                        c.tokens += 1;
                    }
                    let position = job.request.prompt.len();
                    let mut s = Sequence {
                        job,
                        slot,
                        generated: Vec::new(),
                        text: String::new(),
                        position,
                        last_token: now,
                        prefilled: position,
                        done: false,
                    };
                    match self.emit(&mut s, token) {
                        Some(reason) => self.finish(s, reason),
                        None => self.running.push(s),
                    }
                }
            }
            Err(e) => {
                for (job, slot) in joining.iter().zip(slots) {
                    self.fail(job, e.clone());
                    self.free.push(slot);
                }
            }
        }
    }

    /// Streams `token` and says whether the sequence is done.
    fn emit(&self, s: &mut Sequence, token: u32) -> Option<FinishReason> {
        s.generated.push(token);
        if s.job.events.send(Event::Token(token)).is_err() {
            // The caller dropped its stream: retired at the next iteration.
            s.job.cancelled.store(true, Ordering::Relaxed);
        }
        if self.options.end_token == Some(token) {
            return Some(FinishReason::EndToken);
        }
        if !s.job.request.stop.is_empty() {
            if let Some(v) = &self.options.vocabulary {
                s.text.push_str(&v[token as usize]);
                if s.job.request.stop.iter().any(|stop| s.text.contains(stop)) {
                    return Some(FinishReason::StopString);
                }
            }
        }
        if s.generated.len() >= s.job.request.max_tokens {
            return Some(FinishReason::MaxTokens);
        }
        if s.position >= self.decoder.context() {
            return Some(FinishReason::ContextFull);
        }
        None
    }

    fn finish(&mut self, mut s: Sequence, reason: FinishReason) {
        self.shared.counters().completed += 1;
        let _ = s.job.events.send(Event::Finished(reason));
        if self.options.batching == Batching::Static {
            // The batch waits for its longest sequence: this row keeps being computed.
            s.done = true;
            self.running.push(s);
        } else {
            self.free.push(s.slot);
        }
    }

    /// Static batching: once every sequence of the batch has finished, their slots come free.
    fn release_finished_batch(&mut self) {
        if !self.running.is_empty() && self.running.iter().all(|s| s.done) {
            for s in std::mem::take(&mut self.running) {
                self.free.push(s.slot);
            }
        }
    }

    /// Counts a step's tokens and hands each kept token to its sequence.
    fn take_tokens(&mut self, tokens: &[u32], last: Vec<Option<usize>>, taken: Vec<usize>) {
        let now = Instant::now();
        {
            let mut c = self.shared.counters();
            c.steps += 1;
            c.occupied += self.running.len() as u64;
            for (s, l) in self.running.iter().zip(&last) {
                if l.is_some() && !s.done {
                    c.tokens += 1;
                    if s.generated.is_empty() {
                        c.ttft.saturating_record(micros(now - s.job.submitted));
                    } else {
                        c.inter_token.saturating_record(micros(now - s.last_token));
                    }
                }
            }
        }
        let running = std::mem::take(&mut self.running);
        for ((mut s, l), take) in running.into_iter().zip(last).zip(taken) {
            let Some(row) = l.filter(|_| !s.done) else {
                s.prefilled += take;
                self.running.push(s);
                continue;
            };
            if s.generated.is_empty() {
                s.prefilled += take;
                s.position = s.prefilled;
            } else {
                s.position += 1;
            }
            s.last_token = now;
            match self.emit(&mut s, tokens[row]) {
                Some(reason) => self.finish(s, reason),
                None => self.running.push(s),
            }
        }
    }

    /// The rows of the next step, their sampling settings, each sequence's row whose token it
    /// keeps (`last`), and the prompt tokens each takes (`taken`).
    fn plan_step(&self) -> StepRows {
        // A row per generating sequence; prompt chunks for those still prefilling, within the
        // step's budget, oldest first. `last[i]`: sequence i's row whose token it keeps.
        // Prompt rows take the padding of the step's bucket (computed anyway), at least one row
        // and `prefill_share` rows per decoding row: a step grows by a bounded share (at share 0,
        // no further than the bucket of its decoding rows plus one), so the running sequences'
        // inter-token latency does, while a joining prompt still advances every step.
        let decoding = self
            .running
            .iter()
            .filter(|s| !s.generated.is_empty())
            .count();
        let share = (decoding as f64 * f64::from(self.options.prefill_share)).ceil() as usize;
        // (A decoder without a prefill chunk never has prompts in its steps: they are prefilled
        // whole.)
        let chunk = self.decoder.max_rows() - self.decoder.slots();
        let computed = self.decoder.bucket_for(decoding + share.max(1));
        let mut budget = computed.saturating_sub(decoding).max(1).min(chunk);
        let mut rows = Vec::with_capacity(self.running.len() + budget);
        let mut settings = Vec::with_capacity(rows.capacity());
        let mut last: Vec<Option<usize>> = Vec::with_capacity(self.running.len());
        let mut taken = Vec::with_capacity(self.running.len());
        let context = self.decoder.context();
        for s in &self.running {
            if s.done {
                // A finished row of a static batch: computed, its token unused.
                rows.push(DecodeRow {
                    slot: s.slot,
                    position: s.position.min(context - 1),
                    token: *s.generated.last().expect("a finished sequence has a token"),
                });
                settings.push(SamplingSettings::skip());
                last.push(None);
                taken.push(0);
            } else if s.generated.is_empty() {
                let prompt = &s.job.request.prompt;
                let take = budget.min(prompt.len() - s.prefilled);
                budget -= take;
                for p in s.prefilled..s.prefilled + take {
                    rows.push(DecodeRow {
                        slot: s.slot,
                        position: p,
                        token: prompt[p],
                    });
                    // Only the prompt's last row draws a token that is kept.
                    settings.push(if p + 1 == prompt.len() {
                        Self::settings(&s.job, 0)
                    } else {
                        SamplingSettings::skip()
                    });
                }
                let done = take > 0 && s.prefilled + take == prompt.len();
                last.push(done.then(|| rows.len() - 1));
                taken.push(take);
            } else {
                rows.push(DecodeRow {
                    slot: s.slot,
                    position: s.position,
                    token: *s
                        .generated
                        .last()
                        .expect("a generating sequence has a token"),
                });
                settings.push(Self::settings(&s.job, s.generated.len()));
                last.push(Some(rows.len() - 1));
                taken.push(0);
            }
        }
        StepRows {
            rows,
            settings,
            last,
            taken,
        }
    }

    fn step(&mut self) {
        let StepRows {
            rows,
            settings,
            last,
            taken,
        } = self.plan_step();
        if rows.is_empty() {
            return;
        }
        match self.decoder.step(&rows, &settings) {
            Ok(tokens) => self.take_tokens(&tokens, last, taken),
            Err(e) => {
                for s in std::mem::take(&mut self.running) {
                    if !s.done {
                        self.fail(&s.job, e.clone());
                    }
                    self.free.push(s.slot);
                }
            }
        }
    }
}

/// One step's rows, as [`Worker::plan_step`] lays them out.
struct StepRows {
    rows: Vec<DecodeRow>,
    settings: Vec<SamplingSettings>,
    last: Vec<Option<usize>>,
    taken: Vec<usize>,
}
