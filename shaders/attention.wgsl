// attention.wgsl: fused multi-head attention, softmax(scale · Q·Kᵀ + mask)·V, in the FlashAttention
// manner (an online softmax, so the T×T scores never reach memory), its backward pass, and the
// pieces of the naive path.
//
// Layout: qkv is [batch, T, 3, heads, D] (a fused projection's output: each token's row holds q,
// then k, then v, each heads × D); out and grad_out are [batch, T, heads, D]; lse and delta are
// [batch, heads, T] f32; dqkv has qkv's layout.
// Threads: blocks of 64 consecutive positions of one (sequence, head) per workgroup; the forward
// gives each of 16 threads 4 queries of the block (every key and value row it loads serves four
// queries: on a CPU adapter every load is one per lane, and this made the forward 3.7× faster at
// T = 1,024), the backward one query (dq) or key (dk, dv) per thread. Every key (or query) row a
// thread walks is the same for all threads of the workgroup: no workgroup memory, no barrier.
// Positions go 4 at a time, one online-softmax rescale per 4 keys. The forward takes ceil(D / 4) as
// an override constant (D4: its loops unroll, 1.5× faster on lavapipe); the other entry points read
// it at run time (no faster as constants, and a pipeline per D each took minutes to compile there).
// Loop caps: Mesa's software drivers stop an invocation after 65,535 loop iterations in total, so a
// dispatch walks at most `chunk_keys` positions (chosen on the host from D4 = ceil(D / 4), counting
// every loop: about 7 · D4 iterations per key forward, 2.5 · D4 backward): longer
// sequences take `chunks` dispatches in order, each merging its result into f32 partials (the
// forward's unnormalized, with the running (max, sum); the backward's plain sums), which
// forward_combine and store_partials then write out. Every sum has a fixed order and no atomics:
// results are deterministic.
// Masks: causal (key ≤ query), and per-sequence lengths (keys at or past lengths[b] are masked). A
// query with no key left gets out = 0 and lse = +inf, so its backward probabilities are exactly 0.
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32.
//
// Entry points (bindings: 0 params, 1 qkv, 2 out / dqkv, 3 lse, 4 lengths, 5 grad_out, 6 delta,
// 7 partial vec4s, 8 partial (max, sum) pairs; naive path: 1 src, 2 dst):
//   forward           grid (query blocks, batch·heads), 16 threads: out and lse, or chunk `chunk`'s
//                     partials
//   forward_combine   one thread per (row, d4): the partials into out and lse
//   backward_delta    one thread per row: delta = Σ_d grad_out · out
//   backward_dq       grid (query blocks, batch·heads): dq, or chunk `chunk`'s partials
//   backward_dkv      grid (key blocks, batch·heads): dk and dv, or chunk `chunk`'s partials
//   store_partials    one thread per (section, row, d4): the partial sums into dqkv
//   split_heads       naive path: one section of [batch, T, sections, heads, D] -> [batch·heads, T, D]
//   merge_heads       naive path: the inverse
//   mask_scale        naive path: scores [batch·heads, T, T] in place: scale, then -inf where masked

alias Elem = f32;

struct Params {
    batch: u32,
    seq: u32,            // T
    heads: u32,
    head_dim: u32,       // D
    chunk_keys: u32,     // positions one dispatch walks along the split axis
    chunks: u32,         // dispatches along the split axis
    chunk: u32,          // this dispatch's chunk
    scale: f32,
    causal: u32,
    has_lengths: u32,
    sections: u32,       // naive path: sections of the packed tensor (1 or 3)
    total: u32,          // threads of the one-thread-per-item entry points
    groups_x: u32,       // their grid's x extent (folded into y)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}


@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<Elem>;
@group(0) @binding(2) var<storage, read_write> out: array<Elem>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> lengths: array<u32>;
@group(0) @binding(5) var<storage, read> grad_out: array<Elem>;
@group(0) @binding(6) var<storage, read_write> delta_out: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> partial_ml: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;
@group(0) @binding(1) var<storage, read_write> scores: array<Elem>;

const WG: u32 = 64u;
// Stands for -inf in running maxima, so that max - max never makes a NaN.
const NEG: f32 = -1.0e30;

alias Row = array<vec4<f32>, 32>;

fn pos_inf() -> f32 { return bitcast<f32>(0x7f800000u); }

// ceil(D / 4): vec4s per head row, at most 32.
fn dims4() -> u32 { return (params.head_dim + 3u) / 4u; }

// The same as a constant, for the forward: its loops over the head dimension, unrolled, run
// 1.5× faster on lavapipe (the other entry points gain nothing and compile once for every D).
override D4: u32 = 16u;

// Element index of token t of sequence b, section s (0 q, 1 k, 2 v), head h, in qkv.
fn qkv_base(b: u32, t: u32, s: u32, h: u32) -> u32 {
    let hd = params.heads * params.head_dim;
    return (b * params.seq + t) * 3u * hd + s * hd + h * params.head_dim;
}

// Element index of token t of sequence b, head h, in out and grad_out.
fn out_base(b: u32, t: u32, h: u32) -> u32 {
    return (b * params.seq + t) * params.heads * params.head_dim + h * params.head_dim;
}

// Four elements from base + i (zeros past the head dimension); no loop, no read past D.
fn load_qkv(base: u32, i: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    if (i < d) { v.x = f32(qkv[base + i]); }
    if (i + 1u < d) { v.y = f32(qkv[base + i + 1u]); }
    if (i + 2u < d) { v.z = f32(qkv[base + i + 2u]); }
    if (i + 3u < d) { v.w = f32(qkv[base + i + 3u]); }
    return v;
}

fn load_grad(base: u32, i: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    if (i < d) { v.x = f32(grad_out[base + i]); }
    if (i + 1u < d) { v.y = f32(grad_out[base + i + 1u]); }
    if (i + 2u < d) { v.z = f32(grad_out[base + i + 2u]); }
    if (i + 3u < d) { v.w = f32(grad_out[base + i + 3u]); }
    return v;
}

fn load_out(base: u32, i: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    if (i < d) { v.x = f32(out[base + i]); }
    if (i + 1u < d) { v.y = f32(out[base + i + 1u]); }
    if (i + 2u < d) { v.z = f32(out[base + i + 2u]); }
    if (i + 3u < d) { v.w = f32(out[base + i + 3u]); }
    return v;
}

fn store_out(base: u32, i: u32, v: vec4<f32>) {
    let d = params.head_dim;
    if (i < d) { out[base + i] = Elem(v.x); }
    if (i + 1u < d) { out[base + i + 1u] = Elem(v.y); }
    if (i + 2u < d) { out[base + i + 2u] = Elem(v.z); }
    if (i + 3u < d) { out[base + i + 3u] = Elem(v.w); }
}

// Keys of sequence b that are not padding.
fn valid_keys(b: u32) -> u32 {
    var n = params.seq;
    if (params.has_lengths != 0u) { n = min(n, lengths[b]); }
    return n;
}

// Query q may see key k (k < hi: within this dispatch's range and not padding).
fn visible(q: u32, k: u32, hi: u32) -> bool {
    return k < hi && !(params.causal != 0u && k > q);
}

// The [lo, hi) positions of this dispatch's chunk of [first, end).
fn chunk_range(first: u32, end: u32) -> vec2<u32> {
    let lo = first + params.chunk * params.chunk_keys;
    return vec2<u32>(lo, min(end, lo + params.chunk_keys));
}

// Σ_d a · (row at base of qkv).
fn dot_qkv(a: ptr<function, Row>, base: u32) -> f32 {
    var s = 0.0;
    for (var d4 = 0u; d4 < dims4(); d4++) { s += dot((*a)[d4], load_qkv(base, 4u * d4)); }
    return s;
}

fn dot_grad(a: ptr<function, Row>, base: u32) -> f32 {
    var s = 0.0;
    for (var d4 = 0u; d4 < dims4(); d4++) { s += dot((*a)[d4], load_grad(base, 4u * d4)); }
    return s;
}

// 4 queries per thread (l, l + 16, l + 32, l + 48 of the block): every key and value row loaded
// serves four queries, which is what a CPU adapter needs (there each load is one per lane).
@compute @workgroup_size(16, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    var t: array<u32, 4>;
    var q: array<Row, 4>;
    var acc: array<Row, 4>;
    var m: array<f32, 4>;
    var sum: array<f32, 4>;
    for (var j = 0u; j < 4u; j++) {
        t[j] = wid.x * WG + l + 16u * j;
        let qb = qkv_base(b, min(t[j], params.seq - 1u), 0u, h);
        for (var d4 = 0u; d4 < D4; d4++) { q[j][d4] = load_qkv(qb, 4u * d4) * params.scale; }
        m[j] = NEG;
        sum[j] = 0.0;
    }
    // Keys: this dispatch's chunk of the unpadded ones, cut (causal) after the block's last query.
    var end = valid_keys(b);
    if (params.causal != 0u) { end = min(end, wid.x * WG + WG); }
    let range = chunk_range(0u, end);
    let last = params.seq - 1u;
    for (var k0 = range.x; k0 < range.y; k0 += 4u) {
        // Scores of 4 keys for the 4 queries: s[j][i].
        var s: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            var kr: Row;
            let kb = qkv_base(b, min(k0 + i, last), 1u, h);
            for (var d4 = 0u; d4 < D4; d4++) { kr[d4] = load_qkv(kb, 4u * d4); }
            for (var j = 0u; j < 4u; j++) {
                var d = 0.0;
                for (var d4 = 0u; d4 < D4; d4++) { d += dot(q[j][d4], kr[d4]); }
                if (!visible(t[j], k0 + i, range.y)) { d = NEG; }
                s[j][i] = d;
            }
        }
        var p: array<vec4<f32>, 4>;
        var alpha: array<f32, 4>;
        for (var j = 0u; j < 4u; j++) {
            let m_new = max(m[j], max(max(s[j].x, s[j].y), max(s[j].z, s[j].w)));
            alpha[j] = exp(m[j] - m_new);
            p[j] = select(vec4<f32>(0.0), exp(s[j] - m_new), s[j] > vec4<f32>(0.5 * NEG));
            sum[j] = sum[j] * alpha[j] + (p[j].x + p[j].y) + (p[j].z + p[j].w);
            m[j] = m_new;
        }
        let v0 = qkv_base(b, min(k0, last), 2u, h);
        let v1 = qkv_base(b, min(k0 + 1u, last), 2u, h);
        let v2 = qkv_base(b, min(k0 + 2u, last), 2u, h);
        let v3 = qkv_base(b, min(k0 + 3u, last), 2u, h);
        for (var d4 = 0u; d4 < D4; d4++) {
            let i = 4u * d4;
            let a = load_qkv(v0, i);
            let bb = load_qkv(v1, i);
            let c = load_qkv(v2, i);
            let e = load_qkv(v3, i);
            for (var j = 0u; j < 4u; j++) {
                acc[j][d4] = acc[j][d4] * alpha[j] + p[j].x * a + p[j].y * bb + p[j].z * c + p[j].w * e;
            }
        }
    }
    for (var j = 0u; j < 4u; j++) {
        if (t[j] >= params.seq) { continue; }
        let row = wid.y * params.seq + t[j];
        if (params.chunks == 1u) {
            let inv = select(0.0, 1.0 / sum[j], sum[j] > 0.0);
            let base = out_base(b, t[j], h);
            for (var d4 = 0u; d4 < D4; d4++) { store_out(base, 4u * d4, acc[j][d4] * inv); }
            lse_out[row] = select(pos_inf(), m[j] + log(sum[j]), sum[j] > 0.0);
        } else {
            var a = 1.0;
            var c = 0.0;
            if (params.chunk == 0u) {
                partial_ml[row] = vec2<f32>(m[j], sum[j]);
            } else {
                let old = partial_ml[row];
                let m_new = max(old.x, m[j]);
                c = exp(old.x - m_new);
                a = exp(m[j] - m_new);
                partial_ml[row] = vec2<f32>(m_new, old.y * c + sum[j] * a);
            }
            for (var d4 = 0u; d4 < D4; d4++) {
                let k = row * D4 + d4;
                var prev = vec4<f32>(0.0);
                if (params.chunk != 0u) { prev = partial[k]; }
                partial[k] = prev * c + acc[j][d4] * a;
            }
        }
    }
}

fn flat_index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * WG + l;
}

// One thread per (row, d4): out = acc / sum and lse = m + log(sum) from the merged partials.
@compute @workgroup_size(64, 1, 1)
fn forward_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wid, l);
    if (i >= params.total) { return; }
    let row = i / dims4();
    let d4 = i % dims4();
    let ml = partial_ml[row];
    let sum = ml.y;
    let bh = row / params.seq;
    let t = row % params.seq;
    let inv = select(0.0, 1.0 / sum, sum > 0.0);
    store_out(out_base(bh / params.heads, t, bh % params.heads), 4u * d4, partial[i] * inv);
    if (d4 == 0u) { lse_out[row] = select(pos_inf(), ml.x + log(sum), sum > 0.0); }
}

// delta[row] = Σ_d grad_out · out, one thread per row (out is the forward's output, bound at 2).
@compute @workgroup_size(64, 1, 1)
fn backward_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = flat_index(wid, l);
    if (row >= params.total) { return; }
    let bh = row / params.seq;
    let t = row % params.seq;
    let base = out_base(bh / params.heads, t, bh % params.heads);
    var s = 0.0;
    for (var d4 = 0u; d4 < dims4(); d4++) {
        s += dot(load_grad(base, 4u * d4), load_out(base, 4u * d4));
    }
    delta_out[row] = s;
}

// Writes a row of section s into dqkv, or adds it into the partials.
fn store_grad(acc: ptr<function, Row>, b: u32, t: u32, h: u32, s: u32) {
    if (params.chunks == 1u) {
        let base = qkv_base(b, t, s, h);
        for (var d4 = 0u; d4 < dims4(); d4++) { store_out(base, 4u * d4, (*acc)[d4]); }
    } else {
        let rows = params.batch * params.heads * params.seq;
        let row = (b * params.heads + h) * params.seq + t;
        for (var d4 = 0u; d4 < dims4(); d4++) {
            let k = (s * rows + row) * dims4() + d4;
            var prev = vec4<f32>(0.0);
            if (params.chunk != 0u) { prev = partial[k]; }
            partial[k] = prev + (*acc)[d4];
        }
    }
}

// dq = scale · Σ_k dS[q, k] · k, with dS = P ⊙ (dP - delta), P = exp(scale · q·k - lse), dP = dO·v.
@compute @workgroup_size(64, 1, 1)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    let t = wid.x * WG + l;
    let tq = min(t, params.seq - 1u);
    var q: Row;
    var g: Row;
    let qb = qkv_base(b, tq, 0u, h);
    let gb = out_base(b, tq, h);
    for (var d4 = 0u; d4 < dims4(); d4++) {
        q[d4] = load_qkv(qb, 4u * d4) * params.scale;
        g[d4] = load_grad(gb, 4u * d4);
    }
    let row_l = lse[wid.y * params.seq + tq];
    let row_d = delta[wid.y * params.seq + tq];
    var acc: Row;
    var end = valid_keys(b);
    if (params.causal != 0u) { end = min(end, wid.x * WG + WG); }
    let range = chunk_range(0u, end);
    let last = params.seq - 1u;
    for (var k0 = range.x; k0 < range.y; k0 += 4u) {
        let k = vec4<u32>(k0, k0 + 1u, k0 + 2u, k0 + 3u);
        let kk = min(k, vec4<u32>(last));
        let kb = vec4<u32>(qkv_base(b, kk.x, 1u, h), qkv_base(b, kk.y, 1u, h),
                           qkv_base(b, kk.z, 1u, h), qkv_base(b, kk.w, 1u, h));
        let hd = params.heads * params.head_dim;
        let s = vec4<f32>(dot_qkv(&q, kb.x), dot_qkv(&q, kb.y), dot_qkv(&q, kb.z), dot_qkv(&q, kb.w));
        let dp = vec4<f32>(dot_qkv(&g, kb.x + hd), dot_qkv(&g, kb.y + hd), dot_qkv(&g, kb.z + hd),
                           dot_qkv(&g, kb.w + hd));
        let seen = vec4<bool>(visible(t, k.x, range.y), visible(t, k.y, range.y),
                              visible(t, k.z, range.y), visible(t, k.w, range.y));
        let ds = select(vec4<f32>(0.0), exp(s - row_l) * (dp - row_d), seen);
        for (var d4 = 0u; d4 < dims4(); d4++) {
            let i = 4u * d4;
            acc[d4] += ds.x * load_qkv(kb.x, i) + ds.y * load_qkv(kb.y, i) + ds.z * load_qkv(kb.z, i)
                + ds.w * load_qkv(kb.w, i);
        }
    }
    if (t >= params.seq) { return; }
    for (var d4 = 0u; d4 < dims4(); d4++) { acc[d4] *= params.scale; }
    store_grad(&acc, b, t, h, 0u);
}

// dv = Σ_q P[q, k] · dO[q]; dk = scale · Σ_q dS[q, k] · q, one thread per key.
@compute @workgroup_size(64, 1, 1)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    let kt = wid.x * WG + l;
    let tk = min(kt, params.seq - 1u);
    let keys = valid_keys(b);
    var k: Row;
    var v: Row;
    let kb = qkv_base(b, tk, 1u, h);
    for (var d4 = 0u; d4 < dims4(); d4++) {
        k[d4] = load_qkv(kb, 4u * d4) * params.scale;
        v[d4] = load_qkv(kb + params.heads * params.head_dim, 4u * d4);
    }
    var dk: Row;
    var dv: Row;
    // Queries: all, from the block's first key on when causal; none for a block of padding.
    var first = 0u;
    if (params.causal != 0u) { first = wid.x * WG; }
    var end = params.seq;
    if (wid.x * WG >= keys) { end = first; }
    let range = chunk_range(first, end);
    let last = params.seq - 1u;
    let mine = kt < keys;
    for (var q0 = range.x; q0 < range.y; q0 += 4u) {
        let qi = vec4<u32>(q0, q0 + 1u, q0 + 2u, q0 + 3u);
        let qq = min(qi, vec4<u32>(last));
        let qb = vec4<u32>(qkv_base(b, qq.x, 0u, h), qkv_base(b, qq.y, 0u, h),
                           qkv_base(b, qq.z, 0u, h), qkv_base(b, qq.w, 0u, h));
        let gb = vec4<u32>(out_base(b, qq.x, h), out_base(b, qq.y, h), out_base(b, qq.z, h),
                           out_base(b, qq.w, h));
        let s = vec4<f32>(dot_qkv(&k, qb.x), dot_qkv(&k, qb.y), dot_qkv(&k, qb.z), dot_qkv(&k, qb.w));
        let dp = vec4<f32>(dot_grad(&v, gb.x), dot_grad(&v, gb.y), dot_grad(&v, gb.z),
                           dot_grad(&v, gb.w));
        let r = wid.y * params.seq;
        let ls = vec4<f32>(lse[r + qq.x], lse[r + qq.y], lse[r + qq.z], lse[r + qq.w]);
        let dl = vec4<f32>(delta[r + qq.x], delta[r + qq.y], delta[r + qq.z], delta[r + qq.w]);
        let seen = vec4<bool>(
            mine && qi.x < range.y && !(params.causal != 0u && kt > qi.x),
            mine && qi.y < range.y && !(params.causal != 0u && kt > qi.y),
            mine && qi.z < range.y && !(params.causal != 0u && kt > qi.z),
            mine && qi.w < range.y && !(params.causal != 0u && kt > qi.w));
        let p = select(vec4<f32>(0.0), exp(s - ls), seen);
        let ds = p * (dp - dl);
        for (var d4 = 0u; d4 < dims4(); d4++) {
            let i = 4u * d4;
            dv[d4] += p.x * load_grad(gb.x, i) + p.y * load_grad(gb.y, i) + p.z * load_grad(gb.z, i)
                + p.w * load_grad(gb.w, i);
            dk[d4] += ds.x * load_qkv(qb.x, i) + ds.y * load_qkv(qb.y, i) + ds.z * load_qkv(qb.z, i)
                + ds.w * load_qkv(qb.w, i);
        }
    }
    if (kt >= params.seq) { return; }
    for (var d4 = 0u; d4 < dims4(); d4++) { dk[d4] *= params.scale; }
    store_grad(&dk, b, kt, h, 1u);
    store_grad(&dv, b, kt, h, 2u);
}

// One thread per (section, row, d4): the summed partials into dqkv.
@compute @workgroup_size(64, 1, 1)
fn store_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wid, l);
    if (i >= params.total) { return; }
    let rows = params.batch * params.heads * params.seq;
    let d4 = i % dims4();
    let row = (i / dims4()) % rows;
    let s = i / (dims4() * rows);
    let bh = row / params.seq;
    let t = row % params.seq;
    store_out(qkv_base(bh / params.heads, t, s, bh % params.heads), 4u * d4, partial[i]);
}

// Section `chunk` of src [batch, T, sections, heads, D] -> dst [batch·heads, T, D], one thread per
// element of dst.
@compute @workgroup_size(64, 1, 1)
fn split_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wid, l);
    if (i >= params.total) { return; }
    let d = i % params.head_dim;
    let h = (i / params.head_dim) % params.heads;
    let bt = i / (params.head_dim * params.heads);
    let t = bt % params.seq;
    let b = bt / params.seq;
    let at = ((bt * params.sections + params.chunk) * params.heads + h) * params.head_dim + d;
    dst[((b * params.heads + h) * params.seq + t) * params.head_dim + d] = src[at];
}

// The inverse: src [batch·heads, T, D] -> section `chunk` of dst [batch, T, sections, heads, D].
@compute @workgroup_size(64, 1, 1)
fn merge_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wid, l);
    if (i >= params.total) { return; }
    let d = i % params.head_dim;
    let h = (i / params.head_dim) % params.heads;
    let bt = i / (params.head_dim * params.heads);
    let t = bt % params.seq;
    let b = bt / params.seq;
    let to = ((bt * params.sections + params.chunk) * params.heads + h) * params.head_dim + d;
    dst[to] = src[((b * params.heads + h) * params.seq + t) * params.head_dim + d];
}

// scores [batch·heads, T, T] in place: scale · s, or -inf where masked. One thread per element.
@compute @workgroup_size(64, 1, 1)
fn mask_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat_index(wid, l);
    if (i >= params.total) { return; }
    let k = i % params.seq;
    let q = (i / params.seq) % params.seq;
    let b = i / (params.seq * params.seq * params.heads);
    if (!visible(q, k, valid_keys(b))) {
        scores[i] = Elem(bitcast<f32>(0xff800000u));
    } else {
        scores[i] = Elem(f32(scores[i]) * params.scale);
    }
}
