//! The GGUF-block matmul on the GPU (weights in their file's layout, dequantized in the kernel)
//! against the CPU: `nn::gguf::dequantize` (equal bit for bit to llama.cpp's `gguf` package, see
//! tests/gguf.rs) and an f64 product, for every storage type, on ragged shapes, with outputs
//! poisoned before the run.

mod common;

use common::*;
use rand::{RngExt, SeedableRng};
use wgnn::nn::gguf::{dequantize, GgmlType};
use wgnn::ops::{gguf_gather, gguf_matmul, gguf_matmul_into, GgufWeights};
use wgnn::{Batch, Error, Tensor};

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// `blocks` random blocks of `t` whose f16 scales (and f32/f16/bf16 values) are finite.
fn random_blocks(rng: &mut rand::rngs::StdRng, t: GgmlType, blocks: usize) -> Vec<u8> {
    let size = t.block_bytes();
    let mut out = Vec::with_capacity(blocks * size);
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..size).map(|_| rng.random()).collect();
        let mut scale = |at: usize, rng: &mut rand::rngs::StdRng| {
            b[at..at + 2].copy_from_slice(&f16(rng.random_range(-0.5f32..0.5)));
        };
        match t {
            GgmlType::F32 => b.copy_from_slice(&rng.random_range(-1f32..1.0).to_le_bytes()),
            GgmlType::F16 => scale(0, rng),
            GgmlType::BF16 => {
                let v = half::bf16::from_f32(rng.random_range(-1f32..1.0));
                b.copy_from_slice(&v.to_le_bytes());
            }
            GgmlType::Q4_0 | GgmlType::Q8_0 => scale(0, rng),
            GgmlType::Q4_1 | GgmlType::Q4K | GgmlType::Q5K => {
                scale(0, rng);
                scale(2, rng);
            }
            GgmlType::Q6K => scale(208, rng),
        }
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn every_storage_type_matches_the_cpu_dequantization_and_an_f64_product() {
    let gpu = gpu();
    let (_, seed) = rng();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for t in TYPES {
        let per_block = t.block_values();
        // Blocks per row: 1, 3 and (for the small blocks) a ragged 37.
        let shapes: &[(usize, usize, usize)] = if per_block == 1 {
            &[(1, 1, 37), (3, 5, 130), (7, 33, 1)]
        } else if per_block == 32 {
            &[(1, 1, 1), (3, 5, 3), (7, 33, 37), (65, 2, 2)]
        } else {
            &[(1, 1, 1), (3, 5, 3), (9, 17, 2)]
        };
        for &(rows, n, blocks) in shapes {
            let k = blocks * per_block;
            let bytes = random_blocks(&mut rng, t, n * blocks);
            let w = dequantize(t, &bytes).unwrap();
            let x: Vec<f32> = (0..rows * k)
                .map(|_| rng.random_range(-1f32..1.0))
                .collect();
            let want: Vec<f32> = (0..rows * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    (0..k)
                        .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j]))
                        .sum::<f64>() as f32
                })
                .collect();
            let weights = GgufWeights::new(&gpu, t, &bytes, n, k).unwrap();
            assert_eq!(weights.row_bytes(), blocks * t.block_bytes());
            let tx = Tensor::from_slice(&gpu, &x, &[rows, k]).unwrap();
            let mut batch = Batch::new(&gpu);
            let y = gguf_matmul(&mut batch, &tx, &weights).unwrap();
            batch.submit().unwrap();
            let context = format!("{} {rows}x{n}x{k} seed {seed}", t.name());
            assert_close(&y.to_vec_f32().unwrap(), &want, 1e-4, &context);
        }
    }
}

/// Two products written side by side into one wider output (as q, k and v are), the columns
/// around them left as they were; and rows of a table gathered from its blocks.
#[test]
fn products_land_in_their_columns_and_gathers_dequantize_rows() {
    let gpu = gpu();
    let (_, seed) = rng();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for t in TYPES {
        let per_block = t.block_values();
        let (rows, k) = (6, 2 * per_block.max(16));
        let (n1, n2, width) = (5, 7, 15);
        let b1 = random_blocks(&mut rng, t, n1 * k / per_block);
        let b2 = random_blocks(&mut rng, t, n2 * k / per_block);
        let (w1, w2) = (dequantize(t, &b1).unwrap(), dequantize(t, &b2).unwrap());
        let x: Vec<f32> = (0..rows * k)
            .map(|_| rng.random_range(-1f32..1.0))
            .collect();
        let marker = 1234.5f32;
        let mut want = vec![marker; rows * width];
        for r in 0..rows {
            for (w, n, at) in [(&w1, n1, 1), (&w2, n2, 1 + n1)] {
                for c in 0..n {
                    want[r * width + at + c] = (0..k)
                        .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j]))
                        .sum::<f64>() as f32;
                }
            }
        }
        let tx = Tensor::from_slice(&gpu, &x, &[rows, k]).unwrap();
        let y = Tensor::from_slice(&gpu, &vec![marker; rows * width], &[rows, width]).unwrap();
        let g1 = GgufWeights::new(&gpu, t, &b1, n1, k).unwrap();
        let g2 = GgufWeights::new(&gpu, t, &b2, n2, k).unwrap();
        let mut batch = Batch::new(&gpu);
        gguf_matmul_into(&mut batch, &tx, &g1, &y, 1).unwrap();
        gguf_matmul_into(&mut batch, &tx, &g2, &y, 1 + n1).unwrap();
        // An id past the table gives zeros.
        let ids = [4u32, 0, 2, 4, n2 as u32 + 3, 1];
        let tids = Tensor::from_slice(&gpu, &ids, &[ids.len()]).unwrap();
        let rows_of = gguf_gather(&mut batch, &g2, &tids).unwrap();
        batch.submit().unwrap();
        let context = format!("{} seed {seed}", t.name());
        assert_close(&y.to_vec_f32().unwrap(), &want, 1e-4, &context);
        let gathered: Vec<f32> = ids
            .iter()
            .flat_map(|&id| match w2.get(id as usize * k..(id as usize + 1) * k) {
                Some(row) => row.to_vec(),
                None => vec![0.0; k],
            })
            .collect();
        assert_eq!(rows_of.to_vec_f32().unwrap(), gathered, "{context}");
        // A slice past y's width is refused.
        let mut batch = Batch::new(&gpu);
        assert!(matches!(
            gguf_matmul_into(&mut batch, &tx, &g2, &y, width - n2 + 1),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}

#[test]
fn bad_weights_and_inputs_are_refused() {
    let gpu = gpu();
    let (mut rng, _) = rng();
    let mut r = rand::rngs::StdRng::seed_from_u64(rng.random());
    let bytes = random_blocks(&mut r, GgmlType::Q4_1, 4);
    // K not whole blocks; too few bytes; no rows.
    assert!(matches!(
        GgufWeights::new(&gpu, GgmlType::Q4_1, &bytes, 2, 48),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        GgufWeights::new(&gpu, GgmlType::Q4_1, &bytes[..79], 2, 64),
        Err(Error::DataLength { .. })
    ));
    assert!(GgufWeights::new(&gpu, GgmlType::Q4_1, &[], 0, 64).is_err());
    // Past the per-thread loop's limit.
    assert!(matches!(
        GgufWeights::new(&gpu, GgmlType::F32, &[0; 4], 1, 65_536),
        Err(Error::LimitExceeded { .. })
    ));
    let w = GgufWeights::new(&gpu, GgmlType::Q4_1, &bytes, 2, 64).unwrap();
    let x = Tensor::from_slice(&gpu, &[0.5f32; 3 * 32], &[3, 32]).unwrap();
    let mut batch = Batch::new(&gpu);
    assert!(matches!(
        gguf_matmul(&mut batch, &x, &w),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// SmolLM2's own weights (Q4_1 attention, the Q8_0 embedding read as the tied output) on the GPU
/// in their file's blocks: the product equals the CPU's over the same dequantized values, and the
/// blocks take the file's bytes, not f32's.
#[test]
fn smollm2_weights_multiply_in_their_file_blocks() {
    let path = std::env::var_os("WGNN_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.is_file() {
        skip(
            "smollm2_weights_multiply_in_their_file_blocks",
            "no SmolLM2 file: `bash tests/fixtures/gguf/fetch_smollm2.sh` fetches it",
        );
        return;
    }
    let file = wgnn::nn::gguf::GgufFile::read(&path).unwrap();
    let gpu = gpu();
    let (mut rng, seed) = rng();
    for (name, rows) in [("blk.0.attn_q.weight", 5), ("token_embd.weight", 1)] {
        let info = file.tensor(name).unwrap();
        let (k, n) = (info.dims[0] as usize, info.dims[1] as usize);
        let bytes = file.tensor_bytes(name).unwrap();
        let w = file.tensor_f32(name).unwrap();
        let weights = GgufWeights::new(&gpu, info.ggml_type, bytes, n, k).unwrap();
        assert_eq!(
            weights.size_bytes(),
            info.bytes.div_ceil(4) * 4 + 4,
            "{name}"
        );
        assert!(
            weights.size_bytes() * 3 < (n * k * 4) as u64,
            "{name}: not compact"
        );
        let x: Vec<f32> = (0..rows * k)
            .map(|_| rng.random_range(-1f32..1.0))
            .collect();
        let want: Vec<f32> = (0..rows * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..k)
                    .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j]))
                    .sum::<f64>() as f32
            })
            .collect();
        let tx = Tensor::from_slice(&gpu, &x, &[rows, k]).unwrap();
        let mut batch = Batch::new(&gpu);
        let y = gguf_matmul(&mut batch, &tx, &weights).unwrap();
        batch.submit().unwrap();
        assert_close(
            &y.to_vec_f32().unwrap(),
            &want,
            1e-4,
            &format!("{name} ({}) seed {seed}", info.ggml_type.name()),
        );
    }
}
