//! Trains a small CNN (default) or an MLP (`--mlp`) on the UCI handwritten digits (shipped in
//! `data/`), with a fixed seeded train/test split. Shows a progress bar with the loss and
//! samples/s, prints the test accuracy and a confusion matrix, saves the model (safetensors) and
//! writes a PNG plot of the loss and accuracy curves.
//!
//! Run: `cargo run --release --example train_digits [-- --mlp] [--mixed-precision] [--epochs N]
//! [--batch-size N] [--lr X] [--seed N] [--out DIR]`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use wgnn::data::Digits;
use wgnn::nn::{Init, LayerSpec, MixedPrecision, Optimizer, Sequential, Trainer};
use wgnn::ops::AdamConfig;
use wgnn::{Activation, Gpu};

struct Args {
    mlp: bool,
    mixed: bool,
    epochs: usize,
    batch_size: usize,
    lr: f32,
    seed: u64,
    out: PathBuf,
    distributed: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        mlp: false,
        mixed: false,
        epochs: 0,
        batch_size: 32,
        lr: 2e-3,
        seed: 42,
        out: PathBuf::from("target/train_digits"),
        distributed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--mlp" => args.mlp = true,
            "--mixed-precision" => args.mixed = true,
            "--epochs" => args.epochs = value()?.parse()?,
            "--batch-size" => args.batch_size = value()?.parse()?,
            "--lr" => args.lr = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--out" => args.out = PathBuf::from(value()?),
            "--distributed" => args.distributed = true,
            "-h" | "--help" => {
                println!("train_digits [--mlp] [--mixed-precision] [--epochs N] [--batch-size N] [--lr X] [--seed N] [--out DIR] [--distributed]");
                println!("  --distributed: data-parallel under `mpirun -n N` (built with --features mpi); --batch-size is the global batch");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.epochs == 0 {
        args.epochs = if args.mlp { 40 } else { 20 };
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    Ok(args)
}

fn mlp() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 128,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 128,
            outputs: 10,
        },
    ]
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
    if !root {
        // Only the results; wgnn::distributed keeps the replicas equal.
        println!(
            "rank {}: training its shard",
            dist.as_ref().map_or(0, |d| d.rank())
        );
    }
    let kind = if args.mlp { "mlp" } else { "cnn" };
    println!(
        "adapter: {} ({:?})",
        gpu.adapter_info().name,
        gpu.adapter_info().backend
    );
    let (train, test) = Digits::load()?.split(0.2, args.seed);
    println!(
        "digits: {} train, {} test images; {kind}, {} epochs, batch {}",
        train.len(),
        test.len(),
        args.epochs,
        args.batch_size
    );

    let (specs, input) = if args.mlp {
        (mlp(), vec![64])
    } else {
        (wgnn::nn::digits_cnn(), vec![1, 8, 8])
    };
    let model = Sequential::new(
        &gpu,
        &input,
        specs,
        Init::KaimingUniform { seed: args.seed },
    )?;
    println!("{} parameters", model.params().parameter_count());
    if let Some(d) = dist.as_mut() {
        d.broadcast_parameters(&model)?;
        if root {
            println!(
                "data-parallel over {} ranks: each takes {} of every batch of {}",
                d.world_size(),
                args.batch_size / d.world_size(),
                args.batch_size
            );
        }
    }
    if args.mixed {
        println!("mixed precision: f16 compute, f32 master weights, dynamic loss scale");
    }
    let optimizer = Optimizer::adam(AdamConfig::adam(args.lr));
    let mut trainer = if args.mixed {
        // f16 weight copies, activations and gradients; f32 master weights; dynamic loss scale.
        Trainer::with_mixed_precision(model, optimizer, MixedPrecision::default())?
    } else {
        Trainer::new(model, optimizer)
    };

    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let bar = if root {
        ProgressBar::new((args.epochs * steps_per_epoch) as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  epoch {prefix}  {msg}")
            .expect("a valid template"),
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut loss_curve: Vec<(f32, f32)> = Vec::new();
    let mut accuracy_curve: Vec<(f32, f32)> = Vec::new();
    let start = Instant::now();
    let mut samples = 0usize;
    let (mut all_reduce, mut reduced_steps) = (std::time::Duration::ZERO, 0u32);
    for epoch in 0..args.epochs {
        bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
        order.shuffle(&mut rng);
        for (step, chunk) in order.chunks(args.batch_size).enumerate() {
            x.clear();
            y.clear();
            for &i in chunk {
                x.extend_from_slice(&train.images[i * 64..(i + 1) * 64]);
                y.push(train.labels[i]);
            }
            match dist.as_mut() {
                Some(d) => {
                    // Whole shards only: the last batch of an epoch may lose a few samples.
                    let n = chunk.len() / d.world_size() * d.world_size();
                    if n == 0 {
                        continue;
                    }
                    let (xs, ys) = (d.shard(&x[..n * 64], 64)?, d.shard(&y[..n], 1)?);
                    all_reduce += d.train_step(&mut trainer, xs, ys)?.all_reduce;
                    reduced_steps += 1;
                    samples += ys.len();
                }
                None => {
                    trainer.step(&x, &y)?;
                    samples += chunk.len();
                }
            }
            bar.inc(1);
            // The loss is summed on the GPU; reading it every 10 steps keeps steps from waiting.
            if step % 10 == 9 || step + 1 == steps_per_epoch {
                let loss = trainer.mean_loss()?;
                let t = epoch as f32 + (step + 1) as f32 / steps_per_epoch as f32;
                loss_curve.push((t, loss));
                let rate = samples as f64 / start.elapsed().as_secs_f64();
                bar.set_message(format!("loss {loss:.4}  {rate:.0} samples/s"));
            }
        }
        if !root {
            continue;
        }
        let predicted = trainer.model_mut().predict_classes(&test.images, 512)?;
        let correct = predicted
            .iter()
            .zip(&test.labels)
            .filter(|(p, l)| p == l)
            .count();
        accuracy_curve.push(((epoch + 1) as f32, correct as f32 / test.len() as f32));
    }
    bar.finish();
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(d) = dist.as_ref() {
        let rate = samples as f64 / elapsed;
        println!(
            "rank {}: {rate:.0} samples/s, all-reduce {:.2} ms per step ({} steps)",
            d.rank(),
            all_reduce.as_secs_f64() * 1e3 / f64::from(reduced_steps.max(1)),
            reduced_steps
        );
        let total = d.sum(rate)?;
        if !root {
            return Ok(());
        }
        println!("all {} ranks: {total:.0} samples/s", d.world_size());
    }
    if let Some((scale, skipped)) = trainer.loss_scale()? {
        println!("loss scale {scale}, {skipped} steps skipped for overflow");
    }

    let predicted = trainer.model_mut().predict_classes(&test.images, 512)?;
    let mut confusion = [[0usize; 10]; 10];
    for (&p, &l) in predicted.iter().zip(&test.labels) {
        confusion[l as usize][p as usize] += 1;
    }
    let correct: usize = (0..10).map(|i| confusion[i][i]).sum();
    let accuracy = correct as f64 / test.len() as f64;
    // Every rank's samples (a distributed step trains on the whole batch).
    let all_samples = samples * dist.as_ref().map_or(1, |d| d.world_size());
    println!(
        "trained in {elapsed:.1} s ({:.0} samples/s); test accuracy {:.2}% ({correct}/{})",
        all_samples as f64 / elapsed,
        100.0 * accuracy,
        test.len()
    );
    println!("confusion matrix (rows: true digit, columns: predicted):");
    println!(
        "     {}",
        (0..10).map(|d| format!("{d:>4}")).collect::<String>()
    );
    for (digit, row) in confusion.iter().enumerate() {
        println!(
            "  {digit}: {}",
            row.iter().map(|c| format!("{c:>4}")).collect::<String>()
        );
    }

    std::fs::create_dir_all(&args.out)?;
    let model_path = args.out.join(format!("digits_{kind}.safetensors"));
    trainer.model().save(&model_path)?;
    println!("model saved to {}", model_path.display());
    let plot_path = args.out.join(format!("digits_{kind}.png"));
    plot(&plot_path, kind, &loss_curve, &accuracy_curve)?;
    println!("plot written to {}", plot_path.display());
    Ok(())
}

fn plot(
    path: &std::path::Path,
    kind: &str,
    loss: &[(f32, f32)],
    accuracy: &[(f32, f32)],
) -> Result<()> {
    static FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = accuracy.len().max(1) as f32;
    let max_loss = loss.iter().map(|p| p.1).fold(0.0f32, f32::max).max(1e-3);
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("{kind}: training loss"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f32..epochs, 0f32..max_loss * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("cross-entropy")
        .draw()?;
    chart.draw_series(LineSeries::new(loss.iter().copied(), &BLUE))?;
    let low = accuracy.iter().map(|p| p.1).fold(1.0f32, f32::min).min(0.9);
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("{kind}: test accuracy"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(1f32..epochs.max(2.0), low..1.0f32)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .draw()?;
    chart.draw_series(LineSeries::new(accuracy.iter().copied(), &RED))?;
    chart.draw_series(accuracy.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    root.present()?;
    Ok(())
}
