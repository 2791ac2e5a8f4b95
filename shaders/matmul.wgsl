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
// Tiling (the tuned candidates, see src/tune.rs): WG×WG threads compute a TILE×TILE block of C,
// TILE = 4·WG·GROUPS; each thread owns GROUPS² blocks of 4×4 outputs spaced 4·WG apart
// (conflict-free shared reads, coalesced stores). Per k-step of BK = WG / GROUPS, every thread loads
// one vec4 of A and one of B into registers ahead of use, then stores them into shared memory,
// k-major, so the inner loop reads vec4s of A and B. DIRECT skips shared memory and barriers: each
// thread reads its own rows of A and columns of B straight from memory, 4 k at a time (suits CPU
// adapters, where shared memory is ordinary memory and a barrier switches coroutines).
// Elem is f32, or f16 (wgnn rewrites the alias and adds `enable f16;`); accumulation is always f32.
// Prelude: activation.wgsl (`activate`, `ACTIVATION`).
//
// Split-K: Mesa's software drivers stop an invocation after 65,535 loop iterations, and one
// workgroup walking a long K leaves a large GPU idle. The (reduce batch, k-tile) range is cut into
// splits of at most `r_per_split` batches × `t_per_split` k-tiles; grid z is (output batch, split).
// `main_partial` writes each split's f32 sum to `part` (binding 5) without the epilogue, adding to
// it with PARTIAL_ACCUMULATE (later waves of splits), and `splitk_sum` adds the splits' slabs and
// applies bias, activation and accumulation into C. `main` is the same product with one split.

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
    splits: u32,        // splits in this dispatch (grid z = output batches × splits)
    split_base: u32,    // global index of this dispatch's first split
    k_splits: u32,      // k-chunks per reduce group: global split g covers r-group g / k_splits
    r_per_split: u32,   // reduce batches per split
    t_per_split: u32,   // k-tiles per split
    groups_x: u32,      // splitk_sum: workgroups along x (the grid folds into y)
    slabs: u32,         // splitk_sum: partial slabs to add
    batches: u32,       // output batches
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 16u;             // threads per side of the workgroup: 4, 8 or 16
override GROUPS: u32 = 2u;          // 4×4 output blocks per thread along each axis: 1 or 2
override DIRECT: bool = false;      // no shared memory (see above)
override SHARED_ROWS: bool = false; // GROUPS 2: A values through subgroup broadcasts (see prelude)
override LOADS: u32 = 1u;           // vec4s of A and of B each thread stores per k-step: 1 or 2
override TILE: u32 = 4u * WG * GROUPS;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ALIGNED_A: bool = false;   // A's stored row length is a multiple of 4
override ALIGNED_B: bool = false;
override ALIGNED_C: bool = false;   // N is a multiple of 4
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;  // C += result instead of C = result
override BIAS_PER_ROW: bool = false; // bias[M] added along rows (conv output channels), not bias[N]
override PARTIAL_ACCUMULATE: bool = false; // main_partial adds to `part` instead of overwriting it

// k-step of one tile: BK = LOADS·WG / GROUPS elements shared, or 4 read directly.
fn k_step() -> u32 {
    if (DIRECT) { return 4u; }
    return LOADS * WG / GROUPS;
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<Elem>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<Elem>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<Elem>>;
@group(0) @binding(4) var<storage, read> bias: array<vec4<Elem>>;
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>;

// k-major tiles: as_[k * TILE/4 + m/4] holds opA(A)[m..m+4, k]; BK·TILE/4 = LOADS·WG² ≤ 512 vec4s.
var<workgroup> as_: array<vec4<f32>, 512>;
var<workgroup> bs_: array<vec4<f32>, 512>;

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
    // A loop the compiler cannot unroll (its bound is not constant): the unrolled form, inlined
    // at every call, made ragged-shape pipelines take seconds to compile on CPU adapters.
    var v = vec4<f32>(0.0);
    let count = min(4u, cols - min(col, cols));
    for (var e = 0u; e < count; e++) { v[e] = f32(a[(i + e) / 4u][(i + e) % 4u]); }
    return v;
}

fn fetch_b(base: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (row >= rows) { return vec4<f32>(0.0); }
    let i = base + row * cols + col;
    if (ALIGNED_B && col + 4u <= cols) { return vec4<f32>(b[i / 4u]); }
    var v = vec4<f32>(0.0);
    let count = min(4u, cols - min(col, cols));
    for (var e = 0u; e < count; e++) { v[e] = f32(b[(i + e) / 4u][(i + e) % 4u]); }
    return v;
}

// The split this workgroup computes: (output batch z, reduce batches [r_lo, r_hi), k-tiles [t_lo, t_hi)).
struct Split {
    z: u32,
    r_lo: u32,
    r_hi: u32,
    t_lo: u32,
    t_hi: u32,
}

fn split_of(wz: u32, tiles: u32) -> Split {
    let s = wz % params.splits;
    let g = params.split_base + s;
    let r_lo = (g / params.k_splits) * params.r_per_split;
    let t_lo = (g % params.k_splits) * params.t_per_split;
    return Split(wz / params.splits, r_lo, min(r_lo + params.r_per_split, params.reduce_count),
                 t_lo, min(t_lo + params.t_per_split, tiles));
}

// One vec4 of opA and one of opB that thread slot `v` (< LOADS·WG²) moves into shared memory per
// k-step, for both layouts of a tile: "k-contiguous" (A plain, B transposed): tile row v / (BK/4),
// k-quad v % (BK/4); "k-major" (A transposed, B plain): k v / (TILE/4), quad v % (TILE/4).
struct Pair {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_pair(v: u32, a_base: u32, b_base: u32, k0: u32, row0: u32, col0: u32) -> Pair {
    let bk = k_step();
    let tq = TILE / 4u;
    let kc_row = v / (bk / 4u);
    let kc_k = k0 + (v % (bk / 4u)) * 4u;
    let km_k = k0 + v / tq;
    let km_q = (v % tq) * 4u;
    var p: Pair;
    if (TRANS_A) { p.a = fetch_a(a_base, km_k, row0 + km_q, params.k, params.m); }
    else { p.a = fetch_a(a_base, row0 + kc_row, kc_k, params.m, params.k); }
    if (TRANS_B) { p.b = fetch_b(b_base, col0 + kc_row, kc_k, params.n, params.k); }
    else { p.b = fetch_b(b_base, km_k, col0 + km_q, params.k, params.n); }
    return p;
}

fn store_pair(v: u32, p: Pair) {
    let bk = k_step();
    let tq = TILE / 4u;
    let kc_row = v / (bk / 4u);
    let kc_k = (v % (bk / 4u)) * 4u;
    if (TRANS_A) {
        as_[v] = p.a;   // k-major: slot v is (k v / tq, quad v % tq)
    } else {
        for (var e = 0u; e < 4u; e++) {
            let idx = (kc_k + e) * TILE + kc_row;
            as_[idx / 4u][idx % 4u] = p.a[e];
        }
    }
    if (TRANS_B) {
        for (var e = 0u; e < 4u; e++) {
            let idx = (kc_k + e) * TILE + kc_row;
            bs_[idx / 4u][idx % 4u] = p.b[e];
        }
    } else {
        bs_[v] = p.b;
    }
}

// This thread's (4·GROUPS)² accumulators of the TILE×TILE block at (row0, col0) over split `sp`;
// acc[(gi·4 + i)·2 + gj] holds row row0 + gi·4·WG + lid.y·4 + i, columns col0 + gj·4·WG + lid.x·4 + 0..4.
fn tile_product(lid: vec3<u32>, l: u32, row0: u32, col0: u32, sp: Split) -> array<vec4<f32>, 16> {
    if (DIRECT) { return direct_product(lid, row0, col0, sp); }
    let bk = k_step();
    let tq = TILE / 4u;             // vec4s per tile row

    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }
    if (sp.t_lo >= sp.t_hi) { return acc; }

    for (var r = sp.r_lo; r < sp.r_hi; r++) {
        let a_base = params.a_offset + sp.z * params.a_stride_z + r * params.a_stride_r;
        let b_base = params.b_offset + sp.z * params.b_stride_z + r * params.b_stride_r;

        // Prefetch the first tile.
        var pre: array<Pair, 2>;
        for (var j = 0u; j < LOADS; j++) {
            pre[j] = load_pair(l + j * WG * WG, a_base, b_base, sp.t_lo * bk, row0, col0);
        }

        for (var t = sp.t_lo; t < sp.t_hi; t++) {
            for (var j = 0u; j < LOADS; j++) { store_pair(l + j * WG * WG, pre[j]); }
            workgroupBarrier();

            // Prefetch the next tile while this one is multiplied.
            if (t + 1u < sp.t_hi) {
                for (var j = 0u; j < LOADS; j++) {
                    pre[j] = load_pair(l + j * WG * WG, a_base, b_base, (t + 1u) * bk, row0, col0);
                }
            }

            for (var kk = 0u; kk < bk; kk++) {
                let b0 = bs_[kk * tq + lid.x];
                if (GROUPS == 1u) {
                    let a0 = as_[kk * tq + lid.y];
                    acc[0] = fma(vec4<f32>(a0.x), b0, acc[0]);
                    acc[2] = fma(vec4<f32>(a0.y), b0, acc[2]);
                    acc[4] = fma(vec4<f32>(a0.z), b0, acc[4]);
                    acc[6] = fma(vec4<f32>(a0.w), b0, acc[6]);
                } else {
                    var a0: vec4<f32>;
                    var a1: vec4<f32>;
                    if (SHARED_ROWS) {
                        // Lane j = lid.x % 8 loads row value j of this k; the others get it by broadcast.
                        let j = lid.x % 8u;
                        let rows = rows_from_lanes(as_[kk * tq + (j / 4u) * WG + lid.y][j % 4u]);
                        a0 = rows[0];
                        a1 = rows[1];
                    } else {
                        a0 = as_[kk * tq + lid.y];
                        a1 = as_[kk * tq + WG + lid.y];
                    }
                    let b1 = bs_[kk * tq + WG + lid.x];
                    acc[0] = fma(vec4<f32>(a0.x), b0, acc[0]);
                    acc[1] = fma(vec4<f32>(a0.x), b1, acc[1]);
                    acc[2] = fma(vec4<f32>(a0.y), b0, acc[2]);
                    acc[3] = fma(vec4<f32>(a0.y), b1, acc[3]);
                    acc[4] = fma(vec4<f32>(a0.z), b0, acc[4]);
                    acc[5] = fma(vec4<f32>(a0.z), b1, acc[5]);
                    acc[6] = fma(vec4<f32>(a0.w), b0, acc[6]);
                    acc[7] = fma(vec4<f32>(a0.w), b1, acc[7]);
                    acc[8] = fma(vec4<f32>(a1.x), b0, acc[8]);
                    acc[9] = fma(vec4<f32>(a1.x), b1, acc[9]);
                    acc[10] = fma(vec4<f32>(a1.y), b0, acc[10]);
                    acc[11] = fma(vec4<f32>(a1.y), b1, acc[11]);
                    acc[12] = fma(vec4<f32>(a1.z), b0, acc[12]);
                    acc[13] = fma(vec4<f32>(a1.z), b1, acc[13]);
                    acc[14] = fma(vec4<f32>(a1.w), b0, acc[14]);
                    acc[15] = fma(vec4<f32>(a1.w), b1, acc[15]);
                }
            }
            workgroupBarrier();
        }
    }
    return acc;
}

// tile_product without shared memory for 4×4 outputs per thread: per step of 4 k, this thread
// loads a 4×4 block of opA and one of opB (vec4 loads along each stored row) and multiplies them.
// Written out without arrays or loops over registers: CPU compilers keep it all in registers.
fn direct_product(lid: vec3<u32>, row0: u32, col0: u32, sp: Split) -> array<vec4<f32>, 16> {
    let m = params.m;
    let n = params.n;
    let kdim = params.k;
    let row = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var r = sp.r_lo; r < sp.r_hi; r++) {
        let a_base = params.a_offset + sp.z * params.a_stride_z + r * params.a_stride_r;
        let b_base = params.b_offset + sp.z * params.b_stride_z + r * params.b_stride_r;
        for (var t = sp.t_lo; t < sp.t_hi; t++) {
            let k = t * 4u;
            // a_i = opA[row + i, k..k+4]; b_e = opB[k + e, col..col+4].
            var a = mat4x4<f32>();
            var b = mat4x4<f32>();
            if (TRANS_A) {
                a = transpose(mat4x4<f32>(fetch_a(a_base, k, row, kdim, m),
                                          fetch_a(a_base, k + 1u, row, kdim, m),
                                          fetch_a(a_base, k + 2u, row, kdim, m),
                                          fetch_a(a_base, k + 3u, row, kdim, m)));
            } else {
                a = mat4x4<f32>(fetch_a(a_base, row, k, m, kdim),
                                fetch_a(a_base, row + 1u, k, m, kdim),
                                fetch_a(a_base, row + 2u, k, m, kdim),
                                fetch_a(a_base, row + 3u, k, m, kdim));
            }
            if (TRANS_B) {
                b = transpose(mat4x4<f32>(fetch_b(b_base, col, k, n, kdim),
                                          fetch_b(b_base, col + 1u, k, n, kdim),
                                          fetch_b(b_base, col + 2u, k, n, kdim),
                                          fetch_b(b_base, col + 3u, k, n, kdim)));
            } else {
                b = mat4x4<f32>(fetch_b(b_base, k, col, kdim, n),
                                fetch_b(b_base, k + 1u, col, kdim, n),
                                fetch_b(b_base, k + 2u, col, kdim, n),
                                fetch_b(b_base, k + 3u, col, kdim, n));
            }
            // Row i of the product is b · a_i (b's columns are opB's rows).
            c0 += b * a[0];
            c1 += b * a[1];
            c2 += b * a[2];
            c3 += b * a[3];
        }
    }
    var acc: array<vec4<f32>, 16>;
    acc[0] = c0;
    acc[2] = c1;
    acc[4] = c2;
    acc[6] = c3;
    return acc;
}

// Bias, activation and accumulation for four consecutive outputs (row, col..col+4) of batch z,
// then the store; columns past n are skipped. Branches, not select(), guard the bias reads: a
// select evaluates both operands, which would read a per-row bias at column indices.
fn store_c(z: u32, row: u32, col: u32, value: vec4<f32>) {
    let n = params.n;
    var v = value;
    let idx = params.c_offset + z * params.c_stride_z + row * n + col;
    if (HAS_BIAS) {
        if (BIAS_PER_ROW) {
            v += vec4<f32>(bias_at(row));
        } else {
            let count = min(4u, n - col);
            for (var e = 0u; e < count; e++) { v[e] += bias_at(col + e); }
        }
    }
    v = activate(v);
    if (ALIGNED_C) {
        // n % 4 == 0 and col % 4 == 0, so all four columns exist.
        if (ACCUMULATE) { v += vec4<f32>(c[idx / 4u]); }
        c[idx / 4u] = vec4<Elem>(v);
    } else {
        // Not unrolled, as in fetch_a.
        let count = min(4u, n - col);
        for (var e = 0u; e < count; e++) {
            let j = idx + e;
            var x = v[e];
            if (ACCUMULATE) { x += f32(c[j / 4u][j % 4u]); }
            c[j / 4u][j % 4u] = Elem(x);
        }
    }
}

@compute @workgroup_size(WG, WG, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) l: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let sp = split_of(wid.z, (params.k + k_step() - 1u) / k_step());
    let acc = tile_product(lid, l, row0, col0, sp);
    for (var gi = 0u; gi < GROUPS; gi++) {
        for (var i = 0u; i < 4u; i++) {
            let row = row0 + gi * 4u * WG + lid.y * 4u + i;
            if (row >= params.m) { continue; }
            for (var gj = 0u; gj < GROUPS; gj++) {
                let col = col0 + gj * 4u * WG + lid.x * 4u;
                if (col >= params.n) { continue; }
                store_c(sp.z, row, col, acc[(gi * 4u + i) * 2u + gj]);
            }
        }
    }
}

// One split's sum into its slab of `part`: slab (s · batches + z) holds [M, N].
@compute @workgroup_size(WG, WG, 1)
fn main_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let sp = split_of(wid.z, (params.k + k_step() - 1u) / k_step());
    let acc = tile_product(lid, l, row0, col0, sp);
    let n = params.n;
    let slab = ((wid.z % params.splits) * params.batches + sp.z) * params.m * n;
    for (var gi = 0u; gi < GROUPS; gi++) {
        for (var i = 0u; i < 4u; i++) {
            let row = row0 + gi * 4u * WG + lid.y * 4u + i;
            if (row >= params.m) { continue; }
            for (var gj = 0u; gj < GROUPS; gj++) {
                let col = col0 + gj * 4u * WG + lid.x * 4u;
                if (col >= n) { continue; }
                let idx = slab + row * n + col;
                var v = acc[(gi * 4u + i) * 2u + gj];
                if (n % 4u == 0u) {
                    if (PARTIAL_ACCUMULATE) { v += part[idx / 4u]; }
                    part[idx / 4u] = v;
                } else {
                    let count = min(4u, n - col);
                    for (var e = 0u; e < count; e++) {
                        let j = idx + e;
                        var x = v[e];
                        if (PARTIAL_ACCUMULATE) { x += part[j / 4u][j % 4u]; }
                        part[j / 4u][j % 4u] = x;
                    }
                }
            }
        }
    }
}

// Adds the `slabs` partial slabs ([splits][batches][M][N], (batches·M·N) apart) of every output
// element and applies the epilogue into C. One thread per element; grid folded into y.
@compute @workgroup_size(256, 1, 1)
fn splitk_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = (wid.y * params.groups_x + wid.x) * 256u + l;
    let mn = params.m * params.n;
    let per_slab = params.batches * mn;
    if (i >= per_slab) { return; }
    var s = 0.0;
    for (var w = 0u; w < params.slabs; w++) {
        let j = w * per_slab + i;
        s += part[j / 4u][j % 4u];
    }
    let z = i / mn;
    let row = (i % mn) / params.n;
    let col = i % params.n;
    var x = s;
    if (HAS_BIAS) {
        if (BIAS_PER_ROW) { x += bias_at(row); } else { x += bias_at(col); }
    }
    x = activate(vec4<f32>(x)).x;
    let idx = params.c_offset + z * params.c_stride_z + row * params.n + col;
    if (ACCUMULATE) { x += f32(c[idx / 4u][idx % 4u]); }
    c[idx / 4u][idx % 4u] = Elem(x);
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
    if (HAS_BIAS) {
        if (BIAS_PER_ROW) { x += bias_at(row); } else { x += bias_at(col); }
    }
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
                        av = vec4<f32>(0.0);
                        for (var e = 0u; e < 4u; e++) {
                            if (k + e < params.k) { av[e] = a_at(a_base, i, k + e); }
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

// Four consecutive k of opA's row `row` (zero past K), for either layout of A.
fn a_quad(base: u32, row: u32, k: u32) -> vec4<f32> {
    if (!TRANS_A) { return fetch_a(base, row, k, params.m, params.k); }
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if (k + e < params.k) { v[e] = a_at(base, row, k + e); }
    }
    return v;
}

// A GEMV without shared memory, barriers or arrays indexed at run time: each thread walks K alone
// for one output (B transposed: a dot product of two rows, vec4 loads along K) or four consecutive
// outputs (B plain: vec4 loads along N). A CPU adapter keeps it all in registers, where the
// workgroup GEMVs above pay a coroutine switch per barrier. Grid (ceil(N / 64) for transposed B,
// ceil(N / 256) for plain B, M, batch); K × reduce_count ≤ 8,192 (src/ops/matmul.rs), so the loops
// stay under the software drivers' cap with ragged loads.
@compute @workgroup_size(64, 1, 1)
fn gemv_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = wid.y;
    let c_base = params.c_offset + wid.z * params.c_stride_z;
    var acc = vec4<f32>(0.0);
    if (TRANS_B) {
        let col = wid.x * 64u + l;
        if (col >= params.n) { return; }
        for (var r = 0u; r < params.reduce_count; r++) {
            let a_base = params.a_offset + wid.z * params.a_stride_z + r * params.a_stride_r;
            let b_base = params.b_offset + wid.z * params.b_stride_z + r * params.b_stride_r;
            for (var k = 0u; k < params.k; k += 4u) {
                acc = fma(a_quad(a_base, row, k), fetch_b(b_base, col, k, params.n, params.k), acc);
            }
        }
        store_one(c_base, row, col, acc.x + acc.y + acc.z + acc.w);
    } else {
        let col = (wid.x * 64u + l) * 4u;
        if (col >= params.n) { return; }
        for (var r = 0u; r < params.reduce_count; r++) {
            let a_base = params.a_offset + wid.z * params.a_stride_z + r * params.a_stride_r;
            let b_base = params.b_offset + wid.z * params.b_stride_z + r * params.b_stride_r;
            for (var k = 0u; k < params.k; k++) {
                acc = fma(vec4<f32>(a_at(a_base, row, k)), fetch_b(b_base, k, col, params.k, params.n), acc);
            }
        }
        for (var e = 0u; e < 4u; e++) {
            if (col + e < params.n) { store_one(c_base, row, col + e, acc[e]); }
        }
    }
}
