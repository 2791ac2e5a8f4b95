//! Trains a character-level GPT on ten of Shakespeare's plays (shipped in `data/`; the last 10% held
//! out for validation) with AdamW, a warm-up and cosine learning-rate schedule and gradient
//! clipping, every step on the GPU. Shows a progress bar with tokens/s and the loss, prints the
//! validation loss on the whole held-out text (`validation loss X.XX`, nats per character) and a
//! sample of generated text, writes a PNG of the training and validation curves and saves the model
//! (safetensors, with its vocabulary).
//!
//! Run: `cargo run --release --example train_shakespeare [-- --steps N] [--layers N] [--dim N]
//! [--heads N] [--context N] [--batch-size N] [--lr X] [--seed N] [--eval-every N] [--quick]
//! [--mixed-precision] [--profile] [--out DIR]`. `--quick` is the short run CI makes;
//! `--mixed-precision` trains with f16 activations and gradients (f32 master weights, a dynamic
//! loss scale) where the adapter has SHADER_F16; `--profile` prints each kernel's GPU time in one
//! step.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgnn::data::CharCorpus;
use wgnn::nn::{
    GptConfig, Input, LanguageModel, MicroBatch, MixedPrecision, Optimizer, Sampling, Targets,
    Trainer, WarmupCosine,
};
use wgnn::ops::AdamConfig;
use wgnn::{Activation, Gpu};

struct Args {
    steps: u32,
    layers: usize,
    dim: usize,
    heads: usize,
    context: usize,
    batch_size: usize,
    lr: f32,
    seed: u64,
    eval_every: u32,
    quick: bool,
    mixed_precision: bool,
    profile: bool,
    distributed: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        steps: 1400,
        layers: 2,
        dim: 64,
        heads: 4,
        context: 64,
        batch_size: 16,
        lr: 5e-3,
        seed: 1337,
        eval_every: 100,
        quick: false,
        mixed_precision: false,
        profile: false,
        distributed: false,
        out: PathBuf::from("target/train_shakespeare"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--steps" => args.steps = value()?.parse()?,
            "--layers" => args.layers = value()?.parse()?,
            "--dim" => args.dim = value()?.parse()?,
            "--heads" => args.heads = value()?.parse()?,
            "--context" => args.context = value()?.parse()?,
            "--batch-size" => args.batch_size = value()?.parse()?,
            "--lr" => args.lr = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--eval-every" => args.eval_every = value()?.parse()?,
            "--quick" => args.quick = true,
            "--mixed-precision" => args.mixed_precision = true,
            "--profile" => args.profile = true,
            "--distributed" => args.distributed = true,
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "train_shakespeare [--steps N] [--layers N] [--dim N] [--heads N] \
                     [--context N] [--batch-size N] [--lr X] [--seed N] [--eval-every N] \
                     [--quick] [--mixed-precision] [--profile] [--distributed] [--out DIR]\n\
                     --distributed: data-parallel under `mpirun -n N` (built with --features \
                     mpi); --batch-size is the global batch"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.quick {
        args.steps = args.steps.min(60);
        args.eval_every = args.eval_every.min(30);
    }
    if args.steps == 0 || args.batch_size == 0 || args.eval_every == 0 {
        bail!("--steps, --batch-size and --eval-every must be at least 1");
    }
    Ok(args)
}

/// `count` windows of `context + 1` ids (inputs and next-token targets) from `ids`.
fn windows(ids: &[u32], starts: &[usize], context: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = Vec::with_capacity(starts.len() * context);
    let mut y = Vec::with_capacity(starts.len() * context);
    for &s in starts {
        x.extend_from_slice(&ids[s..s + context]);
        y.extend_from_slice(&ids[s + 1..s + context + 1]);
    }
    (x, y)
}

/// The mean loss over non-overlapping windows covering `ids` (or the first `limit` of them), in
/// batches of `batch`.
fn validation_loss(
    model: &mut LanguageModel,
    ids: &[u32],
    context: usize,
    batch: usize,
    limit: Option<usize>,
) -> Result<f32> {
    let mut starts: Vec<usize> = (0..ids.len().saturating_sub(context + 1))
        .step_by(context)
        .collect();
    if let Some(limit) = limit {
        // Evenly spread over the held-out text.
        let step = (starts.len() / limit.max(1)).max(1);
        starts = starts.into_iter().step_by(step).take(limit).collect();
    }
    let (mut total, mut count) = (0.0f64, 0usize);
    for chunk in starts.chunks(batch) {
        let (x, y) = windows(ids, chunk, context);
        total += f64::from(model.loss(&x, &y, context)?) * chunk.len() as f64;
        count += chunk.len();
    }
    Ok((total / count.max(1) as f64) as f32)
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args = parse_args()?;
    let mut dist = common::distributed(args.distributed)?;
    let gpu = match &dist {
        Some(d) => d.gpu()?,
        None => Gpu::new()?,
    };
    // Rank 0 prints, evaluates and saves; every rank reports its throughput at the end.
    let root = dist.as_ref().is_none_or(|d| d.is_root());
    println!(
        "adapter: {} ({:?})",
        gpu.adapter_info().name,
        gpu.adapter_info().backend
    );
    let corpus = CharCorpus::shakespeare()?;
    let (train, validation) = corpus.split(0.1)?;
    let config = GptConfig {
        vocab: corpus.vocabulary.len(),
        context: args.context,
        dim: args.dim,
        heads: args.heads,
        layers: args.layers,
        activation: Activation::Gelu,
        dropout: 0.0,
    };
    let model = LanguageModel::new(&gpu, config, args.seed)?;
    let mut optimizer = Optimizer::adam(AdamConfig {
        beta2: 0.99,
        ..AdamConfig::adamw(args.lr, 0.1)
    });
    optimizer.decay_weights_only(model.model())?;
    let mut trainer = Trainer::new(model, optimizer);
    trainer.set_grad_clip(Some(1.0))?;
    if args.mixed_precision {
        trainer
            .enable_mixed_precision(MixedPrecision::default())
            .context("--mixed-precision needs an adapter with SHADER_F16")?;
    }
    if let Some(d) = dist.as_mut() {
        d.broadcast_parameters(trainer.model().model())?;
        if args.batch_size % d.world_size() != 0 {
            anyhow::bail!(
                "--batch-size {} must divide among the {} ranks",
                args.batch_size,
                d.world_size()
            );
        }
    }
    let schedule = WarmupCosine::new(args.lr, args.lr / 10.0, args.steps / 20, args.steps)?;
    println!(
        "{} characters ({} training, {} validation), vocabulary {}; {} layers of {} ({} heads), \
         context {}, batch {}, {} parameters, {} steps{}",
        corpus.text.len(),
        train.len(),
        validation.len(),
        config.vocab,
        config.layers,
        config.dim,
        config.heads,
        config.context,
        args.batch_size,
        trainer.model().model().params().parameter_count(),
        args.steps,
        if args.mixed_precision {
            ", mixed precision"
        } else {
            ""
        }
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    if args.profile {
        return profile(&gpu, &mut trainer, &train, &args, &mut rng);
    }
    let bar = if root {
        ProgressBar::new(u64::from(args.steps))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
    )?);
    let started = Instant::now();
    let tokens_per_step = args.batch_size * args.context;
    let (mut train_curve, mut validation_curve) = (Vec::new(), Vec::new());
    let mut since = (Instant::now(), 0u32);
    let mut all_reduce = std::time::Duration::ZERO;
    for step in 0..args.steps {
        trainer.optimizer_mut().set_lr(schedule.lr_at(step));
        let starts: Vec<usize> = (0..args.batch_size)
            .map(|_| rng.random_range(0..train.len() - args.context - 1))
            .collect();
        let (x, y) = windows(&train, &starts, args.context);
        match dist.as_mut() {
            // Every rank draws the same windows (the same seed); each trains on its share.
            Some(d) => {
                let (xs, ys) = (d.shard(&x, args.context)?, d.shard(&y, args.context)?);
                let (ids, next) = trainer.model().sequences(xs, ys, args.context)?;
                let inputs = [Input::Ids(&ids)];
                let micro = MicroBatch {
                    inputs: &inputs,
                    targets: Targets::Classes(&next),
                };
                all_reduce += d
                    .train_step_micro_batches(&mut trainer, &[micro])?
                    .all_reduce;
            }
            None => trainer.step_sequences(&x, &y, args.context)?,
        }
        since.1 += 1;
        bar.inc(1);
        let last = step + 1 == args.steps;
        if root && ((step + 1) % args.eval_every == 0 || last) {
            let loss = trainer.mean_loss()?;
            let rate =
                (since.1 as usize * tokens_per_step) as f64 / since.0.elapsed().as_secs_f64();
            let val =
                validation_loss(trainer.model_mut(), &validation, args.context, 32, Some(64))?;
            train_curve.push((step as f32 + 1.0, loss));
            validation_curve.push((step as f32 + 1.0, val));
            let message = format!("loss {loss:.3}  validation {val:.3}  {rate:.0} tokens/s");
            if bar.is_hidden() {
                // No terminal (CI, a log file): one line per evaluation instead of the bar.
                println!(
                    "step {:>5}  {message}  ({:.0} s)",
                    step + 1,
                    started.elapsed().as_secs_f64()
                );
            }
            bar.set_message(message);
            since = (Instant::now(), 0);
        }
    }
    bar.finish();
    let train_time = started.elapsed();
    if let Some(d) = dist.as_ref() {
        let tokens = u64::from(args.steps) * (tokens_per_step / d.world_size()) as u64;
        let rate = tokens as f64 / train_time.as_secs_f64();
        println!(
            "rank {}: {rate:.0} tokens/s, all-reduce {:.2} ms per step",
            d.rank(),
            all_reduce.as_secs_f64() * 1e3 / f64::from(args.steps)
        );
        let total = d.sum(rate)?;
        if !root {
            return Ok(());
        }
        println!("all {} ranks: {total:.0} tokens/s", d.world_size());
    }
    let limit = args.quick.then_some(64);
    let loss_scale = trainer.loss_scale()?;
    let mut model = trainer.into_model();
    let val = validation_loss(&mut model, &validation, args.context, 32, limit)?;
    println!(
        "trained {} steps ({} tokens) in {:.1} s, {:.0} tokens/s",
        args.steps,
        u64::from(args.steps) * tokens_per_step as u64,
        train_time.as_secs_f64(),
        (u64::from(args.steps) * tokens_per_step as u64) as f64 / train_time.as_secs_f64()
    );
    println!(
        "validation loss {val:.2} (nats per character, {} held-out characters)",
        if args.quick {
            format!("{} windows of the", 64)
        } else {
            format!("all {}", validation.len())
        }
    );
    if let Some((scale, skipped)) = loss_scale {
        println!("loss scale {scale}, {skipped} steps skipped for overflow");
    }
    let prompt = corpus.encode("ROMEO.\n")?;
    let text = model.generate(
        &prompt,
        if args.quick { 60 } else { 400 },
        Sampling::Sample {
            temperature: 0.8,
            top_k: 0,
            seed: args.seed,
        },
    )?;
    println!("--- sample ---\n{}\n--------------", corpus.decode(&text));
    std::fs::create_dir_all(&args.out)?;
    let model_path = args.out.join("shakespeare_gpt.safetensors");
    model.save(&model_path, &corpus.vocabulary_string())?;
    println!("model saved to {}", model_path.display());
    let plot_path = args.out.join("shakespeare_loss.png");
    plot(&plot_path, &train_curve, &validation_curve)?;
    println!("plot written to {}", plot_path.display());
    Ok(())
}

/// Times each dispatch of one training step (after three warm-up steps) and prints the kernels
/// that take the most.
fn profile(
    gpu: &Gpu,
    trainer: &mut Trainer<LanguageModel>,
    train: &[u32],
    args: &Args,
    rng: &mut StdRng,
) -> Result<()> {
    let batch_of = |rng: &mut StdRng| {
        let starts: Vec<usize> = (0..args.batch_size)
            .map(|_| rng.random_range(0..train.len() - args.context - 1))
            .collect();
        windows(train, &starts, args.context)
    };
    for _ in 0..3 {
        let (x, y) = batch_of(rng);
        trainer.step_sequences(&x, &y, args.context)?;
    }
    let (x, y) = batch_of(rng);
    let started = Instant::now();
    let mut timer = wgnn::GpuTimer::new(gpu);
    let profile = timer.profile(|batch| trainer.record_sequences(batch, &x, &y, args.context))?;
    println!(
        "one step: {} dispatches, {:.1} ms of kernels, {:.1} ms wall",
        profile.dispatches.len(),
        profile.total().as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    for (entry, count, time) in profile.by_entry().iter().take(20) {
        println!("{:>9.2} ms  {count:>4}×  {entry}", time.as_secs_f64() * 1e3);
    }
    Ok(())
}

fn plot(path: &std::path::Path, train: &[(f32, f32)], validation: &[(f32, f32)]) -> Result<()> {
    static FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = train.last().map_or(1.0, |p| p.0).max(1.0);
    let all = train.iter().chain(validation).map(|p| p.1);
    let high = all.clone().fold(0.0f32, f32::max).max(1.0) * 1.05;
    let low = all.fold(f32::INFINITY, f32::min).min(high) * 0.95;
    let mut chart = ChartBuilder::on(&root)
        .caption("character-level GPT on Shakespeare", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f32..steps, low..high)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy (nats per character)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
        .label("training")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(validation.iter().copied(), &RED))?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
