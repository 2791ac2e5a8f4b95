//! wgnn against burn-wgpu on the same shapes, in one process, with one timing method: the wall
//! clock around one call followed by a wait for the device (wgnn: `Gpu::wait`, burn:
//! `Device::sync`), median of `--runs` (default 5) after two warm-up calls (burn autotunes on its
//! first call of a shape, wgnn on its first call of a shape class, or reads its tuning cache).
//!
//! Run from this directory: `cargo run --release` (burn takes about 20 minutes to build on 2 cores).
//! Both libraries pick their adapter by themselves; on a machine without a GPU both get lavapipe.
//! Options: `--runs N`, `--only matmul|conv|softmax`.

use std::time::{Duration, Instant};

use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, Device, DeviceKind, Distribution, Tensor as BurnTensor};
use wgnn::ops::{self, Conv2dParams};
use wgnn::{Activation, Batch, DType, Gpu, Tensor};

fn random(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Median, min and max of `runs` timed calls after two untimed ones.
fn time(runs: usize, mut call: impl FnMut()) -> (Duration, Duration, Duration) {
    call();
    call();
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            call();
            start.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[0], t[t.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(case: &str, burn: (Duration, Duration, Duration), ours: (Duration, Duration, Duration)) {
    println!(
        "| {case} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.2}× |",
        ms(burn.0),
        ms(burn.1),
        ms(burn.2),
        ms(ours.0),
        ms(ours.1),
        ms(ours.2),
        burn.0.as_secs_f64() / ours.0.as_secs_f64()
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = flag("--runs").map_or(Ok(5), |r| r.parse())?;
    let only = flag("--only");
    let wanted = |what: &str| only.as_deref().is_none_or(|o| o == what);

    let gpu = Gpu::new()?;
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let info = gpu.adapter_info();
    println!(
        "wgnn on {} ({:?}, {}), tuning {:?}; burn-wgpu on its default device; median of {runs} (min–max), ms",
        info.name, info.backend, info.driver_info, gpu.tuning()
    );
    println!("| case | burn-wgpu | wgnn | wgnn speed / burn |");
    println!("|---|---|---|---|");

    if wanted("matmul") {
        for s in [1024usize, 1000] {
            let a = Tensor::from_f32(&gpu, &random(s * s, 1), &[s, s], DType::F32)?;
            let b = Tensor::from_f32(&gpu, &random(s * s, 2), &[s, s], DType::F32)?;
            let ours = time(runs, || {
                let mut batch = Batch::new(&gpu);
                let _c = ops::matmul(&mut batch, &a, &b).unwrap();
                batch.submit().unwrap();
                gpu.wait().unwrap();
            });
            let ba = BurnTensor::<2>::random([s, s], Distribution::Default, &device);
            let bb = BurnTensor::<2>::random([s, s], Distribution::Default, &device);
            let burn = time(runs, || {
                let _c = ba.clone().matmul(bb.clone());
                device.sync().unwrap();
            });
            report(&format!("matmul f32 {s}³"), burn, ours);
        }
    }

    if wanted("conv") {
        let (n, c, h, w, k) = (256, 1, 28, 28, 32);
        let x = Tensor::from_f32(&gpu, &random(n * c * h * w, 3), &[n, c, h, w], DType::F32)?;
        let wt = Tensor::from_f32(&gpu, &random(k * c * 9, 4), &[k, c, 3, 3], DType::F32)?;
        let bias = Tensor::from_f32(&gpu, &random(k, 5), &[k], DType::F32)?;
        let params = Conv2dParams {
            padding: (1, 1),
            ..Default::default()
        };
        let ours = time(runs, || {
            let mut batch = Batch::new(&gpu);
            let _y = ops::conv2d(&mut batch, &x, &wt, Some(&bias), &params, Activation::None)
                .unwrap();
            batch.submit().unwrap();
            gpu.wait().unwrap();
        });
        let bx = BurnTensor::<4>::random([n, c, h, w], Distribution::Default, &device);
        let bw = BurnTensor::<4>::random([k, c, 3, 3], Distribution::Default, &device);
        let bbias = BurnTensor::<1>::random([k], Distribution::Default, &device);
        let burn = time(runs, || {
            let _y = burn_conv2d(
                bx.clone(),
                bw.clone(),
                Some(bbias.clone()),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
            device.sync().unwrap();
        });
        report("conv fwd 256×1×28×28 → 32, 3×3 pad 1", burn, ours);
    }

    if wanted("softmax") {
        for (rows, cols) in [(4096usize, 4096usize), (256, 10)] {
            let x = Tensor::from_f32(&gpu, &random(rows * cols, 6), &[rows, cols], DType::F32)?;
            let ours = time(runs, || {
                let mut batch = Batch::new(&gpu);
                let _y = ops::softmax(&mut batch, &x).unwrap();
                batch.submit().unwrap();
                gpu.wait().unwrap();
            });
            let bx = BurnTensor::<2>::random([rows, cols], Distribution::Default, &device);
            let burn = time(runs, || {
                let _y = activation::softmax(bx.clone(), 1);
                device.sync().unwrap();
            });
            report(&format!("softmax fwd {rows}×{cols}"), burn, ours);
        }
    }
    Ok(())
}
