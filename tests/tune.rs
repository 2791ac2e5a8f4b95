//! Tuning on the real kernels: the only tests that time candidates (the others pin the fixed
//! defaults). A tuned op computes what the reference computes, a class is tuned once, and a
//! class's tuning stops at its budget.

mod common;

use std::time::Duration;

use common::*;
use wgnn::reference::{self, Array};
use wgnn::tune::{Tuning, TuningBudget};
use wgnn::{ops, Activation, Batch, Gpu, GpuOptions, Tensor};

fn tuning_gpu(budget: TuningBudget) -> Gpu {
    Gpu::with_options(GpuOptions {
        tuning: Tuning::Session,
        tuning_budget: budget,
        ..options()
    })
    .expect("GPU tests need an adapter")
}

fn matmul_matches(gpu: &Gpu, m: usize, k: usize, n: usize) {
    let (mut rng, seed) = rng();
    let a = random(&mut rng, m * k);
    let b = random(&mut rng, k * n);
    let want = reference::matmul(
        &Array::new(&[m, k], a.clone()),
        &Array::new(&[k, n], b.clone()),
        false,
        false,
        None,
        Activation::None,
    );
    let ta = Tensor::from_slice(gpu, &a, &[m, k]).unwrap();
    let tb = Tensor::from_slice(gpu, &b, &[k, n]).unwrap();
    let mut batch = Batch::new(gpu);
    let c = ops::matmul(&mut batch, &ta, &tb, &Default::default()).unwrap();
    batch.submit().unwrap();
    let context = format!("{m}x{k}x{n} seed {seed}");
    assert_close(&c.to_vec::<f32>().unwrap(), &want.data, 1e-4, &context);
}

#[test]
fn a_tuned_matmul_matches_the_reference_and_is_tuned_once() {
    let gpu = tuning_gpu(TuningBudget::default());
    matmul_matches(&gpu, 150, 130, 141);
    let records = gpu.tuning_records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert!(
        record.times.iter().any(|(c, _)| *c == record.chosen),
        "{record:?}"
    );
    // Another shape of the same class takes the choice without timing.
    matmul_matches(&gpu, 140, 129, 137);
    assert_eq!(gpu.tuning_records().len(), 1);
    assert_eq!(gpu.tuning_choices().len(), 1);
}

#[test]
fn a_class_whose_budget_is_spent_keeps_the_fastest_tried() {
    // A budget of nothing: the default candidate runs, every other one is skipped.
    let gpu = tuning_gpu(TuningBudget {
        floor: Duration::ZERO,
        relative: 0.0,
        ceiling: Duration::ZERO,
    });
    matmul_matches(&gpu, 200, 96, 180);
    let record = &gpu.tuning_records()[0];
    assert_eq!(record.times.len(), 1, "{record:?}");
    assert!(!record.skipped.is_empty(), "{record:?}");
    assert_eq!(record.chosen, record.times[0].0);
}

#[test]
fn a_bad_budget_is_refused() {
    let err = Gpu::with_options(GpuOptions {
        tuning_budget: TuningBudget {
            relative: f64::NAN,
            ..TuningBudget::default()
        },
        ..options()
    })
    .unwrap_err();
    assert!(
        matches!(err, wgnn::Error::InvalidArgument { .. }),
        "{err:?}"
    );
}
