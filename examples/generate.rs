//! A prompt in, streamed text out: the character-level language model of `train_shakespeare`
//! served by `wgnn::generate::Engine` (KV cache, sampling on the GPU), printing each character as
//! it is made and then the timings (time to first token, inter-token latency, tokens/s).
//!
//! `cargo run --release --example generate -- [--prompt TEXT] [--tokens N] [--temperature X]
//! [--top-k N] [--top-p X] [--seed N] [--precision f32|f16|int8] [--model PATH]
//! [--compare-precisions [--windows N]]`
//!
//! The model is `--model`'s (which must exist), else `train_shakespeare`'s saved one; where there
//! is none, a small one is trained first (a few minutes on a CPU). `--compare-precisions` prints, for f32, f16 and int8 weights,
//! the bytes of the weights, the validation loss on the held-out 10% of the plays (or `--windows`
//! windows of it) and the batch-1 decode speed.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wgnn::data::CharCorpus;
use wgnn::generate::{
    DecodeRow, Decoder, DecoderOptions, Engine, EngineOptions, Event, GenerationRequest,
};
use wgnn::nn::LanguageModel;
use wgnn::ops::SamplingSettings;
use wgnn::Precision;

struct Args {
    prompt: String,
    tokens: usize,
    sampling: SamplingSettings,
    precision: Precision,
    model: PathBuf,
    compare: bool,
    windows: Option<usize>,
}

fn parse_precision(s: &str) -> Result<Precision> {
    Ok(match s {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        "int8" => Precision::Int8,
        other => bail!("--precision takes f32, f16 or int8, got {other:?}"),
    })
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        prompt: "ROMEO.\n".into(),
        tokens: 200,
        sampling: SamplingSettings {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 1,
            counter: 0,
        },
        precision: Precision::F32,
        model: PathBuf::from(common::SHAKESPEARE_MODEL),
        compare: false,
        windows: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--prompt" => args.prompt = value()?,
            "--tokens" => args.tokens = value()?.parse()?,
            "--temperature" => args.sampling.temperature = value()?.parse()?,
            "--top-k" => args.sampling.top_k = value()?.parse()?,
            "--top-p" => args.sampling.top_p = value()?.parse()?,
            "--seed" => args.sampling.seed = value()?.parse()?,
            "--precision" => args.precision = parse_precision(&value()?)?,
            "--model" => {
                let path = PathBuf::from(value()?);
                // A model named but missing is an error, not a reason to train a new one.
                if !path.is_file() {
                    bail!(
                        "--model {}: no such model file (train one with `cargo run --release \
                         --example train_shakespeare`, or leave --model out to train a small \
                         one here)",
                        path.display()
                    );
                }
                args.model = path;
            }
            "--compare-precisions" => args.compare = true,
            "--windows" => args.windows = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!(
                    "generate [--prompt TEXT] [--tokens N] [--temperature X] [--top-k N] \
                     [--top-p X] [--seed N] [--precision f32|f16|int8] [--model PATH] \
                     [--compare-precisions [--windows N]]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args = parse_args()?;
    let gpu = common::open_gpu()?;
    let (model, vocabulary) = common::shakespeare_model(&gpu, &args.model, 300)?;
    let corpus = CharCorpus::from_text(vocabulary.clone())?;
    if args.compare {
        return compare_precisions(&model, &vocabulary, args.windows);
    }
    let prompt = corpus.encode(&args.prompt)?;
    let decoder = Decoder::new(
        &model,
        DecoderOptions {
            max_sequences: 1,
            precision: args.precision,
            ..Default::default()
        },
    )?;
    let engine = Engine::new(
        decoder,
        EngineOptions {
            vocabulary: Some(vocabulary.chars().map(String::from).collect()),
            ..Default::default()
        },
    )?;
    let max_tokens = args.tokens.min(model.config().context);
    let request = GenerationRequest {
        sampling: args.sampling,
        ..GenerationRequest::greedy(prompt.clone(), max_tokens)
    };
    // The context is 64 characters: a longer text continues from the last ones, window by
    // window (each window a new request whose prompt is the text so far, cut to half a context).
    let started = Instant::now();
    let mut first_token = None;
    let mut gaps = Vec::new();
    let mut text = prompt.clone();
    print!("{}", args.prompt);
    let mut request = request;
    let mut window = 0u64;
    while text.len() - prompt.len() < args.tokens {
        let left = args.tokens - (text.len() - prompt.len());
        request.max_tokens = left
            .min(model.config().context - request.prompt.len())
            .max(1);
        request.sampling.seed = args.sampling.seed.wrapping_add(window);
        let mut stream = engine.submit(request.clone())?;
        let mut last = Instant::now();
        while let Some(event) = stream.next_event(Duration::from_secs(600)) {
            match event {
                Event::Token(t) => {
                    let now = Instant::now();
                    if first_token.is_none() {
                        first_token = Some(now - started);
                    } else {
                        gaps.push(now - last);
                    }
                    last = now;
                    text.push(t);
                    print!("{}", corpus.decode(&[t]));
                    std::io::stdout().flush()?;
                }
                Event::Finished(_) => break,
                Event::Failed(e) => return Err(e.into()),
            }
        }
        let keep = model.config().context / 2;
        request.prompt = text[text.len().saturating_sub(keep)..].to_vec();
        window += 1;
    }
    let total = started.elapsed();
    println!();
    gaps.sort();
    let pct = |q: f64| {
        gaps.get(((gaps.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let generated = text.len() - prompt.len();
    println!(
        "{generated} tokens in {:.2} s ({:.0} tokens/s, {:?} weights); time to first token \
         {:.1} ms; inter-token p50 {:.2} ms, p99 {:.2} ms",
        total.as_secs_f64(),
        generated as f64 / total.as_secs_f64(),
        args.precision,
        first_token.unwrap_or_default().as_secs_f64() * 1e3,
        pct(0.5),
        pct(0.99)
    );
    let stats = engine.stats();
    println!(
        "engine: {} steps, {} tokens, time to first token p50 {:?}, inter-token p99 {:?}",
        stats.steps, stats.tokens, stats.time_to_first_token.p50, stats.inter_token.p99
    );
    Ok(())
}

/// Mean next-token cross-entropy (nats per character) of the decoder over non-overlapping
/// windows of the held-out text: each window's prefill gives the logits of every position.
fn validation_loss(decoder: &mut Decoder, ids: &[u32], windows: Option<usize>) -> Result<f64> {
    let context = decoder.context();
    let vocab = decoder.vocab();
    let mut starts: Vec<usize> = (0..ids.len().saturating_sub(context + 1))
        .step_by(context)
        .collect();
    if let Some(limit) = windows {
        let step = (starts.len() / limit.max(1)).max(1);
        starts = starts.into_iter().step_by(step).take(limit).collect();
    }
    let (mut total, mut count) = (0.0f64, 0usize);
    for &s in &starts {
        let logits = decoder.prefill(0, &ids[s..s + context])?;
        for (row, &target) in logits.chunks(vocab).zip(&ids[s + 1..s + context + 1]) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            total += sum.ln() - f64::from(row[target as usize] - max);
            count += 1;
        }
    }
    Ok(total / count.max(1) as f64)
}

fn compare_precisions(
    model: &LanguageModel,
    vocabulary: &str,
    windows: Option<usize>,
) -> Result<()> {
    let corpus = CharCorpus::shakespeare()?;
    if corpus.vocabulary_string() != vocabulary {
        bail!("the model's vocabulary is not the plays': its validation loss means nothing here");
    }
    let (_, validation) = corpus.split(0.1)?;
    println!(
        "| weights | bytes | validation loss (nats/char) | batch-1 decode ms/token |\n|---|---|---|---|"
    );
    for precision in [Precision::F32, Precision::F16, Precision::Int8] {
        let mut decoder = Decoder::new(
            model,
            DecoderOptions {
                max_sequences: 1,
                precision,
                ..Default::default()
            },
        )?;
        let loss = validation_loss(&mut decoder, &validation, windows)?;
        // Batch-1 decode: 48 greedy steps after a 16-token prompt.
        let prompt = &validation[..16];
        let mut token =
            decoder.prefill_and_sample(&[(0, prompt)], &[SamplingSettings::greedy()])?[0];
        let started = Instant::now();
        for position in 16..64 {
            let row = DecodeRow {
                slot: 0,
                position,
                token,
            };
            token = decoder.step(&[row], &[SamplingSettings::greedy()])?[0];
        }
        let per_token = started.elapsed().as_secs_f64() * 1e3 / 48.0;
        println!(
            "| {precision:?} | {} | {loss:.4} | {per_token:.2} |",
            decoder.weight_bytes()
        );
    }
    Ok(())
}
