//! Helpers shared by the benches.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use wgnn::nn::LayerSpec;

use wgnn::{Activation, Gpu};

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

/// A raw wgpu loop: `n` prebuilt bind groups of a trivial kernel, dispatched one workgroup each.
pub struct RawLoop {
    pipeline: wgpu::ComputePipeline,
    groups: Vec<wgpu::BindGroup>,
    _buffers: Vec<wgpu::Buffer>,
}

impl RawLoop {
    pub fn new(gpu: &Gpu, n: usize) -> Self {
        let device = gpu.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("raw loop"),
            source: wgpu::ShaderSource::Wgsl(
                "@group(0) @binding(0) var<storage, read_write> x: array<f32>;
                 @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) {
                     x[i.x] = x[i.x] * 0.5 + 1.0;
                 }"
                .into(),
            ),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("raw loop"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let buffers: Vec<wgpu::Buffer> = (0..n)
            .map(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 256,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let groups = buffers
            .iter()
            .map(|b| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: b.as_entire_binding(),
                    }],
                })
            })
            .collect();
        RawLoop {
            pipeline,
            groups,
            _buffers: buffers,
        }
    }

    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for g in &self.groups {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
    }
}

/// Host time of `encode` + submit, waiting for the GPU outside the timed region.
pub fn host_time(gpu: &Gpu, iters: u64, encode: &dyn Fn(&mut wgpu::CommandEncoder)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        encode(&mut encoder);
        gpu.queue().submit([encoder.finish()]);
        total += start.elapsed();
        gpu.wait().expect("wait");
    }
    total
}
