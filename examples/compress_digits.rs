//! Makes the digits model cheaper to serve and shows what each way buys. Starting from the CNN
//! that `train_digits` saved (the teacher), it produces f32, f16 and int8 variants, structurally
//! pruned models (50% and 80% of the neurons and channels removed, then fine-tuned), a gradually
//! pruned one (80% of the weights, masks on a cubic schedule while fine-tuning), a distilled
//! student MLP (about a quarter of the teacher's parameters) and the distilled student in int8.
//! For each: test accuracy, parameters, bytes on disk (safetensors), batch-1 latency p50/p99,
//! batch-4096 samples/s and the cost per million predictions at an hourly machine price. Writes
//! the table as Markdown and a PNG of accuracy against latency and against size.
//!
//! Run: `cargo run --release --example train_digits` first, then
//! `cargo run --release --example compress_digits [-- --teacher PATH] [--price-per-hour USD]
//! [--out DIR] [--distill-epochs N] [--distill-lr X] [--temperature T] [--alpha A]`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use wgnn::data::Digits;
use wgnn::infer::{Head, InferenceSession, Precision, SessionOptions};
use wgnn::nn::prune::{apply_structured, magnitude_mask, structured_plan, PruningSchedule};
use wgnn::nn::{Distillation, Init, LayerSpec, Optimizer, SavedModel, Sequential, Trainer};
use wgnn::ops::AdamConfig;
use wgnn::{Activation, Gpu};

struct Row {
    name: String,
    accuracy: f64,
    params: usize,
    disk_bytes: usize,
    p50_ms: f64,
    p99_ms: f64,
    samples_per_s: f64,
    cost_per_million: f64,
}

fn epochs(
    trainer: &mut Trainer,
    train: &Digits,
    n: usize,
    seed: u64,
    mut each_step: impl FnMut(&mut Trainer, u64) -> Result<()>,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0u64;
    for _ in 0..n {
        order.shuffle(&mut rng);
        for chunk in order.chunks(32) {
            let x: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| train.images[i * 64..(i + 1) * 64].to_vec())
                .collect();
            let y: Vec<u32> = chunk.iter().map(|&i| train.labels[i]).collect();
            each_step(trainer, step)?;
            trainer.step(&x, &y)?;
            step += 1;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    gpu: &Gpu,
    name: &str,
    saved: &SavedModel,
    precision: Precision,
    storage: Precision,
    test: &Digits,
    price: f64,
    out: &std::path::Path,
) -> Result<Row> {
    let bytes = saved.to_bytes_as(storage)?;
    let file = out.join(format!(
        "{}.safetensors",
        name.replace([' ', '%', '+', '(', ')', ','], "_")
    ));
    std::fs::write(&file, &bytes)?;
    // The inference path loads the variant back from its file.
    let loaded = SavedModel::read(&file)?;
    let params = loaded.parameters.iter().map(|(_, _, v)| v.len()).sum();
    let one = InferenceSession::new(
        loaded.clone().into_model(gpu)?,
        SessionOptions {
            max_batch: 1,
            precision,
            head: Head::Classifier { top_k: 1 },
            ..SessionOptions::default()
        },
    )?;
    let mut latencies = Vec::new();
    let mut correct = 0usize;
    for i in 0..test.len() {
        let start = Instant::now();
        let p = one.predict(&test.images[i * 64..(i + 1) * 64])?;
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        correct += usize::from(p.classes[0] == test.labels[i]);
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let big = InferenceSession::new(
        loaded.into_model(gpu)?,
        SessionOptions {
            max_batch: 4096,
            precision,
            head: Head::Classifier { top_k: 1 },
            ..SessionOptions::default()
        },
    )?;
    let x: Vec<f32> = test
        .images
        .iter()
        .copied()
        .cycle()
        .take(4096 * 64)
        .collect();
    big.predict(&x)?; // warm-up
    let runs = 3;
    let start = Instant::now();
    for _ in 0..runs {
        big.predict(&x)?;
    }
    let samples_per_s = (4096 * runs) as f64 / start.elapsed().as_secs_f64();
    let row = Row {
        name: name.to_string(),
        accuracy: correct as f64 / test.len() as f64,
        params,
        disk_bytes: bytes.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        samples_per_s,
        cost_per_million: price / 3600.0 / samples_per_s * 1e6,
    };
    println!(
        "{:<34} {:>7.2}% {:>7} params {:>8} B  p50 {:.3} ms  p99 {:.3} ms  {:>8.0} samples/s",
        row.name,
        100.0 * row.accuracy,
        row.params,
        row.disk_bytes,
        row.p50_ms,
        row.p99_ms,
        row.samples_per_s
    );
    Ok(row)
}

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let mut teacher_path = PathBuf::from("target/train_digits/digits_cnn.safetensors");
    let mut price = 0.10f64;
    let mut out = PathBuf::from("target/compress_digits");
    let mut distill = (40usize, 2e-2f32, 4.0f32, 0.7f32); // epochs, lr, temperature, alpha
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--teacher" => teacher_path = PathBuf::from(value()?),
            "--price-per-hour" => price = value()?.parse()?,
            "--out" => out = PathBuf::from(value()?),
            "--distill-epochs" => distill.0 = value()?.parse()?,
            "--distill-lr" => distill.1 = value()?.parse()?,
            "--temperature" => distill.2 = value()?.parse()?,
            "--alpha" => distill.3 = value()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !teacher_path.exists() {
        bail!("no teacher at {}: run `cargo run --release --example train_digits` first, or pass --teacher PATH", teacher_path.display());
    }
    std::fs::create_dir_all(&out)?;
    let gpu = Gpu::new()?;
    println!(
        "adapter: {}; teacher {}",
        gpu.adapter_info().name,
        teacher_path.display()
    );
    let (train, test) = Digits::load()?.split(0.2, 42);
    let teacher = SavedModel::read(&teacher_path)?;
    let mut rows = Vec::new();
    for (name, precision, storage) in [
        ("teacher f32", Precision::F32, Precision::F32),
        ("teacher f16", Precision::F16, Precision::F16),
        ("teacher int8", Precision::Int8, Precision::Int8),
    ] {
        rows.push(measure(
            &gpu, name, &teacher, precision, storage, &test, price, &out,
        )?);
    }

    for fraction in [0.5f32, 0.8] {
        // Structured: remove the weakest neurons and channels, then fine-tune the smaller model.
        let plan = structured_plan(&teacher, fraction)?;
        let small = apply_structured(&teacher, &plan)?;
        let mut trainer = Trainer::new(
            small.into_model(&gpu)?,
            Optimizer::adam(AdamConfig::adam(1e-3)),
        );
        epochs(&mut trainer, &train, 6, 7, |_, _| Ok(()))?;
        let tuned = trainer.model().to_saved()?;
        let name = format!("pruned {:.0}% structured", 100.0 * fraction);
        rows.push(measure(
            &gpu,
            &name,
            &tuned,
            Precision::F32,
            Precision::F32,
            &test,
            price,
            &out,
        )?);
    }
    {
        // Gradual unstructured pruning to 80% of the weights while fine-tuning (masks stay dense).
        let model = teacher.clone().into_model(&gpu)?;
        let mut trainer = Trainer::new(model, Optimizer::adam(AdamConfig::adam(1e-3)));
        let steps_per_epoch = train.len().div_ceil(32) as u64;
        let schedule = PruningSchedule {
            final_sparsity: 0.8,
            start: 0,
            end: 4 * steps_per_epoch,
            every: steps_per_epoch / 2,
        };
        schedule.validate()?;
        epochs(&mut trainer, &train, 6, 8, |t, step| {
            if schedule.updates_at(step) {
                let mask = magnitude_mask(t.model(), schedule.sparsity_at(step))?;
                t.set_pruning_mask(Some(mask))?;
            }
            Ok(())
        })?;
        let tuned = trainer.model().to_saved()?;
        rows.push(measure(
            &gpu,
            "pruned 80% gradual (unstructured)",
            &tuned,
            Precision::F32,
            Precision::F32,
            &test,
            price,
            &out,
        )?);
    }
    // Distillation: an MLP student with about a quarter of the teacher's parameters.
    let student_layers = vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 32,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 32,
            outputs: 10,
        },
    ];
    let student = Sequential::new(
        &gpu,
        &[64],
        student_layers,
        Init::KaimingUniform { seed: 11 },
    )?;
    let mut trainer = Trainer::new(student, Optimizer::adam(AdamConfig::adam(distill.1)));
    // The student reads flat 64-pixel rows; the teacher reads the same values as 1×8×8 images.
    let teacher_model = teacher.clone().into_model(&gpu)?;
    let settings = Distillation {
        temperature: distill.2,
        alpha: distill.3,
    };
    trainer.set_teacher(teacher_model, settings)?;
    epochs(&mut trainer, &train, distill.0, 9, |_, _| Ok(()))?;
    let distilled = trainer.model().to_saved()?;
    rows.push(measure(
        &gpu,
        "distilled MLP",
        &distilled,
        Precision::F32,
        Precision::F32,
        &test,
        price,
        &out,
    )?);
    rows.push(measure(
        &gpu,
        "distilled MLP int8",
        &distilled,
        Precision::Int8,
        Precision::Int8,
        &test,
        price,
        &out,
    )?);

    let mut md = String::from("| variant | test accuracy | parameters | bytes on disk | batch-1 p50 ms | batch-1 p99 ms | batch-4096 samples/s | cost per 1M predictions |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        md += &format!(
            "| {} | {:.2}% | {} | {} | {:.3} | {:.3} | {:.0} | ${:.4} |\n",
            r.name,
            100.0 * r.accuracy,
            r.params,
            r.disk_bytes,
            r.p50_ms,
            r.p99_ms,
            r.samples_per_s,
            r.cost_per_million
        );
    }
    println!(
        "\n{md}\nCost at ${price:.2} per machine-hour, at the batch-4096 rate; adapter {}.",
        gpu.adapter_info().name
    );
    std::fs::write(out.join("compress_digits.md"), &md)?;
    plot(&out.join("compress_digits.png"), &rows)?;
    println!(
        "table written to {}, plot to {}",
        out.join("compress_digits.md").display(),
        out.join("compress_digits.png").display()
    );
    Ok(())
}

fn plot(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    static FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let root = BitMapBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let low = rows.iter().map(|r| r.accuracy).fold(1.0, f64::min).min(0.9) - 0.01;
    let colors = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        CYAN,
        BLACK,
        RGBColor(200, 120, 0),
        RGBColor(90, 90, 200),
    ];
    for (area, title, x_desc, x_of) in [
        (
            &left,
            "accuracy against batch-1 latency",
            "p50 latency (ms)",
            (|r: &Row| r.p50_ms) as fn(&Row) -> f64,
        ),
        (
            &right,
            "accuracy against size",
            "bytes on disk",
            |r: &Row| r.disk_bytes as f64,
        ),
    ] {
        let max_x = rows.iter().map(x_of).fold(0.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_x, low..1.0)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("test accuracy")
            .draw()?;
        for (i, r) in rows.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series([Circle::new((x_of(r), r.accuracy), 5, c.filled())])?
                .label(r.name.clone())
                .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
