// kv_cache.wgsl: decoding with a key/value cache. Each row is one token of one sequence, placed by
// its cursor (slot, position): the sequence's slot in the cache and the token's position in it.
//
// Caches are [slots, context, dim] (dim = kv_heads · head_dim); qkv rows are [rows, q_dim + 2 · dim]:
// the query heads (q_dim = heads · head_dim), then the keys and the values (attention.wgsl's
// [3, heads, head_dim] when kv_heads = heads). Grouped queries: query head h reads key/value head
// h / (heads / kv_heads). A row at position p attends to keys 0..=p of its slot: the cache must
// already hold them (append first).
//
// Bindings: 0 params, 1 cursor (u32 [rows, 2]: slot, position), 2 ids (u32 [rows]), 3 table
// [vocab, dim], 4 positions [context, dim], 5 qkv / x (read), 6 k_cache, 7 v_cache, 8 partials
// (f32), 9 out.
//   embed_at        one thread per output element: table[id] + positions[position]
//   append          one thread per (row, cache feature): the row's key and value into its slot
//   decode_partial  one 64-thread workgroup per (row, query head, split): the split's 64 keys at most,
//                   one per thread; writes (max, Σ exp, Σ exp · v) unnormalized; a split with no
//                   key (past the row's position, or a padding row) returns before any barrier
//   decode_combine  one thread per output element ([rows, q_dim]): merges the row's splits in order
//   gather_rows     one thread per output element: out[i] = x[ids[i]] (rows of `dim`)
// Rows whose cursor is outside the cache write nothing to it and attend to nothing (zeros).
// Loops per thread: head_dim (≤ 128) + 2 · 64 in decode_partial, `splits` (≤ 1,024) twice in
// decode_combine: under the software drivers' 65,535-iteration cap.
// Grid: folded into y past groups_x. Elem is f32 or f16 (wgnn rewrites the alias); arithmetic
// and partials are f32. Prelude: numerics.wgsl.

alias Elem = f32;

struct Params {
    rows: u32,
    dim: u32,
    heads: u32,
    head_dim: u32,
    context: u32,
    slots: u32,
    splits: u32,       // decode: splits per (row, head) dispatched
    vocab: u32,
    scale: f32,
    groups_x: u32,
    total: u32,        // threads (or workgroups, decode_partial) with work
    src_rows: u32,     // gather_rows: rows of x
    q_dim: u32,        // query features per qkv row
    kv_heads: u32,
    _pad2: u32,
    _pad3: u32,
}

const SPLIT: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> cursor: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<Elem>;
@group(0) @binding(4) var<storage, read> positions: array<Elem>;
@group(0) @binding(5) var<storage, read> qkv: array<Elem>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<Elem>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<Elem>;
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<Elem>;

var<workgroup> weights: array<f32, 64>;
var<workgroup> pair: array<vec2<f32>, 64>;
var<workgroup> split_keys: u32;

fn thread_index(wid: vec3<u32>, l: u32, size: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * size + l;
}

// Whether a row's cursor lies inside the cache.
fn in_cache(slot: u32, pos: u32) -> bool {
    return slot < params.slots && pos < params.context;
}

@compute @workgroup_size(64, 1, 1)
fn embed_at(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l, 64u);
    if (i >= params.total) { return; }
    let row = i / params.dim;
    let c = i % params.dim;
    let id = ids[row];
    let pos = cursor[2u * row + 1u];
    var v = 0.0;
    if (id < params.vocab) { v = f32(table[id * params.dim + c]); }
    if (pos < params.context) { v += f32(positions[pos * params.dim + c]); }
    out[i] = Elem(v);
}

@compute @workgroup_size(64, 1, 1)
fn append(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l, 64u);
    if (i >= params.total) { return; }
    let row = i / params.dim;
    let c = i % params.dim;
    let slot = cursor[2u * row];
    let pos = cursor[2u * row + 1u];
    if (!in_cache(slot, pos)) { return; }
    let at = (slot * params.context + pos) * params.dim + c;
    let src = row * (params.q_dim + 2u * params.dim) + params.q_dim + c;
    k_cache[at] = qkv[src];
    v_cache[at] = qkv[src + params.dim];
}

@compute @workgroup_size(64, 1, 1)
fn decode_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = wid.y * params.groups_x + wid.x;
    let live = g < params.total;
    let gi = min(g, params.total - 1u);
    let split = gi % params.splits;
    let head = (gi / params.splits) % params.heads;
    let row = gi / (params.splits * params.heads);
    let slot = cursor[2u * row];
    let pos = cursor[2u * row + 1u];
    let d = params.head_dim;
    let first = split * SPLIT;
    let stride = d + 2u;
    let at = gi * stride;
    if (l == 0u) {
        var n = 0u;
        if (live && in_cache(slot, pos) && pos + 1u > first) { n = min(pos + 1u - first, SPLIT); }
        split_keys = n;
    }
    // Uniform across the workgroup: a split with no key (past the row's position, a padding
    // row) writes an empty partial and skips the reduction's barriers.
    let keys = workgroupUniformLoad(&split_keys);
    if (keys == 0u) {
        if (live && l == 0u) {
            partials[at] = neg_inf();
            partials[at + 1u] = 0.0;
        }
        if (live && l < d) { partials[at + 2u + l] = 0.0; }
        return;
    }
    let kv_head = head / (params.heads / params.kv_heads);
    let base = (slot * params.context + first) * params.dim + kv_head * d;
    var score = neg_inf();
    if (l < keys) {
        let q = row * (params.q_dim + 2u * params.dim) + head * d;
        let k = base + l * params.dim;
        var dot = 0.0;
        for (var j = 0u; j < d; j++) { dot += f32(qkv[q + j]) * f32(k_cache[k + j]); }
        score = dot * params.scale;
    }
    // (max, Σ exp) over the split's keys: a 64-wide tree.
    pair[l] = vec2<f32>(score, select(0.0, 1.0, l < keys));
    workgroupBarrier();
    for (var width = SPLIT / 2u; width > 0u; width /= 2u) {
        if (l < width) { pair[l] = merge_max_sum(pair[l], pair[l + width]); }
        workgroupBarrier();
    }
    let ms = pair[0];
    weights[l] = exp_diff(score, ms.x);
    workgroupBarrier();
    // Σ p · v for the head's dimensions: thread l takes dimensions l and l + 64.
    for (var c = l; c < d; c += SPLIT) {
        var acc = 0.0;
        for (var j = 0u; j < keys; j++) {
            acc += weights[j] * f32(v_cache[base + j * params.dim + c]);
        }
        if (live) { partials[at + 2u + c] = acc; }
    }
    if (live && l == 0u) {
        partials[at] = ms.x;
        partials[at + 1u] = ms.y;
    }
}

@compute @workgroup_size(64, 1, 1)
fn decode_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l, 64u);
    if (i >= params.total) { return; }
    let row = i / params.q_dim;
    let c = i % params.q_dim;
    let d = params.head_dim;
    let head = c / d;
    let slot = cursor[2u * row];
    let pos = cursor[2u * row + 1u];
    var v = 0.0;
    if (in_cache(slot, pos)) {
        let used = min(pos / SPLIT + 1u, params.splits);
        let stride = d + 2u;
        let first = (row * params.heads + head) * params.splits;
        var m = neg_inf();
        for (var s = 0u; s < used; s++) { m = max(m, partials[(first + s) * stride]); }
        var total = 0.0;
        var acc = 0.0;
        for (var s = 0u; s < used; s++) {
            let at = (first + s) * stride;
            let w = exp_diff(partials[at], m);
            total += w * partials[at + 1u];
            acc += w * partials[at + 2u + c % d];
        }
        if (total > 0.0) { v = acc / total; }
    }
    out[i] = Elem(v);
}

@compute @workgroup_size(64, 1, 1)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = thread_index(wid, l, 64u);
    if (i >= params.total) { return; }
    let row = ids[i / params.dim];
    var v = Elem(0.0);
    if (row < params.src_rows) { v = qkv[row * params.dim + i % params.dim]; }
    out[i] = v;
}
