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

/// The `main` entry point of `wgsl` as a compute pipeline with its layout inferred.
fn compute_pipeline(device: &wgpu::Device, wgsl: &str) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("raw loop"),
        source: wgpu::ShaderSource::Wgsl(wgsl.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("raw loop"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

impl RawLoop {
    /// `n` dispatches of a trivial kernel binding one storage buffer.
    pub fn new(gpu: &Gpu, n: usize) -> Self {
        Self::with_bindings(gpu, n, 1)
    }

    /// `n` dispatches of a trivial kernel that binds a uniform and `storage` storage buffers (as
    /// wgnn's kernels do: a parameter block and 2 to 8 tensors), each dispatch its own buffers.
    pub fn with_bindings(gpu: &Gpu, n: usize, storage: usize) -> Self {
        let device = gpu.device();
        let uniform = storage > 1;
        let mut wgsl = String::new();
        if uniform {
            wgsl.push_str("struct P { a: vec4<f32> }\n@group(0) @binding(0) var<uniform> p: P;\n");
        }
        let first = usize::from(uniform);
        for b in 0..storage {
            wgsl.push_str(&format!(
                "@group(0) @binding({}) var<storage, read_write> x{b}: array<f32>;\n",
                first + b
            ));
        }
        let mut body = String::from("x0[i.x] = x0[i.x] * 0.5 + 1.0");
        for b in 1..storage {
            body.push_str(&format!(" + x{b}[i.x]"));
        }
        if uniform {
            body.push_str(" + p.a.x");
        }
        wgsl.push_str(&format!(
            "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) \
             {{ {body}; }}"
        ));
        let pipeline = compute_pipeline(device, &wgsl);
        let layout = pipeline.get_bind_group_layout(0);
        let mut buffers = Vec::new();
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let mut own = Vec::new();
            if uniform {
                own.push(device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 16,
                    usage: wgpu::BufferUsages::UNIFORM,
                    mapped_at_creation: false,
                }));
            }
            for _ in 0..storage {
                own.push(device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: 256,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }));
            }
            let entries: Vec<wgpu::BindGroupEntry> = own
                .iter()
                .enumerate()
                .map(|(b, buffer)| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: buffer.as_entire_binding(),
                })
                .collect();
            groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            }));
            buffers.extend(own);
        }
        RawLoop {
            pipeline,
            groups,
            _buffers: buffers,
        }
    }

    /// `n` dependent dispatches, as a model's are: dispatch i reads the buffer dispatch i − 1
    /// wrote and two shared ones (weights), writes its own, and binds a uniform, so wgpu tracks a
    /// read-after-write hazard at every step (what a replayed plan pays for too).
    pub fn chained(gpu: &Gpu, n: usize) -> Self {
        let device = gpu.device();
        let wgsl = "struct P { a: vec4<f32> }
             @group(0) @binding(0) var<uniform> p: P;
             @group(0) @binding(1) var<storage, read> src: array<f32>;
             @group(0) @binding(2) var<storage, read> w0: array<f32>;
             @group(0) @binding(3) var<storage, read> w1: array<f32>;
             @group(0) @binding(4) var<storage, read_write> dst: array<f32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) {
                 dst[i.x] = src[i.x] * w0[i.x] + w1[i.x] + p.a.x;
             }";
        let pipeline = compute_pipeline(device, wgsl);
        let layout = pipeline.get_bind_group_layout(0);
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 256,
                usage,
                mapped_at_creation: false,
            })
        };
        let weights = [
            buffer(wgpu::BufferUsages::STORAGE),
            buffer(wgpu::BufferUsages::STORAGE),
        ];
        let values: Vec<wgpu::Buffer> = (0..=n)
            .map(|_| buffer(wgpu::BufferUsages::STORAGE))
            .collect();
        let uniforms: Vec<wgpu::Buffer> = (0..n)
            .map(|_| buffer(wgpu::BufferUsages::UNIFORM))
            .collect();
        let groups = (0..n)
            .map(|i| {
                let bound = [
                    &uniforms[i],
                    &values[i],
                    &weights[0],
                    &weights[1],
                    &values[i + 1],
                ];
                let entries: Vec<wgpu::BindGroupEntry> = bound
                    .iter()
                    .enumerate()
                    .map(|(b, buffer)| wgpu::BindGroupEntry {
                        binding: b as u32,
                        resource: buffer.as_entire_binding(),
                    })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &entries,
                })
            })
            .collect();
        let mut buffers: Vec<wgpu::Buffer> = weights.into_iter().collect();
        buffers.extend(values);
        buffers.extend(uniforms);
        RawLoop {
            pipeline,
            groups,
            _buffers: buffers,
        }
    }

    /// Records every dispatch into one compute pass.
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
