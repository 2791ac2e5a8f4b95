//! Pruning and distillation: masks that hold through training, structured pruning that equals the
//! masked original, and a distillation step against the CPU reference.

mod common;

use common::*;
use wgnn::nn::prune::{
    apply_structured, magnitude_mask, mask_structured, structured_plan, PruningSchedule,
};
use wgnn::nn::{Distillation, Init, LayerSpec, Optimizer, SavedModel, Sequential, Trainer};
use wgnn::ops::SgdConfig;
use wgnn::reference::{self, Array};
use wgnn::Activation;

fn relu() -> LayerSpec {
    LayerSpec::Activation {
        function: Activation::Relu,
    }
}

fn mlp(hidden: usize) -> Vec<LayerSpec> {
    vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: hidden,
        },
        relu(),
        LayerSpec::Linear {
            inputs: hidden,
            outputs: 10,
        },
    ]
}

fn cnn() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 8,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        },
        relu(),
        LayerSpec::Conv2d {
            in_channels: 8,
            out_channels: 6,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        },
        relu(),
        LayerSpec::MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        },
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 96,
            outputs: 20,
        },
        LayerSpec::Activation {
            function: Activation::Gelu,
        },
        LayerSpec::Linear {
            inputs: 20,
            outputs: 10,
        },
    ]
}

#[test]
fn masked_weights_stay_zero_through_training() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let model = Sequential::new(&gpu, &[64], mlp(40), Init::KaimingUniform { seed }).unwrap();
    let before = model.params().to_host().unwrap();
    let mask = magnitude_mask(&model, 0.5).unwrap();
    assert!((mask.sparsity - 0.5).abs() < 0.01, "{}", mask.sparsity);
    let sgd = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.1)
    };
    let mut trainer = Trainer::new(model, Optimizer::sgd(sgd));
    trainer.set_pruning_mask(Some(mask)).unwrap();
    for _ in 0..10 {
        let x = random(&mut rng, 16 * 64);
        let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
        trainer.step(&x, &labels).unwrap();
    }
    let after = trainer.model().params().to_host().unwrap();
    for ((name, _, b), (_, _, a)) in before.iter().zip(&after) {
        if !name.ends_with("weight") {
            continue;
        }
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert_eq!(
            zeros,
            b.len() / 2,
            "{name}: half the weights stay exactly zero (seed {seed})"
        );
        // The kept half is the larger half of the original weights, and it trained.
        let mut mags: Vec<f32> = b.iter().map(|v| v.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let threshold = mags[b.len() / 2];
        for (x, y) in b.iter().zip(a) {
            if x.abs() > threshold {
                assert_ne!(*y, 0.0, "{name}: a large weight was pruned (seed {seed})");
            }
        }
        assert!(
            a.iter().zip(b).any(|(y, x)| y != x && *y != 0.0),
            "{name} did not train"
        );
    }
}

#[test]
fn the_schedule_prunes_gradually() {
    let s = PruningSchedule {
        final_sparsity: 0.8,
        start: 10,
        end: 110,
        every: 10,
    };
    s.validate().unwrap();
    for bad in [
        PruningSchedule {
            final_sparsity: f32::NAN,
            ..s
        },
        PruningSchedule {
            final_sparsity: 1.5,
            ..s
        },
        PruningSchedule { end: 5, ..s },
        PruningSchedule { every: 0, ..s },
    ] {
        assert!(
            matches!(bad.validate(), Err(wgnn::Error::InvalidArgument { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(s.sparsity_at(0), 0.0);
    assert_eq!(s.sparsity_at(10), 0.0);
    assert!((s.sparsity_at(110) - 0.8).abs() < 1e-6);
    assert_eq!(s.sparsity_at(500), s.sparsity_at(110));
    let steps: Vec<f32> = (10..=110).step_by(10).map(|t| s.sparsity_at(t)).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    // Cubic: most of the pruning happens early.
    assert!(s.sparsity_at(60) > 0.6);
    assert!(s.updates_at(30) && !s.updates_at(35) && !s.updates_at(120));
}

/// A structurally pruned model (neurons and channels removed) computes what the masked original
/// computes, on the CPU reference, and has fewer parameters.
#[test]
fn structured_pruning_equals_the_masked_original() {
    let (mut rng, seed) = rng();
    let layers = cnn();
    let original = SavedModel {
        input_shape: vec![1, 8, 8],
        layers: layers.clone(),
        parameters: Init::KaimingUniform { seed }.values(&layers).unwrap(),
    };
    for fraction in [0.5f32, 0.8] {
        let plan = structured_plan(&original, fraction).unwrap();
        assert_eq!(plan.keep.len(), 3, "every parametric layer but the last");
        let masked = mask_structured(&original, &plan).unwrap();
        let small = apply_structured(&original, &plan).unwrap();
        let count = |m: &SavedModel| m.parameters.iter().map(|(_, _, v)| v.len()).sum::<usize>();
        assert!(count(&small) < count(&original));
        // The small model is a valid model (shapes chain).
        let gpu = gpu();
        Sequential::with_parameters(
            &gpu,
            &small.input_shape,
            small.layers.clone(),
            small.parameters.clone(),
        )
        .unwrap();
        let x = Array::new(&[5, 1, 8, 8], random(&mut rng, 5 * 64));
        let run = |m: &SavedModel| {
            reference::nn::Model::new(m.layers.clone(), m.parameters.clone()).forward(&x)
        };
        let context = format!("fraction {fraction} seed {seed}");
        assert_close(&run(&small).data, &run(&masked).data, 1e-5, &context);
    }
    // A plan of another model, or units out of range, is a typed error, not a panic.
    let bad = wgnn::nn::prune::StructuredPlan {
        keep: vec![(1, vec![0])],
    };
    assert!(matches!(
        apply_structured(&original, &bad),
        Err(wgnn::Error::InvalidArgument { .. })
    ));
    let bad = wgnn::nn::prune::StructuredPlan {
        keep: vec![(0, vec![3, 99])],
    };
    assert!(matches!(
        mask_structured(&original, &bad),
        Err(wgnn::Error::InvalidArgument { .. })
    ));
}

/// One distillation step on the GPU against the reference: the gradient is α · soft + (1 − α) ·
/// hard, with the teacher's forward in the same step.
#[test]
fn distillation_step_matches_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let settings = Distillation {
        temperature: 2.0,
        alpha: 0.7,
    };
    let student_init = Init::XavierUniform { seed };
    let teacher_init = Init::KaimingUniform { seed: seed ^ 1 };
    let student = Sequential::new(&gpu, &[64], mlp(16), student_init).unwrap();
    let teacher = Sequential::new(&gpu, &[64], mlp(48), teacher_init).unwrap();
    let sgd = SgdConfig::new(0.2);
    let mut trainer = Trainer::new(student, Optimizer::sgd(sgd));
    trainer.set_teacher(teacher, settings).unwrap();
    let rows = 12;
    let x = random(&mut rng, rows * 64);
    let labels: Vec<u32> = (0..rows as u32).map(|i| (i * 7) % 10).collect();
    trainer.step(&x, &labels).unwrap();
    let loss = trainer.mean_loss().unwrap();

    let xa = Array::new(&[rows, 64], x);
    let mut s = reference::nn::Model::new(mlp(16), student_init.values(&mlp(16)).unwrap());
    let mut t = reference::nn::Model::new(mlp(48), teacher_init.values(&mlp(48)).unwrap());
    let teacher_logits = t.forward(&xa);
    let logits = s.forward(&xa);
    let (soft_loss, soft) =
        reference::loss::soft_cross_entropy(&logits, &teacher_logits, settings.temperature);
    let (hard_loss, hard) = reference::loss::cross_entropy(&logits, &labels, 0.0);
    let a = settings.alpha;
    let grad: Vec<f32> = soft
        .data
        .iter()
        .zip(&hard.data)
        .map(|(s, h)| a * s + (1.0 - a) * h)
        .collect();
    let grads = s.backward(&Array::new(&logits.shape, grad));
    for ((_, _, p), g) in s.params.iter_mut().zip(&grads) {
        reference::optim::sgd_step(p, g, &mut vec![0.0; g.len()], &sgd, true);
    }
    let context = format!("seed {seed}");
    assert_close(
        &[loss],
        &[a * soft_loss + (1.0 - a) * hard_loss],
        1e-5,
        &context,
    );
    let got = trainer.model().params().to_host().unwrap();
    for ((name, _, g), (_, _, w)) in got.iter().zip(&s.params) {
        assert_close(g, w, 1e-5, &format!("{name} {context}"));
    }
}
