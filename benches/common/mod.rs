//! Helpers shared by the benches.
#![allow(dead_code)]

use wgnn::nn::LayerSpec;
use wgnn::Activation;

/// `n` pseudo-random values in [-scale, scale) (xorshift; never all zeros), reproducible by seed.
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

/// Whether to run the full shape set: always on a GPU, on a CPU adapter only with WGNN_BENCH_FULL=1.
pub fn full_size_set(gpu: &wgnn::Gpu) -> bool {
    let software = gpu.adapter_info().device_type == wgnn::wgpu::DeviceType::Cpu;
    !software || std::env::var("WGNN_BENCH_FULL").is_ok_and(|v| v != "0")
}

fn relu() -> LayerSpec {
    LayerSpec::Activation {
        function: Activation::Relu,
    }
}

/// The benches' MLP: 64-256-256-10 with ReLUs (issue 8's definition).
pub fn mlp() -> Vec<LayerSpec> {
    let linear = |inputs, outputs| LayerSpec::Linear { inputs, outputs };
    vec![
        linear(64, 256),
        relu(),
        linear(256, 256),
        relu(),
        linear(256, 10),
    ]
}

/// The benches' CNN on 8×8 inputs: conv 1→16 and 16→32 (3×3, pad 1, ReLU), flatten, linear
/// 2048→10.
pub fn cnn() -> Vec<LayerSpec> {
    let conv = |in_channels, out_channels| LayerSpec::Conv2d {
        in_channels,
        out_channels,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
    };
    vec![
        conv(1, 16),
        relu(),
        conv(16, 32),
        relu(),
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 2048,
            outputs: 10,
        },
    ]
}
