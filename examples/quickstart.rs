//! Quickstart: a matmul checked against the CPU, a small network trained on the digits (each
//! training step is one GPU submission), and a prediction.
//!
//! Run: `cargo run --release --example quickstart`

mod common;

use anyhow::{ensure, Result};
use wgnn::data::Digits;
use wgnn::nn::{Init, LayerSpec, Optimizer, Sequential, Trainer};
use wgnn::ops::{self, AdamConfig};
use wgnn::{Activation, Batch, Gpu, Tensor};

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let gpu = Gpu::new()?;
    println!("adapter: {:?}", gpu.adapter_info().name);

    // 1. A matmul: recorded into a batch, submitted once, read back explicitly.
    let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    let b = Tensor::from_slice(&gpu, &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
    let mut batch = Batch::new(&gpu);
    let c = ops::matmul(&mut batch, &a, &b, &Default::default())?;
    batch.submit()?;
    let c = c.to_vec::<f32>()?;
    println!("[[1,2,3],[4,5,6]] x [[1,0],[0,1],[1,1]] = {c:?}");
    ensure!(c == [4.0, 5.0, 10.0, 11.0], "wrong product");

    // 2. Training: a 64-64-10 network on the handwritten digits, three epochs.
    let (train, test) = Digits::load()?.split(0.2, 42);
    let layers = vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 64,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 64,
            outputs: 10,
        },
    ];
    let model = Sequential::new(&gpu, &[64], layers, Init::KaimingUniform { seed: 1 })?;
    let mut trainer = Trainer::new(model, Optimizer::adam(AdamConfig::adam(0.01)));
    for epoch in 1..=3 {
        for (x, y) in train.images.chunks(64 * 64).zip(train.labels.chunks(64)) {
            trainer.step(x, y)?; // upload, forward, loss, backward, Adam: one submission
        }
        println!("epoch {epoch}: mean loss {:.3}", trainer.mean_loss()?);
    }

    // 3. Prediction.
    let predicted = trainer.model_mut().predict_classes(&test.images, 512)?;
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    println!(
        "test accuracy {:.1}% ({correct}/{}); first five: predicted {:?}, true {:?}",
        100.0 * correct as f32 / test.len() as f32,
        test.len(),
        &predicted[..5],
        &test.labels[..5]
    );
    Ok(())
}
