// embedding.wgsl: embedding lookup (a row of the table per token id, plus the token's position
// embedding where there is one) and its deterministic backward pass.
//
// ids is U32 [rows] (rows = sequences · seq); table [vocab, dim]; positions [context, dim] (a token's
// position is its index within its sequence, row % seq); out and grad_out [rows, dim].
// Bindings: 0 params, 1 ids, 2 table, 3 positions, 4 out, 5 grad_out, 6 grad_table,
// 7 grad_positions.
//   forward          one thread per output element; an id past the vocabulary gives zeros (the
//                    ops check ids that come from the host)
//   backward_table   one thread per table element: Σ of the gradient rows of the tokens with that
//                    id, in row order, over rows [lo, lo + CHUNK_ROWS) of this dispatch's chunk,
//                    added into grad_table: the same sum in the same order every run, no atomics
//   backward_positions  one thread per position element: Σ over the sequences, in order, of the
//                    chunk's rows, added into grad_positions
// Grid: 64-thread workgroups, folded into y past 65,535 along x. Loops stay within CHUNK_ROWS
// iterations (the software drivers stop an invocation after 65,535).
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32.

alias Elem = f32;

struct Params {
    rows: u32,
    dim: u32,
    vocab: u32,
    seq: u32,
    has_positions: u32,
    groups_x: u32,
    lo: u32,          // this dispatch's first row (backward)
    total: u32,       // threads
}

const CHUNK_ROWS: u32 = 16384u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<Elem>;
@group(0) @binding(3) var<storage, read> positions: array<Elem>;
@group(0) @binding(4) var<storage, read_write> out: array<Elem>;
@group(0) @binding(5) var<storage, read> grad_out: array<Elem>;
@group(0) @binding(6) var<storage, read_write> grad_table: array<Elem>;
@group(0) @binding(7) var<storage, read_write> grad_positions: array<Elem>;

fn index(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 64u + l;
}

@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.total) { return; }
    let row = i / params.dim;
    let c = i % params.dim;
    let id = ids[row];
    var v = 0.0;
    if (id < params.vocab) { v = f32(table[id * params.dim + c]); }
    if (params.has_positions != 0u) { v += f32(positions[(row % params.seq) * params.dim + c]); }
    out[i] = Elem(v);
}

@compute @workgroup_size(64, 1, 1)
fn backward_table(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.total) { return; }
    let v = i / params.dim;
    let c = i % params.dim;
    let hi = min(params.rows, params.lo + CHUNK_ROWS);
    var acc = 0.0;
    for (var r = params.lo; r < hi; r++) {
        if (ids[r] == v) { acc += f32(grad_out[r * params.dim + c]); }
    }
    grad_table[i] = Elem(f32(grad_table[i]) + acc);
}

@compute @workgroup_size(64, 1, 1)
fn backward_positions(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = index(wid, l);
    if (i >= params.total) { return; }
    let p = i / params.dim;
    let c = i % params.dim;
    let hi = min(params.rows, params.lo + CHUNK_ROWS);
    var acc = 0.0;
    // Rows of position p in [lo, hi): p, p + seq, ..., from the first at or after lo.
    // (Positions past the sequence length get nothing.)
    if (p < params.seq) {
        var r = params.lo + (p + params.seq - params.lo % params.seq) % params.seq;
        for (; r < hi; r += params.seq) { acc += f32(grad_out[r * params.dim + c]); }
    }
    grad_positions[i] = Elem(f32(grad_positions[i]) + acc);
}
