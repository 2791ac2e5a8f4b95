// pool.wgsl: 2-D max and average pooling over NCHW, forward and backward.
//   max_forward   out = max over the window (padding counts as -inf; a NaN wins, as in PyTorch),
//                 indices = h·W + w of the first maximum in the plane.
//   max_backward  gather: dx[h, w] = Σ dy over the windows whose recorded index is (h, w).
//   avg_forward   out = Σ window / (kh·kw): padding counts as zeros (PyTorch's count_include_pad).
//   avg_backward  gather: dx[h, w] = Σ dy / (kh·kw) over the windows that contain (h, w).
// Bindings: 0 params, 1 input (read: x, or dy for backward), 2 output (read_write), 3 indices
// (read_write u32: written by max_forward, read by max_backward).
// One thread per output element. Elem is f32 or f16 (wgnn rewrites the alias).

alias Elem = f32;

struct Params {
    planes: u32,          // N · C
    height: u32,
    width: u32,
    groups_x: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;

fn flat(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 256u + l;
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(256, 1, 1)
fn max_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane_out = params.out_h * params.out_w;
    if (i >= params.planes * plane_out) { return; }
    let plane = i / plane_out;
    let oh = (i % plane_out) / params.out_w;
    let ow = i % params.out_w;
    let base = plane * params.height * params.width;
    var best = bitcast<f32>(0xff800000u);
    var best_i = 0xffffffffu;
    for (var r = 0u; r < params.kernel_h; r++) {
        let hp = oh * params.stride_h + r;
        if (hp < params.pad_h || hp - params.pad_h >= params.height) { continue; }
        let h = hp - params.pad_h;
        for (var s = 0u; s < params.kernel_w; s++) {
            let wp = ow * params.stride_w + s;
            if (wp < params.pad_w || wp - params.pad_w >= params.width) { continue; }
            let idx = h * params.width + wp - params.pad_w;
            let v = f32(src[base + idx]);
            if (best_i == 0xffffffffu || (!is_nan(best) && (v > best || is_nan(v)))) {
                best = v;
                best_i = idx;
            }
        }
    }
    dst[i] = Elem(best);
    indices[i] = best_i;
}

// The output window range [lo, hi) along one axis that covers input position x (padded: xp).
fn window_range(xp: u32, kernel: u32, stride: u32, out: u32) -> vec2<u32> {
    // o·stride <= xp < o·stride + kernel
    var lo = 0u;
    if (xp + 1u > kernel) { lo = (xp + 1u - kernel + stride - 1u) / stride; }
    let hi = min(xp / stride + 1u, out);
    return vec2<u32>(lo, hi);
}

@compute @workgroup_size(256, 1, 1)
fn max_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane_in = params.height * params.width;
    if (i >= params.planes * plane_in) { return; }
    let plane = i / plane_in;
    let idx = i % plane_in;
    let hr = window_range(idx / params.width + params.pad_h, params.kernel_h, params.stride_h, params.out_h);
    let wr = window_range(idx % params.width + params.pad_w, params.kernel_w, params.stride_w, params.out_w);
    let base = plane * params.out_h * params.out_w;
    var acc = 0.0;
    for (var oh = hr.x; oh < hr.y; oh++) {
        for (var ow = wr.x; ow < wr.y; ow++) {
            let o = base + oh * params.out_w + ow;
            if (indices[o] == idx) { acc += f32(src[o]); }
        }
    }
    dst[i] = Elem(acc);
}

@compute @workgroup_size(256, 1, 1)
fn avg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane_out = params.out_h * params.out_w;
    if (i >= params.planes * plane_out) { return; }
    let plane = i / plane_out;
    let oh = (i % plane_out) / params.out_w;
    let ow = i % params.out_w;
    let base = plane * params.height * params.width;
    var acc = 0.0;
    for (var r = 0u; r < params.kernel_h; r++) {
        let hp = oh * params.stride_h + r;
        if (hp < params.pad_h || hp - params.pad_h >= params.height) { continue; }
        for (var s = 0u; s < params.kernel_w; s++) {
            let wp = ow * params.stride_w + s;
            if (wp < params.pad_w || wp - params.pad_w >= params.width) { continue; }
            acc += f32(src[base + (hp - params.pad_h) * params.width + wp - params.pad_w]);
        }
    }
    dst[i] = Elem(acc / f32(params.kernel_h * params.kernel_w));
}

@compute @workgroup_size(256, 1, 1)
fn avg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane_in = params.height * params.width;
    if (i >= params.planes * plane_in) { return; }
    let plane = i / plane_in;
    let idx = i % plane_in;
    let hr = window_range(idx / params.width + params.pad_h, params.kernel_h, params.stride_h, params.out_h);
    let wr = window_range(idx % params.width + params.pad_w, params.kernel_w, params.stride_w, params.out_w);
    let base = plane * params.out_h * params.out_w;
    var acc = 0.0;
    for (var oh = hr.x; oh < hr.y; oh++) {
        for (var ow = wr.x; ow < wr.y; ow++) {
            acc += f32(src[base + oh * params.out_w + ow]);
        }
    }
    dst[i] = Elem(acc / f32(params.kernel_h * params.kernel_w));
}
