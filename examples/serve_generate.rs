//! A load run of the generation engine (a prompt of 4–16 tokens, 8–48 new tokens per request, the
//! same seeded workload for every mode) against three ways of batching: continuous (sequences join
//! and leave between steps), static (a batch forms when the previous one has finished: it waits
//! for its longest sequence) and one sequence at a time. Two kinds of load:
//!
//! - closed loop (default): `--concurrency` client threads, each sending its next request when its
//!   last one has finished, after an exponential pause of mean `--think-ms` (default 0: back to
//!   back);
//! - open loop: `--rates` requests per second arriving as a Poisson process whatever is running
//!   (`--requests` of them per level), as serving benchmarks offer load.
//!
//! Each level's requests may be cut into `--rounds` (default 1): round 0 of every mode, then round
//! 1, and so on, their samples pooled, so that a slow minute of a shared machine falls on every
//! mode alike. Prints tokens/s and the clients' inter-token latency and time to first token per
//! level, and plots tokens/s and p99 inter-token latency.
//!
//! `cargo run --release --example serve_generate -- [--concurrency 1,2,4,8,16]
//! [--requests-per-client N] [--think-ms MS] [--rates R,R,...] [--requests N] [--rounds N]
//! [--slots N] [--prefill-share X] [--model PATH] [--out DIR]`
//!
//! The model is `train_shakespeare`'s saved one, or the same architecture with random weights
//! where there is none: the work per token depends on the shapes, not the weights, and every
//! request runs to its `max_tokens` (no end token).

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plotters::style::{BLUE, GREEN, RED};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgnn::generate::{
    Batching, Decoder, DecoderOptions, Engine, EngineOptions, Event, GenerationRequest,
};
use wgnn::nn::{GptConfig, LanguageModel};
use wgnn::ops::SamplingSettings;
use wgnn::{Activation, Precision};

struct Args {
    concurrency: Vec<usize>,
    requests_per_client: usize,
    think: Duration,
    rates: Vec<f64>,
    requests: usize,
    rounds: usize,
    slots: usize,
    prefill_share: f32,
    model: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        concurrency: vec![1, 2, 4, 8, 16],
        requests_per_client: 4,
        think: Duration::ZERO,
        rates: Vec::new(),
        requests: 128,
        rounds: 1,
        slots: 16,
        prefill_share: EngineOptions::default().prefill_share,
        model: PathBuf::from(common::SHAKESPEARE_MODEL),
        out: PathBuf::from("target/serve_generate"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--concurrency" => args.concurrency = common::parse_list(&value()?)?,
            "--requests-per-client" => args.requests_per_client = value()?.parse()?,
            "--think-ms" => {
                let ms: u64 = value()?.parse()?;
                if ms > 60_000 {
                    bail!("--think-ms must be in 0..=60000");
                }
                args.think = Duration::from_millis(ms);
            }
            "--rates" => args.rates = common::parse_list(&value()?)?,
            "--requests" => args.requests = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--slots" => args.slots = value()?.parse()?,
            "--prefill-share" => args.prefill_share = value()?.parse()?,
            "--model" => args.model = PathBuf::from(value()?),
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "serve_generate [--concurrency 1,2,4,8,16] [--requests-per-client N] \
                     [--think-ms MS] [--rates R,R,...] [--requests N] [--rounds N] \
                     [--slots N] [--prefill-share X] [--model PATH] [--out DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let bad_level = |&c: &usize| c == 0 || c > 1024;
    if args.concurrency.is_empty() || args.concurrency.iter().any(bad_level) {
        bail!("--concurrency takes levels from 1 to 1024");
    }
    if args.requests_per_client == 0 || args.requests_per_client > 10_000 {
        bail!("--requests-per-client must be in 1..=10000");
    }
    if args.rates.iter().any(|r| !(0.01..=10_000.0).contains(r)) {
        bail!("--rates takes requests per second from 0.01 to 10000");
    }
    if args.requests == 0 || args.requests > 100_000 {
        bail!("--requests must be in 1..=100000");
    }
    let per_level = if args.rates.is_empty() {
        args.requests_per_client
    } else {
        args.requests
    };
    if args.rounds == 0 || args.rounds > per_level {
        bail!("--rounds must be in 1..={per_level} (the requests each client or level sends)");
    }
    if args.slots == 0 || args.slots > DecoderOptions::MAX_SEQUENCES {
        bail!("--slots must be in 1..={}", DecoderOptions::MAX_SEQUENCES);
    }
    Ok(args)
}

/// How requests arrive at one level.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Client threads, each sending its next request when its last one has finished.
    Clients(usize),
    /// Requests per second, arriving as a Poisson process whatever is running.
    Rate(f64),
}

impl Load {
    /// The level's place on the plots' x axis.
    fn x(self) -> f64 {
        match self {
            Load::Clients(n) => n as f64,
            Load::Rate(r) => r,
        }
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Clients(n) => write!(f, "{n} clients"),
            Load::Rate(r) => write!(f, "{r} req/s"),
        }
    }
}

/// One load level's figures, from the clients' side.
#[derive(Debug, Clone)]
struct Level {
    mode: &'static str,
    load: Load,
    tokens: usize,
    seconds: f64,
    inter_token_p50: f64,
    inter_token_p99: f64,
    first_token_p50: f64,
    first_token_p99: f64,
    occupancy: f64,
}

/// The q-quantile of `v` (sorted here), in ms.
fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Client `c`'s pause before its `i`-th request: exponential with mean `mean` (a user reading the
/// last answer), the same for every mode; none when `mean` is zero.
fn think_time(c: usize, i: usize, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    let mut rng = StdRng::seed_from_u64(!((c * 10_007 + i) as u64));
    mean.mul_f64(-(1.0 - rng.random_range(0.0..1.0f64)).ln())
}

/// Who sends what in round `round` of `rounds`, when: (client, its requests in order, when it
/// starts after the round's start). A closed loop is one entry per client, with its share of
/// `--requests-per-client`; an open loop one entry per request of the round's share of
/// `--requests`, at its arrival time (seeded by the rate, so the same for every mode).
fn senders(
    load: Load,
    round: usize,
    args: &Args,
) -> Vec<(usize, std::ops::Range<usize>, Duration)> {
    let share = |total: usize| total * round / args.rounds..total * (round + 1) / args.rounds;
    match load {
        Load::Clients(n) => (0..n)
            .map(|c| (c, share(args.requests_per_client), Duration::ZERO))
            .collect(),
        Load::Rate(rate) => {
            let mut rng = StdRng::seed_from_u64(rate.to_bits());
            let mut at = 0.0f64;
            let arrivals: Vec<f64> = (0..args.requests)
                .map(|_| {
                    at += -(1.0 - rng.random_range(0.0..1.0f64)).ln() / rate;
                    at
                })
                .collect();
            let mine = share(args.requests);
            let first = mine.start.checked_sub(1).map_or(0.0, |i| arrivals[i]);
            mine.map(|j| (j, 0..1, Duration::from_secs_f64(arrivals[j] - first)))
                .collect()
        }
    }
}

/// Client `c`'s `i`-th request: the same for every mode.
fn request(c: usize, i: usize, vocab: usize) -> GenerationRequest {
    let mut rng = StdRng::seed_from_u64((c * 10_007 + i) as u64);
    let prompt_len = rng.random_range(4..=16);
    let prompt = (0..prompt_len)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    GenerationRequest {
        sampling: SamplingSettings {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: (c * 10_007 + i) as u64,
            counter: 0,
        },
        ..GenerationRequest::greedy(prompt, rng.random_range(8..=48))
    }
}

/// What the clients saw in one round of one mode.
#[derive(Default)]
struct Samples {
    gaps: Vec<Duration>,
    firsts: Vec<Duration>,
    tokens: usize,
    seconds: f64,
}

/// An engine for `batching` over a decoder of its own.
fn engine_for(model: &LanguageModel, batching: Batching, args: &Args) -> Result<Engine> {
    let slots = if batching == Batching::OneAtATime {
        1
    } else {
        args.slots
    };
    let decoder = Decoder::new(
        model,
        DecoderOptions {
            max_sequences: slots,
            precision: Precision::F32,
            ..Default::default()
        },
    )?;
    Ok(Engine::new(
        decoder,
        EngineOptions {
            batching,
            queue_capacity: 4096,
            prefill_share: args.prefill_share,
            ..Default::default()
        },
    )?)
}

/// Round `round` of `load` against `engine`, as its clients see it.
fn run_round(
    engine: &Engine,
    vocab: usize,
    load: Load,
    round: usize,
    args: &Args,
) -> Result<Samples> {
    let samples = Mutex::new(Samples::default());
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = senders(load, round, args)
            .into_iter()
            .map(|(c, requests, start)| {
                let samples = &samples;
                scope.spawn(move || -> Result<()> {
                    std::thread::sleep((started + start).saturating_duration_since(Instant::now()));
                    for i in requests {
                        std::thread::sleep(think_time(c, i, args.think));
                        let submitted = Instant::now();
                        let mut stream = engine.submit(request(c, i, vocab))?;
                        let (mut last, mut mine, mut first) = (None, Vec::new(), None);
                        while let Some(event) = stream.next_event(Duration::from_secs(600)) {
                            match event {
                                Event::Token(_) => {
                                    let now = Instant::now();
                                    match last {
                                        Some(l) => mine.push(now - l),
                                        None => first = Some(now - submitted),
                                    }
                                    last = Some(now);
                                }
                                Event::Finished(_) => break,
                                Event::Failed(e) => return Err(e.into()),
                            }
                        }
                        let mut s = samples.lock().expect("samples");
                        s.tokens += mine.len() + 1;
                        s.gaps.extend(mine);
                        s.firsts.extend(first);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a client thread panicked")?;
        }
        Ok(())
    })?;
    let mut samples = samples.into_inner().expect("samples");
    samples.seconds = started.elapsed().as_secs_f64();
    Ok(samples)
}

/// One level: each mode's rounds in turn (round 0 of every mode, then round 1, ...), so that
/// the modes see the same machine; their samples pooled.
fn run_level(
    model: &LanguageModel,
    modes: &[(&'static str, Batching)],
    load: Load,
    args: &Args,
) -> Result<Vec<Level>> {
    let engines = modes
        .iter()
        .map(|&(_, batching)| engine_for(model, batching, args))
        .collect::<Result<Vec<_>>>()?;
    let mut pooled: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
    for round in 0..args.rounds {
        for (engine, all) in engines.iter().zip(&mut pooled) {
            let s = run_round(engine, model.config().vocab, load, round, args)?;
            all.gaps.extend(s.gaps);
            all.firsts.extend(s.firsts);
            all.tokens += s.tokens;
            all.seconds += s.seconds;
        }
    }
    Ok(modes
        .iter()
        .zip(engines)
        .zip(pooled)
        .map(|((&(mode, _), engine), mut s)| Level {
            mode,
            load,
            tokens: s.tokens,
            seconds: s.seconds,
            inter_token_p50: quantile(&mut s.gaps, 0.5),
            inter_token_p99: quantile(&mut s.gaps, 0.99),
            first_token_p50: quantile(&mut s.firsts, 0.5),
            first_token_p99: quantile(&mut s.firsts, 0.99),
            occupancy: engine.stats().occupancy,
        })
        .collect())
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args = parse_args()?;
    let gpu = common::open_gpu()?;
    let model = if args.model.exists() {
        common::shakespeare_model(&gpu, &args.model, 0)?.0
    } else {
        println!(
            "no model at {}: random weights of train_shakespeare's architecture",
            args.model.display()
        );
        let config = GptConfig {
            vocab: 80,
            context: 64,
            dim: 64,
            heads: 4,
            layers: 2,
            activation: Activation::Gelu,
            dropout: 0.0,
        };
        LanguageModel::new(&gpu, config, 1)?
    };
    let (loads, x_axis): (Vec<Load>, _) = if args.rates.is_empty() {
        println!(
            "closed loop: {} requests per client, think time {} ms",
            args.requests_per_client,
            args.think.as_millis()
        );
        let loads = args.concurrency.iter().map(|&c| Load::Clients(c));
        (loads.collect(), "concurrent clients")
    } else {
        println!(
            "open loop: {} requests per level, Poisson arrivals",
            args.requests
        );
        (
            args.rates.iter().map(|&r| Load::Rate(r)).collect(),
            "requests per second",
        )
    };
    println!(
        "prompts of 4-16 tokens, 8-48 new tokens, top-k 40 / top-p 0.95 sampling, {} slots",
        args.slots
    );
    println!(
        "| batching | load | tokens | tokens/s | inter-token p50 ms | p99 ms | first token p50 ms \
         | p99 ms | occupancy |\n|---|---|---|---|---|---|---|---|---|"
    );
    let modes = [
        ("continuous", Batching::Continuous),
        ("static", Batching::Static),
        ("one at a time", Batching::OneAtATime),
    ];
    let mut levels = Vec::new();
    for &load in &loads {
        for l in run_level(&model, &modes, load, &args)? {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} |",
                l.mode,
                l.load,
                l.tokens,
                l.tokens as f64 / l.seconds,
                l.inter_token_p50,
                l.inter_token_p99,
                l.first_token_p50,
                l.first_token_p99,
                l.occupancy
            );
            levels.push(l);
        }
    }
    for &load in &loads {
        let of = |name: &str| {
            levels
                .iter()
                .find(|l| l.mode == name && l.load == load)
                .expect("every mode ran every level")
        };
        let (c, s, o) = (of("continuous"), of("static"), of("one at a time"));
        let rate = |l: &Level| l.tokens as f64 / l.seconds;
        println!(
            "{load}: continuous {:.2}x the tokens/s of one at a time, {:.2}x static's; p99 \
             inter-token {:.2} ms vs static {:.2} ms; p50 first token {:.1} ms vs static {:.1} ms",
            rate(c) / rate(o),
            rate(c) / rate(s),
            c.inter_token_p99,
            s.inter_token_p99,
            c.first_token_p50,
            s.first_token_p50
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("serve_generate.png");
    let colors = [BLUE, RED, GREEN];
    let series: Vec<common::Series> = modes
        .iter()
        .zip(colors)
        .map(|(&(name, _), color)| {
            let mine: Vec<&Level> = levels.iter().filter(|l| l.mode == name).collect();
            common::Series {
                label: name,
                color,
                points: vec![
                    mine.iter()
                        .map(|l| (l.load.x(), l.tokens as f64 / l.seconds))
                        .collect(),
                    mine.iter()
                        .map(|l| (l.load.x(), l.inter_token_p99))
                        .collect(),
                ],
            }
        })
        .collect();
    common::plot_against_load(
        &path,
        x_axis,
        &[
            ("throughput", "tokens/s"),
            ("p99 inter-token latency", "ms"),
        ],
        &series,
    )?;
    println!("plot written to {}", path.display());
    Ok(())
}
