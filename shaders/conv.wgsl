// conv.wgsl: the data movement around conv2d's matmuls (layout: NCHW activations, KCRS filters).
//   im2col   col[n, (c, r, s), (oh, ow)] = x[n, c, oh·stride - pad + r·dil, ow·stride - pad + s·dil]
//            (0 outside the input): each image's column matrix is [C·R·S, OH·OW], so
//            out[n] = W[K, C·R·S] · col[n] is the convolution, already in NCHW order.
//   col2im   the adjoint, as a gather (no atomics): dx[n, c, h, w] = Σ over (r, s) whose window
//            position (oh, ow) lands on (h, w) of dcol[n, (c, r, s), (oh, ow)].
// One thread per output element; the flat index is split into coordinates once per thread.
// col2im's loops walk the output positions whose windows cover the pixel (found once per thread),
// so no division runs inside them unless the dilation is above 1.
//   conv_direct  the convolution itself without a column matrix (implicit GEMM): each thread
//            computes 4 consecutive output pixels of KB (1, 4 or 8) output channels of one image, walking its
//            group's C/groups × R × S taps, and applies bias and activation.
// Bindings: 0 params, 1 input (read: x or dcol), 2 output (read_write: col, dx or out),
// 3 filters and 4 bias (read, conv_direct).
// Grid: 256-thread workgroups, folded into y past 65,535. Elem is f32 or f16 (wgnn rewrites the alias).

alias Elem = f32;

struct Params {
    channels: u32,
    height: u32,
    width: u32,
    images: u32,          // images in this chunk
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    x_offset: u32,        // first element of the chunk's first image in x (im2col) or dx (col2im)
    groups_x: u32,
    out_channels: u32,    // conv_direct: K
    in_per_group: u32,    // conv_direct: C / groups
    out_per_group: u32,   // conv_direct: K / groups
    first_image: u32,     // conv_direct: the chunk's first image
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;
@group(0) @binding(3) var<storage, read> filters: array<Elem>;
@group(0) @binding(4) var<storage, read> bias: array<Elem>;

override HAS_BIAS: bool = false;
override KB: u32 = 4u;      // output channels per thread: 8, 4, or 1 (the largest that divides K / groups)

fn flat(wid: vec3<u32>, l: u32) -> u32 {
    return (wid.y * params.groups_x + wid.x) * 256u + l;
}

@compute @workgroup_size(256, 1, 1)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane_out = params.out_h * params.out_w;
    let rs = params.kernel_h * params.kernel_w;
    let crs = params.channels * rs;
    if (i >= params.images * crs * plane_out) { return; }
    let p = i % plane_out;
    let q = i / plane_out;
    let k = q % crs;
    let n = q / crs;
    let c = k / rs;
    let r = (k % rs) / params.kernel_w;
    let s = k % params.kernel_w;
    let oh = p / params.out_w;
    let ow = p % params.out_w;
    // Input coordinates, shifted by the padding so they stay unsigned.
    let hp = oh * params.stride_h + r * params.dil_h;
    let wp = ow * params.stride_w + s * params.dil_w;
    var v = Elem(0.0);
    if (hp >= params.pad_h && wp >= params.pad_w) {
        let h = hp - params.pad_h;
        let w = wp - params.pad_w;
        if (h < params.height && w < params.width) {
            v = src[params.x_offset + ((n * params.channels + c) * params.height + h) * params.width + w];
        }
    }
    dst[i] = v;
}

// The output positions [lo, hi) along one axis whose window covers padded input position xp:
// o·stride <= xp <= o·stride + span - 1, with span = (kernel - 1)·dil + 1.
fn covering(xp: u32, span: u32, stride: u32, out: u32) -> vec2<u32> {
    var lo = 0u;
    if (xp + 1u > span) { lo = (xp + 1u - span + stride - 1u) / stride; }
    return vec2<u32>(lo, min(xp / stride + 1u, out));
}

@compute @workgroup_size(256, 1, 1)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane = params.height * params.width;
    if (i >= params.images * params.channels * plane) { return; }
    let w = i % params.width;
    let h = (i / params.width) % params.height;
    let nc = i / plane;               // n · C + c
    let plane_out = params.out_h * params.out_w;
    // dcol row of (n, c, r = 0, s = 0); rows of one (n, c) are consecutive.
    let row0 = nc * params.kernel_h * params.kernel_w;
    let hp = h + params.pad_h;
    let wp = w + params.pad_w;
    // Divisions happen here, once per thread: the loops below walk the covering output positions,
    // and test divisibility by the dilation only when it is above 1 (a uniform branch).
    let hr = covering(hp, (params.kernel_h - 1u) * params.dil_h + 1u, params.stride_h, params.out_h);
    let wr = covering(wp, (params.kernel_w - 1u) * params.dil_w + 1u, params.stride_w, params.out_w);
    var acc = 0.0;
    for (var oh = hr.x; oh < hr.y; oh++) {
        let dh = hp - oh * params.stride_h;   // r · dil_h
        var r = dh;
        if (params.dil_h > 1u) {
            if (dh % params.dil_h != 0u) { continue; }
            r = dh / params.dil_h;
        }
        for (var ow = wr.x; ow < wr.y; ow++) {
            let dw = wp - ow * params.stride_w;   // s · dil_w
            var s = dw;
            if (params.dil_w > 1u) {
                if (dw % params.dil_w != 0u) { continue; }
                s = dw / params.dil_w;
            }
            acc += f32(src[(row0 + r * params.kernel_w + s) * plane_out + oh * params.out_w + ow]);
        }
    }
    dst[params.x_offset + i] = Elem(acc);
}

// Input pixel (n·C + c, h, w) shifted by the padding, 0 outside the image.
fn x_at(plane_base: u32, hp: u32, wp: u32) -> f32 {
    if (hp < params.pad_h || wp < params.pad_w) { return 0.0; }
    let h = hp - params.pad_h;
    let w = wp - params.pad_w;
    if (h >= params.height || w >= params.width) { return 0.0; }
    return f32(src[plane_base + h * params.width + w]);
}

fn store_out(base: u32, p: u32, plane_out: u32, ch: u32, v: vec4<f32>) {
    var x = v;
    if (HAS_BIAS) { x += vec4<f32>(f32(bias[ch])); }
    x = activate(x);
    for (var e = 0u; e < 4u; e++) {
        if (p + e < plane_out) { dst[base + p + e] = Elem(x[e]); }
    }
}

// Grid: x = (images × pixel quads) / 64 (folded into y past the limit, `groups_x` along x), z =
// channel blocks. 64 threads along the chunk's pixel quads, image after image, so small images
// fill the workgroup too; the filters a workgroup reads are the same for all its threads.
@compute @workgroup_size(64, 1, 1)
fn conv_direct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let plane_out = params.out_h * params.out_w;
    let quads = (plane_out + 3u) / 4u;
    let q = (wid.y * params.groups_x + wid.x) * 64u + l;
    if (q >= params.images * quads) { return; }
    let n = params.first_image + q / quads;
    let p = (q % quads) * 4u;
    let k0 = wid.z * KB;
    let g = k0 / params.out_per_group;
    let rs = params.kernel_h * params.kernel_w;
    // Padded input coordinates of the 4 pixels' windows' corners.
    var hp0 = vec4<u32>(0u);
    var wp0 = vec4<u32>(0u);
    for (var e = 0u; e < 4u; e++) {
        let q = min(p + e, plane_out - 1u);
        hp0[e] = (q / params.out_w) * params.stride_h;
        wp0[e] = (q % params.out_w) * params.stride_w;
    }
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    let cg = params.in_per_group;
    let w_stride = cg * rs;     // elements between consecutive output channels' filters
    for (var c = 0u; c < cg; c++) {
        let plane_base = params.x_offset + (n * params.channels + g * cg + c) * params.height * params.width;
        let w_base = k0 * w_stride + c * rs;
        for (var r = 0u; r < params.kernel_h; r++) {
            for (var s = 0u; s < params.kernel_w; s++) {
                let dh = r * params.dil_h;
                let dw = s * params.dil_w;
                let xv = vec4<f32>(x_at(plane_base, hp0.x + dh, wp0.x + dw),
                                   x_at(plane_base, hp0.y + dh, wp0.y + dw),
                                   x_at(plane_base, hp0.z + dh, wp0.z + dw),
                                   x_at(plane_base, hp0.w + dh, wp0.w + dw));
                let t = w_base + r * params.kernel_w + s;
                a0 = fma(vec4<f32>(f32(filters[t])), xv, a0);
                if (KB >= 4u) {
                    a1 = fma(vec4<f32>(f32(filters[t + w_stride])), xv, a1);
                    a2 = fma(vec4<f32>(f32(filters[t + 2u * w_stride])), xv, a2);
                    a3 = fma(vec4<f32>(f32(filters[t + 3u * w_stride])), xv, a3);
                }
                if (KB == 8u) {
                    a4 = fma(vec4<f32>(f32(filters[t + 4u * w_stride])), xv, a4);
                    a5 = fma(vec4<f32>(f32(filters[t + 5u * w_stride])), xv, a5);
                    a6 = fma(vec4<f32>(f32(filters[t + 6u * w_stride])), xv, a6);
                    a7 = fma(vec4<f32>(f32(filters[t + 7u * w_stride])), xv, a7);
                }
            }
        }
    }
    let base = (n * params.out_channels + k0) * plane_out;
    store_out(base, p, plane_out, k0, a0);
    if (KB >= 4u) {
        store_out(base + plane_out, p, plane_out, k0 + 1u, a1);
        store_out(base + 2u * plane_out, p, plane_out, k0 + 2u, a2);
        store_out(base + 3u * plane_out, p, plane_out, k0 + 3u, a3);
    }
    if (KB == 8u) {
        store_out(base + 4u * plane_out, p, plane_out, k0 + 4u, a4);
        store_out(base + 5u * plane_out, p, plane_out, k0 + 5u, a5);
        store_out(base + 6u * plane_out, p, plane_out, k0 + 6u, a6);
        store_out(base + 7u * plane_out, p, plane_out, k0 + 7u, a7);
    }
}
