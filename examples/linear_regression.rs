//! Linear regression by gradient descent on the GPU: learn y = 2x from x = 1..5, then predict
//! x = 6, 7, 8. Built from the kernel layer directly: a 1×1 linear layer (matmul with bias), the
//! mean-squared-error gradient, the backward matmul and an SGD update, 100 steps per submission.
//!
//! Run: `cargo run --release --example linear_regression`

mod common;

use anyhow::Result;
use wgnn::ops::{self, Momentum, SgdConfig};
use wgnn::{Batch, DType, Gpu, Tensor};

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let gpu = Gpu::new()?;
    let xs = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x).collect();
    let n = xs.len();
    let x = Tensor::from_slice(&gpu, &xs, &[n, 1])?;
    let y = Tensor::from_slice(&gpu, &ys, &[n, 1])?;
    let w = Tensor::zeros(&gpu, &[1, 1], DType::F32)?; // coefficient
    let b = Tensor::zeros(&gpu, &[1], DType::F32)?; // intercept
    let config = SgdConfig::new(0.05);

    for _ in 0..40 {
        let mut batch = Batch::new(&gpu);
        for _ in 0..100 {
            let options = ops::MatmulOptions {
                bias: Some(&b),
                ..Default::default()
            };
            let pred = ops::matmul(&mut batch, &x, &w, &options)?;
            // d(mean (pred - y)²)/d pred = 2 (pred - y) / n.
            let scale = 2.0 / n as f32;
            let grad = ops::scale_add(&mut batch, scale, &pred, -scale, &y)?;
            let dw = ops::matmul_backward(&mut batch, &x, &w, &grad, Default::default())?.b;
            let db = ops::channel_sum(&mut batch, &grad, 1)?;
            ops::sgd_step(&mut batch, &w, &dw, Momentum::None, &config)?;
            ops::sgd_step(&mut batch, &b, &db, Momentum::None, &config)?;
        }
        batch.submit()?;
    }

    let (coef, intercept) = (w.to_vec::<f32>()?[0], b.to_vec::<f32>()?[0]);
    // A value that rounds to -0.00 prints as 0.00.
    let show = |v: f32| format!("{:.2}", if v.abs() < 0.005 { 0.0 } else { v });
    println!("coefficient: {}", show(coef));
    println!("intercept: {}", show(intercept));
    let new_x = Tensor::from_slice(&gpu, &[6.0f32, 7.0, 8.0], &[3, 1])?;
    let mut batch = Batch::new(&gpu);
    let options = ops::MatmulOptions {
        bias: Some(&b),
        ..Default::default()
    };
    let pred = ops::matmul(&mut batch, &new_x, &w, &options)?;
    batch.submit()?;
    for (x, p) in [6, 7, 8].iter().zip(pred.to_vec::<f32>()?) {
        println!("prediction for x = {x}: {}", show(p));
    }
    Ok(())
}
