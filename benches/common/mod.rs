//! Helpers shared by the benches.

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
