// sampling.wgsl: the next token of each row of logits, chosen on the GPU so that only token ids
// are read back: greedy (temperature 0, or top-k 1), or drawn from softmax(logits / temperature)
// restricted to the top-k tokens and to the top-p nucleus, with a counter-based generator: the
// same (seed, counter) draws the same token on every backend.
//
// Order: a logit's u32 key (its bits, flipped so that keys order as the floats do). The kept set
// is every token whose key is at least K = max(K_k, K_p): K_k is the k-th largest key (ties at it
// are all kept), K_p the largest key whose tail mass (Σ weights of keys ≥ it) is at least p times
// the total. Both are found bit by bit from the top (32 passes over the row), which needs no sort
// and no memory beyond the workgroup's. The draw: u = (hash >> 8) / 2²⁴, a goal of u · M (M the
// kept mass); the token is the first, in vocabulary order, whose running kept mass passes the goal.
// Every sum has a fixed order: 256 contiguous segments, each summed in order, then the segment
// sums in order (thread 0) or by reduce_shared.wgsl's tree (counts too: exact in f32 below 2^24).
// Preludes: hash.wgsl (the generator's mixer), numerics.wgsl, reduce_shared.wgsl.
//
// Bindings: 0 params, 1 logits [rows, vocab], 2 settings (8 words per row), 3 tokens (u32 [rows]).
//   sample   one 256-thread workgroup per row (grid folded into y past groups_x)
// Loops per thread: 34 passes of ceil(vocab / 256) plus 8 tree levels each: under the software
// drivers' 65,535-iteration cap for the vocabularies the host allows (at most 2^17).
// Elem is f32 or f16 (wgnn rewrites the alias); arithmetic is f32.

alias Elem = f32;

struct Params {
    rows: u32,
    vocab: u32,
    groups_x: u32,
    seg: u32,            // ceil(vocab / 256): tokens per thread's segment
}

struct RowSettings {
    temperature: f32,    // 0: greedy; negative: no draw (token 0)
    top_k: u32,          // 0: all
    top_p: f32,          // in (0, 1]; 1: all
    seed_lo: u32,
    seed_hi: u32,
    counter: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<Elem>;
@group(0) @binding(2) var<storage, read> settings: array<RowSettings>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;

const WG: u32 = 256u;

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_i: array<u32, 256>;
// The row's settings, read once and loaded as workgroup-uniform (the branches around barriers
// depend on them).
var<workgroup> row_temperature: f32;
var<workgroup> row_top_k: u32;
var<workgroup> row_top_p: f32;
// Radix select's histogram and the digit thread 0 picks from it; the candidate count.
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> radix_digit: u32;
var<workgroup> radix_need: u32;
var<workgroup> cand_count: atomic<u32>;

fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

@compute @workgroup_size(256, 1, 1)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let row = wid.y * params.groups_x + wid.x;
    if (row >= params.rows) { return; }
    let s = settings[row];
    if (l == 0u) {
        row_temperature = s.temperature;
        row_top_k = s.top_k;
        row_top_p = s.top_p;
    }
    let temperature = workgroupUniformLoad(&row_temperature);
    let top_k = workgroupUniformLoad(&row_top_k);
    let top_p = workgroupUniformLoad(&row_top_p);
    if (temperature < 0.0) {
        // A row whose token nobody reads (a prompt's inner position, a padding row).
        if (l == 0u) { tokens[row] = 0u; }
        return;
    }
    let base = row * params.vocab;
    let lo = min(l * params.seg, params.vocab);
    let hi = min(lo + params.seg, params.vocab);
    // Greatest logit, first index among ties: this thread's segment, then the tree.
    var best = key_of(f32(logits[base + min(lo, params.vocab - 1u)]));
    var best_i = 0xffffffffu;
    for (var i = lo; i < hi; i++) {
        let k = key_of(f32(logits[base + i]));
        if (best_i == 0xffffffffu || k > best) {
            best = k;
            best_i = i;
        }
    }
    red_u[l] = best;
    red_i[l] = best_i;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (l < st) {
            let oi = red_i[l + st];
            let mi = red_i[l];
            let ok = red_u[l + st];
            if (oi != 0xffffffffu && (mi == 0xffffffffu || ok > red_u[l] || (ok == red_u[l] && oi < mi))) {
                red_u[l] = ok;
                red_i[l] = oi;
            }
        }
        workgroupBarrier();
    }
    let argmax = red_i[0];
    let max_logit = f32(logits[base + min(argmax, params.vocab - 1u)]);
    workgroupBarrier();
    if (temperature == 0.0 || top_k == 1u) {
        if (l == 0u) { tokens[row] = min(argmax, params.vocab - 1u); }
        return;
    }
    let inv_t = 1.0 / temperature;
    let m = max_logit * inv_t;
    // K_k: the largest key with at least top_k tokens at or above it (the k-th largest key),
    // by radix select: 8 bits per pass from the top, each pass a histogram of the keys that
    // share the bits found so far (integer counts: the same in any order).
    var kk = 0u;
    if (top_k != 0u && top_k < params.vocab) {
        var need = top_k;
        var high = 0u;               // mask of the bits found so far
        for (var round = 0u; round < 4u; round++) {
            let shift = 24u - 8u * round;
            atomicStore(&hist[l], 0u);
            workgroupBarrier();
            for (var i = lo; i < hi; i++) {
                let k = key_of(f32(logits[base + i]));
                if ((k & high) == kk) { atomicAdd(&hist[(k >> shift) & 255u], 1u); }
            }
            workgroupBarrier();
            if (l == 0u) {
                var above = 0u;
                var digit = 0u;
                for (var d = 255i; d >= 0i; d--) {
                    let n = atomicLoad(&hist[u32(d)]);
                    if (above + n >= need) {
                        digit = u32(d);
                        break;
                    }
                    above += n;
                }
                radix_digit = digit;
                radix_need = need - above;
            }
            let digit = workgroupUniformLoad(&radix_digit);
            need = workgroupUniformLoad(&radix_need);
            kk |= digit << shift;
            high |= 255u << shift;
        }
    }
    // K_p: the largest key whose tail mass is at least top_p of the total.
    var kp = 0u;
    if (top_p < 1.0) {
        var t = 0.0;
        for (var i = lo; i < hi; i++) { t += exp(f32(logits[base + i]) * inv_t - m); }
        let goal = top_p * workgroup_sum(l, t);
        // With top-k, K_p matters only above K_k: among the (few) kept tokens, sorted by key
        // (ties by index, so the order and the sums are the same every run), the tail masses
        // are running sums from the top.
        var sorted = false;
        if (kk != 0u) {
            if (l == 0u) { atomicStore(&cand_count, 0u); }
            workgroupBarrier();
            for (var i = lo; i < hi; i++) {
                let x = f32(logits[base + i]);
                let k = key_of(x);
                if (k >= kk) {
                    let at = atomicAdd(&cand_count, 1u);
                    if (at < WG) {
                        red_u[at] = k;
                        red_i[at] = i;
                        red_f[at] = exp(x * inv_t - m);
                    }
                }
            }
            let c = workgroupUniformLoad(&cand_count);
            if (c <= WG) {
                var rank = 0u;
                var my_k = 0u;
                var my_i = 0u;
                var my_w = 0.0;
                if (l < c) {
                    my_k = red_u[l];
                    my_i = red_i[l];
                    my_w = red_f[l];
                    for (var j = 0u; j < c; j++) {
                        let o = red_u[j];
                        if (o > my_k || (o == my_k && red_i[j] < my_i)) { rank++; }
                    }
                }
                workgroupBarrier();
                if (l < c) {
                    red_u[rank] = my_k;
                    red_f[rank] = my_w;
                }
                workgroupBarrier();
                if (l == 0u) {
                    var tail = 0.0;
                    var found = 0u;
                    for (var j = 0u; j < c; j++) {
                        tail += red_f[j];
                        let last_of_key = j + 1u == c || red_u[j + 1u] != red_u[j];
                        if (last_of_key && tail >= goal) {
                            found = red_u[j];
                            break;
                        }
                    }
                    radix_digit = found;
                }
                kp = workgroupUniformLoad(&radix_digit);
                sorted = true;
            }
        }
        if (!sorted) {
            for (var bit = 31i; bit >= 0i; bit--) {
                let cand = kp | (1u << u32(bit));
                var w = 0.0;
                for (var i = lo; i < hi; i++) {
                    let x = f32(logits[base + i]);
                    if (key_of(x) >= cand) { w += exp(x * inv_t - m); }
                }
                if (workgroup_sum(l, w) >= goal) { kp = cand; }
            }
        }
    }
    let keep = max(kk, kp);
    // The draw: this segment's kept mass, then thread 0 finds the segment the goal falls in.
    var mass = 0.0;
    for (var i = lo; i < hi; i++) {
        let x = f32(logits[base + i]);
        if (key_of(x) >= keep) { mass += exp(x * inv_t - m); }
    }
    red_f[l] = mass;
    workgroupBarrier();
    if (l == 0u) {
        var total = 0.0;
        for (var j = 0u; j < WG; j++) { total += red_f[j]; }
        var h = mix(s.seed_lo ^ 0x5bd1e995u);
        h = mix(h ^ s.seed_hi);
        h = mix(h ^ s.counter);
        let u = f32(mix(h + 0x9e3779b9u) >> 8u) * (1.0 / 16777216.0);
        var goal_mass = u * total;
        var seg = WG;
        var last = 0u;
        for (var j = 0u; j < WG; j++) {
            if (red_f[j] > 0.0) { last = j; }
            if (seg == WG && red_f[j] > 0.0 && goal_mass < red_f[j]) {
                seg = j;
            } else if (seg == WG) {
                goal_mass -= red_f[j];
            }
        }
        if (seg == WG) {
            // Rounding left the goal_mass at the end: the last segment's last kept token.
            seg = last;
            goal_mass = red_f[last];
        }
        red_u[0] = seg;
        red_f[1] = goal_mass;
    }
    workgroupBarrier();
    let seg = red_u[0];
    let goal_mass = red_f[1];
    if (l == seg) {
        var run = 0.0;
        var pick = 0xffffffffu;
        var last_kept = lo;
        for (var i = lo; i < hi; i++) {
            let x = f32(logits[base + i]);
            if (key_of(x) >= keep) {
                run += exp(x * inv_t - m);
                last_kept = i;
                if (pick == 0xffffffffu && goal_mass < run) { pick = i; }
            }
        }
        if (pick == 0xffffffffu) { pick = last_kept; }
        tokens[row] = min(pick, params.vocab - 1u);
    }
}
