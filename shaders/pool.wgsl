// max_pool2d and avg_pool2d over NCHW planes, PyTorch semantics, forward and backward side by
// side. Forward: one invocation per output element, scanning its window. Backward: one
// invocation per input element, gathering dy from every window that covers it, so no two
// invocations write one address (no atomics, the same sum in the same order every run).
// Coordinates are i32 (a window may start in the padding); only non-negative values are
// divided, as GLSL leaves % and / of negative integers undefined.

struct Params {
    // Invocations: output elements (forward) or input elements (backward).
    total: u32,
    h: i32,
    w: i32,
    ho: i32,
    wo: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    // avg_pool2d: 1 counts the padding in a window's divisor (PyTorch's count_include_pad).
    include_pad: u32,
    // avg_pool2d: PyTorch's divisor_override, 0 for none.
    divisor: f32,
    // −inf, the max of a window with no element inside the input (PyTorch's answer); WGSL has
    // no infinite constants, so it arrives as a parameter.
    lowest: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x in forward, dy in backward.
@group(0) @binding(1) var<storage, read> src: array<f32>;
// max_pool2d_backward: the forward's argmax per output.
@group(0) @binding(2) var<storage, read> argmax_in: array<f32>;
// y in forward, dx in backward.
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// max_pool2d forward: each output's argmax as its tap index i·kw + j within the window (an
// f32 holding a small integer exactly; −1 where the window has no element), so backward
// routes dy where forward took the max without redoing the scan and its tie rule.
@group(0) @binding(4) var<storage, read_write> argmax: array<f32>;

const WG: u32 = 256u;

// (plane, row, column) of element `i` of [planes, rows, cols].
fn coords(i: u32, rows: i32, cols: i32) -> vec3<i32> {
    let c = u32(cols);
    let t = i / c;
    return vec3<i32>(i32(t / u32(rows)), i32(t % u32(rows)), i32(i % c));
}

// NaN by its bits: floating-point comparisons may assume NaN away, integer ones may not.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// The windows along one axis whose span covers input coordinate c, as [first, end): window o
// starts at o·s − pad and spans d·(k − 1) + 1, so o runs over
// [ceil((c + pad − d(k − 1)) / s), floor((c + pad) / s)] ∩ [0, out).
fn windows(c: i32, pad: i32, k: i32, d: i32, s: i32, out: i32) -> vec2<i32> {
    let lo = c + pad - d * (k - 1);
    let first = select(0, (lo + s - 1) / s, lo > 0);
    return vec2<i32>(first, min((c + pad) / s + 1, out));
}

// The tap of a window that lies `offset` (≥ 0) past the window's start, or −1 where none
// does (dilation skips it).
fn tap_at(offset: i32, d: i32, k: i32) -> i32 {
    let i = offset / d;
    return select(-1, i, i * d == offset && i < k);
}

// PyTorch's rule: a NaN wins (and a later NaN again), else the first strictly greater value in
// scan order (rows, then columns), so ties go to the earliest element; padding never wins.
@compute @workgroup_size(WG)
fn max_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = flat(wid, nwg, lid);
    if (o >= p.total) { return; }
    let at = coords(o, p.ho, p.wo);
    let base = at.x * p.h * p.w;
    let h0 = at.y * p.sh - p.ph;
    let w0 = at.z * p.sw - p.pw;
    var best = p.lowest;
    var arg = -1;
    for (var i = 0; i < p.kh; i++) {
        let ih = h0 + i * p.dh;
        if (ih < 0 || ih >= p.h) { continue; }
        for (var j = 0; j < p.kw; j++) {
            let iw = w0 + j * p.dw;
            if (iw >= 0 && iw < p.w) {
                let v = src[base + ih * p.w + iw];
                if (arg < 0 || v > best || is_nan(v)) {
                    best = v;
                    arg = i * p.kw + j;
                }
            }
        }
    }
    dst[o] = best;
    argmax[o] = f32(arg);
}

// dx at a pixel: Σ dy over the windows whose argmax is this pixel.
@compute @workgroup_size(WG)
fn max_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let x = flat(wid, nwg, lid);
    if (x >= p.total) { return; }
    let at = coords(x, p.h, p.w);
    let rows = windows(at.y, p.ph, p.kh, p.dh, p.sh, p.ho);
    let cols = windows(at.z, p.pw, p.kw, p.dw, p.sw, p.wo);
    var acc = 0.0;
    for (var oh = rows.x; oh < rows.y; oh++) {
        let i = tap_at(at.y + p.ph - oh * p.sh, p.dh, p.kh);
        if (i < 0) { continue; }
        for (var ow = cols.x; ow < cols.y; ow++) {
            let j = tap_at(at.z + p.pw - ow * p.sw, p.dw, p.kw);
            let o = (at.x * p.ho + oh) * p.wo + ow;
            if (j >= 0 && argmax_in[o] == f32(i * p.kw + j)) {
                acc += src[o];
            }
        }
    }
    dst[x] = acc;
}

// What window (oh, ow) divides its sum by, as PyTorch: divisor_override if given; else the
// window's size clipped to the padded input (the ceil_mode overhang past the padding never
// counts), and with count_include_pad false clipped to the input itself.
fn avg_divisor(oh: i32, ow: i32) -> f32 {
    if (p.divisor > 0.0) { return p.divisor; }
    let hs = oh * p.sh - p.ph;
    let ws = ow * p.sw - p.pw;
    let he = min(hs + p.kh, p.h + p.ph);
    let we = min(ws + p.kw, p.w + p.pw);
    if (p.include_pad != 0u) { return f32((he - hs) * (we - ws)); }
    return f32((min(he, p.h) - max(hs, 0)) * (min(we, p.w) - max(ws, 0)));
}

@compute @workgroup_size(WG)
fn avg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = flat(wid, nwg, lid);
    if (o >= p.total) { return; }
    let at = coords(o, p.ho, p.wo);
    let base = at.x * p.h * p.w;
    let hs = at.y * p.sh - p.ph;
    let ws = at.z * p.sw - p.pw;
    var acc = 0.0;
    for (var ih = max(hs, 0); ih < min(hs + p.kh, p.h); ih++) {
        for (var iw = max(ws, 0); iw < min(ws + p.kw, p.w); iw++) {
            acc += src[base + ih * p.w + iw];
        }
    }
    dst[o] = acc / avg_divisor(at.y, at.z);
}

// dx at a pixel: Σ dy / divisor over the windows covering it (avg_pool2d has no dilation).
@compute @workgroup_size(WG)
fn avg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let x = flat(wid, nwg, lid);
    if (x >= p.total) { return; }
    let at = coords(x, p.h, p.w);
    let rows = windows(at.y, p.ph, p.kh, 1, p.sh, p.ho);
    let cols = windows(at.z, p.pw, p.kw, 1, p.sw, p.wo);
    var acc = 0.0;
    for (var oh = rows.x; oh < rows.y; oh++) {
        for (var ow = cols.x; ow < cols.y; ow++) {
            acc += src[(at.x * p.ho + oh) * p.wo + ow] / avg_divisor(oh, ow);
        }
    }
    dst[x] = acc;
}

// #include "grid.wgsl"
