//! The per-dispatch profile: `GpuTimer::profile` and `InferenceSession::profile` time every
//! dispatch in recording order, leave the results as an unprofiled run would, and refuse adapters
//! without timestamp queries with a typed error.

mod common;

use common::gpu;
use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::{Init, LayerSpec, Sequential};
use wgnn::{ops, Activation, Batch, Error, GpuTimer, Tensor};

#[test]
fn every_dispatch_is_timed_in_order() {
    let gpu = gpu();
    let a: Vec<f32> = (0..6 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..5 * 7).map(|i| (i as f32 * 0.21).cos()).collect();
    let ta = Tensor::from_slice(&gpu, &a, &[6, 5]).unwrap();
    let tb = Tensor::from_slice(&gpu, &b, &[5, 7]).unwrap();
    let y = Tensor::from_slice(&gpu, &[1.0f32; 42], &[6, 7]).unwrap();
    // 200 dispatches: more than one query set's 128.
    const AXPYS: usize = 198;
    let mut timer = GpuTimer::new(&gpu);
    let mut product = None;
    let profiled = timer.profile(|batch| {
        let c = ops::matmul(batch, &ta, &tb, &Default::default())?;
        for _ in 0..AXPYS {
            ops::axpy(batch, &y, 0.5, &c)?;
        }
        product = Some(ops::softmax(batch, &c)?);
        Ok(())
    });
    if !gpu.supports_timestamps() {
        assert!(
            matches!(profiled, Err(Error::UnsupportedFeature { .. })),
            "{profiled:?}"
        );
        return;
    }
    let profile = profiled.unwrap();
    assert_eq!(profile.dispatches.len(), AXPYS + 2);
    assert_eq!(profile.dispatches[0].kernel, "matmul");
    assert_eq!(profile.dispatches[1].kernel, "elementwise");
    assert_eq!(profile.dispatches[AXPYS + 1].kernel, "softmax");
    assert!(profile
        .dispatches
        .iter()
        .all(|d| d.workgroups.iter().all(|&n| n >= 1)));
    assert!(profile.total() > std::time::Duration::ZERO);
    assert!(profile.span >= profile.dispatches[AXPYS + 1].time);
    let by_entry = profile.by_entry();
    let axpy_row = by_entry
        .iter()
        .find(|(_, n, _)| *n == AXPYS)
        .expect("the axpys counted under one entry point");
    assert!(axpy_row.0.starts_with("elementwise::"), "{by_entry:?}");
    // The profiled batch computed what an unprofiled one does.
    let mut batch = Batch::new(&gpu);
    let c = ops::matmul(&mut batch, &ta, &tb, &Default::default()).unwrap();
    let y2 = Tensor::from_slice(&gpu, &[1.0f32; 42], &[6, 7]).unwrap();
    for _ in 0..AXPYS {
        ops::axpy(&mut batch, &y2, 0.5, &c).unwrap();
    }
    let want = ops::softmax(&mut batch, &c).unwrap();
    batch.submit().unwrap();
    assert_eq!(
        product.unwrap().to_vec::<f32>().unwrap(),
        want.to_vec::<f32>().unwrap()
    );
    assert_eq!(y.to_vec::<f32>().unwrap(), y2.to_vec::<f32>().unwrap());
}

#[test]
fn a_session_profiles_its_replay_and_still_answers() {
    let gpu = gpu();
    let layers = vec![
        LayerSpec::Linear {
            inputs: 12,
            outputs: 9,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 9,
            outputs: 5,
        },
    ];
    let model = Sequential::new(&gpu, &[12], layers, Init::KaimingUniform { seed: 3 }).unwrap();
    let session = InferenceSession::new(
        model,
        SessionOptions {
            max_batch: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let x: Vec<f32> = (0..3 * 12).map(|i| (i as f32 * 0.13).sin()).collect();
    let profiled = session.profile(&x);
    if !gpu.supports_timestamps() {
        assert!(matches!(profiled, Err(Error::UnsupportedFeature { .. })));
        return;
    }
    let profile = profiled.unwrap();
    assert_eq!(profile.dispatches.len(), session.dispatches_for(3));
    assert_eq!(profile.dispatches[0].kernel, "matmul");
    // The session answers as before after a profiled replay.
    let answer = session.predict(&x).unwrap();
    assert_eq!(answer.classes.len(), 3);
    assert_eq!(answer, session.predict(&x).unwrap());
    // More samples than the largest bucket, or none, are refused.
    assert!(matches!(
        session.profile(&vec![0.5; 5 * 12]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        session.profile(&[]),
        Err(Error::ShapeMismatch { .. })
    ));
}
