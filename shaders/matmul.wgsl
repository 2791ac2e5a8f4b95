// matmul.wgsl: C[z] = act(sum_r opA(A[z,r]) · opB(B[z,r]) + bias) (+ C[z] when ACCUMULATE)
//
// opA(A) is M×K (A stored M×K, or K×M when TRANS_A); opB(B) is K×N (B stored K×N, or N×K when
// TRANS_B). z indexes output batches (grid z); r runs over `reduce_count` batches summed into one
// output (used by backward when an operand was broadcast over the batch).
//
// Bindings: 0 params (uniform), 1 A, 2 B (read), 3 C (read_write), 4 bias[N] (read).
// Every tensor is bound as array<vec4<Elem>>: rows whose length is a multiple of 4 load 16 bytes at a
// time (ALIGNED_*), other rows read single components with bounds checks, so any M, N, K works.
//
// Tiling: 256 threads (16×16) compute a TILE×TILE block of C, each thread (TILE/16)² outputs in
// groups of 4×4 spaced 64 apart (conflict-free shared reads, coalesced stores). Per k-step of
// BK = 1024/TILE, every thread loads one vec4 of A and one of B into registers ahead of use, then
// stores them into shared memory, k-major, so the inner loop reads vec4s of A and B.
// Elem is f32, or f16 (wgnn rewrites the alias and adds `enable f16;`); accumulation is always f32.
// Prelude: activation.wgsl (`activate`, `ACTIVATION`).

alias Elem = f32;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    reduce_count: u32,
    a_stride_z: u32,
    a_stride_r: u32,
    b_stride_z: u32,
    b_stride_r: u32,
    c_stride_z: u32,
    a_offset: u32,      // first element of each operand (views into larger tensors, e.g. conv groups)
    b_offset: u32,
    c_offset: u32,
    bias_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override TILE: u32 = 128u;          // 64 or 128
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ALIGNED_A: bool = false;   // A's stored row length is a multiple of 4
override ALIGNED_B: bool = false;
override ALIGNED_C: bool = false;   // N is a multiple of 4
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;  // C += result instead of C = result
override BIAS_PER_ROW: bool = false; // bias[M] added along rows (conv output channels), not bias[N]

const BK_MAX: u32 = 16u;
const TILE_MAX: u32 = 128u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<Elem>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<Elem>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<Elem>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<Elem>>;

// k-major tiles: as_[k * TILE/4 + m/4] holds opA(A)[m..m+4, k].
var<workgroup> as_: array<vec4<f32>, BK_MAX * TILE_MAX / 4u>;
var<workgroup> bs_: array<vec4<f32>, BK_MAX * TILE_MAX / 4u>;

// Bias element i (a row's or a column's), past the bias view's offset.
fn bias_at(i: u32) -> f32 {
    let j = params.bias_offset + i;
    return f32(bias[j / 4u][j % 4u]);
}

// Four consecutive elements (row, col..col+4) of a row-major matrix with `cols` per row, zero past
// its edges. `base` is the matrix's first element.
fn fetch_a(base: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (row >= rows) { return vec4<f32>(0.0); }
    let i = base + row * cols + col;
    if (ALIGNED_A && col + 4u <= cols) { return vec4<f32>(a[i / 4u]); }
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (col + e < cols) { v[e] = f32(a[(i + e) / 4u][(i + e) % 4u]); }
    }
    return v;
}

fn fetch_b(base: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (row >= rows) { return vec4<f32>(0.0); }
    let i = base + row * cols + col;
    if (ALIGNED_B && col + 4u <= cols) { return vec4<f32>(b[i / 4u]); }
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (col + e < cols) { v[e] = f32(b[(i + e) / 4u][(i + e) % 4u]); }
    }
    return v;
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) l: u32) {
    let bk = 1024u / TILE;          // k-steps per tile: 8 for 128, 16 for 64
    let groups = TILE / 64u;        // 4×4 output groups per thread along each axis
    let tq = TILE / 4u;             // vec4s per tile row
    let m = params.m;
    let n = params.n;
    let kdim = params.k;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;

    // Which vec4 this thread loads, for both layouts of a tile:
    // "k-contiguous" (A plain, B transposed): tile row l / (bk/4), k-quad l % (bk/4);
    // "k-major" (A transposed, B plain): k l / tq, quad l % tq.
    let kc_row = l / (bk / 4u);
    let kc_k = (l % (bk / 4u)) * 4u;
    let km_k = l / tq;
    let km_q = l % tq;

    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }

    let tiles = (kdim + bk - 1u) / bk;
    for (var r = 0u; r < params.reduce_count; r++) {
        let a_base = params.a_offset + wid.z * params.a_stride_z + r * params.a_stride_r;
        let b_base = params.b_offset + wid.z * params.b_stride_z + r * params.b_stride_r;

        var pa: vec4<f32>;
        var pb: vec4<f32>;
        // Prefetch tile 0.
        if (TRANS_A) { pa = fetch_a(a_base, km_k, row0 + km_q * 4u, kdim, m); }
        else { pa = fetch_a(a_base, row0 + kc_row, kc_k, m, kdim); }
        if (TRANS_B) { pb = fetch_b(b_base, col0 + kc_row, kc_k, n, kdim); }
        else { pb = fetch_b(b_base, km_k, col0 + km_q * 4u, kdim, n); }

        for (var t = 0u; t < tiles; t++) {
            if (TRANS_A) {
                as_[km_k * tq + km_q] = pa;
            } else {
                for (var e = 0u; e < 4u; e++) {
                    let idx = (kc_k + e) * TILE + kc_row;
                    as_[idx / 4u][idx % 4u] = pa[e];
                }
            }
            if (TRANS_B) {
                for (var e = 0u; e < 4u; e++) {
                    let idx = (kc_k + e) * TILE + kc_row;
                    bs_[idx / 4u][idx % 4u] = pb[e];
                }
            } else {
                bs_[km_k * tq + km_q] = pb;
            }
            workgroupBarrier();

            // Prefetch the next tile while this one is multiplied.
            if (t + 1u < tiles) {
                let k1 = (t + 1u) * bk;
                if (TRANS_A) { pa = fetch_a(a_base, k1 + km_k, row0 + km_q * 4u, kdim, m); }
                else { pa = fetch_a(a_base, row0 + kc_row, k1 + kc_k, m, kdim); }
                if (TRANS_B) { pb = fetch_b(b_base, col0 + kc_row, k1 + kc_k, n, kdim); }
                else { pb = fetch_b(b_base, k1 + km_k, col0 + km_q * 4u, kdim, n); }
            }

            for (var kk = 0u; kk < bk; kk++) {
                var fa: array<vec4<f32>, 2>;
                var fb: array<vec4<f32>, 2>;
                for (var g = 0u; g < groups; g++) {
                    fa[g] = as_[kk * tq + g * 16u + lid.y];
                    fb[g] = bs_[kk * tq + g * 16u + lid.x];
                }
                for (var gi = 0u; gi < groups; gi++) {
                    for (var i = 0u; i < 4u; i++) {
                        for (var gj = 0u; gj < groups; gj++) {
                            let slot = (gi * 4u + i) * 2u + gj;
                            acc[slot] = fma(vec4<f32>(fa[gi][i]), fb[gj], acc[slot]);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }

    let c_base = params.c_offset + wid.z * params.c_stride_z;
    for (var gi = 0u; gi < groups; gi++) {
        for (var i = 0u; i < 4u; i++) {
            let row = row0 + gi * 64u + lid.y * 4u + i;
            if (row >= m) { continue; }
            var row_bias = 0.0;
            if (HAS_BIAS && BIAS_PER_ROW) { row_bias = bias_at(row); }
            for (var gj = 0u; gj < groups; gj++) {
                let col = col0 + gj * 64u + lid.x * 4u;
                if (col >= n) { continue; }
                var v = acc[(gi * 4u + i) * 2u + gj];
                let idx = c_base + row * n + col;
                if (ALIGNED_C) {
                    // n % 4 == 0 and col % 4 == 0, so all four columns exist.
                    if (HAS_BIAS && BIAS_PER_ROW) { v += vec4<f32>(row_bias); }
                    else if (HAS_BIAS) { v += vec4<f32>(bias_at(col), bias_at(col + 1u), bias_at(col + 2u), bias_at(col + 3u)); }
                    v = activate(v);
                    if (ACCUMULATE) { v += vec4<f32>(c[idx / 4u]); }
                    c[idx / 4u] = vec4<Elem>(v);
                } else {
                    if (HAS_BIAS) {
                        for (var e = 0u; e < 4u; e++) {
                            if (col + e < n) { v[e] += select(bias_at(col + e), row_bias, BIAS_PER_ROW); }
                        }
                    }
                    v = activate(v);
                    for (var e = 0u; e < 4u; e++) {
                        if (col + e < n) {
                            let j = idx + e;
                            var x = v[e];
                            if (ACCUMULATE) { x += f32(c[j / 4u][j % 4u]); }
                            c[j / 4u][j % 4u] = Elem(x);
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gemv_*: the same product for M <= 8 rows (batch-1 inference, skinny shapes), where a 64-row tile
// would waste most of its work. Every thread keeps all M rows of 4 columns (plain B) or of one
// column (transposed B), splits K with its neighbours, and the workgroup sums the partial results.

const GEMV_MAX_ROWS: u32 = 8u;

var<workgroup> partial: array<vec4<f32>, 256>;

fn a_at(base: u32, i: u32, k: u32) -> f32 {
    var idx = base + i * params.k + k;
    if (TRANS_A) { idx = base + k * params.m + i; }
    return f32(a[idx / 4u][idx % 4u]);
}

// Bias, activation and accumulation for one output element; `col` < n.
fn store_one(c_base: u32, row: u32, col: u32, value: f32) {
    var x = value;
    if (HAS_BIAS) { x += bias_at(select(col, row, BIAS_PER_ROW)); }
    x = activate(vec4<f32>(x)).x;
    let j = c_base + row * params.n + col;
    if (ACCUMULATE) { x += f32(c[j / 4u][j % 4u]); }
    c[j / 4u][j % 4u] = Elem(x);
}

// B stored K×N: 16 column quads (64 columns) × 16 k-slices per workgroup; grid (ceil(N/64), 1, batch).
@compute @workgroup_size(256, 1, 1)
fn gemv_plain_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let quad = l % 16u;
    let slice = l / 16u;
    let col = wid.x * 64u + quad * 4u;
    var acc: array<vec4<f32>, GEMV_MAX_ROWS>;
    for (var i = 0u; i < GEMV_MAX_ROWS; i++) { acc[i] = vec4<f32>(0.0); }
    for (var r = 0u; r < params.reduce_count; r++) {
        let a_base = params.a_offset + wid.z * params.a_stride_z + r * params.a_stride_r;
        let b_base = params.b_offset + wid.z * params.b_stride_z + r * params.b_stride_r;
        if (col < params.n) {
            for (var k = slice; k < params.k; k += 16u) {
                let bv = fetch_b(b_base, k, col, params.k, params.n);
                for (var i = 0u; i < params.m; i++) {
                    acc[i] = fma(vec4<f32>(a_at(a_base, i, k)), bv, acc[i]);
                }
            }
        }
    }
    let c_base = params.c_offset + wid.z * params.c_stride_z;
    for (var i = 0u; i < params.m; i++) {
        partial[l] = acc[i];
        workgroupBarrier();
        if (slice == 0u && col < params.n) {
            var s = vec4<f32>(0.0);
            for (var t = 0u; t < 16u; t++) { s += partial[t * 16u + quad]; }
            for (var e = 0u; e < 4u; e++) {
                if (col + e < params.n) { store_one(c_base, i, col + e, s[e]); }
            }
        }
        workgroupBarrier();
    }
}

// B stored N×K (a Linear layer's weight): 8 columns × 32 lanes along K per workgroup, vec4 loads
// along K; grid (ceil(N/8), 1, batch).
@compute @workgroup_size(256, 1, 1)
fn gemv_trans_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let lane = l % 32u;
    let col = wid.x * 8u + l / 32u;
    var acc: array<f32, GEMV_MAX_ROWS>;
    for (var i = 0u; i < GEMV_MAX_ROWS; i++) { acc[i] = 0.0; }
    for (var r = 0u; r < params.reduce_count; r++) {
        let a_base = params.a_offset + wid.z * params.a_stride_z + r * params.a_stride_r;
        let b_base = params.b_offset + wid.z * params.b_stride_z + r * params.b_stride_r;
        if (col < params.n) {
            for (var k = lane * 4u; k < params.k; k += 128u) {
                let bv = fetch_b(b_base, col, k, params.n, params.k);
                for (var i = 0u; i < params.m; i++) {
                    var av: vec4<f32>;
                    if (TRANS_A) {
                        for (var e = 0u; e < 4u; e++) {
                            av[e] = select(0.0, a_at(a_base, i, k + e), k + e < params.k);
                        }
                    } else {
                        av = fetch_a(a_base, i, k, params.m, params.k);
                    }
                    acc[i] += dot(av, bv);
                }
            }
        }
    }
    let c_base = params.c_offset + wid.z * params.c_stride_z;
    for (var i = 0u; i < params.m; i++) {
        partial[l] = vec4<f32>(acc[i], 0.0, 0.0, 0.0);
        workgroupBarrier();
        for (var stride = 16u; stride > 0u; stride /= 2u) {
            if (lane < stride) { partial[l].x += partial[l + stride].x; }
            workgroupBarrier();
        }
        if (lane == 0u && col < params.n) { store_one(c_base, i, col, partial[l].x); }
        workgroupBarrier();
    }
}
