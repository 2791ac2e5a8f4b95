//! The Llama block on the GPU: rotary embeddings, SwiGLU and grouped-query decode attention
//! against the CPU reference on ragged shapes (backward passes also by finite differences on the
//! reference), and SmolLM2-135M-Instruct's GPU forward from its GGUF blocks against the
//! independent CPU forward (`reference::llama`, f64 over the dequantized weights).

mod common;

use common::*;
use rand::RngExt;
use wgnn::ops::{self, Rotary};
use wgnn::reference::llama as cpu;
use wgnn::{Batch, DType, Error, Tensor};

fn cursor_of(gpu: &wgnn::Gpu, rows: &[(usize, usize)]) -> Tensor {
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|&(s, p)| [s as u32, p as u32])
        .collect();
    Tensor::from_slice(gpu, &flat, &[rows.len(), 2]).unwrap()
}

#[test]
fn rope_turns_adjacent_pairs_by_position_and_back() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    // (heads, kv_heads, head_dim, rope_dims, base): SmolLM2's, a partial rotation, odd counts.
    for (heads, kv_heads, head_dim, rope_dims, base) in [
        (9, 3, 64, 64, 100_000.0),
        (4, 4, 10, 6, 10_000.0),
        (6, 2, 8, 8, 500.0),
    ] {
        let rows = 7;
        let width = (heads + 2 * kv_heads) * head_dim;
        let x = random(&mut rng, rows * width);
        let positions: Vec<usize> = (0..rows).map(|_| rng.random_range(0..3000)).collect();
        let want = cpu::rope(
            &x,
            &positions,
            (heads, kv_heads, head_dim, rope_dims),
            base,
            false,
        );
        let rotary = Rotary {
            heads,
            kv_heads,
            head_dim,
            rope_dims,
            base: base as f32,
        };
        let t = Tensor::from_slice(&gpu, &x, &[rows, width]).unwrap();
        let cursor = cursor_of(&gpu, &positions.iter().map(|&p| (0, p)).collect::<Vec<_>>());
        let mut batch = Batch::new(&gpu);
        ops::rope(&mut batch, &t, &cursor, &rotary, false).unwrap();
        batch.submit().unwrap();
        let context = format!("{heads}/{kv_heads} heads of {head_dim}, seed {seed}");
        // Angles up to 3,000 radians in f32: position × frequency alone rounds by up to 1.2e-4
        // there (half an f32 step at 3,000), and the frequency's own rounding adds as much.
        assert_close(&t.to_vec_f32().unwrap(), &want, 5e-4, &context);
        let mut batch = Batch::new(&gpu);
        ops::rope(&mut batch, &t, &cursor, &rotary, true).unwrap();
        batch.submit().unwrap();
        assert_close(
            &t.to_vec_f32().unwrap(),
            &x,
            5e-4,
            &format!("{context}, back"),
        );
    }
    // The inverse is the backward: <g, R x> = <R⁻¹ g, x>, checked by finite differences on the
    // reference.
    let dims = (3, 1, 6, 4);
    let x = random(&mut rng, 2 * 30);
    let g = random(&mut rng, 2 * 30);
    let positions = [5, 17];
    let loss = |x: &[f32]| -> f64 {
        let y = cpu::rope(x, &positions, dims, 10_000.0, false);
        y.iter()
            .zip(&g)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    };
    let grad = cpu::rope(&g, &positions, dims, 10_000.0, true);
    for i in 0..x.len() {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += 1e-2;
        minus[i] -= 1e-2;
        let fd = (loss(&plus) - loss(&minus)) / 2e-2;
        assert!(
            (fd - f64::from(grad[i])).abs() < 1e-3,
            "element {i}: {fd} vs {}",
            grad[i]
        );
    }
}

#[test]
fn rope_refuses_bad_shapes() {
    let gpu = gpu();
    let rotary = Rotary {
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        rope_dims: 4,
        base: 10_000.0,
    };
    let t = Tensor::from_slice(&gpu, &[0.5f32; 3 * 15], &[3, 15]).unwrap();
    let cursor = cursor_of(&gpu, &[(0, 0), (0, 1), (0, 2)]);
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        ops::rope(&mut batch, &t, &cursor, &rotary, false),
        Err(Error::ShapeMismatch { .. })
    ));
    let odd = Rotary {
        rope_dims: 3,
        ..rotary
    };
    let t = Tensor::from_slice(&gpu, &[0.5f32; 3 * 16], &[3, 16]).unwrap();
    assert!(matches!(
        ops::rope(&mut batch, &t, &cursor, &odd, false),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn swiglu_and_its_backward_match_the_cpu() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (rows, hidden) in [(1, 1), (5, 37), (3, 1536)] {
        let mut gu = random(&mut rng, rows * 2 * hidden);
        // Large gates on both sides: silu stays finite.
        gu[0] = 95.0;
        if gu.len() > 2 {
            gu[1] = -95.0;
        }
        let d = random(&mut rng, rows * hidden);
        let tgu = Tensor::from_slice(&gpu, &gu, &[rows, 2 * hidden]).unwrap();
        let td = Tensor::from_slice(&gpu, &d, &[rows, hidden]).unwrap();
        let mut batch = Batch::new(&gpu);
        let out = ops::swiglu(&mut batch, &tgu).unwrap();
        let grad = ops::swiglu_backward(&mut batch, &tgu, &td).unwrap();
        batch.submit().unwrap();
        let context = format!("{rows}x{hidden} seed {seed}");
        assert_close(
            &out.to_vec_f32().unwrap(),
            &cpu::swiglu(&gu, hidden),
            1e-5,
            &context,
        );
        let want = cpu::swiglu_backward(&gu, &d, hidden);
        assert_close(&grad.to_vec_f32().unwrap(), &want, 1e-5, &context);
    }
    // The reference backward by finite differences.
    let hidden = 6;
    let gu = random(&mut rng, 2 * 2 * hidden);
    let d = random(&mut rng, 2 * hidden);
    let loss = |gu: &[f32]| -> f64 {
        let y = cpu::swiglu(gu, hidden);
        y.iter()
            .zip(&d)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    };
    let grad = cpu::swiglu_backward(&gu, &d, hidden);
    for i in 0..gu.len() {
        let (mut plus, mut minus) = (gu.clone(), gu.clone());
        plus[i] += 1e-2;
        minus[i] -= 1e-2;
        let fd = (loss(&plus) - loss(&minus)) / 2e-2;
        assert!(
            (fd - f64::from(grad[i])).abs() < 1e-3,
            "element {i}: {fd} vs {}",
            grad[i]
        );
    }
}

/// Decode attention with fewer key/value heads than query heads: each query head reads its
/// group's key/value head from a cache that holds only those, for rows of different slots and
/// lengths, against a CPU softmax attention.
#[test]
fn grouped_query_decode_attention_matches_the_cpu() {
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let (heads, kv_heads, d, slots, context) = (6, 2, 12, 3, 150);
    let (q_dim, kv_dim) = (heads * d, kv_heads * d);
    let width = q_dim + 2 * kv_dim;
    // Fill every slot's first positions through cache_append, then attend.
    let lengths = [1usize, 70, 130];
    let mut keys = vec![vec![]; slots];
    let mut values = vec![vec![]; slots];
    let k_cache = Tensor::zeros(&gpu, &[slots, context, kv_dim], DType::F32).unwrap();
    let v_cache = Tensor::zeros(&gpu, &[slots, context, kv_dim], DType::F32).unwrap();
    let mut batch = Batch::new(&gpu);
    for (slot, &len) in lengths.iter().enumerate() {
        let rows = random(&mut rng, len * width);
        for r in 0..len {
            let row = &rows[r * width..(r + 1) * width];
            keys[slot].push(row[q_dim..q_dim + kv_dim].to_vec());
            values[slot].push(row[q_dim + kv_dim..].to_vec());
        }
        let t = Tensor::from_slice(&gpu, &rows, &[len, width]).unwrap();
        let cursor = cursor_of(&gpu, &(0..len).map(|p| (slot, p)).collect::<Vec<_>>());
        ops::cache_append(&mut batch, &t, &cursor, &k_cache, &v_cache).unwrap();
    }
    batch.submit().unwrap();
    // One query row per slot at its last position, and a padding row past the slots.
    let queries = random(&mut rng, 4 * width);
    let rows: Vec<(usize, usize)> = lengths
        .iter()
        .enumerate()
        .map(|(s, &l)| (s, l - 1))
        .chain([(slots, 0)])
        .collect();
    let cursor = cursor_of(&gpu, &rows);
    let tq = Tensor::from_slice(&gpu, &queries, &[4, width]).unwrap();
    let mut batch = Batch::new(&gpu);
    let out = ops::decode_attention(&mut batch, &tq, &cursor, &k_cache, &v_cache, heads).unwrap();
    batch.submit().unwrap();
    assert_eq!(out.shape(), [4, q_dim]);
    let mut want = vec![0f32; 4 * q_dim];
    for (r, &(slot, pos)) in rows.iter().enumerate().take(3) {
        for h in 0..heads {
            let kv = h / (heads / kv_heads);
            let q = &queries[r * width + h * d..r * width + (h + 1) * d];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let k = &keys[slot][j][kv * d..(kv + 1) * d];
                    q.iter()
                        .zip(k)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for c in 0..d {
                want[r * q_dim + h * d + c] = scores
                    .iter()
                    .enumerate()
                    .map(|(j, s)| (s - max).exp() / total * f64::from(values[slot][j][kv * d + c]))
                    .sum::<f64>() as f32;
            }
        }
    }
    assert_close(
        &out.to_vec_f32().unwrap(),
        &want,
        1e-4,
        &format!("seed {seed}"),
    );
    // Query heads that are not a multiple of the key/value heads are refused.
    let bad = Tensor::from_slice(
        &gpu,
        &vec![0.5f32; 4 * (5 * d + 2 * kv_dim)],
        &[4, 5 * d + 2 * kv_dim],
    )
    .unwrap();
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        ops::decode_attention(&mut batch, &bad, &cursor, &k_cache, &v_cache, 5),
        Err(Error::InvalidArgument { .. })
    ));
}

/// SmolLM2-135M-Instruct on the GPU from its GGUF blocks gives the CPU reference's logits
/// (max |Δ| / max |logit| ≤ 1e-3 at every position) for 3 prompts of at least 64 tokens of real
/// text: one prefilled whole (every position's logits), two prefilled but for their last tokens,
/// which are decoded one step at a time, two sequences of different lengths in each step.
#[test]
fn smollm2_on_the_gpu_gives_the_reference_logits() {
    let path = std::env::var_os("WGNN_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.is_file() {
        skip(
            "smollm2_on_the_gpu_gives_the_reference_logits",
            "no SmolLM2 file: `bash tests/fixtures/gguf/fetch_smollm2.sh` fetches it",
        );
        return;
    }
    let gpu = gpu();
    if gpu.adapter_info().backend == wgnn::wgpu::Backend::Gl {
        // Minutes of lavapipe-speed prefill; GL runs the same kernels in the op tests above.
        skip(
            "smollm2_on_the_gpu_gives_the_reference_logits",
            "run on Vulkan only (CI time); its kernels are checked on GL by the op tests",
        );
        return;
    }
    let file = wgnn::nn::gguf::GgufFile::read(&path).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gguf/llamacpp.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let passage: Vec<u32> = fixture["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let prompts = [&passage[..64], &passage[100..170], &passage[200..280]];
    let reference = cpu::LlamaReference::from_gguf(&file).unwrap();
    let options = wgnn::nn::llama::LlamaOptions {
        max_sequences: 3,
        context: 128,
    };
    let mut model = wgnn::nn::llama::Llama::from_gguf(&gpu, &file, options).unwrap();
    let vocab = model.config().vocab;
    // The blocks, not f32: under a fifth of the f32 bytes.
    assert!(
        model.weight_bytes() * 5 < 4 * 135_000_000,
        "{}",
        model.weight_bytes()
    );
    let check = |got: &[f32], want: &[f32], what: &str| {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "{what}: max |Δ| {worst} against max |logit| {scale}"
        );
    };
    // Prompt 0 prefilled whole; prompts 1 and 2 prefilled but for their last 6 tokens, which are
    // then decoded step by step, both in each step: every position is checked once.
    let tail = 6;
    let mut wants = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let want = reference.logits(prompt).unwrap();
        let head = if i == 0 {
            prompt.len()
        } else {
            prompt.len() - tail
        };
        let got = model.prefill(i, &prompt[..head], true).unwrap();
        if i == 0 {
            agrees_with_llama_cpp(&got, vocab, &fixture["positions"]);
        }
        for (p, w) in want.iter().enumerate().take(head) {
            check(
                &got[p * vocab..(p + 1) * vocab],
                w,
                &format!("prompt {i} position {p}"),
            );
        }
        wants.push(want);
    }
    for t in 0..tail {
        let steps: Vec<(usize, u32)> = [1, 2]
            .iter()
            .map(|&i| (i, prompts[i][prompts[i].len() - tail + t]))
            .collect();
        let got = model.decode(&steps).unwrap();
        for (r, &(i, _)) in steps.iter().enumerate() {
            let p = prompts[i].len() - tail + t;
            check(
                &got[r * vocab..(r + 1) * vocab],
                &wants[i][p],
                &format!("prompt {i} decoded at position {p}"),
            );
        }
    }
    assert_eq!(model.length(1), 70);
    // Bad steps are refused before anything runs.
    assert!(model.decode(&[(1, 5), (1, 6)]).is_err());
    assert!(model.decode(&[(0, vocab as u32)]).is_err());
    assert!(model.prefill(3, &[1], false).is_err());
    assert!(matches!(
        model.prefill(0, &vec![1; 129], false),
        Err(Error::LimitExceeded { .. })
    ));
}

/// The GPU's logits over the passage's first positions (prompt 0 is the passage's first 64
/// tokens, teacher-forced) against llama.cpp's own on the same file (`record_llamacpp.py`): the
/// top token agrees wherever llama.cpp's top two are not a near-tie (under 0.1 apart; it
/// quantizes activations for its dot products), and llama.cpp's top logit is within 2% of the
/// logits' range.
fn agrees_with_llama_cpp(logits: &[f32], vocab: usize, positions: &serde_json::Value) {
    let positions = positions.as_array().unwrap();
    let rows = logits.len() / vocab;
    let mut agree = 0;
    for (p, theirs) in positions.iter().take(rows).enumerate() {
        let l = &logits[p * vocab..(p + 1) * vocab];
        let best = (0..vocab).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        let top = theirs["top"][0].as_u64().unwrap() as usize;
        let margin = theirs["logits"][0].as_f64().unwrap() - theirs["logits"][1].as_f64().unwrap();
        if best == top {
            agree += 1;
        } else {
            assert!(
                margin < 0.1,
                "position {p}: {best} against llama.cpp's {top}, whose margin is {margin}"
            );
        }
        let range =
            l.iter().cloned().fold(f32::MIN, f32::max) - l.iter().cloned().fold(f32::MAX, f32::min);
        let top_logit = theirs["logits"][0].as_f64().unwrap() as f32;
        assert!(
            (l[top] - top_logit).abs() <= 0.02 * range,
            "position {p}: logit {} against llama.cpp's {top_logit} (range {range})",
            l[top]
        );
    }
    eprintln!("the GPU's top token agrees with llama.cpp's at {agree} of {rows} positions");
    assert!(agree + 2 >= rows, "{agree} of {rows} agree");
}
