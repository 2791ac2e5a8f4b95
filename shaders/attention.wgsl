// attention.wgsl: fused multi-head attention, softmax(scale · Q·Kᵀ + mask)·V, in the FlashAttention
// manner (an online softmax, so the T×T scores never reach memory), its backward pass, and the
// pieces of the naive path.
//
// Layout: qkv is [batch, T, 3, heads, D] (a fused projection's output: each token's row holds q,
// then k, then v, each heads × D); out and grad_out are [batch, T, heads, D]; lse and delta are
// [batch, heads, T] f32; dqkv has qkv's layout.
// Threads: blocks of 64 consecutive positions of one (sequence, head) per workgroup, 8 threads
// of 8 positions each: the forward's and dq's threads 8 queries, dkv's 8 keys. Every row a thread
// loads from the other axis serves eight (on a CPU adapter every load is one per lane: 4 queries a
// thread made the forward 3.7× faster at T = 1,024 than one, 8 another 1.6×), and every key row
// (or query row) the threads walk is the same for all of them: no workgroup memory, no barrier. Private arrays
// are indexed by a constant row and a loop's d4 only (a run-time row index made lavapipe's compile
// of one entry point minutes long, and its code slower). D is read at run time: each entry point
// compiles once per element type. The forward walks keys 2 at a time (one online-softmax rescale
// per 2), the backward one at a time.
// Loop caps: Mesa's software drivers stop an invocation after 65,535 loop iterations in total, so a
// dispatch walks at most `chunk_keys` positions (chosen on the host from D4 = ceil(D / 4), counting
// every loop: about 1.25 · D4 iterations per key forward, 2.5 · D4 per position backward): longer
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
//   forward           grid (query blocks, batch·heads), 8 threads: out and lse, or chunk `chunk`'s
//                     partials
//   forward_combine   one thread per (row, d4): the partials into out and lse
//   backward_delta    one thread per row: delta = Σ_d grad_out · out
//   backward_dq       grid (query blocks, batch·heads), 8 threads: dq, or chunk `chunk`'s partials
//   backward_dkv      grid (key blocks, batch·heads), 8 threads: dk and dv, or chunk `chunk`'s
//                     partials
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

// Row t's (max, sum) after this dispatch: out's scale (a) and, when chunked, the scales of the
// new (a) and earlier (c) partials, which it merges into partial_ml. lse when not chunked.
fn finish_row(bh: u32, t: u32, m: f32, sum: f32) -> vec2<f32> {
    if (t >= params.seq) { return vec2<f32>(0.0); }
    let row = bh * params.seq + t;
    if (params.chunks == 1u) {
        lse_out[row] = select(pos_inf(), m + log(sum), sum > 0.0);
        return vec2<f32>(select(0.0, 1.0 / sum, sum > 0.0), 0.0);
    }
    if (params.chunk == 0u) {
        partial_ml[row] = vec2<f32>(m, sum);
        return vec2<f32>(1.0, 0.0);
    }
    let old = partial_ml[row];
    let m_new = max(old.x, m);
    let c = exp(old.x - m_new);
    let a = exp(m - m_new);
    partial_ml[row] = vec2<f32>(m_new, old.y * c + sum * a);
    return vec2<f32>(a, c);
}

// Four values (at d4) of row t's accumulator, scaled by finish_row's (a, c): into out, or merged
// into the partials.
fn finish_acc(b: u32, h: u32, t: u32, d4: u32, v: vec4<f32>, ac: vec2<f32>) {
    if (t >= params.seq) { return; }
    if (params.chunks == 1u) {
        store_out(out_base(b, t, h), 4u * d4, v * ac.x);
    } else {
        let k = ((b * params.heads + h) * params.seq + t) * dims4() + d4;
        var prev = vec4<f32>(0.0);
        if (params.chunk != 0u) { prev = partial[k]; }
        partial[k] = prev * ac.y + v * ac.x;
    }
}

// 8 queries per thread (l, l + 8, ..., l + 56 of the block), 2 keys per iteration (one
// online-softmax rescale per 2): every key and value row loaded serves eight queries, which is
// what a CPU adapter needs (there each load is one per lane). Every private array is indexed by
// a constant row and the loop's d4.
@compute @workgroup_size(8, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    let n4 = dims4();
    let last = params.seq - 1u;
    // Queries 0-3 (lo) and 4-7 (hi) of this thread.
    let t0 = wid.x * WG + l;
    let t_lo = vec4<u32>(t0, t0 + 8u, t0 + 16u, t0 + 24u);
    let t_hi = t_lo + vec4<u32>(32u);
    let c_lo = min(t_lo, vec4<u32>(last));
    let c_hi = min(t_hi, vec4<u32>(last));
    let tq = array<u32, 8>(c_lo.x, c_lo.y, c_lo.z, c_lo.w, c_hi.x, c_hi.y, c_hi.z, c_hi.w);
    var q: array<Row, 8>;
    var acc: array<Row, 8>;
    for (var d4 = 0u; d4 < n4; d4++) {
        q[0][d4] = load_qkv(qkv_base(b, tq[0], 0u, h), 4u * d4) * params.scale;
        q[1][d4] = load_qkv(qkv_base(b, tq[1], 0u, h), 4u * d4) * params.scale;
        q[2][d4] = load_qkv(qkv_base(b, tq[2], 0u, h), 4u * d4) * params.scale;
        q[3][d4] = load_qkv(qkv_base(b, tq[3], 0u, h), 4u * d4) * params.scale;
        q[4][d4] = load_qkv(qkv_base(b, tq[4], 0u, h), 4u * d4) * params.scale;
        q[5][d4] = load_qkv(qkv_base(b, tq[5], 0u, h), 4u * d4) * params.scale;
        q[6][d4] = load_qkv(qkv_base(b, tq[6], 0u, h), 4u * d4) * params.scale;
        q[7][d4] = load_qkv(qkv_base(b, tq[7], 0u, h), 4u * d4) * params.scale;
    }
    var m_lo = vec4<f32>(NEG);
    var m_hi = vec4<f32>(NEG);
    var sum_lo = vec4<f32>(0.0);
    var sum_hi = vec4<f32>(0.0);
    // Keys: this dispatch's chunk of the unpadded ones, cut (causal) after the block's last query.
    var end = valid_keys(b);
    if (params.causal != 0u) { end = min(end, wid.x * WG + WG); }
    let range = chunk_range(0u, end);
    for (var k = range.x; k < range.y; k += 2u) {
        let k1 = k + 1u;
        let ka = qkv_base(b, k, 1u, h);
        let kb = qkv_base(b, min(k1, last), 1u, h);
        // Scores of the 8 queries with key k (a) and key k + 1 (c).
        var a_lo = vec4<f32>(0.0);
        var a_hi = vec4<f32>(0.0);
        var c_lo = vec4<f32>(0.0);
        var c_hi = vec4<f32>(0.0);
        for (var d4 = 0u; d4 < n4; d4++) {
            let x = load_qkv(ka, 4u * d4);
            let y = load_qkv(kb, 4u * d4);
            a_lo += vec4<f32>(dot(q[0][d4], x), dot(q[1][d4], x), dot(q[2][d4], x), dot(q[3][d4], x));
            a_hi += vec4<f32>(dot(q[4][d4], x), dot(q[5][d4], x), dot(q[6][d4], x), dot(q[7][d4], x));
            c_lo += vec4<f32>(dot(q[0][d4], y), dot(q[1][d4], y), dot(q[2][d4], y), dot(q[3][d4], y));
            c_hi += vec4<f32>(dot(q[4][d4], y), dot(q[5][d4], y), dot(q[6][d4], y), dot(q[7][d4], y));
        }
        var seen_a_lo = vec4<bool>(true);
        var seen_a_hi = vec4<bool>(true);
        var seen_c_lo = vec4<bool>(k1 < range.y);
        var seen_c_hi = vec4<bool>(k1 < range.y);
        if (params.causal != 0u) {
            seen_a_lo = vec4<u32>(k) <= t_lo;
            seen_a_hi = vec4<u32>(k) <= t_hi;
            seen_c_lo = seen_c_lo & (vec4<u32>(k1) <= t_lo);
            seen_c_hi = seen_c_hi & (vec4<u32>(k1) <= t_hi);
        }
        a_lo = select(vec4<f32>(NEG), a_lo, seen_a_lo);
        a_hi = select(vec4<f32>(NEG), a_hi, seen_a_hi);
        c_lo = select(vec4<f32>(NEG), c_lo, seen_c_lo);
        c_hi = select(vec4<f32>(NEG), c_hi, seen_c_hi);
        let mn_lo = max(m_lo, max(a_lo, c_lo));
        let mn_hi = max(m_hi, max(a_hi, c_hi));
        let al_lo = exp(m_lo - mn_lo);
        let al_hi = exp(m_hi - mn_hi);
        let pa_lo = select(vec4<f32>(0.0), exp(a_lo - mn_lo), seen_a_lo);
        let pa_hi = select(vec4<f32>(0.0), exp(a_hi - mn_hi), seen_a_hi);
        let pc_lo = select(vec4<f32>(0.0), exp(c_lo - mn_lo), seen_c_lo);
        let pc_hi = select(vec4<f32>(0.0), exp(c_hi - mn_hi), seen_c_hi);
        sum_lo = sum_lo * al_lo + pa_lo + pc_lo;
        sum_hi = sum_hi * al_hi + pa_hi + pc_hi;
        m_lo = mn_lo;
        m_hi = mn_hi;
        let va = ka + params.heads * params.head_dim;
        let vb = kb + params.heads * params.head_dim;
        for (var d4 = 0u; d4 < n4; d4++) {
            let x = load_qkv(va, 4u * d4);
            let y = load_qkv(vb, 4u * d4);
            acc[0][d4] = acc[0][d4] * al_lo.x + pa_lo.x * x + pc_lo.x * y;
            acc[1][d4] = acc[1][d4] * al_lo.y + pa_lo.y * x + pc_lo.y * y;
            acc[2][d4] = acc[2][d4] * al_lo.z + pa_lo.z * x + pc_lo.z * y;
            acc[3][d4] = acc[3][d4] * al_lo.w + pa_lo.w * x + pc_lo.w * y;
            acc[4][d4] = acc[4][d4] * al_hi.x + pa_hi.x * x + pc_hi.x * y;
            acc[5][d4] = acc[5][d4] * al_hi.y + pa_hi.y * x + pc_hi.y * y;
            acc[6][d4] = acc[6][d4] * al_hi.z + pa_hi.z * x + pc_hi.z * y;
            acc[7][d4] = acc[7][d4] * al_hi.w + pa_hi.w * x + pc_hi.w * y;
        }
    }
    let t = array<u32, 8>(t_lo.x, t_lo.y, t_lo.z, t_lo.w, t_hi.x, t_hi.y, t_hi.z, t_hi.w);
    var ac: array<vec2<f32>, 8>;
    ac[0] = finish_row(wid.y, t[0], m_lo.x, sum_lo.x);
    ac[1] = finish_row(wid.y, t[1], m_lo.y, sum_lo.y);
    ac[2] = finish_row(wid.y, t[2], m_lo.z, sum_lo.z);
    ac[3] = finish_row(wid.y, t[3], m_lo.w, sum_lo.w);
    ac[4] = finish_row(wid.y, t[4], m_hi.x, sum_hi.x);
    ac[5] = finish_row(wid.y, t[5], m_hi.y, sum_hi.y);
    ac[6] = finish_row(wid.y, t[6], m_hi.z, sum_hi.z);
    ac[7] = finish_row(wid.y, t[7], m_hi.w, sum_hi.w);
    for (var d4 = 0u; d4 < n4; d4++) {
        finish_acc(b, h, t[0], d4, acc[0][d4], ac[0]);
        finish_acc(b, h, t[1], d4, acc[1][d4], ac[1]);
        finish_acc(b, h, t[2], d4, acc[2][d4], ac[2]);
        finish_acc(b, h, t[3], d4, acc[3][d4], ac[3]);
        finish_acc(b, h, t[4], d4, acc[4][d4], ac[4]);
        finish_acc(b, h, t[5], d4, acc[5][d4], ac[5]);
        finish_acc(b, h, t[6], d4, acc[6][d4], ac[6]);
        finish_acc(b, h, t[7], d4, acc[7][d4], ac[7]);
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

// Four values (at d4) of row t of section s: into dqkv, or added into the partials. Nothing for
// a row past the sequence.
fn store_grad(b: u32, t: u32, h: u32, s: u32, d4: u32, v: vec4<f32>) {
    if (t >= params.seq) { return; }
    if (params.chunks == 1u) {
        store_out(qkv_base(b, t, s, h), 4u * d4, v);
    } else {
        let rows = params.batch * params.heads * params.seq;
        let row = (b * params.heads + h) * params.seq + t;
        let k = (s * rows + row) * dims4() + d4;
        var prev = vec4<f32>(0.0);
        if (params.chunk != 0u) { prev = partial[k]; }
        partial[k] = prev + v;
    }
}

// dq = scale · Σ_k dS[q, k] · k, with dS = P ⊙ (dP - delta), P = exp(scale · q·k - lse), dP = dO·v.
// 8 queries per thread (l, l + 8, ..., l + 56 of the block), one key per iteration: each key and
// value row loaded serves eight queries. Every private array is indexed by a constant row and the
// loop's d4 (a run-time row index made the software drivers' compile minutes long).
@compute @workgroup_size(8, 1, 1)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    let n4 = dims4();
    let last = params.seq - 1u;
    // Queries 0-3 (lo) and 4-7 (hi) of this thread.
    let t0 = wid.x * WG + l;
    let t_lo = vec4<u32>(t0, t0 + 8u, t0 + 16u, t0 + 24u);
    let t_hi = t_lo + vec4<u32>(32u);
    let c_lo = min(t_lo, vec4<u32>(last));
    let c_hi = min(t_hi, vec4<u32>(last));
    let tq = array<u32, 8>(c_lo.x, c_lo.y, c_lo.z, c_lo.w, c_hi.x, c_hi.y, c_hi.z, c_hi.w);
    let r = wid.y * params.seq;
    let l_lo = vec4<f32>(lse[r + c_lo.x], lse[r + c_lo.y], lse[r + c_lo.z], lse[r + c_lo.w]);
    let l_hi = vec4<f32>(lse[r + c_hi.x], lse[r + c_hi.y], lse[r + c_hi.z], lse[r + c_hi.w]);
    let d_lo = vec4<f32>(delta[r + c_lo.x], delta[r + c_lo.y], delta[r + c_lo.z], delta[r + c_lo.w]);
    let d_hi = vec4<f32>(delta[r + c_hi.x], delta[r + c_hi.y], delta[r + c_hi.z], delta[r + c_hi.w]);
    var q: array<Row, 8>;
    var g: array<Row, 8>;
    var acc: array<Row, 8>;
    for (var d4 = 0u; d4 < n4; d4++) {
        let i = 4u * d4;
        q[0][d4] = load_qkv(qkv_base(b, tq[0], 0u, h), i) * params.scale;
        g[0][d4] = load_grad(out_base(b, tq[0], h), i);
        q[1][d4] = load_qkv(qkv_base(b, tq[1], 0u, h), i) * params.scale;
        g[1][d4] = load_grad(out_base(b, tq[1], h), i);
        q[2][d4] = load_qkv(qkv_base(b, tq[2], 0u, h), i) * params.scale;
        g[2][d4] = load_grad(out_base(b, tq[2], h), i);
        q[3][d4] = load_qkv(qkv_base(b, tq[3], 0u, h), i) * params.scale;
        g[3][d4] = load_grad(out_base(b, tq[3], h), i);
        q[4][d4] = load_qkv(qkv_base(b, tq[4], 0u, h), i) * params.scale;
        g[4][d4] = load_grad(out_base(b, tq[4], h), i);
        q[5][d4] = load_qkv(qkv_base(b, tq[5], 0u, h), i) * params.scale;
        g[5][d4] = load_grad(out_base(b, tq[5], h), i);
        q[6][d4] = load_qkv(qkv_base(b, tq[6], 0u, h), i) * params.scale;
        g[6][d4] = load_grad(out_base(b, tq[6], h), i);
        q[7][d4] = load_qkv(qkv_base(b, tq[7], 0u, h), i) * params.scale;
        g[7][d4] = load_grad(out_base(b, tq[7], h), i);
    }
    var end = valid_keys(b);
    if (params.causal != 0u) { end = min(end, wid.x * WG + WG); }
    let range = chunk_range(0u, end);
    let hd = params.heads * params.head_dim;
    for (var k = range.x; k < range.y; k++) {
        let kb = qkv_base(b, k, 1u, h);
        var s_lo = vec4<f32>(0.0);
        var s_hi = vec4<f32>(0.0);
        var p_lo = vec4<f32>(0.0);
        var p_hi = vec4<f32>(0.0);
        var kc: Row;
        for (var d4 = 0u; d4 < n4; d4++) {
            let kr = load_qkv(kb, 4u * d4);
            let vr = load_qkv(kb + hd, 4u * d4);
            kc[d4] = kr;
            s_lo += vec4<f32>(dot(q[0][d4], kr), dot(q[1][d4], kr), dot(q[2][d4], kr), dot(q[3][d4], kr));
            s_hi += vec4<f32>(dot(q[4][d4], kr), dot(q[5][d4], kr), dot(q[6][d4], kr), dot(q[7][d4], kr));
            p_lo += vec4<f32>(dot(g[0][d4], vr), dot(g[1][d4], vr), dot(g[2][d4], vr), dot(g[3][d4], vr));
            p_hi += vec4<f32>(dot(g[4][d4], vr), dot(g[5][d4], vr), dot(g[6][d4], vr), dot(g[7][d4], vr));
        }
        var seen_lo = vec4<bool>(true);
        var seen_hi = vec4<bool>(true);
        if (params.causal != 0u) {
            seen_lo = vec4<u32>(k) <= t_lo;
            seen_hi = vec4<u32>(k) <= t_hi;
        }
        let a = select(vec4<f32>(0.0), exp(s_lo - l_lo) * (p_lo - d_lo), seen_lo);
        let c = select(vec4<f32>(0.0), exp(s_hi - l_hi) * (p_hi - d_hi), seen_hi);
        for (var d4 = 0u; d4 < n4; d4++) {
            let kr = kc[d4];
            acc[0][d4] += a.x * kr;
            acc[1][d4] += a.y * kr;
            acc[2][d4] += a.z * kr;
            acc[3][d4] += a.w * kr;
            acc[4][d4] += c.x * kr;
            acc[5][d4] += c.y * kr;
            acc[6][d4] += c.z * kr;
            acc[7][d4] += c.w * kr;
        }
    }
    let t = array<u32, 8>(t_lo.x, t_lo.y, t_lo.z, t_lo.w, t_hi.x, t_hi.y, t_hi.z, t_hi.w);
    for (var d4 = 0u; d4 < n4; d4++) {
        store_grad(b, t[0], h, 0u, d4, acc[0][d4] * params.scale);
        store_grad(b, t[1], h, 0u, d4, acc[1][d4] * params.scale);
        store_grad(b, t[2], h, 0u, d4, acc[2][d4] * params.scale);
        store_grad(b, t[3], h, 0u, d4, acc[3][d4] * params.scale);
        store_grad(b, t[4], h, 0u, d4, acc[4][d4] * params.scale);
        store_grad(b, t[5], h, 0u, d4, acc[5][d4] * params.scale);
        store_grad(b, t[6], h, 0u, d4, acc[6][d4] * params.scale);
        store_grad(b, t[7], h, 0u, d4, acc[7][d4] * params.scale);
    }
}

// dv = Σ_q P[q, k] · dO[q]; dk = scale · Σ_q dS[q, k] · q. 8 keys per thread (l, l + 8, ..., l + 56
// of the block), one query per iteration: each query and dO row loaded serves eight keys.
@compute @workgroup_size(8, 1, 1)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let b = wid.y / params.heads;
    let h = wid.y % params.heads;
    let n4 = dims4();
    let last = params.seq - 1u;
    let keys = valid_keys(b);
    let hd = params.heads * params.head_dim;
    let k0 = wid.x * WG + l;
    let k_lo = vec4<u32>(k0, k0 + 8u, k0 + 16u, k0 + 24u);
    let k_hi = k_lo + vec4<u32>(32u);
    let c_lo = min(k_lo, vec4<u32>(last));
    let c_hi = min(k_hi, vec4<u32>(last));
    let tk = array<u32, 8>(c_lo.x, c_lo.y, c_lo.z, c_lo.w, c_hi.x, c_hi.y, c_hi.z, c_hi.w);
    var k: array<Row, 8>;
    var v: array<Row, 8>;
    var dk: array<Row, 8>;
    var dv: array<Row, 8>;
    for (var d4 = 0u; d4 < n4; d4++) {
        let i = 4u * d4;
        k[0][d4] = load_qkv(qkv_base(b, tk[0], 1u, h), i) * params.scale;
        v[0][d4] = load_qkv(qkv_base(b, tk[0], 2u, h), i);
        k[1][d4] = load_qkv(qkv_base(b, tk[1], 1u, h), i) * params.scale;
        v[1][d4] = load_qkv(qkv_base(b, tk[1], 2u, h), i);
        k[2][d4] = load_qkv(qkv_base(b, tk[2], 1u, h), i) * params.scale;
        v[2][d4] = load_qkv(qkv_base(b, tk[2], 2u, h), i);
        k[3][d4] = load_qkv(qkv_base(b, tk[3], 1u, h), i) * params.scale;
        v[3][d4] = load_qkv(qkv_base(b, tk[3], 2u, h), i);
        k[4][d4] = load_qkv(qkv_base(b, tk[4], 1u, h), i) * params.scale;
        v[4][d4] = load_qkv(qkv_base(b, tk[4], 2u, h), i);
        k[5][d4] = load_qkv(qkv_base(b, tk[5], 1u, h), i) * params.scale;
        v[5][d4] = load_qkv(qkv_base(b, tk[5], 2u, h), i);
        k[6][d4] = load_qkv(qkv_base(b, tk[6], 1u, h), i) * params.scale;
        v[6][d4] = load_qkv(qkv_base(b, tk[6], 2u, h), i);
        k[7][d4] = load_qkv(qkv_base(b, tk[7], 1u, h), i) * params.scale;
        v[7][d4] = load_qkv(qkv_base(b, tk[7], 2u, h), i);
    }
    let mine_lo = k_lo < vec4<u32>(keys);
    let mine_hi = k_hi < vec4<u32>(keys);
    // Queries: all, from the block's first key on when causal; none for a block of padding.
    var first = 0u;
    if (params.causal != 0u) { first = wid.x * WG; }
    var end = params.seq;
    if (wid.x * WG >= keys) { end = first; }
    let range = chunk_range(first, end);
    let r = wid.y * params.seq;
    for (var qi = range.x; qi < range.y; qi++) {
        let qb = qkv_base(b, qi, 0u, h);
        let gb = out_base(b, qi, h);
        var s_lo = vec4<f32>(0.0);
        var s_hi = vec4<f32>(0.0);
        var p_lo = vec4<f32>(0.0);
        var p_hi = vec4<f32>(0.0);
        var qc: Row;
        var gc: Row;
        for (var d4 = 0u; d4 < n4; d4++) {
            let qr = load_qkv(qb, 4u * d4);
            let gr = load_grad(gb, 4u * d4);
            qc[d4] = qr;
            gc[d4] = gr;
            s_lo += vec4<f32>(dot(k[0][d4], qr), dot(k[1][d4], qr), dot(k[2][d4], qr), dot(k[3][d4], qr));
            s_hi += vec4<f32>(dot(k[4][d4], qr), dot(k[5][d4], qr), dot(k[6][d4], qr), dot(k[7][d4], qr));
            p_lo += vec4<f32>(dot(v[0][d4], gr), dot(v[1][d4], gr), dot(v[2][d4], gr), dot(v[3][d4], gr));
            p_hi += vec4<f32>(dot(v[4][d4], gr), dot(v[5][d4], gr), dot(v[6][d4], gr), dot(v[7][d4], gr));
        }
        var seen_lo = mine_lo;
        var seen_hi = mine_hi;
        if (params.causal != 0u) {
            seen_lo = seen_lo & (k_lo <= vec4<u32>(qi));
            seen_hi = seen_hi & (k_hi <= vec4<u32>(qi));
        }
        let row_l = lse[r + qi];
        let row_d = delta[r + qi];
        let pa = select(vec4<f32>(0.0), exp(s_lo - row_l), seen_lo);
        let pc = select(vec4<f32>(0.0), exp(s_hi - row_l), seen_hi);
        let a = pa * (p_lo - row_d);
        let c = pc * (p_hi - row_d);
        for (var d4 = 0u; d4 < n4; d4++) {
            let qr = qc[d4];
            let gr = gc[d4];
            dv[0][d4] += pa.x * gr;
            dv[1][d4] += pa.y * gr;
            dv[2][d4] += pa.z * gr;
            dv[3][d4] += pa.w * gr;
            dv[4][d4] += pc.x * gr;
            dv[5][d4] += pc.y * gr;
            dv[6][d4] += pc.z * gr;
            dv[7][d4] += pc.w * gr;
            dk[0][d4] += a.x * qr;
            dk[1][d4] += a.y * qr;
            dk[2][d4] += a.z * qr;
            dk[3][d4] += a.w * qr;
            dk[4][d4] += c.x * qr;
            dk[5][d4] += c.y * qr;
            dk[6][d4] += c.z * qr;
            dk[7][d4] += c.w * qr;
        }
    }
    let kt = array<u32, 8>(k_lo.x, k_lo.y, k_lo.z, k_lo.w, k_hi.x, k_hi.y, k_hi.z, k_hi.w);
    for (var d4 = 0u; d4 < n4; d4++) {
        store_grad(b, kt[0], h, 1u, d4, dk[0][d4] * params.scale);
        store_grad(b, kt[0], h, 2u, d4, dv[0][d4]);
        store_grad(b, kt[1], h, 1u, d4, dk[1][d4] * params.scale);
        store_grad(b, kt[1], h, 2u, d4, dv[1][d4]);
        store_grad(b, kt[2], h, 1u, d4, dk[2][d4] * params.scale);
        store_grad(b, kt[2], h, 2u, d4, dv[2][d4]);
        store_grad(b, kt[3], h, 1u, d4, dk[3][d4] * params.scale);
        store_grad(b, kt[3], h, 2u, d4, dv[3][d4]);
        store_grad(b, kt[4], h, 1u, d4, dk[4][d4] * params.scale);
        store_grad(b, kt[4], h, 2u, d4, dv[4][d4]);
        store_grad(b, kt[5], h, 1u, d4, dk[5][d4] * params.scale);
        store_grad(b, kt[5], h, 2u, d4, dv[5][d4]);
        store_grad(b, kt[6], h, 1u, d4, dk[6][d4] * params.scale);
        store_grad(b, kt[6], h, 2u, d4, dv[6][d4]);
        store_grad(b, kt[7], h, 1u, d4, dk[7][d4] * params.scale);
        store_grad(b, kt[7], h, 2u, d4, dv[7][d4]);
    }
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
