//! A saved classifier's answers for the first test images of the digits, computed in process and
//! written as JSON: the reference that a protocol client's answers from `wgnn-serve` are checked
//! against (`tests/oip/tritonclient_check.py`).
//!
//! `cargo run --example predict_json -- MODEL.safetensors OUT.json [--images N]`

mod common;

use anyhow::{bail, Context, Result};
use wgnn::data::Digits;
use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::Sequential;
use wgnn::Gpu;

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, out) = match args.as_slice() {
        [m, o, ..] => (m.clone(), o.clone()),
        _ => bail!("predict_json MODEL.safetensors OUT.json [--images N]"),
    };
    let images: usize = match args.get(2..) {
        Some([flag, n]) if flag == "--images" => n.parse().context("--images N")?,
        Some([]) | None => 8,
        _ => bail!("predict_json MODEL.safetensors OUT.json [--images N]"),
    };
    if images == 0 || images > 256 {
        bail!("--images must be in 1..=256");
    }
    let gpu = Gpu::new()?;
    let model = Sequential::load(&gpu, &model)?;
    let input_shape = model.input_shape().to_vec();
    let session = InferenceSession::new(model, SessionOptions::default())?;
    let (_, test) = Digits::load()?.split(0.2, 0);
    let x = &test.images[..images * 64];
    let p = session.predict(x)?;
    let shape = [&[images][..], &input_shape].concat();
    let json = serde_json::json!({
        "shape": shape,
        "inputs": x,
        "probabilities": p.outputs,
        "classes": p.classes,
    });
    std::fs::write(&out, json.to_string())?;
    println!("{images} predictions written to {out}");
    Ok(())
}
