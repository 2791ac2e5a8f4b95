//! What every example does first.

/// Mesa's device-select Vulkan layer looks for a Wayland display to pick a default GPU and, on a
/// machine without one (a server, CI), prints `error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment.` twice while wgpu opens Vulkan. wgnn picks its adapter itself, so the examples
/// turn the layer off (`NODEVICE_SELECT=1`) where there is no Wayland display and the variable is
/// not set already. Called first in `main`, before any thread starts: the library never changes
/// the process environment.
pub fn quiet_vulkan_layers() {
    let no_wayland = std::env::var_os("WAYLAND_DISPLAY").is_none();
    if no_wayland && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// Where `train_shakespeare` saves its model by default.
#[allow(dead_code)]
pub const SHAKESPEARE_MODEL: &str = "target/train_shakespeare/shakespeare_gpt.safetensors";

/// The language model saved at `path` with its vocabulary, or, where there is none, one trained
/// here for `steps` steps with `train_shakespeare`'s architecture and settings (say so: it is
/// far from the full run's quality).
#[allow(dead_code)]
pub fn shakespeare_model(
    gpu: &wgnn::Gpu,
    path: &std::path::Path,
    steps: u32,
) -> anyhow::Result<(wgnn::nn::LanguageModel, String)> {
    use rand::{RngExt, SeedableRng};
    use wgnn::nn::{GptConfig, LanguageModel, Optimizer, Trainer, WarmupCosine};
    if path.exists() {
        let (model, vocabulary) = LanguageModel::load(gpu, path)?;
        println!("model: {} ({:?})", path.display(), model.config());
        return Ok((model, vocabulary));
    }
    println!(
        "no model at {}: training one for {steps} steps first (run `cargo run --release \
         --example train_shakespeare` for the full one)",
        path.display()
    );
    let corpus = wgnn::data::CharCorpus::shakespeare()?;
    let (train, _) = corpus.split(0.1)?;
    let config = GptConfig {
        vocab: corpus.vocabulary.len(),
        context: 64,
        dim: 64,
        heads: 4,
        layers: 2,
        activation: wgnn::Activation::Gelu,
        dropout: 0.0,
    };
    let model = LanguageModel::new(gpu, config, 1337)?;
    let lr = 5e-3;
    let mut optimizer = Optimizer::adam(wgnn::ops::AdamConfig {
        beta2: 0.99,
        ..wgnn::ops::AdamConfig::adamw(lr, 0.1)
    });
    optimizer.decay_weights_only(model.model())?;
    let mut trainer = Trainer::new(model, optimizer);
    trainer.set_grad_clip(Some(1.0))?;
    let schedule = WarmupCosine::new(lr, lr / 10.0, steps / 20, steps)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1337);
    let (batch, context) = (16, config.context);
    let started = std::time::Instant::now();
    for step in 0..steps {
        trainer.optimizer_mut().set_lr(schedule.lr_at(step));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let s = rng.random_range(0..train.len() - context - 1);
            x.extend_from_slice(&train[s..s + context]);
            y.extend_from_slice(&train[s + 1..s + context + 1]);
        }
        trainer.step_sequences(&x, &y, context)?;
    }
    println!(
        "trained {steps} steps in {:.0} s, training loss {:.2}",
        started.elapsed().as_secs_f64(),
        trainer.mean_loss()?
    );
    Ok((trainer.into_model(), corpus.vocabulary_string()))
}

/// Opens the default adapter and says which it is.
#[allow(dead_code)]
pub fn open_gpu() -> anyhow::Result<wgnn::Gpu> {
    let gpu = wgnn::Gpu::new()?;
    println!(
        "adapter: {} ({:?})",
        gpu.adapter_info().name,
        gpu.adapter_info().backend
    );
    Ok(gpu)
}

/// A comma-separated list of values (`--concurrency 1,2,4`).
#[allow(dead_code)]
pub fn parse_list<T: std::str::FromStr>(list: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    use anyhow::Context;
    list.split(',')
        .map(|s| s.trim().parse::<T>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{list:?} is not a comma-separated list of numbers"))
}

/// One line of a [`plot_against_load`] figure: its label, colour and points per panel
/// (x: the load, y: the panel's value).
#[allow(dead_code)]
pub struct Series {
    /// The legend's text.
    pub label: &'static str,
    /// The line's colour.
    pub color: plotters::style::RGBColor,
    /// (load, value) for each panel, in panel order.
    pub points: Vec<Vec<(f64, f64)>>,
}

/// Panels side by side (a title and a unit each) of values against the load (`x_axis` says what
/// it is: clients, requests per second) on a log2 axis, one line per series, written as a PNG.
#[allow(dead_code)]
pub fn plot_against_load(
    path: &std::path::Path,
    x_axis: &str,
    panels: &[(&str, &str)],
    series: &[Series],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font does not load"))?;
    let width = 550 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let all = || series.iter().flat_map(|s| s.points.iter().flatten());
    let max_x = all().map(|p| p.0).fold(1.0f64, f64::max).log2();
    let min_x = all()
        .map(|p| p.0.log2().floor())
        .fold(f64::INFINITY, f64::min);
    let min_x = if min_x.is_finite() {
        min_x.min(max_x)
    } else {
        0.0
    };
    for (panel, (area, (title, unit))) in areas.iter().zip(panels).enumerate() {
        let values = || {
            series
                .iter()
                .flat_map(|s| s.points[panel].iter().map(|p| p.1))
        };
        let high = values().fold(0.0f64, f64::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(min_x - 0.25..max_x + 0.25, 0.0..high)?;
        chart
            .configure_mesh()
            .x_labels((max_x - min_x) as usize + 1)
            .x_label_formatter(&|x| format!("{}", (2f64.powf(*x) * 100.0).round() / 100.0))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .light_line_style(WHITE)
            .x_desc(x_axis)
            .y_desc(*unit)
            .draw()?;
        for s in series {
            let color = s.color;
            let points: Vec<(f64, f64)> = s.points[panel]
                .iter()
                .map(|&(x, y)| (x.log2(), y))
                .collect();
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            chart
                .draw_series(LineSeries::new(points, &color))?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// `--distributed`: data-parallel over the ranks of `mpirun -n N` (built with `--features mpi`).
#[cfg(feature = "mpi")]
pub use wgnn::distributed::Distributed;

/// Without the `mpi` feature there is no distributed context: `distributed(true)` refuses.
#[cfg(not(feature = "mpi"))]
#[allow(dead_code)]
pub enum Distributed {}

/// What a distributed step reports (the part the examples print).
#[cfg(not(feature = "mpi"))]
#[allow(dead_code)]
pub struct StepTiming {
    pub all_reduce: std::time::Duration,
}

#[cfg(not(feature = "mpi"))]
#[allow(dead_code)]
impl Distributed {
    pub fn rank(&self) -> usize {
        match *self {}
    }
    pub fn world_size(&self) -> usize {
        match *self {}
    }
    pub fn is_root(&self) -> bool {
        match *self {}
    }
    pub fn gpu(&self) -> wgnn::Result<wgnn::Gpu> {
        match *self {}
    }
    pub fn broadcast_parameters(&mut self, _: &wgnn::nn::Model) -> wgnn::Result<()> {
        match *self {}
    }
    pub fn shard<'a, T>(&self, _: &'a [T], _: usize) -> wgnn::Result<&'a [T]> {
        match *self {}
    }
    pub fn sum(&self, _: f64) -> wgnn::Result<f64> {
        match *self {}
    }
    pub fn train_step(
        &mut self,
        _: &mut wgnn::nn::Trainer,
        _: &[f32],
        _: &[u32],
    ) -> wgnn::Result<StepTiming> {
        match *self {}
    }
    pub fn train_step_micro_batches<M>(
        &mut self,
        _: &mut wgnn::nn::Trainer<M>,
        _: &[wgnn::nn::MicroBatch],
    ) -> wgnn::Result<StepTiming> {
        match *self {}
    }
}

/// The distributed context when `--distributed` was given.
#[allow(dead_code)]
pub fn distributed(flag: bool) -> anyhow::Result<Option<Distributed>> {
    if !flag {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Some(Distributed::init(Default::default())?))
    }
    #[cfg(not(feature = "mpi"))]
    anyhow::bail!(
        "--distributed needs the `mpi` feature (Open MPI or MPICH installed): \
         mpirun -n 2 cargo run --release --features mpi --example NAME -- --distributed"
    )
}
