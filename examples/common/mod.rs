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
    use wgnn::nn::{GptConfig, LanguageModel, Optimizer, WarmupCosine};
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
    let mut model = LanguageModel::new(gpu, config, 1337)?;
    model.set_grad_clip(Some(1.0))?;
    let lr = 5e-3;
    let mut optimizer = Optimizer::adam(wgnn::ops::AdamConfig {
        beta2: 0.99,
        ..wgnn::ops::AdamConfig::adamw(lr, 0.1)
    });
    optimizer.decay_weights_only(model.model())?;
    let schedule = WarmupCosine::new(lr, lr / 10.0, steps / 20, steps)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1337);
    let (batch, context) = (16, config.context);
    let started = std::time::Instant::now();
    for step in 0..steps {
        optimizer.set_lr(schedule.lr_at(step));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let s = rng.random_range(0..train.len() - context - 1);
            x.extend_from_slice(&train[s..s + context]);
            y.extend_from_slice(&train[s + 1..s + context + 1]);
        }
        model.train_step(&mut optimizer, &x, &y, context)?;
    }
    println!(
        "trained {steps} steps in {:.0} s, training loss {:.2}",
        started.elapsed().as_secs_f64(),
        model.mean_loss()?
    );
    Ok((model, corpus.vocabulary_string()))
}
