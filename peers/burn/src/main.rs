//! wgnn against burn-wgpu on the same shapes with one timing method: the wall clock around one call
//! followed by a wait for the device (wgnn: `Gpu::wait`, burn: `Device::sync`), median of `--runs`
//! (default 5) after two warm-up calls (burn autotunes on its first call of a shape, wgnn on its
//! first call of a shape class, or reads its tuning cache).
//!
//! Each library runs in a child process of its own, alternately (burn, wgnn, burn, wgnn, ... for
//! `--rounds` rounds, default 3), so neither runs beside the other's device threads: in one process,
//! wgnn's matmul measured 20% slower after burn had run than before. The table gives the median of
//! the rounds' medians, and the smallest and largest single call.
//!
//! Run from this directory: `cargo run --release` (burn takes about 20 minutes to build on 2 cores).
//! Both libraries pick their adapter by themselves; on a machine without a GPU both get lavapipe.
//! Options: `--runs N`, `--rounds N`, `--only matmul|conv|softmax`.

use std::collections::BTreeMap;
use std::process::Command;
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

/// Every call's time, after two untimed calls.
fn time(runs: usize, mut call: impl FnMut()) -> Vec<Duration> {
    call();
    call();
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            call();
            start.elapsed()
        })
        .collect()
}

const CASES: [(&str, &str); 5] = [
    ("matmul", "matmul f32 1024³"),
    ("matmul", "matmul f32 1000³"),
    ("conv", "conv fwd 256×1×28×28 → 32, 3×3 pad 1"),
    ("softmax", "softmax fwd 4096×4096"),
    ("softmax", "softmax fwd 256×10"),
];

/// Runs the wanted cases on wgnn; prints `case<TAB>nanoseconds...` lines.
fn run_wgnn(runs: usize, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let gpu = Gpu::new()?;
    let info = gpu.adapter_info();
    eprintln!(
        "wgnn on {} ({:?}, {}), tuning {:?}",
        info.name,
        info.backend,
        info.driver_info,
        gpu.tuning()
    );
    let emit = |case: &str, t: Vec<Duration>| print_times(case, &t);
    if wanted("matmul") {
        for (s, case) in [(1024usize, CASES[0].1), (1000, CASES[1].1)] {
            let a = Tensor::from_f32(&gpu, &random(s * s, 1), &[s, s], DType::F32)?;
            let b = Tensor::from_f32(&gpu, &random(s * s, 2), &[s, s], DType::F32)?;
            emit(
                case,
                time(runs, || {
                    let mut batch = Batch::new(&gpu);
                    let _c = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
                    batch.submit().unwrap();
                    gpu.wait().unwrap();
                }),
            );
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
        emit(
            CASES[2].1,
            time(runs, || {
                let mut batch = Batch::new(&gpu);
                let _y = ops::conv2d(&mut batch, &x, &wt, Some(&bias), &params, Activation::None)
                    .unwrap();
                batch.submit().unwrap();
                gpu.wait().unwrap();
            }),
        );
    }
    if wanted("softmax") {
        for ((rows, cols), case) in [
            ((4096usize, 4096usize), CASES[3].1),
            ((256, 10), CASES[4].1),
        ] {
            let x = Tensor::from_f32(&gpu, &random(rows * cols, 6), &[rows, cols], DType::F32)?;
            emit(
                case,
                time(runs, || {
                    let mut batch = Batch::new(&gpu);
                    let _y = ops::softmax(&mut batch, &x).unwrap();
                    batch.submit().unwrap();
                    gpu.wait().unwrap();
                }),
            );
        }
    }
    Ok(())
}

/// The same cases on burn-wgpu.
fn run_burn(runs: usize, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    eprintln!("burn-wgpu on its default device");
    let emit = |case: &str, t: Vec<Duration>| print_times(case, &t);
    if wanted("matmul") {
        for (s, case) in [(1024usize, CASES[0].1), (1000, CASES[1].1)] {
            let a = BurnTensor::<2>::random([s, s], Distribution::Default, &device);
            let b = BurnTensor::<2>::random([s, s], Distribution::Default, &device);
            emit(
                case,
                time(runs, || {
                    let _c = a.clone().matmul(b.clone());
                    device.sync().unwrap();
                }),
            );
        }
    }
    if wanted("conv") {
        let (n, c, h, w, k) = (256, 1, 28, 28, 32);
        let x = BurnTensor::<4>::random([n, c, h, w], Distribution::Default, &device);
        let wt = BurnTensor::<4>::random([k, c, 3, 3], Distribution::Default, &device);
        let bias = BurnTensor::<1>::random([k], Distribution::Default, &device);
        emit(
            CASES[2].1,
            time(runs, || {
                let _y = burn_conv2d(
                    x.clone(),
                    wt.clone(),
                    Some(bias.clone()),
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                );
                device.sync().unwrap();
            }),
        );
    }
    if wanted("softmax") {
        for ((rows, cols), case) in [
            ((4096usize, 4096usize), CASES[3].1),
            ((256, 10), CASES[4].1),
        ] {
            let x = BurnTensor::<2>::random([rows, cols], Distribution::Default, &device);
            emit(
                case,
                time(runs, || {
                    let _y = activation::softmax(x.clone(), 1);
                    device.sync().unwrap();
                }),
            );
        }
    }
    Ok(())
}

fn print_times(case: &str, t: &[Duration]) {
    let ns: Vec<String> = t.iter().map(|d| d.as_nanos().to_string()).collect();
    println!("{case}\t{}", ns.join("\t"));
}

/// Runs this program for one library and returns each case's call times, by case.
fn child(lib: &str, args: &[String]) -> anyhow::Result<BTreeMap<String, Vec<Duration>>> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--lib")
        .arg(lib)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "the {lib} run failed");
    let mut times = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let mut fields = line.split('\t');
        let case = fields.next().unwrap_or_default().to_string();
        let t: Vec<Duration> = fields
            .filter_map(|f| f.parse().ok())
            .map(Duration::from_nanos)
            .collect();
        times.insert(case, t);
    }
    Ok(times)
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = flag("--runs").map_or(Ok(5), |r| r.parse())?;
    let rounds: usize = flag("--rounds").map_or(Ok(3), |r| r.parse())?;
    let only = flag("--only");
    let wanted = |what: &str| only.as_deref().is_none_or(|o| o == what);
    match flag("--lib").as_deref() {
        Some("wgnn") => return run_wgnn(runs, &wanted),
        Some("burn") => return run_burn(runs, &wanted),
        Some(other) => anyhow::bail!("--lib is wgnn or burn, not {other}"),
        None => {}
    }
    let mut pass_on = vec!["--runs".to_string(), runs.to_string()];
    if let Some(o) = &only {
        pass_on.extend(["--only".to_string(), o.clone()]);
    }
    // case → (per-round medians, all calls) for each library
    type Runs = BTreeMap<String, (Vec<Duration>, Vec<Duration>)>;
    let (mut burn, mut ours): (Runs, Runs) = Default::default();
    for _ in 0..rounds {
        for (lib, into) in [("burn", &mut burn), ("wgnn", &mut ours)] {
            for (case, t) in child(lib, &pass_on)? {
                let entry = into.entry(case).or_default();
                entry.0.push(median(t.clone()));
                entry.1.extend(t);
            }
        }
    }
    println!(
        "median over {rounds} rounds of each round's median of {runs} calls (fastest–slowest call), ms"
    );
    println!("| case | burn-wgpu | wgnn | wgnn speed / burn |");
    println!("|---|---|---|---|");
    for (_, case) in CASES {
        let (Some(b), Some(o)) = (burn.get(case), ours.get(case)) else {
            continue;
        };
        let summary = |(medians, all): &(Vec<Duration>, Vec<Duration>)| {
            let m = median(medians.clone());
            let lo = all.iter().min().copied().unwrap_or_default();
            let hi = all.iter().max().copied().unwrap_or_default();
            (m, format!("{:.2} ({:.2}–{:.2})", ms(m), ms(lo), ms(hi)))
        };
        let ((bm, bs), (om, os)) = (summary(b), summary(o));
        println!(
            "| {case} | {bs} | {os} | {:.2}× |",
            bm.as_secs_f64() / om.as_secs_f64()
        );
    }
    Ok(())
}
