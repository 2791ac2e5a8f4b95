// gguf_matmul.wgsl: y = x · dequant(W)ᵀ with W [N, K] kept in a GGUF file's block layout (the
// bytes of each row's K / QK blocks, rows back to back, the whole packed into u32 words, little
// endian), dequantized inside the kernel as ggml dequantizes it:
//   FORMAT 0 F32, 1 F16, 2 BF16 (QK 1);
//   FORMAT 3 Q4_0 (QK 32, 18 bytes: f16 d, 16 bytes of nibbles: value d · (q - 8));
//   FORMAT 4 Q4_1 (QK 32, 20 bytes: f16 d, f16 m, nibbles: d · q + m);
//   FORMAT 5 Q8_0 (QK 32, 34 bytes: f16 d, 32 int8: d · q);
//   FORMAT 6 Q4_K, 7 Q5_K (QK 256: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and
//            minimums, [Q5_K: 32 bytes of fifth bits], 128 bytes of nibbles);
//   FORMAT 8 Q6_K (QK 256: 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, f16 d).
// One thread per output element, 64 per workgroup, grid folded into y past 65,535. Each thread
// walks its row's blocks (at most K / QK iterations, ops keep K <= 65,536) and each block's values.
//   main  x [rows, K] f32 -> y [rows, N] f32.
// Bindings: 0 params, 1 x (read), 2 y (read_write), 3 weights (read u32). Accumulation is f32.

struct Params {
    rows: u32,
    n: u32,
    k: u32,
    row_bytes: u32,     // bytes of one weight row: K / QK · block bytes
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;

fn byte_at(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn half_at(i: u32) -> f32 {
    return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

fn int8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// The 6-bit scale and minimum of sub-block j (0..8) of a Q4_K / Q5_K block's 12 bytes at s.
fn scale_min(j: u32, s: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(s + j) & 63u), f32(byte_at(s + j + 4u) & 63u));
    }
    let d = (byte_at(s + j + 4u) & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u);
    let m = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// Σ over one block (its bytes at b) of x[xo + e] · dequant(block)[e].
fn block_dot(b: u32, xo: u32) -> f32 {
    var acc = 0.0;
    if (FORMAT == 0u) {
        acc = x[xo] * bitcast<f32>(byte_at(b) | (byte_at(b + 1u) << 8u) | (byte_at(b + 2u) << 16u) | (byte_at(b + 3u) << 24u));
    } else if (FORMAT == 1u) {
        acc = x[xo] * half_at(b);
    } else if (FORMAT == 2u) {
        acc = x[xo] * bitcast<f32>((byte_at(b) | (byte_at(b + 1u) << 8u)) << 16u);
    } else if (FORMAT == 3u) {
        let d = half_at(b);
        for (var j = 0u; j < 16u; j++) {
            let q = byte_at(b + 2u + j);
            acc += x[xo + j] * (d * (f32(q & 15u) - 8.0)) + x[xo + j + 16u] * (d * (f32(q >> 4u) - 8.0));
        }
    } else if (FORMAT == 4u) {
        let d = half_at(b);
        let m = half_at(b + 2u);
        for (var j = 0u; j < 16u; j++) {
            let q = byte_at(b + 4u + j);
            acc += x[xo + j] * (d * f32(q & 15u) + m) + x[xo + j + 16u] * (d * f32(q >> 4u) + m);
        }
    } else if (FORMAT == 5u) {
        let d = half_at(b);
        for (var j = 0u; j < 32u; j++) {
            acc += x[xo + j] * (d * int8_of(byte_at(b + 2u + j)));
        }
    } else if (FORMAT == 6u || FORMAT == 7u) {
        let d = half_at(b);
        let dmin = half_at(b + 2u);
        var qs = b + 16u;
        if (FORMAT == 7u) { qs = b + 48u; }
        for (var sub = 0u; sub < 8u; sub++) {
            let chunk = sub / 2u;
            let sm = scale_min(sub, b + 4u);
            let scale = d * sm.x;
            let mn = dmin * sm.y;
            for (var l = 0u; l < 32u; l++) {
                let q = byte_at(qs + chunk * 32u + l);
                var v = q & 15u;
                if ((sub & 1u) == 1u) { v = q >> 4u; }
                if (FORMAT == 7u) { v |= ((byte_at(b + 16u + l) >> sub) & 1u) << 4u; }
                acc += x[xo + sub * 32u + l] * (scale * f32(v) - mn);
            }
        }
    } else {
        let d = half_at(b + 208u);
        for (var h = 0u; h < 2u; h++) {
            let ql = b + h * 64u;
            let qh = b + 128u + h * 32u;
            for (var l = 0u; l < 32u; l++) {
                let lo = byte_at(ql + l);
                let lo2 = byte_at(ql + l + 32u);
                let hi = byte_at(qh + l);
                let q = vec4<u32>(
                    (lo & 15u) | ((hi & 3u) << 4u),
                    (lo2 & 15u) | (((hi >> 2u) & 3u) << 4u),
                    (lo >> 4u) | (((hi >> 4u) & 3u) << 4u),
                    (lo2 >> 4u) | (((hi >> 6u) & 3u) << 4u),
                );
                for (var r = 0u; r < 4u; r++) {
                    let s = int8_of(byte_at(b + 192u + h * 8u + r * 2u + l / 16u));
                    acc += x[xo + h * 128u + r * 32u + l] * (d * s * (f32(i32(q[r]) - 32)));
                }
            }
        }
    }
    return acc;
}

fn block_values() -> u32 {
    if (FORMAT <= 2u) { return 1u; }
    if (FORMAT <= 5u) { return 32u; }
    return 256u;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 64u + l;
    if (i >= params.rows * params.n) { return; }
    let row = i / params.n;
    let col = i % params.n;
    let qk = block_values();
    let blocks = params.k / qk;
    let block_bytes = params.row_bytes / blocks;
    var acc = 0.0;
    for (var blk = 0u; blk < blocks; blk++) {
        acc += block_dot(col * params.row_bytes + blk * block_bytes, row * params.k + blk * qk);
    }
    y[i] = acc;
}
