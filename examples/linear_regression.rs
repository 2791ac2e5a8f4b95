//! Linear regression with the model API: learn y = 2x from x = 1..5 (one Linear layer, mean
//! squared error, SGD), save the model, load it back, and serve x = 6, 7, 8 through an inference
//! session that returns the model's raw outputs.
//!
//! Run: `cargo run --release --example linear_regression`

mod common;

use anyhow::Result;
use wgnn::infer::{Head, InferenceSession, SessionOptions};
use wgnn::nn::{Init, LayerSpec, LossFunction, Optimizer, Sequential, Targets, Trainer};
use wgnn::ops::SgdConfig;
use wgnn::Gpu;

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let gpu = Gpu::new()?;
    let xs = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x).collect();

    let layers = vec![LayerSpec::Linear {
        inputs: 1,
        outputs: 1,
    }];
    let model = Sequential::new(&gpu, &[1], layers, Init::KaimingUniform { seed: 3 })?;
    let mut trainer =
        Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.05))).with_loss(LossFunction::Mse)?;
    for _ in 0..4000 {
        trainer.step_towards(&xs, Targets::Values(&ys))?; // one submission each
    }
    println!("mean squared error: {:.2e}", trainer.mean_loss()?);

    let params = trainer.model().params().to_host()?;
    // A value that rounds to -0.00 prints as 0.00.
    let show = |v: f32| format!("{:.2}", if v.abs() < 0.005 { 0.0 } else { v });
    println!("coefficient: {}", show(params[0].2[0]));
    println!("intercept: {}", show(params[1].2[0]));

    let dir = std::path::Path::new("target/linear_regression");
    std::fs::create_dir_all(dir)?;
    let path = dir.join("model.safetensors");
    trainer.model().save(&path)?;
    let loaded = Sequential::load(&gpu, &path)?;
    let options = SessionOptions {
        max_batch: 4,
        head: Head::Raw,
        ..SessionOptions::default()
    };
    let session = InferenceSession::new(loaded, options)?;
    let predictions = session.predict(&[6.0, 7.0, 8.0])?;
    for (x, p) in [6, 7, 8].iter().zip(&predictions.outputs) {
        println!("prediction for x = {x}: {}", show(*p));
    }
    Ok(())
}
