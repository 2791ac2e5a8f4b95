//! Generation with the key/value cache: the cache kernels against the CPU reference, decoding
//! against a full forward over the whole prefix at every position, and the engine (continuous
//! batching, determinism across batch compositions, cancellation, deadlines, a full queue, bad
//! requests, shutdown, many threads).

mod common;

use std::time::Duration;

use common::*;
use rand::RngExt;
use wgnn::generate::{
    Batching, DecodeRow, Decoder, DecoderOptions, Engine, EngineOptions, Event, FinishReason,
    GenerationRequest,
};
use wgnn::nn::{GptConfig, LanguageModel};
use wgnn::ops::{self, SamplingSettings};
use wgnn::{reference, Activation, Batch, DType, Error, Precision, Tensor};

/// One GPU user at a time in this file: the engine's worker submits continuously, and on GL a
/// submission holds the adapter's context (wgpu gives up on its lock after 6 s).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config() -> GptConfig {
    GptConfig {
        vocab: 37,
        context: 40,
        dim: 48,
        heads: 3,
        layers: 2,
        activation: Activation::GeluTanh,
        dropout: 0.0,
    }
}

fn model(seed: u64) -> LanguageModel {
    LanguageModel::new(&gpu(), config(), seed).unwrap()
}

fn tokens(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..37)).collect()
}

#[test]
fn cache_kernels_match_the_reference_across_splits() {
    let _one = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    // 600 positions: ten splits of 64, the last partial; rows at split edges and one padding
    // row outside the cache.
    let (slots, context, heads, d) = (3, 600, 2, 24);
    let dim = heads * d;
    for dtype in [DType::F32, DType::F16] {
        if dtype == DType::F16 && !gpu.supports_f16() {
            continue;
        }
        let keys = round_if(dtype, random(&mut rng, slots * context * dim));
        let values = round_if(dtype, random(&mut rng, slots * context * dim));
        let cursor = [
            (0usize, 0usize),
            (1, 255),
            (2, 256),
            (0, 599),
            (1, 300),
            (3, 5),
        ];
        let rows = cursor.len();
        let qkv = round_if(dtype, random(&mut rng, rows * 3 * dim));
        let k = Tensor::from_f32(&gpu, &keys, &[slots, context, dim], dtype).unwrap();
        let v = Tensor::from_f32(&gpu, &values, &[slots, context, dim], dtype).unwrap();
        let q = Tensor::from_f32(&gpu, &qkv, &[rows, 3 * dim], dtype).unwrap();
        let flat: Vec<u32> = cursor
            .iter()
            .flat_map(|&(s, p)| [s as u32, p as u32])
            .collect();
        let c = Tensor::from_slice(&gpu, &flat, &[rows, 2]).unwrap();
        // Append first: each row's own key and value land at its cursor.
        let mut batch = Batch::new(&gpu);
        ops::cache_append(&mut batch, &q, &c, &k, &v).unwrap();
        let out = ops::decode_attention(&mut batch, &q, &c, &k, &v, heads).unwrap();
        batch.submit().unwrap();
        let (mut keys, mut values) = (keys, values);
        for (r, &(s, p)) in cursor.iter().enumerate() {
            if s < slots {
                let at = (s * context + p) * dim;
                keys[at..at + dim].copy_from_slice(&qkv[r * 3 * dim + dim..][..dim]);
                values[at..at + dim].copy_from_slice(&qkv[r * 3 * dim + 2 * dim..][..dim]);
            }
        }
        assert_close(
            &k.to_vec_f32().unwrap(),
            &keys,
            0.0,
            &format!("appended keys {dtype:?} seed {seed}"),
        );
        let want = reference::attention::decode_attention(
            &qkv, &keys, &values, &cursor, heads, slots, context,
        );
        let tol = if dtype == DType::F16 { 1e-2 } else { 1e-5 };
        assert_close(
            &out.to_vec_f32().unwrap(),
            &want,
            tol,
            &format!("decode attention {dtype:?} seed {seed}"),
        );
        // The padding row attends to nothing.
        assert!(out.to_vec_f32().unwrap()[5 * dim..]
            .iter()
            .all(|&x| x == 0.0));
    }
}

fn round_if(dtype: DType, x: Vec<f32>) -> Vec<f32> {
    if dtype == DType::F16 {
        round_f16(&x)
    } else {
        x
    }
}

#[test]
fn embed_at_and_gather_rows_match_the_reference() {
    let _one = exclusive();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    let (vocab, context, dim) = (13, 9, 7);
    let table = random(&mut rng, vocab * dim);
    let positions = random(&mut rng, context * dim);
    let ids = [3u32, 12, 0, 5];
    let cursor = [(0usize, 8usize), (2, 0), (1, 4), (0, 3)];
    let flat: Vec<u32> = cursor
        .iter()
        .flat_map(|&(s, p)| [s as u32, p as u32])
        .collect();
    let t = Tensor::from_slice(&gpu, &table[..], &[vocab, dim]).unwrap();
    let p = Tensor::from_slice(&gpu, &positions, &[context, dim]).unwrap();
    let i = Tensor::from_slice(&gpu, &ids, &[4]).unwrap();
    let c = Tensor::from_slice(&gpu, &flat, &[4, 2]).unwrap();
    let pick = Tensor::from_slice(&gpu, &[3u32, 0, 3], &[3]).unwrap();
    let mut batch = Batch::new(&gpu);
    let x = ops::embed_at(&mut batch, &i, &c, &t, &p).unwrap();
    let g = ops::gather_rows(&mut batch, &x, &pick).unwrap();
    batch.submit().unwrap();
    let (table, positions) = (&table, &positions);
    let want: Vec<f32> = ids
        .iter()
        .zip(&cursor)
        .flat_map(|(&id, &(_, pos))| {
            (0..dim).map(move |c| table[id as usize * dim + c] + positions[pos * dim + c])
        })
        .collect();
    assert_close(
        &x.to_vec::<f32>().unwrap(),
        &want,
        1e-6,
        &format!("seed {seed}"),
    );
    let rows: Vec<f32> = [3usize, 0, 3]
        .iter()
        .flat_map(|&r| want[r * dim..(r + 1) * dim].to_vec())
        .collect();
    assert_eq!(g.to_vec::<f32>().unwrap(), rows);
}

#[test]
fn decoding_matches_a_full_forward_at_every_position() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let mut lm = model(seed);
    let context = config().context;
    let vocab = config().vocab;
    // Three sequences of different prompt lengths, decoded together, one to the context's end.
    let lengths = [1usize, 6, 17];
    let mut seqs: Vec<Vec<u32>> = lengths.iter().map(|&n| tokens(&mut rng, n)).collect();
    let options = DecoderOptions {
        max_sequences: 4,
        precision: Precision::F32,
        ..Default::default()
    };
    let mut together = Decoder::new(&lm, options).unwrap();
    let mut alone = Decoder::new(&lm, options).unwrap();
    for (slot, s) in seqs.iter().enumerate() {
        let got = together.prefill(slot, s).unwrap();
        let want = lm.logits(s, s.len()).unwrap();
        assert_close(
            &got,
            &want,
            1e-4,
            &format!("prefill of {} seed {seed}", s.len()),
        );
        alone.prefill(slot, s).unwrap();
    }
    // A prompt as rows of a step (chunked prefill), beside another sequence's decode row.
    let chunk = tokens(&mut rng, 9);
    let mut rows: Vec<DecodeRow> = chunk
        .iter()
        .enumerate()
        .map(|(position, &token)| DecodeRow {
            slot: 3,
            position,
            token,
        })
        .collect();
    rows.push(DecodeRow {
        slot: 0,
        position: 1,
        token: 5,
    });
    let got = alone.decode(&rows).unwrap();
    let want = lm.logits(&chunk, chunk.len()).unwrap();
    assert_close(
        &got[..9 * vocab],
        &want,
        1e-4,
        &format!("chunk, seed {seed}"),
    );
    let pair = [seqs[0][0], 5];
    let want = lm.logits(&pair, 2).unwrap();
    assert_close(
        &got[9 * vocab..],
        &want[vocab..],
        1e-4,
        &format!("beside, seed {seed}"),
    );
    // `alone` continues from here: slot 0 now holds two tokens.
    let mut alone_seq0 = pair.to_vec();
    for step in 0..context - 17 {
        let rows: Vec<DecodeRow> = seqs
            .iter()
            .enumerate()
            .map(|(slot, s)| DecodeRow {
                slot,
                position: s.len(),
                token: rng.random_range(0..vocab as u32),
            })
            .collect();
        let got = together.decode(&rows).unwrap();
        for (r, row) in rows.iter().enumerate() {
            seqs[r].push(row.token);
            let s = &seqs[r];
            let full = lm.logits(s, s.len()).unwrap();
            let want = &full[(s.len() - 1) * vocab..];
            let context = format!("step {step}, sequence {r} at {}, seed {seed}", row.position);
            assert_close(&got[r * vocab..(r + 1) * vocab], want, 1e-4, &context);
            if r > 0 {
                let one = alone.decode(&[*row]).unwrap();
                assert_close(&one, want, 1e-4, &format!("alone: {context}"));
            } else {
                // Slot 0 of `alone` took another second token above: its own sequence.
                let alone_row = DecodeRow {
                    position: alone_seq0.len(),
                    ..*row
                };
                alone_seq0.push(row.token);
                if alone_seq0.len() <= config().context {
                    let one = alone.decode(&[alone_row]).unwrap();
                    let full = lm.logits(&alone_seq0, alone_seq0.len()).unwrap();
                    let want = &full[(alone_seq0.len() - 1) * vocab..];
                    assert_close(&one, want, 1e-4, &format!("alone: {context}"));
                }
            }
        }
    }
    // The longest reached the context's last position; one more is a typed error.
    let past = DecodeRow {
        slot: 2,
        position: context,
        token: 0,
    };
    assert!(matches!(
        together.decode(&[past]),
        Err(Error::LimitExceeded { .. })
    ));
}

/// The model's parameters with every matrix the decoder compacts (2-D and not an embedding)
/// replaced by what `precision` stores: the f32 model the compact kernels must reproduce.
fn as_stored(lm: &LanguageModel, precision: Precision) -> wgnn::nn::HostParameters {
    let mut params = lm.model().params().to_host().unwrap();
    for (name, shape, values) in &mut params {
        let embedding = name.ends_with("token") || name.ends_with("position");
        let &[n, k] = shape.as_slice() else { continue };
        if embedding {
            continue;
        }
        *values = match precision {
            Precision::Int8 => {
                let (q, scales) = ops::quantize_int8(values, n, k);
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| f32::from(v) * scales[i / k])
                    .collect()
            }
            _ => round_f16(values),
        };
    }
    params
}

#[test]
fn compact_weights_decode_as_their_stored_values_and_serve_through_the_engine() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let lm = model(seed);
    let prompt = tokens(&mut rng, 12);
    let f32_bytes = Decoder::new(&lm, DecoderOptions::default())
        .unwrap()
        .weight_bytes();
    for precision in [Precision::F16, Precision::Int8] {
        let options = DecoderOptions {
            precision,
            ..Default::default()
        };
        let mut d = Decoder::new(&lm, options).unwrap();
        assert!(d.weight_bytes() < f32_bytes);
        let got = d.prefill(0, &prompt).unwrap();
        // The same weights, as f32: the compact kernels dequantize exactly these values.
        let stored =
            LanguageModel::with_parameters(&gpu(), config(), as_stored(&lm, precision)).unwrap();
        let want = Decoder::new(&stored, DecoderOptions::default())
            .unwrap()
            .prefill(0, &prompt)
            .unwrap();
        assert_close(&got, &want, 1e-4, &format!("{precision:?} seed {seed}"));
        // Through the engine: it serves compact weights as it serves f32 ones.
        let e = Engine::new(d, EngineOptions::default()).unwrap();
        let streams: Vec<_> = (0..3)
            .map(|i| {
                e.submit(GenerationRequest::greedy(prompt[..4 + i].to_vec(), 6))
                    .unwrap()
            })
            .collect();
        for s in streams {
            let (tokens, reason) = s.wait().unwrap();
            assert_eq!((tokens.len(), reason), (6, FinishReason::MaxTokens));
            assert!(tokens.iter().all(|&t| t < 37));
        }
    }
}

fn engine(lm: &LanguageModel, slots: usize, options: EngineOptions) -> Engine {
    let decoder = Decoder::new(
        lm,
        DecoderOptions {
            max_sequences: slots,
            precision: Precision::F32,
            ..Default::default()
        },
    )
    .unwrap();
    Engine::new(decoder, options).unwrap()
}

fn sampled(prompt: Vec<u32>, max_tokens: usize, seed: u64) -> GenerationRequest {
    GenerationRequest {
        sampling: SamplingSettings {
            temperature: 0.8,
            top_k: 10,
            top_p: 0.95,
            seed,
            counter: 0,
        },
        ..GenerationRequest::greedy(prompt, max_tokens)
    }
}

#[test]
fn engine_output_is_the_same_alone_and_in_any_batch() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let mut lm = model(seed);
    let prompts: Vec<Vec<u32>> = [3usize, 9, 1, 14, 5]
        .iter()
        .map(|&n| tokens(&mut rng, n))
        .collect();
    let max_tokens = [20usize, 7, 12, 3, 16];
    // Greedy against the model's own host-side greedy generation.
    let one = engine(&lm, 1, EngineOptions::default());
    let mut alone = Vec::new();
    for (p, &m) in prompts.iter().zip(&max_tokens) {
        let (got, reason) = one
            .generate(GenerationRequest::greedy(p.clone(), m))
            .unwrap();
        assert_eq!(reason, FinishReason::MaxTokens);
        let want = lm
            .generate(p, m, wgnn::nn::Sampling::Greedy)
            .unwrap()
            .split_off(p.len());
        assert_eq!(got, want, "greedy after {p:?}, seed {seed}");
        alone.push(got);
    }
    let sampled_alone: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&max_tokens)
        .enumerate()
        .map(|(i, (p, &m))| one.generate(sampled(p.clone(), m, i as u64)).unwrap().0)
        .collect();
    drop(one);
    // All at once, in a batch of 4 slots: sequences join as others leave.
    let many = engine(&lm, 4, EngineOptions::default());
    let streams: Vec<_> = prompts
        .iter()
        .zip(&max_tokens)
        .map(|(p, &m)| {
            many.submit(GenerationRequest::greedy(p.clone(), m))
                .unwrap()
        })
        .collect();
    let sampled_streams: Vec<_> = prompts
        .iter()
        .zip(&max_tokens)
        .enumerate()
        .map(|(i, (p, &m))| many.submit(sampled(p.clone(), m, i as u64)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(
            s.wait().unwrap().0,
            alone[i],
            "greedy {i} in a batch, seed {seed}"
        );
    }
    for (i, s) in sampled_streams.into_iter().enumerate() {
        let (got, _) = s.wait().unwrap();
        assert_eq!(got, sampled_alone[i], "sampled {i} in a batch, seed {seed}");
    }
    let stats = many.stats();
    assert_eq!(stats.completed, 10);
    assert!(stats.tokens as usize == 2 * max_tokens.iter().sum::<usize>());
    assert!(stats.occupancy > 0.0 && stats.occupancy <= 1.0);
    assert!(stats.inter_token.count > 0 && stats.time_to_first_token.count == 10);
    // Static batching, one at a time, and continuous batching without chunked prefill (every
    // prompt prefilled whole) give the same text.
    for (batching, prefill_chunk) in [
        (Batching::Static, 8),
        (Batching::OneAtATime, 8),
        (Batching::Continuous, 0),
    ] {
        let decoder = Decoder::new(
            &lm,
            DecoderOptions {
                max_sequences: 4,
                prefill_chunk,
                ..Default::default()
            },
        )
        .unwrap();
        let options = EngineOptions {
            batching,
            ..Default::default()
        };
        let e = Engine::new(decoder, options).unwrap();
        let streams: Vec<_> = prompts
            .iter()
            .zip(&max_tokens)
            .map(|(p, &m)| e.submit(GenerationRequest::greedy(p.clone(), m)).unwrap())
            .collect();
        for (i, s) in streams.into_iter().enumerate() {
            assert_eq!(
                s.wait().unwrap().0,
                alone[i],
                "{batching:?} {i}, seed {seed}"
            );
        }
    }
}

#[test]
fn stop_conditions_end_sequences() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let mut lm = model(seed);
    let prompt = tokens(&mut rng, 4);
    let greedy = lm
        .generate(&prompt, 30, wgnn::nn::Sampling::Greedy)
        .unwrap()
        .split_off(4);
    let vocabulary: Vec<String> = (0..37).map(|i| format!("<{i}>")).collect();
    // The end token: the 5th greedy token.
    let e = engine(
        &lm,
        2,
        EngineOptions {
            end_token: Some(greedy[4]),
            vocabulary: Some(vocabulary.clone()),
            ..Default::default()
        },
    );
    let first = greedy.iter().position(|&t| t == greedy[4]).unwrap();
    let (got, reason) = e
        .generate(GenerationRequest::greedy(prompt.clone(), 30))
        .unwrap();
    assert_eq!(
        (got.as_slice(), reason),
        (&greedy[..=first], FinishReason::EndToken)
    );
    // A stop string: the text of the 2nd and 3rd tokens (an engine without the end token).
    let e = engine(
        &lm,
        2,
        EngineOptions {
            vocabulary: Some(vocabulary),
            ..Default::default()
        },
    );
    let stop = format!("<{}><{}>", greedy[1], greedy[2]);
    let request = GenerationRequest {
        stop: vec![stop.clone()],
        ..GenerationRequest::greedy(prompt.clone(), 30)
    };
    let (got, reason) = e.generate(request).unwrap();
    assert_eq!(reason, FinishReason::StopString, "seed {seed}");
    let text = |t: &[u32]| t.iter().map(|i| format!("<{i}>")).collect::<String>();
    let end = (1..=greedy.len())
        .find(|&n| text(&greedy[..n]).contains(&stop))
        .unwrap();
    assert_eq!(got, greedy[..end], "seed {seed}");
    // The context: a prompt of 38 leaves room for 3 tokens (positions 38, 39 and the last
    // logits').
    let long = tokens(&mut rng, 38);
    let (got, reason) = e.generate(GenerationRequest::greedy(long, 30)).unwrap();
    assert_eq!((got.len(), reason), (3, FinishReason::ContextFull));
}

#[test]
fn cancellation_deadlines_and_bad_requests_get_typed_errors() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let lm = model(seed);
    for bad in [
        EngineOptions {
            prefill_share: -0.5,
            ..Default::default()
        },
        EngineOptions {
            prefill_share: f32::NAN,
            ..Default::default()
        },
        EngineOptions {
            queue_capacity: 0,
            ..Default::default()
        },
        EngineOptions {
            end_token: Some(37),
            ..Default::default()
        },
        EngineOptions {
            vocabulary: Some(vec!["a".into(); 3]),
            ..Default::default()
        },
    ] {
        let decoder = Decoder::new(&lm, DecoderOptions::default()).unwrap();
        assert!(Engine::new(decoder, bad).is_err());
    }
    let too_many = DecoderOptions {
        max_sequences: 0,
        ..Default::default()
    };
    assert!(matches!(
        Decoder::new(&lm, too_many),
        Err(Error::InvalidArgument { .. })
    ));
    let e = engine(&lm, 2, EngineOptions::default());
    // Cancelled mid-stream: the others finish.
    let mut long = e
        .submit(GenerationRequest::greedy(tokens(&mut rng, 2), 38))
        .unwrap();
    let other = e
        .submit(GenerationRequest::greedy(tokens(&mut rng, 3), 10))
        .unwrap();
    assert!(matches!(
        long.next_event(Duration::from_secs(60)),
        Some(Event::Token(_))
    ));
    long.cancel();
    let rest: Vec<_> = long.by_ref().collect();
    assert!(
        matches!(rest.last(), Some(Err(Error::Cancelled { .. }))),
        "{rest:?}"
    );
    assert_eq!(other.wait().unwrap().0.len(), 10);
    // A deadline already too short for the first step.
    let request = GenerationRequest {
        timeout: Some(Duration::from_micros(1)),
        ..GenerationRequest::greedy(tokens(&mut rng, 3), 30)
    };
    std::thread::sleep(Duration::from_millis(1));
    assert!(matches!(e.generate(request), Err(Error::Timeout { .. })));
    // Queued behind the only slot's 38 steps: a request whose deadline passes fails then, not
    // when the slot comes free; one cancelled by its caller leaves the queue too.
    let one = engine(&lm, 1, EngineOptions::default());
    let busy = one
        .submit(GenerationRequest::greedy(tokens(&mut rng, 1), 39))
        .unwrap();
    let busy = std::thread::spawn(move || (busy.wait(), std::time::Instant::now()));
    let late = one
        .submit(GenerationRequest {
            timeout: Some(Duration::from_millis(20)),
            ..GenerationRequest::greedy(tokens(&mut rng, 2), 5)
        })
        .unwrap();
    let dropped = one
        .submit(GenerationRequest::greedy(tokens(&mut rng, 2), 5))
        .unwrap();
    dropped.cancel();
    let late = (late.wait(), std::time::Instant::now());
    assert!(matches!(late.0, Err(Error::Timeout { .. })), "{:?}", late.0);
    assert!(matches!(dropped.wait(), Err(Error::Cancelled { .. })));
    let (done, done_at) = busy.join().unwrap();
    assert_eq!(done.unwrap().0.len(), 39);
    assert!(
        late.1 < done_at,
        "the queued request failed only when the slot came free"
    );
    assert_eq!(one.stats().queue_depth, 0);
    // Bad requests, refused at submission; the engine still serves.
    let too_long = GenerationRequest::greedy(tokens(&mut rng, 41), 1);
    assert!(matches!(
        e.submit(too_long),
        Err(Error::LimitExceeded { .. })
    ));
    let bad_id = GenerationRequest::greedy(vec![1, 37], 1);
    assert!(matches!(
        e.submit(bad_id),
        Err(Error::InvalidArgument { .. })
    ));
    let no_tokens = GenerationRequest::greedy(vec![1], 0);
    assert!(matches!(
        e.submit(no_tokens),
        Err(Error::InvalidArgument { .. })
    ));
    let empty = GenerationRequest::greedy(vec![], 3);
    assert!(matches!(
        e.submit(empty),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_sampling = GenerationRequest {
        sampling: SamplingSettings {
            top_p: 0.0,
            ..SamplingSettings::greedy()
        },
        ..GenerationRequest::greedy(vec![1], 3)
    };
    assert!(matches!(
        e.submit(bad_sampling),
        Err(Error::InvalidArgument { .. })
    ));
    let stop_without_vocabulary = GenerationRequest {
        stop: vec!["x".into()],
        ..GenerationRequest::greedy(vec![1], 3)
    };
    assert!(e.submit(stop_without_vocabulary).is_err());
    assert_eq!(
        e.generate(GenerationRequest::greedy(vec![1, 2], 4))
            .unwrap()
            .0
            .len(),
        4
    );
}

#[test]
fn a_full_queue_is_overloaded_and_shutdown_ends_running_sequences() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let lm = model(seed);
    let e = engine(
        &lm,
        1,
        EngineOptions {
            queue_capacity: 1,
            ..Default::default()
        },
    );
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for _ in 0..4 {
        match e.submit(GenerationRequest::greedy(tokens(&mut rng, 2), 38)) {
            Ok(s) => accepted.push(s),
            Err(Error::Overloaded { capacity: 1 }) => overloaded += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(overloaded >= 2, "{overloaded} of 4 refused, seed {seed}");
    // Shutdown with a sequence running (and maybe one queued): every stream ends, typed.
    let mut first = accepted.remove(0);
    assert!(matches!(
        first.next_event(Duration::from_secs(60)),
        Some(Event::Token(_))
    ));
    e.shutdown();
    let rest: Vec<_> = first.by_ref().collect();
    match first.finish() {
        Some(Err(Error::ShutDown { .. })) | Some(Ok(FinishReason::MaxTokens)) => {}
        other => panic!("{other:?} after {rest:?}"),
    }
    for s in accepted {
        assert!(matches!(s.wait(), Err(Error::ShutDown { .. }) | Ok(_)));
    }
    assert!(matches!(
        e.submit(GenerationRequest::greedy(vec![1], 1)),
        Err(Error::ShutDown { .. })
    ));
}

#[test]
fn eight_threads_share_one_engine() {
    let _one = exclusive();
    let (mut rng, seed) = rng();
    let lm = model(seed);
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| tokens(&mut rng, 1 + i * 3)).collect();
    // Each prompt's greedy answer, one sequence at a time.
    let one = engine(&lm, 1, EngineOptions::default());
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            one.generate(GenerationRequest::greedy(p.clone(), 12))
                .unwrap()
                .0
        })
        .collect();
    drop(one);
    let e = engine(&lm, 4, EngineOptions::default());
    std::thread::scope(|scope| {
        for (p, w) in prompts.iter().zip(&want) {
            let e = &e;
            scope.spawn(move || {
                for _ in 0..3 {
                    let got = e
                        .generate(GenerationRequest::greedy(p.clone(), 12))
                        .unwrap();
                    assert_eq!(&got.0, w, "seed {seed}");
                }
            });
        }
    });
    let stats = e.stats();
    assert_eq!(stats.completed, 24);
    assert_eq!(stats.queue_depth, 0);
}

/// The decoder lowers the graph for inference only: the MLP's GELU runs in its Linear's epilogue
/// (a training graph cannot fuse it, its backward needs the input), so a decode step has the
/// dispatches of the hand-written decoder it replaced: an embedding, then per block two norms, the
/// q/k/v and output projections, the cache append, the decode attention (partial sums over the
/// cache's splits, then their combination), the two MLP matmuls and two residual adds, then the
/// final norm, the head and the sampling. (Unfused, a block would take 12.)
#[test]
fn a_decode_step_fuses_the_mlp_activation() {
    let _one = exclusive();
    let lm = model(3);
    let mut decoder = Decoder::new(&lm, DecoderOptions::default()).unwrap();
    let step = decoder.captured_step(4).unwrap().dispatches();
    let sampling = {
        let gpu = gpu();
        let logits = Tensor::zeros(&gpu, &[4, 37], DType::F32).unwrap();
        let table = Tensor::zeros(&gpu, &[4, SamplingSettings::WORDS], DType::U32).unwrap();
        let mut batch = Batch::capture(&gpu);
        ops::sample_tokens_with_table(&mut batch, &logits, &table).unwrap();
        batch.into_plan().unwrap().dispatches()
    };
    let per_block = 11;
    assert_eq!(step, 1 + config().layers * per_block + 2 + sampling);
}
