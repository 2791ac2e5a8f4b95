//! Helpers shared by the GPU tests: one context per test binary, fresh seeded randomness, poisoned
//! outputs with guard checks, and tolerance checks that say where they failed.
#![allow(dead_code)]

use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgnn::{DType, Gpu, Tensor};

/// The poison written into outputs before a run: a NaN no kernel produces by accident.
pub const POISON: f32 = f32::NAN;

/// The options of the tests' contexts: the environment's (backend, adapter), every new tensor
/// poisoned, and the fixed default kernels (tuning off: a test pins the candidate it checks, and
/// only `tests/tune.rs` times candidates).
pub fn options() -> wgnn::GpuOptions {
    wgnn::GpuOptions {
        poison_new_tensors: true,
        tuning: wgnn::tune::Tuning::Off,
        ..wgnn::GpuOptions::from_env()
    }
}

/// One shared context per test binary (see [`options`]). Fails, never skips, when there is no
/// adapter.
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    let options = options();
    GPU.get_or_init(|| match Gpu::with_options(options) {
        Ok(gpu) => gpu,
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
    .clone()
}

/// Records that `test` skipped its check on this adapter, and why: printed, and appended to the
/// log that CI reads (`WGNN_SKIP_LOG`, by default `skipped.log` in cargo's temporary directory for
/// tests) as `backend<TAB>test<TAB>why`. CI fails a Vulkan run that skipped anything and lists what
/// GL skipped, so a check that cannot run is counted, never silently green.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let backend = format!("{:?}", gpu().adapter_info().backend);
    println!("SKIPPED {test} on {backend}: {why}");
    let path = std::env::var_os("WGNN_SKIP_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped.log"));
    let line = format!("{backend}\t{test}\t{why}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("{test} skipped ({why}), and the skip could not be recorded in {path:?}: {e}");
    }
}

/// The shared context, and where it takes the subgroup paths, a second one held to the portable
/// paths: kernels with both variants are tested on both.
pub fn both_paths() -> Vec<Gpu> {
    static PORTABLE: OnceLock<Gpu> = OnceLock::new();
    let main = gpu();
    if !main.uses_subgroups() {
        return vec![main];
    }
    let portable = PORTABLE
        .get_or_init(|| {
            let options = wgnn::GpuOptions {
                portable_only: true,
                ..options()
            };
            Gpu::with_options(options).expect("GPU tests need an adapter")
        })
        .clone();
    assert!(!portable.uses_subgroups());
    vec![main, portable]
}

/// A generator with a fresh seed each run (or `WGNN_TEST_SEED`), and the seed, to print on failure.
pub fn rng() -> (StdRng, u64) {
    let seed = std::env::var("WGNN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            t ^ (std::process::id() as u64).rotate_left(32)
        });
    (StdRng::seed_from_u64(seed), seed)
}

/// `n` values uniform in [-1, 1).
pub fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Rounds through f16, so a CPU reference sees exactly what an f16 tensor holds.
pub fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| wgnn::f16::from_f32(v).to_f32()).collect()
}

/// An output tensor filled with [`POISON`] (u32::MAX for U32), spare capacity included.
pub fn poisoned(gpu: &Gpu, shape: &[usize], dtype: DType) -> Tensor {
    let value = if dtype == DType::U32 {
        f32::MAX
    } else {
        POISON
    };
    Tensor::full(gpu, shape, dtype, value).expect("poisoned tensor")
}

/// Checks that nothing was written past the tensor's last element (of a poisoned tensor: made with
/// [`poisoned`], or by an op on the [`gpu`] context).
pub fn assert_guard_intact(t: &Tensor, context: &str) {
    let bytes = t.read_capacity_bytes().expect("read capacity");
    let used = t.size_bytes() as usize;
    let tail = &bytes[used..];
    let intact = match t.dtype() {
        DType::F32 => tail
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_nan()),
        DType::F16 => tail
            .chunks_exact(2)
            .all(|c| wgnn::f16::from_le_bytes([c[0], c[1]]).is_nan()),
        DType::U32 => tail.chunks_exact(4).all(|c| c == [0xff; 4]),
    };
    assert!(intact, "{context}: a kernel wrote past the tensor's end");
}

/// |got - want| <= tol · max(|want|, rms(want), 1) everywhere, and no NaN where the reference has
/// none. The RMS term is the normwise scale: an element that is a long sum with cancellation (a
/// 630-term dot product whose partial sums reach ~8 but whose result is ~0.5) carries rounding of
/// the partial sums' size, not of its own.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, context: &str) {
    assert_eq!(got.len(), want.len(), "{context}: length");
    let finite: Vec<f64> = want
        .iter()
        .filter(|w| w.is_finite())
        .map(|&w| f64::from(w))
        .collect();
    let rms =
        (finite.iter().map(|w| w * w).sum::<f64>() / finite.len().max(1) as f64).sqrt() as f32;
    let floor = rms.max(1.0);
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(floor);
        if err.is_nan() || err > worst.1 {
            worst = (i, if err.is_nan() { f32::INFINITY } else { err });
        }
    }
    let (i, err) = worst;
    assert!(
        err <= tol,
        "{context}: element {i} is {} but the reference says {} (error {err:e} > {tol:e}, relative to max(|ref|, rms {rms}, 1))",
        got[i],
        want[i]
    );
}
