//! Data-parallel training over MPI (feature `mpi`). Run as a test (`cargo test --features mpi
//! --test distributed`) it starts itself under `mpirun -n 2` three times: the equivalence
//! checks, a rank killed mid-run, and a rank that stalls; under `mpirun` it is one rank.

use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgnn::distributed::{Distributed, DistributedOptions};
use wgnn::nn::{
    GptConfig, Init, Input, LanguageModel, LayerSpec, MicroBatch, MixedPrecision, Model, Optimizer,
    Sequential, Targets, Trainer,
};
use wgnn::ops::{AdamConfig, SgdConfig};
use wgnn::{Activation, Gpu};

const STEPS: usize = 10;

/// When this process started its checks.
fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}
/// ‖a − b‖∞ / ‖b‖∞ allowed between two ranks of half the batch and one process of all of it.
const F32_BOUND: f64 = 1e-5;
/// The collective timeout of the stall check, and what the job may take past it.
const STALL_TIMEOUT: Duration = Duration::from_secs(4);
const FAULT_MARGIN: Duration = Duration::from_secs(40);

fn main() {
    started();
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "equivalence" => equivalence(),
        "kill" => fault(false),
        "stall" => fault(true),
        // `cargo test` passes its own flags: this is the launcher.
        _ => launch(),
    };
    if let Err(e) = result {
        eprintln!("FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn mpirun(mode: &str) -> (std::process::ExitStatus, String, Duration) {
    let exe = std::env::current_exe().expect("the test's own path");
    let start = Instant::now();
    let out = Command::new("mpirun")
        .args(["-n", "2", "--oversubscribe"])
        .arg(exe)
        .arg(mode)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the cross-memory attach Open MPI tries first.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        // The fixed default kernels on every rank, as in the other tests.
        .env("WGNN_TUNE", "off")
        .output()
        .expect("mpirun runs (the `mpi` feature needs Open MPI or MPICH installed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text, start.elapsed())
}

fn launch() -> anyhow::Result<()> {
    let (status, text, took) = mpirun("equivalence");
    println!("{text}");
    anyhow::ensure!(status.success(), "the equivalence run failed ({status})");
    anyhow::ensure!(text.matches("PASS").count() >= 7, "not every check passed");
    println!("equivalence: 2 ranks in {took:.1?}");

    let (status, text, took) = mpirun("kill");
    println!("{text}");
    anyhow::ensure!(!status.success(), "a job with a killed rank ended well");
    anyhow::ensure!(
        took < FAULT_MARGIN,
        "the job with a killed rank took {took:?} to stop"
    );
    println!("kill: the job stopped with {status} in {took:.1?}");

    let (status, text, took) = mpirun("stall");
    println!("{text}");
    anyhow::ensure!(!status.success(), "a job with a stalled rank ended well");
    anyhow::ensure!(
        text.contains("stalled or failed"),
        "the surviving rank did not say why it stopped"
    );
    anyhow::ensure!(
        took < STALL_TIMEOUT + FAULT_MARGIN,
        "the job with a stalled rank took {took:?} to stop"
    );
    println!("stall: the job stopped with {status} in {took:.1?}");
    println!("test result: ok. 3 passed");
    Ok(())
}

/// `train_digits`'s CNN.
fn digits_cnn(gpu: &Gpu, seed: u64) -> wgnn::Result<Model> {
    let specs = wgnn::nn::digits_cnn();
    Sequential::new(gpu, &[1, 8, 8], specs, Init::KaimingUniform { seed })
}

/// tests/transformer.rs's configuration (the kernels it compiles are then in the software
/// driver's cache when CI gets here).
fn gpt() -> GptConfig {
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

fn sgd() -> Optimizer {
    Optimizer::sgd(SgdConfig {
        momentum: 0.9,
        ..SgdConfig::new(0.05)
    })
}

fn adamw() -> Optimizer {
    Optimizer::adam(AdamConfig::adamw(3e-3, 0.01))
}

/// The largest relative error over the parameters of `model` (see [`relative`]), skipping the
/// elements `skip` names by parameter; the worst parameter's name.
fn worst(
    model: &Model,
    a: &[f32],
    b: &[f32],
    skip: impl Fn(&str) -> Option<std::ops::Range<usize>>,
) -> (f64, String) {
    let mut out = (0.0, String::new());
    for p in model.params().params() {
        let n: usize = p.shape.iter().product();
        let (mut x, mut y) = (
            a[p.offset..p.offset + n].to_vec(),
            b[p.offset..p.offset + n].to_vec(),
        );
        if let Some(r) = skip(&p.name) {
            x.drain(r.clone());
            y.drain(r);
        }
        let e = relative(&x, &y);
        if e > out.0 {
            out = (e, p.name.clone());
        }
    }
    out
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Every rank's parameters, compared with rank 0's: they must be bitwise equal.
fn same_on_every_rank(dist: &Distributed, values: &[f32]) -> anyhow::Result<()> {
    let checksum: f64 = values
        .iter()
        .enumerate()
        .map(|(i, v)| f64::from(*v) * (1.0 + (i % 7) as f64))
        .sum();
    let total = dist.sum(checksum)?;
    let expected = checksum * dist.world_size() as f64;
    anyhow::ensure!(
        total == expected,
        "rank {}'s parameters differ from the others' ({total} vs {expected})",
        dist.rank()
    );
    Ok(())
}

fn report(
    dist: &Distributed,
    name: &str,
    (error, at): (f64, String),
    bound: f64,
) -> anyhow::Result<()> {
    if dist.is_root() {
        let verdict = if error <= bound { "PASS" } else { "FAIL" };
        println!("{verdict} {name}: 2 ranks vs 1 process after {STEPS} steps, relative error {error:.2e} (bound {bound:.0e}; worst parameter {at}; {:.1?} into the run)", started().elapsed());
    }
    anyhow::ensure!(
        error <= bound,
        "{name}: relative error {error:.2e} > {bound:.0e}"
    );
    Ok(())
}

fn cnn_case(
    dist: &mut Distributed,
    gpu: &Gpu,
    name: &str,
    optimizer: fn() -> Optimizer,
    micro_batches: usize,
) -> anyhow::Result<()> {
    let global = 16;
    let mut rng = StdRng::seed_from_u64(7 + micro_batches as u64);
    // The same global batches on every rank; each takes its shard.
    let batches: Vec<(Vec<f32>, Vec<u32>)> = (0..STEPS)
        .map(|_| {
            let x: Vec<f32> = (0..global * 64).map(|_| rng.random::<f32>()).collect();
            let y: Vec<u32> = (0..global).map(|_| rng.random_range(0..10)).collect();
            (x, y)
        })
        .collect();
    // Each rank starts from other weights: only the broadcast makes them rank 0's.
    let model = digits_cnn(gpu, 100 + dist.rank() as u64)?;
    dist.broadcast_parameters(&model)?;
    let mut trainer = Trainer::new(model, optimizer());
    for (x, y) in &batches {
        let (x, y) = (dist.shard(x, 64)?, dist.shard(y, 1)?);
        let per = y.len() / micro_batches;
        let inputs: Vec<[Input; 1]> = (0..micro_batches)
            .map(|m| [Input::Values(&x[m * per * 64..(m + 1) * per * 64])])
            .collect();
        let micro: Vec<MicroBatch> = (0..micro_batches)
            .map(|m| MicroBatch {
                inputs: &inputs[m],
                targets: Targets::Classes(&y[m * per..(m + 1) * per]),
            })
            .collect();
        dist.train_step_micro_batches(&mut trainer, &micro)?;
    }
    let distributed = trainer.model().params().values().to_vec::<f32>()?;
    same_on_every_rank(dist, &distributed)?;
    if dist.is_root() {
        let mut alone = Trainer::new(digits_cnn(gpu, 100)?, optimizer());
        for (x, y) in &batches {
            alone.step(x, y)?;
        }
        let expected = alone.model().params().values().to_vec::<f32>()?;
        let error = worst(trainer.model(), &distributed, &expected, |_| None);
        report(dist, name, error, F32_BOUND)?;
    }
    dist.barrier();
    Ok(())
}

fn transformer_case(
    dist: &mut Distributed,
    gpu: &Gpu,
    name: &str,
    optimizer: fn() -> Optimizer,
) -> anyhow::Result<()> {
    let config = gpt();
    let (sequences, seq_len) = (8, config.context);
    let mut rng = StdRng::seed_from_u64(11);
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..STEPS)
        .map(|_| {
            let ids: Vec<u32> = (0..sequences * (seq_len + 1))
                .map(|_| rng.random_range(0..config.vocab as u32))
                .collect();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for s in ids.chunks(seq_len + 1) {
                x.extend_from_slice(&s[..seq_len]);
                y.extend_from_slice(&s[1..]);
            }
            (x, y)
        })
        .collect();
    let model = LanguageModel::new(gpu, config, 200 + dist.rank() as u64)?;
    dist.broadcast_parameters(model.model())?;
    let mut trainer = Trainer::new(model, optimizer());
    for (x, y) in &batches {
        let (x, y) = (dist.shard(x, seq_len)?, dist.shard(y, seq_len)?);
        // The one step function: a language model's micro-batch is its padded sequences.
        let (ids, next) = trainer.model().sequences(x, y, seq_len)?;
        let inputs = [Input::Ids(&ids)];
        let micro = MicroBatch {
            inputs: &inputs,
            targets: Targets::Classes(&next),
        };
        dist.train_step_micro_batches(&mut trainer, &[micro])?;
    }
    let model = trainer.into_model();
    let distributed = model.model().params().values().to_vec::<f32>()?;
    same_on_every_rank(dist, &distributed)?;
    if dist.is_root() {
        let mut alone = Trainer::new(LanguageModel::new(gpu, config, 200)?, optimizer());
        for (x, y) in &batches {
            alone.step_sequences(x, y, seq_len)?;
        }
        let expected = alone.model().model().params().values().to_vec::<f32>()?;
        // The key bias's true gradient is zero (softmax ignores a shift common to a query's
        // scores): what the backward pass gives is rounding noise, different for any two
        // summation orders, and Adam scales noise to whole steps of ±lr. Under Adam it is left
        // out; under SGD, where noise stays noise, it is compared with the rest.
        let adam = name.contains("Adam");
        let dim = config.dim;
        let error = worst(model.model(), &distributed, &expected, |p| {
            (adam && p.ends_with("qkv.bias")).then(|| dim..2 * dim)
        });
        report(dist, name, error, F32_BOUND)?;
    }
    dist.barrier();
    Ok(())
}

/// Mixed precision with a loss scale that overflows at first: the ranks must agree on every
/// skipped step (their parameters and loss scales stay equal).
fn mixed_precision_case(dist: &mut Distributed, gpu: &Gpu) -> anyhow::Result<()> {
    if !gpu.supports_f16() {
        if dist.is_root() {
            println!("SKIPPED mixed precision: the adapter has no f16");
        }
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(5 + dist.rank() as u64);
    // An MLP over the digits' 64 pixels: few f16 kernels to compile on a cold software driver.
    let specs = vec![
        LayerSpec::Linear {
            inputs: 64,
            outputs: 32,
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::Linear {
            inputs: 32,
            outputs: 10,
        },
    ];
    let model = Sequential::new(gpu, &[64], specs, Init::KaimingUniform { seed: 300 })?;
    let mut trainer = Trainer::with_mixed_precision(
        model,
        adamw(),
        MixedPrecision {
            initial_scale: 65_536.0,
            growth_interval: 3,
        },
    )?;
    dist.broadcast_parameters(trainer.model())?;
    let start = trainer.model().params().values().to_vec::<f32>()?;
    for step in 0..STEPS {
        // Each rank its own data (what its shard would be); in the first steps rank 1's inputs
        // are large enough to overflow the f16 gradients, rank 0's are not.
        let gain = if dist.rank() == 1 && step < 3 {
            1e3
        } else {
            1.0
        };
        let x: Vec<f32> = (0..8 * 64).map(|_| rng.random::<f32>() * gain).collect();
        let y: Vec<u32> = (0..8).map(|_| rng.random_range(0..10)).collect();
        dist.train_step(&mut trainer, &x, &y)?;
    }
    let values = trainer.model().params().values().to_vec::<f32>()?;
    same_on_every_rank(dist, &values)?;
    let (scale, skipped) = trainer.loss_scale()?.expect("mixed precision");
    let total = dist.sum(f64::from(skipped))?;
    anyhow::ensure!(
        total == f64::from(skipped) * dist.world_size() as f64,
        "rank {} skipped {skipped} steps; the ranks together {total}",
        dist.rank()
    );
    anyhow::ensure!(
        skipped > 0 && (skipped as usize) < STEPS,
        "{skipped} of {STEPS} steps skipped: the check needs some of each"
    );
    anyhow::ensure!(
        relative(&values, &start) > 1e-4,
        "the parameters did not move"
    );
    if dist.is_root() {
        println!(
            "PASS mixed precision: every rank skipped the same {skipped} of {STEPS} steps (rank \
             1's gradients overflowed), applied the others (scale now {scale}) and holds the \
             same parameters"
        );
    }
    dist.barrier();
    Ok(())
}

fn equivalence() -> anyhow::Result<()> {
    let mut dist = Distributed::init(DistributedOptions {
        collective_timeout: Duration::from_secs(120),
        ..Default::default()
    })?;
    anyhow::ensure!(dist.world_size() == 2, "run under mpirun -n 2");
    if let Err(e) = checks(&mut dist) {
        // The other rank waits in a collective: stop the job now.
        eprintln!("FAILED on rank {}: {e:#}", dist.rank());
        dist.abort(1);
    }
    Ok(())
}

fn checks(dist: &mut Distributed) -> anyhow::Result<()> {
    let dist = &mut *dist;
    let gpu = dist.gpu()?;
    cnn_case(dist, &gpu, "digits CNN, SGD with momentum", sgd, 1)?;
    cnn_case(dist, &gpu, "digits CNN, AdamW", adamw, 1)?;
    cnn_case(
        dist,
        &gpu,
        "digits CNN, AdamW, 2 accumulated micro-batches per rank",
        adamw,
        2,
    )?;
    transformer_case(dist, &gpu, "transformer, SGD with momentum", sgd)?;
    transformer_case(dist, &gpu, "transformer, AdamW", adamw)?;
    mixed_precision_case(dist, &gpu)?;
    bad_input_case(dist, &gpu)?;
    Ok(())
}

/// Trains until rank 1 kills itself (or stalls) at step 3; rank 0 must not hang.
fn fault(stall: bool) -> anyhow::Result<()> {
    let mut dist = Distributed::init(DistributedOptions {
        collective_timeout: if stall {
            STALL_TIMEOUT
        } else {
            Duration::from_secs(120)
        },
        ..Default::default()
    })?;
    let gpu = dist.gpu()?;
    let model = digits_cnn(&gpu, 1)?;
    dist.broadcast_parameters(&model)?;
    let mut trainer = Trainer::new(model, sgd());
    let mut rng = StdRng::seed_from_u64(3);
    for step in 0..10_000 {
        if step == 3 && dist.rank() == 1 {
            if stall {
                std::thread::sleep(Duration::from_secs(3600));
            } else {
                let _ = Command::new("kill")
                    .args(["-9", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let x: Vec<f32> = (0..8 * 64).map(|_| rng.random::<f32>()).collect();
        let y: Vec<u32> = (0..8).map(|_| rng.random_range(0..10)).collect();
        dist.train_step(&mut trainer, &x, &y)?;
    }
    anyhow::bail!("rank {} trained past the fault", dist.rank())
}

/// Ranks with different models, and a batch that does not split evenly: typed errors on every
/// rank, no abort, no hang.
fn bad_input_case(dist: &mut Distributed, gpu: &Gpu) -> anyhow::Result<()> {
    let specs = vec![LayerSpec::Linear {
        inputs: 4,
        outputs: 3 + dist.rank(),
    }];
    let model = Sequential::new(gpu, &[4], specs, Init::XavierUniform { seed: 1 })?;
    let err = dist.broadcast_parameters(&model);
    anyhow::ensure!(
        matches!(err, Err(wgnn::Error::Communication { .. })),
        "different models on the ranks gave {err:?}"
    );
    let odd = dist.shard(&[1.0f32; 3 * 4], 4);
    anyhow::ensure!(
        matches!(odd, Err(wgnn::Error::InvalidArgument { .. })),
        "3 samples on 2 ranks gave {odd:?}"
    );
    anyhow::ensure!(dist.shard(&[1.0f32; 7], 4).is_err());
    if dist.is_root() {
        println!(
            "PASS bad input: different models on the ranks and a batch that does not split \
             evenly get typed errors ({})",
            err.unwrap_err()
        );
    }
    dist.barrier();
    Ok(())
}
