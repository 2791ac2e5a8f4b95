//! wgnn against burn-wgpu on the same shapes with one timing method: the wall clock around one call
//! followed by a wait for the device (wgnn: `Gpu::wait`, burn: `Device::sync`), median of `--runs`
//! (default 10) after three warm-up calls (burn autotunes on its first call of a shape, wgnn on its
//! first call of a shape class, or reads its tuning cache). burn is built with its default
//! features (autotune and fusion on), as a burn user gets it.
//!
//! Cases: single ops (matmul, conv, softmax), whole models (`--only models`): a training step
//! and a prediction of the benches' MLP and CNN, as issue 17 defines them (see `run_wgnn_models`
//! and `run_burn_models` for what each side's call includes), and (`--only transformer`) one
//! training step of `examples/train_shakespeare`'s default language model (issue 18; see
//! `run_wgnn_transformer` and `run_burn_transformer`).
//!
//! Each library runs in a child process of its own, alternately (burn, wgnn, burn, wgnn, ... for
//! `--rounds` rounds, default 3), so neither runs beside the other's device threads: in one process,
//! wgnn's matmul measured 20% slower after burn had run than before. The table gives the median of
//! the rounds' medians, and the smallest and largest single call.
//!
//! Run from this directory: `cargo run --release` (burn takes about 20 minutes to build on 2 cores).
//! Both libraries pick their adapter by themselves; on a machine without a GPU both get lavapipe.
//! Options: `--runs N`, `--rounds N`, `--only matmul|conv|softmax|models|transformer`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::conv::{Conv2d as BurnConv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{
    Embedding as BurnEmbedding, EmbeddingConfig, LayerNorm as BurnLayerNorm, LayerNormConfig,
    Linear as BurnLinear, LinearConfig, PaddingConfig2d,
};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, SgdConfig as BurnSgdConfig};
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{
    activation, Device, DeviceKind, Distribution, Int, Tensor as BurnTensor, TensorData,
};
use wgnn::infer::{InferenceSession, SessionOptions};
use wgnn::nn::{GptConfig, Init, LanguageModel, LayerSpec, Optimizer, Sequential, Trainer};
use wgnn::ops::{self, AdamConfig, Conv2dParams, SgdConfig};
use wgnn::{Activation, Batch, DType, Gpu, Tensor};

fn random(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Every call's time, after three untimed calls.
fn time(runs: usize, mut call: impl FnMut()) -> Vec<Duration> {
    for _ in 0..3 {
        call();
    }
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            call();
            start.elapsed()
        })
        .collect()
}

const CASES: [(&str, &str); 14] = [
    ("matmul", "matmul f32 1024³"),
    ("matmul", "matmul f32 1000³"),
    ("conv", "conv fwd 256×1×28×28 → 32, 3×3 pad 1"),
    ("softmax", "softmax fwd 4096×4096"),
    ("softmax", "softmax fwd 256×10"),
    ("models", "train MLP, batch 64"),
    ("models", "train CNN, batch 64"),
    ("models", "train MLP, batch 256"),
    ("models", "train CNN, batch 256"),
    ("models", "predict MLP f32, batch 1"),
    ("models", "predict CNN f32, batch 1"),
    ("models", "predict MLP f32, batch 64"),
    ("models", "predict CNN f32, batch 64"),
    ("transformer", "train GPT 2×64, 4 heads, batch 16×64"),
];

/// `examples/train_shakespeare`'s default model: its character vocabulary of 80, context 64, 2
/// pre-norm blocks of width 64 with 4 heads and a 256-wide GELU MLP, dropout 0; batch 16.
const GPT_VOCAB: usize = 80;
const GPT_CONTEXT: usize = 64;
const GPT_DIM: usize = 64;
const GPT_HEADS: usize = 4;
const GPT_LAYERS: usize = 2;
const GPT_BATCH: usize = 16;

/// Token ids and next-token targets of one batch (fixed pseudo-random text).
fn gpt_batch() -> (Vec<u32>, Vec<u32>) {
    let text: Vec<u32> = (0..GPT_BATCH * GPT_CONTEXT + 1)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 7) % GPT_VOCAB as u32)
        .collect();
    let n = GPT_BATCH * GPT_CONTEXT;
    (text[..n].to_vec(), text[1..=n].to_vec())
}

/// wgnn: `Trainer::step_sequences` on a `LanguageModel` (uploads ids and targets, forward with fused attention,
/// cross-entropy, backward, AdamW (lr 1e-3, decay 0.1, beta2 0.99) on every parameter, no
/// clipping) and a device wait.
fn run_wgnn_transformer(gpu: &Gpu, runs: usize) -> anyhow::Result<()> {
    let config = GptConfig {
        vocab: GPT_VOCAB,
        context: GPT_CONTEXT,
        dim: GPT_DIM,
        heads: GPT_HEADS,
        layers: GPT_LAYERS,
        activation: wgnn::Activation::Gelu,
        dropout: 0.0,
    };
    let model = LanguageModel::new(gpu, config, 1)?;
    let optimizer = Optimizer::adam(AdamConfig {
        beta2: 0.99,
        ..AdamConfig::adamw(1e-3, 0.1)
    });
    let mut trainer = wgnn::nn::Trainer::new(model, optimizer);
    let (ids, targets) = gpt_batch();
    let t = time(runs, || {
        trainer
            .step_sequences(&ids, &targets, GPT_CONTEXT)
            .unwrap();
        gpu.wait().unwrap();
    });
    print_times(CASES[13].1, &t);
    Ok(())
}

/// The same model in burn: token and position embeddings, burn's `TransformerEncoder` (pre-norm,
/// GELU, dropout 0) with a causal mask, a final LayerNorm, the output projection.
#[derive(Module, Debug)]
struct BurnGpt {
    tokens: BurnEmbedding,
    positions: BurnEmbedding,
    blocks: TransformerEncoder,
    norm: BurnLayerNorm,
    head: BurnLinear,
}

impl BurnGpt {
    fn new(device: &Device) -> Self {
        BurnGpt {
            tokens: EmbeddingConfig::new(GPT_VOCAB, GPT_DIM).init(device),
            positions: EmbeddingConfig::new(GPT_CONTEXT, GPT_DIM).init(device),
            blocks: TransformerEncoderConfig::new(GPT_DIM, 4 * GPT_DIM, GPT_HEADS, GPT_LAYERS)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(GPT_DIM).init(device),
            head: LinearConfig::new(GPT_DIM, GPT_VOCAB).init(device),
        }
    }

    /// Logits `[batch · T, vocab]` for ids `[batch, T]`.
    fn forward(&self, ids: BurnTensor<2, Int>) -> BurnTensor<2> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let positions = BurnTensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .repeat_dim(0, b);
        let x = self.tokens.forward(ids) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(b, t, &device);
        let x = self
            .blocks
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head
            .forward(self.norm.forward(x))
            .reshape([b * t, GPT_VOCAB])
    }
}

/// burn: the forward, cross-entropy, backward and AdamW (same settings) on its autodiff device,
/// the batch uploaded each step, then `Device::sync`.
fn run_burn_transformer(device: &Device, runs: usize) -> anyhow::Result<()> {
    let ad = device.clone().autodiff();
    let mut model = BurnGpt::new(&ad);
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_weight_decay(0.1)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let (ids, targets) = gpt_batch();
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let targets: Vec<i64> = targets.iter().map(|&i| i64::from(i)).collect();
    let t = time(runs, || {
        let xs = BurnTensor::<2, Int>::from_data(
            TensorData::new(ids.clone(), [GPT_BATCH, GPT_CONTEXT]),
            &ad,
        );
        let ys = BurnTensor::<1, Int>::from_data(
            TensorData::new(targets.clone(), [GPT_BATCH * GPT_CONTEXT]),
            &ad,
        );
        let loss = loss_fn.forward(model.forward(xs), ys);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model.clone(), grads);
        ad.sync().unwrap();
    });
    print_times(CASES[13].1, &t);
    Ok(())
}

/// The whole-model cases: (model, batch, training?) in CASES order from index 5.
const MODEL_CASES: [(Net, usize, bool); 8] = [
    (Net::Mlp, 64, true),
    (Net::Cnn, 64, true),
    (Net::Mlp, 256, true),
    (Net::Cnn, 256, true),
    (Net::Mlp, 1, false),
    (Net::Cnn, 1, false),
    (Net::Mlp, 64, false),
    (Net::Cnn, 64, false),
];

/// The benches' models (one definition for the benches, `examples/profile` and this peer).
#[path = "../../../benches/common/mod.rs"]
mod bench_common;

/// The benches' two models (`benches/common`): the MLP 64-256-256-10 with ReLUs, and the CNN on
/// 1×8×8 inputs (conv 1→16 and 16→32, 3×3, pad 1, ReLU; flatten; linear 2048→10).
#[derive(Clone, Copy)]
enum Net {
    Mlp,
    Cnn,
}

impl Net {
    fn input_len(self) -> usize {
        64
    }

    fn wgnn_specs(self) -> (Vec<usize>, Vec<LayerSpec>) {
        match self {
            Net::Mlp => (vec![64], bench_common::mlp()),
            Net::Cnn => (vec![1, 8, 8], bench_common::cnn()),
        }
    }
}

/// The same models in burn.
#[derive(Module, Debug)]
struct BurnMlp {
    l1: BurnLinear,
    l2: BurnLinear,
    l3: BurnLinear,
}

#[derive(Module, Debug)]
struct BurnCnn {
    c1: BurnConv2d,
    c2: BurnConv2d,
    out: BurnLinear,
}

#[derive(Module, Debug)]
enum BurnNet {
    Mlp(BurnMlp),
    Cnn(BurnCnn),
}

impl BurnNet {
    fn new(net: Net, device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        match net {
            Net::Mlp => BurnNet::Mlp(BurnMlp {
                l1: LinearConfig::new(64, 256).init(device),
                l2: LinearConfig::new(256, 256).init(device),
                l3: LinearConfig::new(256, 10).init(device),
            }),
            Net::Cnn => BurnNet::Cnn(BurnCnn {
                c1: conv(1, 16),
                c2: conv(16, 32),
                out: LinearConfig::new(2048, 10).init(device),
            }),
        }
    }

    /// Logits for `x` of shape [batch, 64].
    fn forward(&self, x: BurnTensor<2>) -> BurnTensor<2> {
        match self {
            BurnNet::Mlp(m) => {
                let h = activation::relu(m.l1.forward(x));
                let h = activation::relu(m.l2.forward(h));
                m.l3.forward(h)
            }
            BurnNet::Cnn(m) => {
                let [batch, _] = x.dims();
                let h = x.reshape([batch, 1, 8, 8]);
                let h = activation::relu(m.c1.forward(h));
                let h = activation::relu(m.c2.forward(h));
                m.out.forward(h.reshape([batch, 2048]))
            }
        }
    }
}

fn labels(batch: usize) -> Vec<u32> {
    (0..batch as u32).map(|i| i % 10).collect()
}

/// wgnn: `Trainer::step` (uploads the batch, forward, cross-entropy, backward, SGD with momentum
/// 0.9) and a device wait; `InferenceSession::predict` (uploads, forward, softmax, argmax, top-3,
/// reads back).
fn run_wgnn_models(gpu: &Gpu, runs: usize) -> anyhow::Result<()> {
    for ((net, batch, training), (_, case)) in MODEL_CASES.iter().zip(&CASES[5..13]) {
        let (input, specs) = net.wgnn_specs();
        let model = Sequential::new(gpu, &input, specs, Init::KaimingUniform { seed: 1 })?;
        let x = random(batch * net.input_len(), 7);
        let t = if *training {
            let sgd = SgdConfig {
                momentum: 0.9,
                ..SgdConfig::new(0.01)
            };
            let mut trainer = Trainer::new(model, Optimizer::sgd(sgd));
            let labels = labels(*batch);
            time(runs, || {
                trainer.step(&x, &labels).unwrap();
                gpu.wait().unwrap();
            })
        } else {
            let session = InferenceSession::new(
                model,
                SessionOptions {
                    max_batch: 64,
                    ..Default::default()
                },
            )?;
            time(runs, || {
                let p = session.predict(&x).unwrap();
                assert_eq!(p.classes.len(), *batch);
            })
        };
        print_times(case, &t);
    }
    Ok(())
}

/// burn: the forward, cross-entropy, backward and SGD (momentum 0.9) on its autodiff device, the
/// batch uploaded each step, then `Device::sync`; prediction is the forward and softmax on an
/// input already on the device, then `Device::sync` (no readback).
fn run_burn_models(device: &Device, runs: usize) -> anyhow::Result<()> {
    for ((net, batch, training), (_, case)) in MODEL_CASES.iter().zip(&CASES[5..13]) {
        let x = random(batch * net.input_len(), 7);
        let t = if *training {
            let ad = device.clone().autodiff();
            let mut model = BurnNet::new(*net, &ad);
            let mut optim = BurnSgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init();
            let loss_fn = CrossEntropyLossConfig::new().init(&ad);
            let targets: Vec<i64> = labels(*batch).iter().map(|&l| i64::from(l)).collect();
            time(runs, || {
                let xs = BurnTensor::<2>::from_data(
                    TensorData::new(x.clone(), [*batch, net.input_len()]),
                    &ad,
                );
                let ys = BurnTensor::<1, Int>::from_data(
                    TensorData::new(targets.clone(), [*batch]),
                    &ad,
                );
                let loss = loss_fn.forward(model.forward(xs), ys);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(0.01, model.clone(), grads);
                ad.sync().unwrap();
            })
        } else {
            let model = BurnNet::new(*net, device);
            let xs =
                BurnTensor::<2>::from_data(TensorData::new(x, [*batch, net.input_len()]), device);
            time(runs, || {
                let _p = activation::softmax(model.forward(xs.clone()), 1);
                device.sync().unwrap();
            })
        };
        print_times(case, &t);
    }
    Ok(())
}

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
    if wanted("models") {
        run_wgnn_models(&gpu, runs)?;
    }
    if wanted("transformer") {
        run_wgnn_transformer(&gpu, runs)?;
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
    if wanted("models") {
        run_burn_models(&device, runs)?;
    }
    if wanted("transformer") {
        run_burn_transformer(&device, runs)?;
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
    let runs: usize = flag("--runs").map_or(Ok(10), |r| r.parse())?;
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
