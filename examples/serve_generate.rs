//! A load run of the generation engine: client threads at several concurrency levels each send
//! requests back to back (a prompt of 4–16 tokens, 8–48 new tokens, the same seeded workload for
//! every mode), against three ways of batching: continuous (sequences join and leave between
//! steps), static (a batch forms when the previous one has finished: it waits for its longest
//! sequence) and one sequence at a time. Prints tokens/s and the clients' inter-token latency and
//! time to first token per level, and plots tokens/s and p99 inter-token latency.
//!
//! `cargo run --release --example serve_generate -- [--concurrency 1,2,4,8,16]
//! [--requests-per-client N] [--slots N] [--model PATH] [--out DIR]`
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
    slots: usize,
    prefill_share: f32,
    model: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        concurrency: vec![1, 2, 4, 8, 16],
        requests_per_client: 4,
        slots: 16,
        prefill_share: EngineOptions::default().prefill_share,
        model: PathBuf::from(common::SHAKESPEARE_MODEL),
        out: PathBuf::from("target/serve_generate"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--concurrency" => {
                args.concurrency = value()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<std::result::Result<_, _>>()?
            }
            "--requests-per-client" => args.requests_per_client = value()?.parse()?,
            "--slots" => args.slots = value()?.parse()?,
            "--prefill-share" => args.prefill_share = value()?.parse()?,
            "--model" => args.model = PathBuf::from(value()?),
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "serve_generate [--concurrency 1,2,4,8,16] [--requests-per-client N] \
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
    if args.slots == 0 || args.slots > DecoderOptions::MAX_SEQUENCES {
        bail!("--slots must be in 1..={}", DecoderOptions::MAX_SEQUENCES);
    }
    Ok(args)
}

/// One load level's figures, from the clients' side.
#[derive(Debug, Clone)]
struct Level {
    mode: &'static str,
    clients: usize,
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

fn run_level(
    model: &LanguageModel,
    mode: (&'static str, Batching),
    clients: usize,
    args: &Args,
) -> Result<Level> {
    let slots = if mode.1 == Batching::OneAtATime {
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
    let engine = Engine::new(
        decoder,
        EngineOptions {
            batching: mode.1,
            queue_capacity: 4096,
            prefill_share: args.prefill_share,
            ..Default::default()
        },
    )?;
    let vocab = model.config().vocab;
    let gaps = Mutex::new(Vec::new());
    let firsts = Mutex::new(Vec::new());
    let tokens = Mutex::new(0usize);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (engine, gaps, firsts, tokens) = (&engine, &gaps, &firsts, &tokens);
                scope.spawn(move || -> Result<()> {
                    for i in 0..args.requests_per_client {
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
                        *tokens.lock().expect("tokens") += mine.len() + 1;
                        gaps.lock().expect("gaps").extend(mine);
                        firsts.lock().expect("firsts").extend(first);
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
    let seconds = started.elapsed().as_secs_f64();
    let stats = engine.stats();
    let mut gaps = gaps.into_inner().expect("gaps");
    let mut firsts = firsts.into_inner().expect("firsts");
    Ok(Level {
        mode: mode.0,
        clients,
        tokens: tokens.into_inner().expect("tokens"),
        seconds,
        inter_token_p50: quantile(&mut gaps, 0.5),
        inter_token_p99: quantile(&mut gaps, 0.99),
        first_token_p50: quantile(&mut firsts, 0.5),
        first_token_p99: quantile(&mut firsts, 0.99),
        occupancy: stats.occupancy,
    })
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
    println!(
        "{} requests per client (prompts of 4-16 tokens, 8-48 new tokens, top-k 40 / top-p 0.95 \
         sampling), {} slots",
        args.requests_per_client, args.slots
    );
    println!(
        "| batching | clients | tokens | tokens/s | inter-token p50 ms | p99 ms | first token p50 \
         ms | p99 ms | occupancy |\n|---|---|---|---|---|---|---|---|---|"
    );
    let modes = [
        ("continuous", Batching::Continuous),
        ("static", Batching::Static),
        ("one at a time", Batching::OneAtATime),
    ];
    let mut levels = Vec::new();
    for mode in modes {
        for &clients in &args.concurrency {
            let l = run_level(&model, mode, clients, &args)?;
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} |",
                l.mode,
                l.clients,
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
    for &clients in &args.concurrency {
        let of = |name: &str| {
            levels
                .iter()
                .find(|l| l.mode == name && l.clients == clients)
                .expect("every mode ran every level")
        };
        let (c, s, o) = (of("continuous"), of("static"), of("one at a time"));
        let rate = |l: &Level| l.tokens as f64 / l.seconds;
        println!(
            "{clients} clients: continuous {:.2}x the tokens/s of one at a time, {:.2}x static's; \
             p99 inter-token {:.2} ms vs static {:.2} ms",
            rate(c) / rate(o),
            rate(c) / rate(s),
            c.inter_token_p99,
            s.inter_token_p99
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
                        .map(|l| (l.clients as f64, l.tokens as f64 / l.seconds))
                        .collect(),
                    mine.iter()
                        .map(|l| (l.clients as f64, l.inter_token_p99))
                        .collect(),
                ],
            }
        })
        .collect();
    common::plot_against_clients(
        &path,
        &[
            ("throughput", "tokens/s"),
            ("p99 inter-token latency", "ms"),
        ],
        &series,
    )?;
    println!("plot written to {}", path.display());
    Ok(())
}
