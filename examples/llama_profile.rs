//! Where a decode step of a llama GGUF model goes on the GPU: each dispatch of one step (the
//! 30 blocks of SmolLM2-135M-Instruct and its head) timed with timestamp queries, summed per
//! kernel entry point, and the slowest dispatches.
//!
//! `cargo run --release --example llama_profile -- [ROWS] [--model PATH]`: ROWS sequences decode
//! one token each (1 to 8; default 1). The model defaults to
//! `target/models/SmolLM2-135M-Instruct.Q4_1.gguf` (`bash tests/fixtures/gguf/fetch_smollm2.sh`).

use anyhow::{bail, Context, Result};
use wgnn::nn::gguf::GgufFile;
use wgnn::nn::llama::{Llama, LlamaOptions};
use wgnn::{Gpu, GpuTimer, Tensor};

fn main() -> Result<()> {
    let mut rows = 1usize;
    let mut model = String::from("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().context("--model needs a path")?,
            n => rows = n.parse().with_context(|| format!("ROWS, not {n:?}"))?,
        }
    }
    if !(1..=8).contains(&rows) {
        bail!("ROWS must be in 1..=8, got {rows}");
    }
    let file = GgufFile::read(&model).with_context(|| format!("reading {model}"))?;
    let gpu = Gpu::new()?;
    if !gpu.supports_timestamps() {
        bail!(
            "{} has no timestamp queries to time dispatches with",
            gpu.adapter_info().name
        );
    }
    let options = LlamaOptions {
        max_sequences: 8,
        context: 256,
    };
    let mut llama = Llama::from_gguf(&gpu, &file, options)?;
    let prompt: Vec<u32> = (0..16).map(|i| 100 + 37 * i).collect();
    for slot in 0..rows {
        llama.prefill(slot, &prompt, false)?;
    }
    let ids = Tensor::from_slice(&gpu, &vec![500u32; rows], &[rows])?;
    let cursor: Vec<u32> = (0..rows as u32).flat_map(|s| [s, 16]).collect();
    let cursor = Tensor::from_slice(&gpu, &cursor, &[rows, 2])?;
    let mut timer = GpuTimer::new(&gpu);
    // The first run compiles the pipelines; the second is the one reported.
    let mut profile = None;
    for _ in 0..2 {
        profile = Some(timer.profile(|batch| {
            let hidden = llama.record_hidden(batch, &ids, &cursor)?;
            llama.record_logits(batch, &hidden)?;
            Ok(())
        })?);
    }
    let profile = profile.context("no profile")?;
    println!(
        "{} on {}: a decode step of {rows} row(s), {} dispatches, {:.1} ms of dispatch time",
        model,
        gpu.adapter_info().name,
        profile.dispatches.len(),
        profile.total().as_secs_f64() * 1e3
    );
    for (entry, n, time) in profile.by_entry() {
        println!(
            "  {entry:28} {n:4} dispatches  {:8.2} ms",
            time.as_secs_f64() * 1e3
        );
    }
    let mut slowest: Vec<_> = profile.dispatches.iter().collect();
    slowest.sort_by_key(|d| std::cmp::Reverse(d.time));
    println!("slowest:");
    for d in slowest.iter().take(5) {
        println!(
            "  {}::{} {:?} {:?} workgroups: {:.2} ms",
            d.kernel,
            d.entry,
            d.constants,
            d.workgroups,
            d.time.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
