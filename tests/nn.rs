//! The training step: the GPU against the CPU reference over several steps, gradient accumulation,
//! a steady state that allocates nothing, and a real model trained on the digits.

mod common;

use common::*;
use wgnn::nn::{Init, LayerSpec, Optimizer, Sequential, Trainer};
use wgnn::ops::{AdamConfig, SgdConfig};
use wgnn::reference::{self, Array};
use wgnn::{Activation, Gpu};

fn mlp() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 48,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 48,
            outputs: 30,
        },
        LayerSpec::Activation {
            function: Activation::Tanh,
        },
        LayerSpec::Linear {
            inputs: 30,
            outputs: 10,
        },
    ]
}

fn cnn() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 6,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        },
        LayerSpec::Conv2d {
            in_channels: 6,
            out_channels: 5,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (0, 0),
        },
        LayerSpec::Activation {
            function: Activation::Gelu,
        },
        LayerSpec::AvgPool2d {
            kernel: (2, 2),
            stride: (1, 1),
        },
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 5,
            outputs: 10,
        },
    ]
}

/// Parameters agree within 1e-4 of max(|value|, rms, 1) after 6 steps: each step's f32 rounding
/// (~1e-6 relative through a few hundred-term dot products) is amplified by at most the learning
/// rate times the curvature, so drift stays far below 1e-4; a wrong gradient moves parameters by
/// lr · |g| ≈ 1e-2 in one step and fails by two orders of magnitude.
#[test]
fn training_matches_the_reference_over_steps() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (name, specs, input) in [("mlp", mlp(), vec![64]), ("cnn", cnn(), vec![1, 8, 8])] {
        for optimizer in [
            reference::nn::Optimizer::Sgd(SgdConfig {
                momentum: 0.9,
                ..SgdConfig::new(0.05)
            }),
            // eps 1e-4, not 1e-8: Adam divides each gradient by its running RMS, so with a tiny
            // eps an element whose gradient is of the size of f32 rounding takes a step of up to
            // lr whose sign that rounding decides (one seed in about 60 drifted 1.07e-4 in 6
            // steps, on every kernel choice). Real gradients here are far above 1e-4.
            reference::nn::Optimizer::Adam(AdamConfig {
                eps: 1e-4,
                ..AdamConfig::adam(0.01)
            }),
        ] {
            let init = Init::KaimingUniform { seed };
            let model = Sequential::new(&gpu, &input, specs.clone(), init).unwrap();
            let mut cpu = reference::nn::Model::new(specs.clone(), init.values(&specs).unwrap());
            let gpu_optimizer = match optimizer {
                reference::nn::Optimizer::Sgd(c) => Optimizer::sgd(c),
                reference::nn::Optimizer::Adam(c) => Optimizer::adam(c),
            };
            let mut trainer = Trainer::new(model, gpu_optimizer);
            let rows = 13;
            let per: usize = input.iter().product();
            let mut cpu_losses = Vec::new();
            for _ in 0..6 {
                let x = random(&mut rng, rows * per);
                let labels: Vec<u32> = random(&mut rng, rows)
                    .iter()
                    .map(|v| ((v + 1.0) * 5.0) as u32 % 10)
                    .collect();
                trainer.step(&x, &labels).unwrap();
                let shape = [&[rows][..], &input].concat();
                cpu_losses.push(cpu.step(&Array::new(&shape, x), &labels, &optimizer));
            }
            let context = format!("{name} {optimizer:?} seed {seed}");
            let mean = trainer.mean_loss().unwrap();
            let want = cpu_losses.iter().sum::<f32>() / 6.0;
            assert_close(&[mean], &[want], 1e-4, &format!("loss {context}"));
            let got = trainer.model().params().to_host().unwrap();
            for ((gname, gshape, gv), (cname, cshape, cv)) in got.iter().zip(&cpu.params) {
                assert_eq!((gname, gshape), (cname, cshape));
                assert_close(gv, cv, 1e-4, &format!("{gname} {context}"));
            }
        }
    }
}

/// Two micro-batches of 8 accumulate to the step of one batch of 16.
#[test]
fn gradient_accumulation_equals_the_large_batch() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let x = random(&mut rng, 16 * 64);
    let labels: Vec<u32> = (0..16).map(|i| (i * 7 % 10) as u32).collect();
    let run = |micro: bool| {
        let model = Sequential::new(&gpu, &[64], mlp(), Init::XavierUniform { seed }).unwrap();
        let mut trainer = Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.1)));
        if micro {
            trainer
                .step_accumulate(&[(&x[..8 * 64], &labels[..8]), (&x[8 * 64..], &labels[8..])])
                .unwrap();
        } else {
            trainer.step(&x, &labels).unwrap();
        }
        let loss = trainer.mean_loss().unwrap();
        (
            trainer.model().params().values().to_vec::<f32>().unwrap(),
            loss,
        )
    };
    let (whole, loss_whole) = run(false);
    let (micro, loss_micro) = run(true);
    let context = format!("seed {seed}");
    assert_close(&micro, &whole, 1e-6, &context);
    assert_close(&[loss_micro], &[loss_whole], 1e-6, &context);
}

/// After the first steps, a step creates no GPU buffer and compiles no pipeline.
#[test]
fn steady_state_steps_allocate_nothing() {
    // Its own context: the shared one's pool also serves the tests running beside this one.
    let gpu = Gpu::new().expect("GPU tests need an adapter");
    let (mut rng, _) = rng();
    let model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::KaimingUniform { seed: 1 }).unwrap();
    let mut trainer = Trainer::new(
        model,
        Optimizer::sgd(SgdConfig {
            momentum: 0.9,
            ..SgdConfig::new(0.01)
        }),
    );
    let x = random(&mut rng, 32 * 64);
    let labels: Vec<u32> = (0..32).map(|i| i % 10).collect();
    let mut after_warmup = None;
    for step in 0..20 {
        trainer.step(&x, &labels).unwrap();
        if step % 5 == 4 {
            assert!(trainer.mean_loss().unwrap().is_finite());
        }
        // Warm-up: the first steps and the first loss readback (its staging buffer).
        if step == 5 {
            after_warmup = Some((gpu.pool_stats().buffers_created, gpu.cached_pipelines()));
        }
    }
    assert_eq!(
        Some((gpu.pool_stats().buffers_created, gpu.cached_pipelines())),
        after_warmup,
        "steady-state steps created buffers or pipelines"
    );
}

/// The MLP learns the digits: at least 90% test accuracy within a few epochs on software Vulkan.
#[test]
fn mlp_learns_the_digits() {
    let gpu = gpu();
    let data = wgnn::data::Digits::load().unwrap();
    assert_eq!(data.len(), 1797);
    let (train, test) = data.split(0.2, 42);
    let specs = vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 64,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 64,
            outputs: 10,
        },
    ];
    let model = Sequential::new(&gpu, &[64], specs, Init::KaimingUniform { seed: 3 }).unwrap();
    let mut trainer = Trainer::new(model, Optimizer::adam(AdamConfig::adam(0.01)));
    let batch = 64;
    for _epoch in 0..8 {
        for (x, y) in train
            .images
            .chunks(batch * 64)
            .zip(train.labels.chunks(batch))
        {
            trainer.step(x, y).unwrap();
        }
    }
    let loss = trainer.mean_loss().unwrap();
    let predicted = trainer
        .model_mut()
        .predict_classes(&test.images, 512)
        .unwrap();
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = correct as f32 / test.len() as f32;
    assert!(
        accuracy >= 0.90,
        "test accuracy {accuracy} (mean loss {loss})"
    );
}

/// Save and load round-trip bit-exactly; bad files are typed errors.
#[test]
fn save_and_load() {
    use wgnn::nn::SavedModel;
    use wgnn::Error;
    let gpu = gpu();
    let (mut rng, _) = rng();
    let mut model =
        Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::KaimingUniform { seed: 9 }).unwrap();
    let dir = std::env::temp_dir().join(format!("wgnn-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cnn.safetensors");
    model.save(&path).unwrap();
    let mut loaded = Sequential::load(&gpu, &path).unwrap();
    assert_eq!(loaded.specs(), model.specs());
    assert_eq!(loaded.input_shape(), model.input_shape());
    let bits = |m: &Sequential| -> Vec<u32> {
        m.params()
            .values()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&loaded), bits(&model));
    let x = random(&mut rng, 5 * 64);
    assert_eq!(
        loaded.predict_classes(&x, 5).unwrap(),
        model.predict_classes(&x, 5).unwrap()
    );

    let bytes = std::fs::read(&path).unwrap();
    let bad = |b: &[u8]| matches!(SavedModel::from_bytes(b), Err(Error::ModelFile { .. }));
    assert!(bad(&bytes[..bytes.len() / 2]), "truncated");
    assert!(bad(&bytes[..5]), "truncated header");
    let mut corrupt = bytes.clone();
    corrupt[10] ^= 0xff;
    assert!(bad(&corrupt), "corrupt header");
    let saved = SavedModel::from_bytes(&bytes).unwrap();
    let mut wrong_shape = saved.clone();
    wrong_shape.parameters[0].1 = vec![6, 1, 9];
    wrong_shape.parameters[0].2.truncate(54);
    assert!(bad(&wrong_shape.to_bytes().unwrap()), "wrong shape");
    let mut missing = saved.clone();
    missing.parameters.pop();
    assert!(bad(&missing.to_bytes().unwrap()), "missing tensor");
    let mut extra = saved.clone();
    extra
        .parameters
        .push(("9.weight".into(), vec![2], vec![1.0, 2.0]));
    assert!(bad(&extra.to_bytes().unwrap()), "a tensor no layer has");
    // An unknown layer type in the metadata.
    let mut unknown = bytes.clone();
    let at = unknown
        .windows(7)
        .position(|w| w == b"Flatten")
        .expect("the header names Flatten");
    unknown[at..at + 7].copy_from_slice(b"Flattex");
    let err = SavedModel::from_bytes(&unknown).unwrap_err();
    assert!(
        err.to_string().contains("unknown layer kind \"Flattex\""),
        "unknown layer: {err}"
    );
    // Wrong dtype: bytes under a layer's name.
    let view = safetensors::tensor::TensorView::new(
        safetensors::tensor::Dtype::U8,
        vec![10, 5],
        &[0u8; 50],
    )
    .unwrap();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "wgnn".to_string());
    meta.insert("input_shape".to_string(), "[5]".to_string());
    meta.insert(
        "layers".to_string(),
        r#"[{"type":"Linear","inputs":5,"outputs":10}]"#.to_string(),
    );
    let f16_file = safetensors::serialize([("0.weight", view)], Some(meta)).unwrap();
    assert!(bad(&f16_file), "wrong dtype");
    assert!(matches!(
        Sequential::load(&gpu, dir.join("no-such-file")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

/// Mixed precision (f16 weights copies, activations and gradients; f32 masters; dynamic loss
/// scale) follows the f32 reference within 2e-2 of max(|value|, rms, 1) after 6 SGD steps: f16
/// rounding (~5e-4 relative per value) reaches the gradients at ~1e-3 of their size, and 6 steps
/// of lr 0.05 move parameters by well under 1e-2 from that; a wrong f16 path (a missed unscale
/// is a factor 1024) fails by far.
#[test]
fn mixed_precision_follows_the_reference() {
    use wgnn::nn::MixedPrecision;
    let gpu = gpu();
    if !gpu.supports_f16() {
        let model = Sequential::new(&gpu, &[64], mlp(), Init::KaimingUniform { seed: 1 }).unwrap();
        let r = Trainer::with_mixed_precision(
            model,
            Optimizer::sgd(SgdConfig::new(0.1)),
            MixedPrecision::default(),
        );
        assert!(matches!(r, Err(wgnn::Error::UnsupportedFeature { .. })));
        skip("mixed_precision_follows_the_reference", "no SHADER_F16");
        return;
    }
    let (mut rng, seed) = rng();
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.05)
    };
    for (name, specs, input) in [("mlp", mlp(), vec![64]), ("cnn", cnn(), vec![1, 8, 8])] {
        let init = Init::KaimingUniform { seed };
        let model = Sequential::new(&gpu, &input, specs.clone(), init).unwrap();
        let mut cpu = reference::nn::Model::new(specs.clone(), init.values(&specs).unwrap());
        let settings = MixedPrecision {
            initial_scale: 1024.0,
            growth_interval: 3,
        };
        let mut trainer =
            Trainer::with_mixed_precision(model, Optimizer::sgd(sgd), settings).unwrap();
        let rows = 13;
        let per: usize = input.iter().product();
        for _ in 0..6 {
            // Inputs exactly representable in f16, so both sides see the same data.
            let x = round_f16(&random(&mut rng, rows * per));
            let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 3) % 10).collect();
            trainer.step(&x, &labels).unwrap();
            let shape = [&[rows][..], &input].concat();
            cpu.step(
                &Array::new(&shape, x),
                &labels,
                &reference::nn::Optimizer::Sgd(sgd),
            );
        }
        let context = format!("{name} mixed precision seed {seed}");
        // Six good steps with growth every 3: the scale doubled twice, nothing was skipped.
        assert_eq!(
            trainer.loss_scale().unwrap(),
            Some((4096.0, 0)),
            "{context}"
        );
        let got = trainer.model().params().to_host().unwrap();
        for ((gname, _, gv), (_, _, cv)) in got.iter().zip(&cpu.params) {
            assert_close(gv, cv, 2e-2, &format!("{gname} {context}"));
        }
    }
}

/// A loss scale so large that the f16 gradients overflow: the step is skipped on the GPU (the
/// weights stay bit for bit) and the scale halves.
#[test]
fn mixed_precision_skips_an_overflowing_step() {
    use wgnn::nn::MixedPrecision;
    let gpu = gpu();
    if !gpu.supports_f16() {
        skip("mixed_precision_skips_an_overflowing_step", "no SHADER_F16");
        return;
    }
    let (mut rng, _) = rng();
    let model = Sequential::new(&gpu, &[64], mlp(), Init::KaimingUniform { seed: 5 }).unwrap();
    let before = model.params().values().to_vec::<f32>().unwrap();
    let settings = MixedPrecision {
        initial_scale: 16_777_216.0,
        growth_interval: 2000,
    };
    let mut trainer =
        Trainer::with_mixed_precision(model, Optimizer::sgd(SgdConfig::new(0.1)), settings)
            .unwrap();
    let x = random(&mut rng, 8 * 64);
    let labels: Vec<u32> = (0..8).collect();
    trainer.step(&x, &labels).unwrap();
    assert_eq!(trainer.loss_scale().unwrap(), Some((8_388_608.0, 1)));
    assert_eq!(
        trainer.model().params().values().to_vec::<f32>().unwrap(),
        before
    );
    // The scale keeps halving until the gradients fit, then steps update the weights.
    for _ in 0..30 {
        trainer.step(&x, &labels).unwrap();
    }
    let (scale, skipped) = trainer.loss_scale().unwrap().unwrap();
    assert!(
        scale <= 4_194_304.0 && (2..30).contains(&skipped),
        "scale {scale}, {skipped} skipped"
    );
    assert_ne!(
        trainer.model().params().values().to_vec::<f32>().unwrap(),
        before
    );
}

/// f16 and int8 storage round-trip to the values they stand for (f16 rounding; per-channel int8),
/// and an int8 file re-quantizes to exactly the same int8 weights.
#[test]
fn saved_storages_round_trip() {
    use wgnn::nn::SavedModel;
    use wgnn::Precision;
    let gpu = gpu();
    let model = Sequential::new(&gpu, &[1, 8, 8], cnn(), Init::KaimingUniform { seed: 4 }).unwrap();
    let saved = model.to_saved().unwrap();
    let f32_bytes = saved.to_bytes_as(Precision::F32).unwrap();
    let f16_bytes = saved.to_bytes_as(Precision::F16).unwrap();
    let i8_bytes = saved.to_bytes_as(Precision::Int8).unwrap();
    assert!(f16_bytes.len() < f32_bytes.len() && i8_bytes.len() < f16_bytes.len());
    let f16 = SavedModel::from_bytes(&f16_bytes).unwrap();
    for ((_, _, a), (_, _, b)) in f16.parameters.iter().zip(&saved.parameters) {
        assert_eq!(a, &round_f16(b));
    }
    let i8 = SavedModel::from_bytes(&i8_bytes).unwrap();
    for ((name, shape, a), (_, _, b)) in i8.parameters.iter().zip(&saved.parameters) {
        if name.ends_with("weight") {
            let k = b.len() / shape[0];
            let (q, scales) = wgnn::ops::quantize_int8(b, shape[0], k);
            let want: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, &v)| f32::from(v) * scales[i / k])
                .collect();
            assert_eq!(a, &want, "{name}");
            let (q2, scales2) = wgnn::ops::quantize_int8(a, shape[0], k);
            assert_eq!(
                (q2, scales2),
                (q, scales),
                "{name}: re-quantization is exact"
            );
        } else {
            assert_eq!(a, b, "{name}");
        }
    }
    // A missing scale is a typed error.
    let mut no_scale = i8_bytes.clone();
    let at = no_scale
        .windows(12)
        .position(|w| w == b"0.weight_sca")
        .unwrap();
    no_scale[at] = b'9';
    assert!(matches!(
        SavedModel::from_bytes(&no_scale),
        Err(wgnn::Error::ModelFile { .. })
    ));
}

/// Numbers in an architecture are checked before anything is made: layers of size zero, a
/// zero-sided window, and a layer too large for the adapter (asked of the host only after the
/// check: a Linear 2^20 -> 2^20 would ask for 4 TiB).
#[test]
fn architectures_are_checked_before_anything_is_made() {
    use wgnn::Error;
    let gpu = gpu();
    let init = Init::KaimingUniform { seed: 1 };
    let linear = |inputs, outputs| LayerSpec::Linear { inputs, outputs };
    let cases: Vec<(&str, Vec<usize>, Vec<LayerSpec>)> = vec![
        ("Linear 4 -> 0", vec![4], vec![linear(4, 0)]),
        ("Linear 0 -> 4", vec![4], vec![linear(0, 4)]),
        (
            "Conv2d with 0 output channels",
            vec![1, 4, 4],
            vec![LayerSpec::Conv2d {
                in_channels: 1,
                out_channels: 0,
                kernel: (3, 3),
                stride: (1, 1),
                padding: (0, 0),
            }],
        ),
        (
            "Conv2d with stride 0",
            vec![1, 4, 4],
            vec![LayerSpec::Conv2d {
                in_channels: 1,
                out_channels: 2,
                kernel: (3, 3),
                stride: (0, 1),
                padding: (0, 0),
            }],
        ),
        (
            "a pooling window with a zero side",
            vec![1, 4, 4],
            vec![LayerSpec::AvgPool2d {
                kernel: (2, 0),
                stride: (1, 1),
            }],
        ),
        ("an input side of 0", vec![0], vec![linear(4, 2)]),
        ("no layers", vec![4], vec![]),
    ];
    for (what, input, layers) in cases {
        let err = Sequential::new(&gpu, &input, layers.clone(), init).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{what}: {err:?}"
        );
        if !layers.is_empty() {
            assert!(
                init.values(&layers).is_err() || input.contains(&0),
                "{what}"
            );
        }
    }
    // The message says what is wrong with what was passed.
    let err = Sequential::new(
        &gpu,
        &[1, 4, 4],
        vec![LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 2,
            kernel: (3, 3),
            stride: (0, 1),
            padding: (0, 0),
        }],
        init,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("stride must be at least 1"),
        "{err}"
    );
    for (inputs, outputs) in [(1 << 20, 1 << 20), (65_536, 32_768)] {
        let err =
            Sequential::new(&gpu, &[inputs], vec![linear(inputs, outputs)], init).unwrap_err();
        assert!(
            matches!(err, Error::LimitExceeded { .. }),
            "Linear {inputs} -> {outputs}: {err:?}"
        );
    }
}

/// Labels are on the host before the upload: a label past the classes is refused before anything
/// runs (it would make the loss and every parameter NaN), and so is an empty or misshapen batch,
/// with a message about what was passed.
#[test]
fn bad_labels_and_batches_are_refused_before_the_step() {
    use wgnn::Error;
    let gpu = gpu();
    let model = Sequential::new(&gpu, &[64], mlp(), Init::KaimingUniform { seed: 2 }).unwrap();
    let before = model.params().values().to_vec::<f32>().unwrap();
    let mut trainer = Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.1)));
    let x = vec![0.25f32; 3 * 64];
    let err = trainer.step(&x, &[1, 10, 2]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("label 10"), "{err}");
    let err = trainer.step(&[], &[]).unwrap_err();
    assert!(err.to_string().contains("no samples"), "{err}");
    let err = trainer.step(&x[..100], &[1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("x holds 100 values"), "{err}");
    // Nothing ran: the parameters are bit for bit the same, and a good step still works.
    assert_eq!(
        trainer.model().params().values().to_vec::<f32>().unwrap(),
        before
    );
    trainer.step(&x, &[1, wgnn::ops::IGNORE_INDEX, 9]).unwrap();
    assert!(trainer.mean_loss().unwrap().is_finite());
}

/// In mixed precision, a step skipped for overflow does not count (as PyTorch's GradScaler, which
/// skips `optimizer.step()`): a run whose first steps overflow ends bit for bit where a run that
/// starts at the scale they settled on ends, over the same applied batches: Adam's bias
/// corrections and SGD's first momentum step (with dampening) number the applied steps only.
#[test]
fn mixed_precision_skipped_steps_do_not_count() {
    use wgnn::nn::MixedPrecision;
    let gpu = gpu();
    if !gpu.supports_f16() {
        skip(
            "mixed_precision_skipped_steps_do_not_count",
            "no SHADER_F16",
        );
        return;
    }
    let (mut rng, seed) = rng();
    let rows = 16;
    let batches: Vec<(Vec<f32>, Vec<u32>)> = (0..12)
        .map(|_| {
            let x = round_f16(&random(&mut rng, rows * 64));
            let labels = (0..rows as u32).map(|i| (i * 7) % 10).collect();
            (x, labels)
        })
        .collect();
    for (name, optimizer) in [
        (
            "adam",
            (|| Optimizer::adam(AdamConfig::adam(0.01))) as fn() -> Optimizer,
        ),
        ("sgd with momentum and dampening", || {
            Optimizer::sgd(SgdConfig {
                momentum: 0.9,
                dampening: 0.5,
                ..SgdConfig::new(0.05)
            })
        }),
    ] {
        let model = || Sequential::new(&gpu, &[64], mlp(), Init::KaimingUniform { seed }).unwrap();
        let trainer = |scale| {
            let settings = MixedPrecision {
                initial_scale: scale,
                growth_interval: 2000,
            };
            Trainer::with_mixed_precision(model(), optimizer(), settings).unwrap()
        };
        // 2^20: the f16 gradients overflow for the first few steps.
        let mut skipping = trainer(1_048_576.0);
        let mut applied = Vec::new();
        let mut skipped = 0;
        for (x, labels) in &batches {
            skipping.step(x, labels).unwrap();
            let (_, now) = skipping.loss_scale().unwrap().unwrap();
            if now == skipped {
                applied.push((x, labels));
            }
            skipped = now;
        }
        let context = format!("{name}: seed {seed}, {skipped} steps skipped");
        assert!((1..batches.len() as u32).contains(&skipped), "{context}");
        let (scale, _) = skipping.loss_scale().unwrap().unwrap();
        let mut direct = trainer(scale);
        for (x, labels) in applied {
            direct.step(x, labels).unwrap();
        }
        assert_eq!(direct.loss_scale().unwrap(), Some((scale, 0)), "{context}");
        assert_eq!(
            skipping.model().params().values().to_vec::<f32>().unwrap(),
            direct.model().params().values().to_vec::<f32>().unwrap(),
            "{context}"
        );
    }
}

/// A regressor: MSE and Huber steps follow the reference (a Linear 5 -> 3 against f32 targets),
/// and y = 2x learned from x = 1..5 is served with raw outputs (6, 7, 8 -> 12, 14, 16).
#[test]
fn a_regression_model_trains_with_mse_and_serves_raw_outputs() {
    use wgnn::infer::{Head, InferenceSession, SessionOptions};
    use wgnn::nn::{LossFunction, Targets};
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (loss, regression) in [
        (LossFunction::Mse, wgnn::ops::Regression::Mse),
        (
            LossFunction::Huber { delta: 0.5 },
            wgnn::ops::Regression::Huber { delta: 0.5 },
        ),
    ] {
        let specs = vec![LayerSpec::Linear {
            inputs: 5,
            outputs: 3,
        }];
        let init = Init::XavierUniform { seed };
        let model = Sequential::new(&gpu, &[5], specs.clone(), init).unwrap();
        let mut cpu = init.values(&specs).unwrap();
        let sgd = SgdConfig::new(0.1);
        let mut trainer = Trainer::new(model, Optimizer::sgd(sgd))
            .with_loss(loss)
            .unwrap();
        let rows = 9;
        for _ in 0..4 {
            let x = random(&mut rng, rows * 5);
            let t: Vec<f32> = random(&mut rng, rows * 3).iter().map(|v| v * 2.0).collect();
            trainer.step_towards(&x, Targets::Values(&t)).unwrap();
            // The reference: y = x·Wᵀ + b, the loss's gradient, dW = gᵀ·x, db = Σ g.
            let xa = Array::new(&[rows, 5], x);
            let w = Array::new(&[3, 5], cpu[0].2.clone());
            let y = reference::matmul(&xa, &w, false, true, Some(&cpu[1].2), Activation::None);
            let (_, g) = reference::loss::regression(&y, &t, regression);
            let (_, dw) = reference::matmul_backward(&xa, &w, &g, false, true);
            let db = reference::reduce::channel_sum(&g, 1).data;
            for (p, grad) in cpu.iter_mut().zip([dw.data, db]) {
                reference::optim::sgd_step(&mut p.2, &grad, &mut vec![0.0; grad.len()], &sgd, true);
            }
        }
        let got = trainer.model().params().to_host().unwrap();
        for ((name, _, g), (_, _, want)) in got.iter().zip(&cpu) {
            assert_close(g, want, 1e-5, &format!("{loss:?} {name} seed {seed}"));
        }
        // Labels are not values.
        assert!(matches!(
            trainer.step(&[0.0; 5], &[1]),
            Err(wgnn::Error::InvalidArgument { .. })
        ));
    }
    // y = 2x, served raw.
    let specs = vec![LayerSpec::Linear {
        inputs: 1,
        outputs: 1,
    }];
    let model = Sequential::new(&gpu, &[1], specs, Init::KaimingUniform { seed: 3 }).unwrap();
    let mut trainer = Trainer::new(model, Optimizer::adam(AdamConfig::adam(0.1)))
        .with_loss(LossFunction::Mse)
        .unwrap();
    let xs = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    let ys: Vec<f32> = xs.iter().map(|x| 2.0 * x).collect();
    for _ in 0..400 {
        trainer.step_towards(&xs, Targets::Values(&ys)).unwrap();
    }
    let options = SessionOptions {
        max_batch: 4,
        head: Head::Raw,
        ..SessionOptions::default()
    };
    let session = InferenceSession::new(trainer.into_model(), options).unwrap();
    let p = session.predict(&[6.0, 7.0, 8.0]).unwrap();
    assert!(p.classes.is_empty() && p.top_k.is_empty());
    for (got, want) in p.outputs.iter().zip([12.0f32, 14.0, 16.0]) {
        assert!((got - want).abs() < 0.05, "{:?}", p.outputs);
    }
}

/// A model saved before the model API changed (tests/fixtures, f32 and int8 storage) loads and
/// predicts what it predicted then.
#[test]
fn a_model_saved_before_the_model_api_loads_and_predicts_the_same() {
    let gpu = gpu();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let logits =
        std::fs::read_to_string(format!("{dir}/cnn_saved_2026_12_05_logits.jsonl")).unwrap();
    let files = [
        "cnn_saved_2026_12_05.safetensors",
        "cnn_saved_2026_12_05_int8.safetensors",
    ];
    for (file, want) in files.iter().zip(logits.lines()) {
        let want: Vec<f32> = serde_json::from_str(want).unwrap();
        let mut model = Sequential::load(&gpu, format!("{dir}/{file}")).unwrap();
        assert_eq!(model.specs().map(|s| s.len()), Some(7), "{file}");
        let x: Vec<f32> = (0..5 * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let tx = wgnn::Tensor::from_slice(&gpu, &x, &[5, 1, 8, 8]).unwrap();
        let mut batch = wgnn::Batch::new(&gpu);
        let y = model.forward(&mut batch, &tx, false).unwrap();
        batch.submit().unwrap();
        assert_close(&y.to_vec::<f32>().unwrap(), &want, 1e-5, file);
        assert_eq!(
            model.predict_classes(&x, 5).unwrap(),
            [0, 1, 0, 2, 0],
            "{file}"
        );
    }
}

/// A step whose update the optimizer refuses (a negative learning rate) drops its batch, loss
/// included: it does not count in the mean loss, which stays the good steps' mean (it read half
/// before: the refused step was counted).
#[test]
fn a_refused_update_does_not_count_in_the_mean_loss() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let x = random(&mut rng, 16 * 64);
    let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
    let trainer = |seed| {
        let model = Sequential::new(&gpu, &[64], mlp(), Init::KaimingUniform { seed }).unwrap();
        Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.1)))
    };
    let mut alone = trainer(seed);
    alone.step(&x, &labels).unwrap();
    let want = alone.mean_loss().unwrap();
    let mut refused = trainer(seed);
    refused.step(&x, &labels).unwrap();
    refused.optimizer_mut().set_lr(-1.0);
    assert!(matches!(
        refused.step(&x, &labels),
        Err(wgnn::Error::InvalidArgument { .. })
    ));
    let got = refused.mean_loss().unwrap();
    assert_close(&[got], &[want], 1e-6, &format!("seed {seed}"));
}

/// A model fused for inference only (GELU in a Linear's epilogue, as a decoder's copy is) refuses
/// a training step with a typed error instead of a wrong gradient, and predicts as before.
#[test]
fn a_model_fused_for_inference_does_not_train() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let specs = vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 16,
        },
        LayerSpec::Activation {
            function: Activation::Gelu,
        },
        LayerSpec::Linear {
            inputs: 16,
            outputs: 10,
        },
    ];
    let mut model = Sequential::new(&gpu, &[64], specs, Init::KaimingUniform { seed }).unwrap();
    let x = random(&mut rng, 3 * 64);
    let before = model.predict_classes(&x, 3).unwrap();
    model.fuse_for_inference();
    assert_eq!(model.predict_classes(&x, 3).unwrap(), before);
    let mut trainer = Trainer::new(model, Optimizer::sgd(SgdConfig::new(0.1)));
    assert!(matches!(
        trainer.step(&x, &[1, 2, 3]),
        Err(wgnn::Error::InvalidArgument { .. })
    ));
}
