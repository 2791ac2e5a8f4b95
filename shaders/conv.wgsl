// conv.wgsl: the data movement around conv2d's matmuls (layout: NCHW activations, KCRS filters).
//   im2col   col[n, (c, r, s), (oh, ow)] = x[n, c, oh·stride - pad + r·dil, ow·stride - pad + s·dil]
//            (0 outside the input): each image's column matrix is [C·R·S, OH·OW], so
//            out[n] = W[K, C·R·S] · col[n] is the convolution, already in NCHW order.
//   col2im   the adjoint, as a gather (no atomics): dx[n, c, h, w] = Σ over (r, s) whose window
//            position (oh, ow) lands on (h, w) of dcol[n, (c, r, s), (oh, ow)].
// One thread per output element; the flat index is split into coordinates once per thread (the
// only divisions); col2im's inner loop over (r, s) tests divisibility by the stride.
// Bindings: 0 params, 1 input (read: x or dcol), 2 output (read_write: col or dx).
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
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;

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

@compute @workgroup_size(256, 1, 1)
fn col2im(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = flat(wid, l);
    let plane = params.height * params.width;
    if (i >= params.images * params.channels * plane) { return; }
    let w = i % params.width;
    let h = (i / params.width) % params.height;
    let nc = i / plane;               // n · C + c
    let plane_out = params.out_h * params.out_w;
    let rs = params.kernel_h * params.kernel_w;
    // dcol row of (n, c, r = 0, s = 0); rows of one (n, c) are consecutive.
    let row0 = nc * rs;
    let hp = h + params.pad_h;
    let wp = w + params.pad_w;
    var acc = 0.0;
    for (var r = 0u; r < params.kernel_h; r++) {
        let dh = r * params.dil_h;
        if (dh > hp || (hp - dh) % params.stride_h != 0u) { continue; }
        let oh = (hp - dh) / params.stride_h;
        if (oh >= params.out_h) { continue; }
        for (var s = 0u; s < params.kernel_w; s++) {
            let dw = s * params.dil_w;
            if (dw > wp || (wp - dw) % params.stride_w != 0u) { continue; }
            let ow = (wp - dw) / params.stride_w;
            if (ow >= params.out_w) { continue; }
            acc += f32(src[(row0 + r * params.kernel_w + s) * plane_out + oh * params.out_w + ow]);
        }
    }
    dst[params.x_offset + i] = Elem(acc);
}
