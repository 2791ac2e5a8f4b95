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
//
//   main    one thread per (weight row n, tile of ROWS (1 or 4) rows of x), a workgroup per 64
//           weight rows and one tile (so x's reads are uniform across it): the thread walks row
//           n's blocks once (at most K / QK iterations, ops keep K / QK <= 65,535), reads each
//           block's quants four at a time from whole words, and applies them to the tile's rows
//           as one vector-matrix product (the rows' sums in one vector's lanes: no arrays, no
//           dynamic indexing), so a prefill reads each block once per four tokens. x [rows, K] f32 -> y rows of
//           `out_stride`, the product written at columns out_offset.. (a slice of a wider
//           output: q, k and v side by side).
//   gather  one thread per output element: out[r, c] = dequant(W)[ids[r], c] (an embedding
//           table kept in its blocks); an id past N gives zeros.
// 64 threads per workgroup, grid folded into y past 65,535. Accumulation is f32.
// Bindings: 0 params, 1 x (read), 2 y (read_write), 3 weights (read u32), 4 ids (read u32).

struct Params {
    rows: u32,
    n: u32,
    k: u32,
    row_bytes: u32,     // bytes of one weight row: K / QK · block bytes
    groups_x: u32,
    out_stride: u32,    // y's row length
    out_offset: u32,    // the first column written
    _pad0: u32,
}

override FORMAT: u32 = 0u;
// Rows of x one thread applies each block to: 1 or 4.
override ROWS: u32 = 1u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;

fn byte_at(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// The four bytes at byte offset i (any alignment) as one little-endian word.
fn word_at(i: u32) -> u32 {
    let s = (i & 3u) * 8u;
    let lo = w[i >> 2u];
    if (s == 0u) { return lo; }
    return (lo >> s) | (w[(i >> 2u) + 1u] << (32u - s));
}

fn half_at(i: u32) -> f32 {
    return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

fn int8_of(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// The four bytes of q as unsigned values.
fn bytes4(q: u32) -> vec4<u32> {
    return (vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u)) & vec4<u32>(0xffu);
}

// The four bytes of q as signed values.
fn ibytes4(q: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(q << 24u, q << 16u, q << 8u, q)) >> vec4<u32>(24u);
    return vec4<f32>(s);
}

// The low (hi = false) or high nibbles of q's four bytes.
fn nibbles4(q: u32, hi: bool) -> vec4<f32> {
    let b = bytes4(q);
    if (hi) { return vec4<f32>(b >> vec4<u32>(4u)); }
    return vec4<f32>(b & vec4<u32>(15u));
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

// main: the offsets into x of the tile's first row and of its row stride (rows past the last
// repeat the last: their sums are dropped). Uniform across a workgroup.
var<private> x_first: u32;
var<private> x_rows: vec4<u32>;

// x's values e..e+4 of the tile's rows as a matrix's columns (ROWS 4), or of its one row in
// the first column (ROWS 1).
fn xs(e: u32) -> mat4x4<f32> {
    let o = x_rows + vec4<u32>(e);
    let c0 = vec4<f32>(x[o.x], x[o.x + 1u], x[o.x + 2u], x[o.x + 3u]);
    if (ROWS == 1u) { return mat4x4<f32>(c0, vec4<f32>(), vec4<f32>(), vec4<f32>()); }
    return mat4x4<f32>(
        c0,
        vec4<f32>(x[o.y], x[o.y + 1u], x[o.y + 2u], x[o.y + 3u]),
        vec4<f32>(x[o.z], x[o.z + 1u], x[o.z + 2u], x[o.z + 3u]),
        vec4<f32>(x[o.w], x[o.w + 1u], x[o.w + 2u], x[o.w + 3u]),
    );
}

// Each tile row's dot product of four weights q with its values at e..e+4.
fn dots(q: vec4<f32>, e: u32) -> vec4<f32> {
    if (ROWS == 1u) {
        let o = x_rows.x + e;
        return vec4<f32>(dot(q, vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u])), 0.0, 0.0, 0.0);
    }
    return q * xs(e);
}

// Each tile row's sum of its values at e..e+4.
fn sums(e: u32) -> vec4<f32> {
    return dots(vec4<f32>(1.0), e);
}

// Each tile row's value at e.
fn x_at(e: u32) -> vec4<f32> {
    let o = x_rows + vec4<u32>(e);
    if (ROWS == 1u) { return vec4<f32>(x[o.x], 0.0, 0.0, 0.0); }
    return vec4<f32>(x[o.x], x[o.y], x[o.z], x[o.w]);
}

fn block_values() -> u32 {
    if (FORMAT <= 2u) { return 1u; }
    if (FORMAT <= 5u) { return 32u; }
    return 256u;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    // A workgroup takes 64 weight rows and one tile of x's rows: the tile, and so every read of
    // x, is the same for all its threads (uniform), only the weight reads differ.
    let g = wid.y * params.groups_x + wid.x;
    let col_groups = (params.n + 63u) / 64u;
    let col = (g % col_groups) * 64u + l;
    let row0 = (g / col_groups) * ROWS;
    if (col >= params.n || row0 >= params.rows) { return; }
    let last = params.rows - 1u;
    x_rows = vec4<u32>(row0, min(row0 + 1u, last), min(row0 + 2u, last), min(row0 + 3u, last))
        * params.k;
    let qk = block_values();
    let blocks = params.k / qk;
    let block_bytes = params.row_bytes / blocks;
    // Each tile row's sum, in the lanes of one vector.
    var acc = vec4<f32>();
    for (var blk = 0u; blk < blocks; blk++) {
        let b = col * params.row_bytes + blk * block_bytes;
        let e = blk * qk;
        if (FORMAT == 0u) {
            acc += bitcast<f32>(word_at(b)) * x_at(e);
        } else if (FORMAT == 1u) {
            acc += half_at(b) * x_at(e);
        } else if (FORMAT == 2u) {
            acc += bitcast<f32>((byte_at(b) | (byte_at(b + 1u) << 8u)) << 16u) * x_at(e);
        } else if (FORMAT == 3u || FORMAT == 4u) {
            // Q4_0: d · (q - 8); Q4_1: d · q + m (the minimum times Σ x).
            var d: f32;
            var m: f32;
            var qs: u32;
            if (FORMAT == 3u) {
                d = half_at(b);
                m = -8.0 * d;
                qs = b + 2u;
            } else {
                let dm = unpack2x16float(word_at(b));
                d = dm.x;
                m = dm.y;
                qs = b + 4u;
            }
            var dq = vec4<f32>();
            var sum = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                let q = word_at(qs + 4u * j);
                dq += dots(nibbles4(q, false), e + 4u * j) + dots(nibbles4(q, true), e + 16u + 4u * j);
                sum += sums(e + 4u * j) + sums(e + 16u + 4u * j);
            }
            acc += d * dq + m * sum;
        } else if (FORMAT == 5u) {
            var dq = vec4<f32>();
            for (var j = 0u; j < 8u; j++) {
                dq += dots(ibytes4(word_at(b + 2u + 4u * j)), e + 4u * j);
            }
            acc += half_at(b) * dq;
        } else if (FORMAT == 6u || FORMAT == 7u) {
            let dm = unpack2x16float(word_at(b));
            var qs = b + 16u;
            if (FORMAT == 7u) { qs = b + 48u; }
            for (var sub = 0u; sub < 8u; sub++) {
                let sm = scale_min(sub, b + 4u);
                let hi = (sub & 1u) == 1u;
                var dq = vec4<f32>();
                var sum = vec4<f32>();
                for (var j = 0u; j < 8u; j++) {
                    var q = nibbles4(word_at(qs + (sub / 2u) * 32u + 4u * j), hi);
                    if (FORMAT == 7u) {
                        let h = bytes4(word_at(b + 16u + 4u * j));
                        q += vec4<f32>(((h >> vec4<u32>(sub)) & vec4<u32>(1u)) * 16u);
                    }
                    let at = e + sub * 32u + 4u * j;
                    dq += dots(q, at);
                    sum += sums(at);
                }
                acc += (dm.x * sm.x) * dq - (dm.y * sm.y) * sum;
            }
        } else {
            let d = half_at(b + 208u);
            for (var h = 0u; h < 2u; h++) {
                let ql = b + h * 64u;
                let qh = b + 128u + h * 32u;
                for (var j = 0u; j < 8u; j++) {
                    let lo = bytes4(word_at(ql + 4u * j));
                    let lo2 = bytes4(word_at(ql + 32u + 4u * j));
                    let hb = bytes4(word_at(qh + 4u * j));
                    let three = vec4<u32>(3u);
                    let four = vec4<u32>(4u);
                    let fifteen = vec4<u32>(15u);
                    let q0 = vec4<f32>((lo & fifteen) | ((hb & three) << four));
                    let q1 = vec4<f32>((lo2 & fifteen) | (((hb >> vec4<u32>(2u)) & three) << four));
                    let q2 = vec4<f32>((lo >> four) | (((hb >> four) & three) << four));
                    let q3 = vec4<f32>((lo2 >> four) | (((hb >> vec4<u32>(6u)) & three) << four));
                    let s = b + 192u + h * 8u + j / 4u;
                    let at = e + h * 128u + 4u * j;
                    let c = vec4<f32>(32.0);
                    acc += (d * int8_of(byte_at(s))) * dots(q0 - c, at)
                        + (d * int8_of(byte_at(s + 2u))) * dots(q1 - c, at + 32u)
                        + (d * int8_of(byte_at(s + 4u))) * dots(q2 - c, at + 64u)
                        + (d * int8_of(byte_at(s + 6u))) * dots(q3 - c, at + 96u);
                }
            }
        }
    }
    let out = row0 * params.out_stride + params.out_offset + col;
    y[out] = acc.x;
    if (ROWS == 4u) {
        if (row0 + 1u < params.rows) { y[out + params.out_stride] = acc.y; }
        if (row0 + 2u < params.rows) { y[out + 2u * params.out_stride] = acc.z; }
        if (row0 + 3u < params.rows) { y[out + 3u * params.out_stride] = acc.w; }
    }
}

// Value e of the block whose bytes start at b.
fn value_at(b: u32, e: u32) -> f32 {
    if (FORMAT == 0u) { return bitcast<f32>(word_at(b)); }
    if (FORMAT == 1u) { return half_at(b); }
    if (FORMAT == 2u) { return bitcast<f32>((byte_at(b) | (byte_at(b + 1u) << 8u)) << 16u); }
    if (FORMAT == 3u || FORMAT == 4u) {
        var qs = b + 2u;
        if (FORMAT == 4u) { qs = b + 4u; }
        let q = byte_at(qs + e % 16u);
        var v = f32(q & 15u);
        if (e >= 16u) { v = f32(q >> 4u); }
        if (FORMAT == 3u) { return half_at(b) * (v - 8.0); }
        return half_at(b) * v + half_at(b + 2u);
    }
    if (FORMAT == 5u) { return half_at(b) * int8_of(byte_at(b + 2u + e)); }
    if (FORMAT == 6u || FORMAT == 7u) {
        let sub = e / 32u;
        let l = e % 32u;
        var qs = b + 16u;
        if (FORMAT == 7u) { qs = b + 48u; }
        let q = byte_at(qs + (sub / 2u) * 32u + l);
        var v = q & 15u;
        if ((sub & 1u) == 1u) { v = q >> 4u; }
        if (FORMAT == 7u) { v |= ((byte_at(b + 16u + l) >> sub) & 1u) << 4u; }
        let sm = scale_min(sub, b + 4u);
        return half_at(b) * sm.x * f32(v) - half_at(b + 2u) * sm.y;
    }
    let h = e / 128u;
    let part = (e % 128u) / 32u;
    let l = e % 32u;
    let lo = byte_at(b + h * 64u + (part & 1u) * 32u + l);
    var q = lo & 15u;
    if (part >= 2u) { q = lo >> 4u; }
    q |= ((byte_at(b + 128u + h * 32u + l) >> (2u * part)) & 3u) << 4u;
    let s = int8_of(byte_at(b + 192u + h * 8u + part * 2u + l / 16u));
    return half_at(b + 208u) * s * f32(i32(q) - 32);
}

@compute @workgroup_size(64, 1, 1)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 64u + l;
    if (i >= params.rows * params.k) { return; }
    let r = i / params.k;
    let c = i % params.k;
    let id = ids[r];
    var v = 0.0;
    if (id < params.n) {
        let qk = block_values();
        let block_bytes = params.row_bytes / (params.k / qk);
        v = value_at(id * params.row_bytes + (c / qk) * block_bytes, c % qk);
    }
    y[i] = v;
}
