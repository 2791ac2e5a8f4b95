//! The transformer layers and the language model: three AdamW training steps of a two-layer model
//! against the CPU reference, model files with their vocabulary, generation, the schedule, and
//! typed errors for bad input.

mod common;

use common::*;
use rand::RngExt;
use wgnn::nn::{GptConfig, LanguageModel, Optimizer, Sampling, Trainer, WarmupCosine};
use wgnn::ops::AdamConfig;
use wgnn::reference::transformer::Gpt;
use wgnn::{Activation, Error};

fn config() -> GptConfig {
    GptConfig {
        vocab: 11,
        context: 9,
        dim: 16,
        heads: 2,
        layers: 2,
        activation: Activation::Gelu,
        dropout: 0.0,
    }
}

#[test]
fn three_adamw_steps_match_the_reference() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let config = config();
    let lm = LanguageModel::new(&gpu, config, seed).unwrap();
    // eps 1e-4 for the reason tests/nn.rs gives: Adam's division by tiny running RMS values
    // would amplify f32 rounding; real gradients are far above it.
    let adam = AdamConfig {
        eps: 1e-4,
        ..AdamConfig::adamw(1e-2, 0.1)
    };
    let mut optimizer = Optimizer::adam(adam);
    optimizer.decay_weights_only(lm.model()).unwrap();
    let mut reference = Gpt::new(config, lm.model().params().to_host().unwrap());
    let mut trainer = Trainer::new(lm, optimizer);
    trainer.set_grad_clip(Some(1.0)).unwrap();
    for step in 0..3 {
        let n = 3 * config.context;
        let inputs: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
        trainer
            .step_sequences(&inputs, &targets, config.context)
            .unwrap();
        let want = reference.step(&inputs, &targets, &adam, Some(1.0));
        let got = trainer.mean_loss().unwrap();
        assert_close(
            &[got],
            &[want],
            1e-4,
            &format!("loss of step {step}, seed {seed}"),
        );
    }
    let got = trainer.model().model().params().to_host().unwrap();
    for ((name, _, g), (_, _, w)) in got.iter().zip(&reference.params) {
        assert_close(g, w, 1e-4, &format!("{name} after 3 steps, seed {seed}"));
    }
}

/// Mixed precision: three AdamW steps with f16 activations and gradients follow the f32 reference
/// within f16's bounds (a missed unscale is a factor 1,024 and fails by far), the loss scale
/// grows as set, and an adapter without f16 gets a typed error.
#[test]
fn mixed_precision_follows_the_reference() {
    use wgnn::nn::MixedPrecision;
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let config = config();
    let lm = LanguageModel::new(&gpu, config, seed).unwrap();
    let settings = MixedPrecision {
        initial_scale: 1024.0,
        growth_interval: 2,
    };
    let adam = AdamConfig {
        eps: 1e-4,
        ..AdamConfig::adamw(1e-2, 0.1)
    };
    let mut optimizer = Optimizer::adam(adam);
    optimizer.decay_weights_only(lm.model()).unwrap();
    let mut reference = Gpt::new(config, lm.model().params().to_host().unwrap());
    let mut trainer = Trainer::new(lm, optimizer);
    if !gpu.supports_f16() {
        let r = trainer.enable_mixed_precision(settings);
        assert!(matches!(r, Err(Error::UnsupportedFeature { .. })));
        skip("mixed_precision_follows_the_reference", "no SHADER_F16");
        return;
    }
    trainer.enable_mixed_precision(settings).unwrap();
    trainer.set_grad_clip(Some(1.0)).unwrap();
    for step in 0..3 {
        let n = 3 * config.context;
        let inputs: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
        trainer
            .step_sequences(&inputs, &targets, config.context)
            .unwrap();
        let want = reference.step(&inputs, &targets, &adam, Some(1.0));
        let got = trainer.mean_loss().unwrap();
        assert_close(
            &[got],
            &[want],
            1e-2,
            &format!("mixed-precision loss of step {step}, seed {seed}"),
        );
    }
    // Three good steps, growth every 2: the scale doubled once, nothing was skipped.
    assert_eq!(trainer.loss_scale().unwrap(), Some((2048.0, 0)));
    let lm = trainer.model_mut();
    let got = lm.model().params().to_host().unwrap();
    for ((name, _, g), (_, _, w)) in got.iter().zip(&reference.params) {
        assert_close(
            g,
            w,
            2e-2,
            &format!("{name} after 3 mixed-precision steps, seed {seed}"),
        );
    }
    // Evaluation runs in f16 too: its loss is the reference's next step's within f16's bounds.
    let n = 3 * config.context;
    let inputs: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..11)).collect();
    let got = lm.loss(&inputs, &targets, config.context).unwrap();
    let want = reference.step(&inputs, &targets, &adam, Some(1.0));
    assert_close(
        &[got],
        &[want],
        1e-2,
        &format!("mixed-precision evaluation, seed {seed}"),
    );
}

#[test]
fn a_saved_model_loads_with_its_vocabulary_and_the_same_logits() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let mut lm = LanguageModel::new(&gpu, config(), seed).unwrap();
    let inputs: Vec<u32> = (0..2 * 9).map(|_| rng.random_range(0..11)).collect();
    let before = lm.logits(&inputs, 9).unwrap();
    let dir = std::env::temp_dir().join(format!("wgnn-lm-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lm.safetensors");
    lm.save(&path, "abcdefghijk").unwrap();
    let (mut loaded, vocabulary) = LanguageModel::load(&gpu, &path).unwrap();
    assert_eq!(vocabulary, "abcdefghijk");
    assert_eq!(loaded.config(), lm.config());
    assert_eq!(loaded.logits(&inputs, 9).unwrap(), before);
    // A truncated file is a typed error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        LanguageModel::load(&gpu, &path),
        Err(Error::ModelFile { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shorter_sequences_see_only_what_precedes_them() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let mut lm = LanguageModel::new(&gpu, config(), seed).unwrap();
    let inputs: Vec<u32> = (0..9).map(|_| rng.random_range(0..11)).collect();
    let full = lm.logits(&inputs, 9).unwrap();
    let prefix = lm.logits(&inputs[..4], 4).unwrap();
    assert_close(&prefix, &full[..4 * 11], 1e-5, &format!("seed {seed}"));
}

#[test]
fn generation_is_reproducible_from_its_seed() {
    let gpu = gpu();
    let (_, seed) = rng();
    let mut lm = LanguageModel::new(&gpu, config(), seed).unwrap();
    let sampling = Sampling::Sample {
        temperature: 0.9,
        top_k: 5,
        seed: 7,
    };
    let a = lm.generate(&[1, 2, 3], 12, sampling).unwrap();
    let b = lm.generate(&[1, 2, 3], 12, sampling).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 15);
    assert!(a.iter().all(|&t| t < 11));
    let g1 = lm.generate(&[4], 10, Sampling::Greedy).unwrap();
    assert_eq!(g1, lm.generate(&[4], 10, Sampling::Greedy).unwrap());
}

#[test]
fn bad_input_gets_typed_errors() {
    let gpu = gpu();
    let lm = LanguageModel::new(&gpu, config(), 1).unwrap();
    let optimizer = Optimizer::adam(AdamConfig::adamw(1e-3, 0.1));
    let mut trainer = Trainer::new(lm, optimizer);
    let ids = vec![1u32; 9];
    let past = vec![11u32; 9];
    assert!(matches!(
        trainer.step_sequences(&past, &ids, 9),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        trainer.step_sequences(&ids, &past, 9),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(trainer.set_grad_clip(Some(f32::NAN)).is_err());
    let lm = trainer.model_mut();
    assert!(matches!(
        lm.logits(&[1u32; 10], 10),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        lm.logits(&ids[..7], 4),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        lm.generate(&[], 3, Sampling::Greedy),
        Err(Error::InvalidArgument { .. })
    ));
    let bad = GptConfig {
        dim: 15,
        ..config()
    };
    assert!(LanguageModel::new(&gpu, bad, 1).is_err());
    let huge = GptConfig {
        vocab: usize::MAX,
        ..config()
    };
    assert!(matches!(
        LanguageModel::new(&gpu, huge, 1),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn warmup_cosine_rises_then_falls() {
    let s = WarmupCosine::new(1.0, 0.1, 10, 110).unwrap();
    assert!((s.lr_at(0) - 0.1).abs() < 1e-6);
    assert!((s.lr_at(9) - 1.0).abs() < 1e-6);
    assert!((s.lr_at(60) - 0.55).abs() < 1e-6);
    assert!((s.lr_at(110) - 0.1).abs() < 1e-6);
    assert!(s.lr_at(30) > s.lr_at(80));
    assert!(WarmupCosine::new(1.0, 2.0, 1, 10).is_err());
    assert!(WarmupCosine::new(1.0, 0.0, 11, 10).is_err());
    assert!(WarmupCosine::new(f32::NAN, 0.0, 1, 10).is_err());
}

/// A language model saved before the graph file format (`"format": "wgnn-gpt"`, written by
/// tests/fixtures/make_lm_fixture.rs at the commit before it) loads with its vocabulary, gives the
/// logits it gave then, and decodes them: the decoder lowered from its graph.
#[test]
fn a_language_model_saved_before_the_graph_format_loads_the_same() {
    let gpu = gpu();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (mut lm, vocabulary) =
        LanguageModel::load(&gpu, format!("{dir}/gpt_saved_2026_12_06.safetensors")).unwrap();
    assert_eq!(vocabulary, "abcdefghijk");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/gpt_saved_2026_12_06_logits.json")).unwrap(),
    )
    .unwrap();
    let input: Vec<u32> = serde_json::from_value(saved["input"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(saved["logits"].clone()).unwrap();
    assert_close(&lm.logits(&input, 9).unwrap(), &want, 1e-6, "full forward");
    let mut decoder = wgnn::generate::Decoder::new(&lm, Default::default()).unwrap();
    let prefill = decoder.prefill(0, &input).unwrap();
    assert_close(&prefill, &want, 1e-4, "prefill");
}
