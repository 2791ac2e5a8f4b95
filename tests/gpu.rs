//! The GPU context: adapter choice errors, wrapping an application's device, the pipeline cache,
//! the timer, and tensor upload/readback.

mod common;

use common::*;
use wgnn::{ops, Batch, DType, Error, Gpu, GpuOptions, GpuTimer, Tensor};

#[test]
fn no_matching_adapter_says_how_to_install_software_vulkan() {
    let options = GpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..GpuOptions::default()
    };
    let err = Gpu::with_options(options).unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("mesa-vulkan-drivers"), "{message}");
}

#[test]
fn wraps_a_device_the_application_owns() {
    let instance =
        wgnn::wgpu::Instance::new(wgnn::wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("GPU tests need an adapter");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&Default::default())).expect("device");
    let gpu = Gpu::from_device(device, queue);
    assert_eq!(
        gpu.limits().max_storage_buffer_binding_size,
        wgnn::wgpu::Limits::default().max_storage_buffer_binding_size
    );
    let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[1, 2]).unwrap();
    let b = Tensor::from_slice(&gpu, &[3.0f32, 4.0], &[2, 1]).unwrap();
    let mut batch = Batch::new(&gpu);
    let c = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
    batch.submit().unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), [11.0]);
    // The default device has no SHADER_F16: f16 work is refused with a typed error.
    if !gpu.supports_f16() {
        let h = Tensor::zeros(&gpu, &[2, 2], DType::F16).unwrap();
        let mut batch = Batch::new(&gpu);
        let r = ops::matmul(&mut batch, &h, &h, &Default::default());
        assert!(
            matches!(
                r,
                Err(Error::UnsupportedFeature {
                    feature: "SHADER_F16",
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

#[test]
fn pipelines_are_compiled_once_per_variant() {
    // Tuning off: exactly the default kernel's pipeline (tuning compiles every candidate's).
    let gpu = Gpu::with_options(wgnn::GpuOptions {
        tuning: wgnn::tune::Tuning::Off,
        ..wgnn::GpuOptions::from_env()
    })
    .expect("GPU tests need an adapter");
    let a = Tensor::full(&gpu, &[20, 12], DType::F32, 0.5).unwrap();
    let b = Tensor::full(&gpu, &[12, 16], DType::F32, 0.25).unwrap();
    let run = || {
        let mut batch = Batch::new(&gpu);
        let c = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
        batch.submit().unwrap();
        c
    };
    let c = run();
    let after_first = gpu.cached_pipelines();
    assert_eq!(after_first, 1);
    run();
    assert_eq!(gpu.cached_pipelines(), after_first);
    assert!(c.to_vec::<f32>().unwrap().iter().all(|&x| x == 1.5));
}

#[test]
fn timer_measures_recorded_work() {
    let gpu = gpu();
    let (mut rng, _) = rng();
    let a = Tensor::from_slice(&gpu, &random(&mut rng, 256 * 256), &[256, 256]).unwrap();
    let mut timer = GpuTimer::new(&gpu);
    let t = timer
        .time(|batch| ops::matmul(batch, &a, &a, &Default::default()).map(drop))
        .unwrap();
    assert!(t.as_nanos() > 0, "{t:?}");
    // A failure while recording is returned, and the timer stays usable.
    let bad = timer.time(|batch| {
        ops::matmul(
            batch,
            &a,
            &Tensor::zeros(&gpu, &[3, 3], DType::F32)?,
            &Default::default(),
        )
        .map(drop)
    });
    assert!(matches!(bad, Err(Error::ShapeMismatch { .. })));
    assert!(timer
        .time(|batch| ops::matmul(batch, &a, &a, &Default::default()).map(drop))
        .is_ok());
}

#[test]
fn upload_readback_and_reshape_round_trip() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let data = random(&mut rng, 7 * 5);
    let t = Tensor::from_slice(&gpu, &data, &[7, 5]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), data, "seed {seed}");
    let r = t.reshape(&[5, 7]).unwrap();
    assert!(r.shares_buffer_with(&t));
    assert!(matches!(
        t.reshape(&[6, 6]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        t.to_vec::<wgnn::f16>(),
        Err(Error::DtypeMismatch { .. })
    ));
    if gpu.supports_f16() {
        // An odd number of f16 elements.
        let h = round_f16(&data[..7]);
        let th = Tensor::from_f32(&gpu, &h, &[7], DType::F16).unwrap();
        assert_eq!(th.to_vec_f32().unwrap(), h);
    }
}

/// Tensors of another context are refused by every recording call, with their own error.
#[test]
fn tensors_of_another_context_are_refused() {
    let gpu = gpu();
    let other = Gpu::new().expect("GPU tests need an adapter");
    let mine = Tensor::full(&gpu, &[4, 4], DType::F32, 1.5).unwrap();
    let theirs = Tensor::full(&other, &[4, 4], DType::F32, 2.5).unwrap();
    let mut batch = Batch::new(&gpu);
    let r = batch.copy(&theirs, &mine);
    assert!(matches!(r, Err(Error::ContextMismatch { .. })), "{r:?}");
    let r = batch.copy(&mine, &theirs);
    assert!(matches!(r, Err(Error::ContextMismatch { .. })), "{r:?}");
    let r = ops::matmul(&mut batch, &mine, &theirs, &Default::default());
    assert!(matches!(r, Err(Error::ContextMismatch { .. })), "{r:?}");
    batch.submit().unwrap();
    assert_eq!(mine.to_vec::<f32>().unwrap(), [1.5; 16]);
}

/// Reading back a tensor that recorded work will write, before that work is submitted, is an
/// error, never stale contents; so is a host write that would overtake recorded work.
#[test]
fn pending_work_is_not_read_back_stale() {
    let gpu = gpu();
    let a = Tensor::full(&gpu, &[2, 2], DType::F32, 1.0).unwrap();
    let b = Tensor::full(&gpu, &[2, 2], DType::F32, 2.0).unwrap();
    let mut batch = Batch::new(&gpu);
    let c = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
    let r = c.to_vec::<f32>();
    assert!(matches!(r, Err(Error::PendingWork { .. })), "{r:?}");
    // Inputs of the pending work can be read, not overwritten.
    assert_eq!(a.to_vec::<f32>().unwrap(), [1.0; 4]);
    let r = a.write(&[3.0f32; 4]);
    assert!(matches!(r, Err(Error::PendingWork { .. })), "{r:?}");
    let copy = Tensor::uninit(&gpu, &[2, 2], DType::F32).unwrap();
    batch.copy(&c, &copy).unwrap();
    assert!(matches!(
        copy.to_vec::<f32>(),
        Err(Error::PendingWork { .. })
    ));
    batch.submit().unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), [4.0; 4]);
    assert_eq!(copy.to_vec::<f32>().unwrap(), [4.0; 4]);
    a.write(&[3.0f32; 4]).unwrap();
    // A batch dropped unsubmitted leaves nothing pending.
    let mut dropped = Batch::new(&gpu);
    let d = ops::matmul(&mut dropped, &a, &b, &Default::default()).unwrap();
    drop(dropped);
    a.write(&[1.0f32; 4]).unwrap();
    assert!(d.to_vec::<f32>().is_ok());
}

/// Idle pool memory stays under its limit: after a run of varied shapes the least recently
/// returned buffers are freed (the pool once kept 788 MiB idle after such a run).
#[test]
fn the_pool_keeps_idle_memory_under_its_limit() {
    let limit = 2 << 20;
    let gpu = Gpu::with_options(GpuOptions {
        pool_idle_limit_bytes: Some(limit),
        ..options()
    })
    .expect("GPU tests need an adapter");
    let mut sizes = Vec::new();
    for i in 0..40usize {
        let n = 1000 + i * 9_000;
        let t = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
        sizes.push(t);
        if sizes.len() > 3 {
            sizes.remove(0);
        }
        let stats = gpu.pool_stats();
        assert!(stats.idle_bytes <= limit, "{stats:?}");
    }
    drop(sizes);
    let stats = gpu.pool_stats();
    assert!(stats.idle_bytes <= limit, "{stats:?}");
    assert!(stats.buffers_freed > 0, "{stats:?}");
    // The most recently returned buffer is kept and reused.
    let kept = stats.idle_buffers;
    assert!(kept > 0, "{stats:?}");
    let again = Tensor::zeros(&gpu, &[1000 + 39 * 9_000], DType::F32).unwrap();
    assert_eq!(gpu.pool_stats().buffers_created, stats.buffers_created);
    drop(again);
    gpu.set_pool_idle_limit(0);
    assert_eq!(gpu.pool_stats().idle_bytes, 0);
    gpu.trim_pool();
}

/// Views into one buffer (a parameter arena) behave as tensors of their own; recorded writes and
/// clears land in order with the recorded work.
#[test]
fn views_recorded_writes_and_clears() {
    let gpu = gpu();
    let align = gpu.limits().min_storage_buffer_offset_alignment as usize / 4;
    let arena = Tensor::full(&gpu, &[4 * align], DType::F32, 7.0).unwrap();
    let a = arena.view(0, &[2, 3]).unwrap();
    let b = arena.view(align, &[3, 2]).unwrap();
    assert!(matches!(
        arena.view(1, &[2]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        arena.view(3 * align, &[align + 1]),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut batch = Batch::new(&gpu);
    batch.write(&a, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let first = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap(); // b still holds 7s
    batch.write(&b, &[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
    let second = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
    batch.clear(&a).unwrap();
    let third = ops::matmul(&mut batch, &a, &b, &Default::default()).unwrap();
    batch.submit().unwrap();
    assert_eq!(first.to_vec::<f32>().unwrap(), [42.0, 42.0, 105.0, 105.0]);
    assert_eq!(second.to_vec::<f32>().unwrap(), [4.0, 5.0, 10.0, 11.0]);
    assert_eq!(third.to_vec::<f32>().unwrap(), [0.0; 4]);
    // Elements of the arena outside the views are untouched.
    let all = arena.to_vec::<f32>().unwrap();
    assert_eq!(all[6], 7.0);
    assert_eq!(all[align + 6], 7.0);
    assert_eq!(all[3 * align], 7.0);
}

/// After the device is lost, every call that makes or fills a tensor (and so every model
/// constructor) reports `DeviceLost`, as readbacks and submissions already did.
#[test]
fn a_lost_device_is_reported_by_every_call() {
    use wgnn::nn::{Init, LayerSpec, Sequential};
    let gpu = Gpu::with_options(options()).expect("GPU tests need an adapter");
    let kept = Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[2]).unwrap();
    gpu.device().destroy();
    let _ = gpu.wait();
    let lost = |r: Result<(), Error>, what: &str| {
        assert!(matches!(r, Err(Error::DeviceLost(_))), "{what}: {r:?}");
    };
    lost(
        Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[2]).map(drop),
        "Tensor::from_slice",
    );
    lost(
        Tensor::zeros(&gpu, &[4], DType::F32).map(drop),
        "Tensor::zeros",
    );
    lost(kept.write(&[3.0f32, 4.0]), "Tensor::write");
    lost(kept.to_vec::<f32>().map(drop), "Tensor::to_vec");
    let layers = vec![LayerSpec::Linear {
        inputs: 4,
        outputs: 2,
    }];
    lost(
        Sequential::new(&gpu, &[4], layers, Init::KaimingUniform { seed: 1 }).map(drop),
        "Sequential::new",
    );
}
