// Conv2d forward and data gradient for CPU adapters (lavapipe), as implicit GEMMs whose
// per-invocation operand comes from uniform buffers. Same semantics as conv.wgsl's `forward`
// and `data_grad` (x [n, cin, h, w], w [cout, cin, kh, kw], y [n, cout, ho, wo]); the launcher,
// src/kernels/conv/window.rs, picks these entries where they apply and conv.wgsl elsewhere.
//
// Why this shape (measured on lavapipe, Mesa 22.3, see docs/BENCHMARKS.md): llvmpipe compiles
// every storage-buffer or workgroup-memory load into a loop over the SIMD lanes that costs
// about 100 FMAs per lane, vec4 loads included, while a uniform-buffer load is an unrolled
// gather costing about 4 FMAs, and a subgroup shuffle about 1. So:
// - Each sample's input lives in a 64 KiB uniform-buffer window (conv_window.wgsl `pack`
//   copies it there); a dispatch binds the windows of 8 samples, and every invocation
//   computes its output pixel for all 8, which share one index computation.
// - Weights are loaded from the storage buffer once per subgroup: lane l loads the weights of
//   reduction step l of the next 8 for 16 output channels, and subgroupShuffle hands them to
//   every lane. A workgroup is one subgroup of 8 (the launcher checks the adapter's size).
// - 16 channels x 8 samples are accumulated in named struct variables: llvmpipe keeps those
//   in registers, while arrays indexed in loops go through memory (8x slower here).
// One reduction step costs 8 window gathers, 16 shuffles and 128 FMAs; 2 storage loads per
// step remain. 12 samples per dispatch (192 accumulators) saved weight loads but ran no faster
// per sample at batch 64 and wasted a third of a dispatch at batch 16; 4 ran 1.4x slower.
// Loops stay below llvmpipe's 65,535 iterations per invocation (the launcher checks).

struct Params {
    cin: u32,
    cout: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    // 1: add bias[channel] to every output.
    flag: u32,
    // Samples n0 .. n0 + count of the batch, in windows v0 .. v<count - 1>.
    n0: u32,
    count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<uniform> v0: array<vec4<f32>, 4096>;
@group(0) @binding(5) var<uniform> v1: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> v2: array<vec4<f32>, 4096>;
@group(0) @binding(7) var<uniform> v3: array<vec4<f32>, 4096>;
@group(0) @binding(8) var<uniform> v4: array<vec4<f32>, 4096>;
@group(0) @binding(9) var<uniform> v5: array<vec4<f32>, 4096>;
@group(0) @binding(10) var<uniform> v6: array<vec4<f32>, 4096>;
@group(0) @binding(11) var<uniform> v7: array<vec4<f32>, 4096>;

// Output channels per invocation (the 16 named accumulators below) and the subgroup size.
const TM: u32 = 16u;
const SG: u32 = 8u;

// One value for each of the 8 samples of a dispatch.
struct S8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Element i of every sample's window (i < 16384: the launcher keeps samples within a window).
fn gather(i: u32) -> S8 {
    let e = i >> 2u;
    let c = i & 3u;
    return S8(
        vec4<f32>(v0[e][c], v1[e][c], v2[e][c], v3[e][c]),
        vec4<f32>(v4[e][c], v5[e][c], v6[e][c], v7[e][c]));
}

fn mac(acc: S8, w: f32, v: S8) -> S8 {
    let w4 = vec4<f32>(w);
    return S8(fma(w4, v.a, acc.a), fma(w4, v.b, acc.b));
}

// Offsets `row * stride` of rows first .. first + 15, clamped to the last row so that blocks
// past the end load valid memory (their results are never stored).
fn rows16(first: u32, last: u32, stride: u32) -> array<vec4<u32>, 4> {
    let f = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
    let l = vec4<u32>(last);
    return array<vec4<u32>, 4>(min(f, l) * stride, min(f + 4u, l) * stride, min(f + 8u, l) * stride, min(f + 12u, l) * stride);
}

// 16 weights per lane: wt[o[r] + k] for r < 16.
fn load16(o: array<vec4<u32>, 4>, k: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(wt[o[0].x + k], wt[o[0].y + k], wt[o[0].z + k], wt[o[0].w + k]),
        vec4<f32>(wt[o[1].x + k], wt[o[1].y + k], wt[o[1].z + k], wt[o[1].w + k]),
        vec4<f32>(wt[o[2].x + k], wt[o[2].y + k], wt[o[2].z + k], wt[o[2].w + k]),
        vec4<f32>(wt[o[3].x + k], wt[o[3].y + k], wt[o[3].z + k], wt[o[3].w + k]));
}

// dst[base + s * sample_stride] = acc[s] (+ bias[channel]) for the dispatch's samples, when
// the channel exists.
fn put(channel: u32, channels: u32, base: u32, sample_stride: u32, acc: S8) {
    if (channel >= channels) { return; }
    var b = 0.0;
    if (p.flag == 1u) { b = bias[channel]; }
    let v = array<vec4<f32>, 2>(acc.a, acc.b);
    for (var s = 0u; s < p.count; s++) {
        dst[base + s * sample_stride] = v[s / 4u][s % 4u] + b;
    }
}

// The 16 channels' accumulators, updated for one reduction step with weights w (rows r of
// the shuffled batch) and the 8 samples' inputs x.
struct Acc {
    c0: S8, c1: S8, c2: S8, c3: S8, c4: S8, c5: S8, c6: S8, c7: S8,
    c8: S8, c9: S8, c10: S8, c11: S8, c12: S8, c13: S8, c14: S8, c15: S8,
}

fn step(a: ptr<function, Acc>, w: array<vec4<f32>, 4>, j: u32, x: S8) {
    let w0 = subgroupShuffle(w[0], j);
    let w1 = subgroupShuffle(w[1], j);
    let w2 = subgroupShuffle(w[2], j);
    let w3 = subgroupShuffle(w[3], j);
    (*a).c0 = mac((*a).c0, w0.x, x);
    (*a).c1 = mac((*a).c1, w0.y, x);
    (*a).c2 = mac((*a).c2, w0.z, x);
    (*a).c3 = mac((*a).c3, w0.w, x);
    (*a).c4 = mac((*a).c4, w1.x, x);
    (*a).c5 = mac((*a).c5, w1.y, x);
    (*a).c6 = mac((*a).c6, w1.z, x);
    (*a).c7 = mac((*a).c7, w1.w, x);
    (*a).c8 = mac((*a).c8, w2.x, x);
    (*a).c9 = mac((*a).c9, w2.y, x);
    (*a).c10 = mac((*a).c10, w2.z, x);
    (*a).c11 = mac((*a).c11, w2.w, x);
    (*a).c12 = mac((*a).c12, w3.x, x);
    (*a).c13 = mac((*a).c13, w3.y, x);
    (*a).c14 = mac((*a).c14, w3.z, x);
    (*a).c15 = mac((*a).c15, w3.w, x);
}

fn put16(c0: u32, channels: u32, base: u32, channel_stride: u32, sample_stride: u32, a: Acc) {
    put(c0, channels, base, sample_stride, a.c0);
    put(c0 + 1u, channels, base + channel_stride, sample_stride, a.c1);
    put(c0 + 2u, channels, base + 2u * channel_stride, sample_stride, a.c2);
    put(c0 + 3u, channels, base + 3u * channel_stride, sample_stride, a.c3);
    put(c0 + 4u, channels, base + 4u * channel_stride, sample_stride, a.c4);
    put(c0 + 5u, channels, base + 5u * channel_stride, sample_stride, a.c5);
    put(c0 + 6u, channels, base + 6u * channel_stride, sample_stride, a.c6);
    put(c0 + 7u, channels, base + 7u * channel_stride, sample_stride, a.c7);
    put(c0 + 8u, channels, base + 8u * channel_stride, sample_stride, a.c8);
    put(c0 + 9u, channels, base + 9u * channel_stride, sample_stride, a.c9);
    put(c0 + 10u, channels, base + 10u * channel_stride, sample_stride, a.c10);
    put(c0 + 11u, channels, base + 11u * channel_stride, sample_stride, a.c11);
    put(c0 + 12u, channels, base + 12u * channel_stride, sample_stride, a.c12);
    put(c0 + 13u, channels, base + 13u * channel_stride, sample_stride, a.c13);
    put(c0 + 14u, channels, base + 14u * channel_stride, sample_stride, a.c14);
    put(c0 + 15u, channels, base + 15u * channel_stride, sample_stride, a.c15);
}

// The output pixel of a forward lane: workgroup g covers TM output channels from co0 and SG
// pixels. Lanes past the last pixel compute pixel `pixels - 1` and store nothing; they must
// stay for the shuffles.
struct OutPixel {
    pixels: u32,
    co0: u32,
    q: u32,
    pix: u32,
    oh: u32,
    ow: u32,
}

fn out_pixel(g: u32, lane: u32) -> OutPixel {
    let pixels = p.ho * p.wo;
    let groups = (pixels + SG - 1u) / SG;
    let q = (g % groups) * SG + lane;
    let pix = min(q, pixels - 1u);
    let oh = pix / p.wo;
    return OutPixel(pixels, (g / groups) * TM, q, pix, oh, pix - oh * p.wo);
}

// y[n, co, oh, ow] = bias[co] + sum over ci, kh, kw of x[n, ci, ih, iw] * w[co, ci, kh, kw],
// ih = oh*sh - ph + kh*dh. Windows hold x[n]. One workgroup: 16 output channels x 8 output
// pixels (one per lane) x 8 samples. Taps are the outer loops so that the padding test and
// the index are computed once per tap; input channels run in batches of 8, one per lane.
@compute @workgroup_size(SG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let o = out_pixel(wid.y * nwg.x + wid.x, lane);
    if (o.co0 >= p.cout) { return; }
    let taps = p.kh * p.kw;
    let plane = p.h * p.w;
    let wrow = rows16(o.co0, p.cout - 1u, p.cin * taps);
    var a: Acc;
    for (var kh = 0u; kh < p.kh; kh++) {
        // Row and column are shifted by the padding so that they stay non-negative.
        let ihp = o.oh * p.sh + kh * p.dh;
        let row_in = ihp >= p.ph && ihp < p.h + p.ph;
        // Taps over the padding for all 8 pixels are skipped (a third of them on 7x7 inputs).
        if (!subgroupAny(row_in)) { continue; }
        for (var kw = 0u; kw < p.kw; kw++) {
            let iwp = o.ow * p.sw + kw * p.dw;
            let inside = row_in && iwp >= p.pw && iwp < p.w + p.pw;
            if (!subgroupAny(inside)) { continue; }
            let base = select(0u, (ihp - p.ph) * p.w + iwp - p.pw, inside);
            let tap = kh * p.kw + kw;
            for (var ci0 = 0u; ci0 < p.cin; ci0 += SG) {
                let w = load16(wrow, min(ci0 + lane, p.cin - 1u) * taps + tap);
                let batch = min(SG, p.cin - ci0);
                var i = base + ci0 * plane;
                for (var j = 0u; j < batch; j++) {
                    var x = gather(i);
                    if (!inside) { x = S8(); }
                    step(&a, w, j, x);
                    i += plane;
                }
            }
        }
    }
    if (o.q >= o.pixels) { return; }
    put16(o.co0, p.cout, (p.n0 * p.cout + o.co0) * o.pixels + o.pix, o.pixels, p.cout * o.pixels, a);
}

// `forward` for inputs of 4 channels or fewer, whose batches of 8 channels would be mostly
// empty (8x the weight loads per step for one channel): batches run over 8 consecutive steps
// (ci, kh, kw) of the flattened reduction instead, testing the padding at every step.
@compute @workgroup_size(SG)
fn forward_narrow(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let o = out_pixel(wid.y * nwg.x + wid.x, lane);
    if (o.co0 >= p.cout) { return; }
    let steps = p.cin * p.kh * p.kw;
    let plane = p.h * p.w;
    let wrow = rows16(o.co0, p.cout - 1u, steps);
    var a: Acc;
    // (ci, kh, kw) of the current step, advanced by selects: no divisions or branches.
    var ci = 0u;
    var kh = 0u;
    var kw = 0u;
    for (var k0 = 0u; k0 < steps; k0 += SG) {
        let w = load16(wrow, min(k0 + lane, steps - 1u));
        let batch = min(SG, steps - k0);
        for (var j = 0u; j < batch; j++) {
            let ihp = o.oh * p.sh + kh * p.dh;
            let iwp = o.ow * p.sw + kw * p.dw;
            let inside = ihp >= p.ph && ihp < p.h + p.ph && iwp >= p.pw && iwp < p.w + p.pw;
            var x = gather(select(0u, ci * plane + (ihp - p.ph) * p.w + iwp - p.pw, inside));
            if (!inside) { x = S8(); }
            step(&a, w, j, x);
            let row_end = kw + 1u == p.kw;
            let channel_end = row_end && kh + 1u == p.kh;
            kw = select(kw + 1u, 0u, row_end);
            kh = select(select(kh, kh + 1u, row_end), 0u, channel_end);
            ci = select(ci, ci + 1u, channel_end);
        }
    }
    if (o.q >= o.pixels) { return; }
    put16(o.co0, p.cout, (p.n0 * p.cout + o.co0) * o.pixels + o.pix, o.pixels, p.cout * o.pixels, a);
}

// A pixel of a residue class (ih % sh, iw % sw) = (rh, rw): ih = rh + sh*qa, iw = rw + sw*qb
// with qa < ceil(h/sh), qb < ceil(w/sw). Workgroup g takes 8 of them: workgroups run over the
// groups of a class, then the classes, then blocks of channels. Lanes past the class compute
// its last pixels and store nothing.
struct ClassPixel {
    block: u32,
    rh: u32,
    rw: u32,
    qa: u32,
    qb: u32,
    ih: u32,
    iw: u32,
    stored: bool,
}

fn class_pixel(group: u32, lane: u32) -> ClassPixel {
    let ca = (p.h + p.sh - 1u) / p.sh;
    let cb = (p.w + p.sw - 1u) / p.sw;
    let groups = (ca * cb + SG - 1u) / SG;
    let q = (group % groups) * SG + lane;
    var g = group / groups;
    let rw = g % p.sw;
    g /= p.sw;
    let rh = g % p.sh;
    let qa = min(q / cb, ca - 1u);
    let qb = q % cb;
    let ih = rh + p.sh * qa;
    let iw = rw + p.sw * qb;
    return ClassPixel(g / p.sh, rh, rw, qa, qb, ih, iw, q < ca * cb && ih < p.h && iw < p.w);
}

// Whether tap (kh, kw) reaches the class at all ((ih + ph - kh*dh) % sh == 0, the same for
// the whole class, and likewise for columns), whether it lands inside dy for this pixel, and
// the dy offset oh*wo + ow it reads there.
struct Tap {
    reaches: bool,
    inside: bool,
    base: u32,
}

fn class_tap(c: ClassPixel, kh: u32, kw: u32) -> Tap {
    // oh = (ih + ph - kh*dh) / sh. Numerators are shifted by a multiple of the stride that
    // keeps them non-negative (GLSL leaves % and / of negative integers undefined); ohq = oh +
    // qh, so oh >= 0 is ohq >= qh.
    let qh = ((p.kh - 1u) * p.dh) / p.sh + 1u;
    let qw = ((p.kw - 1u) * p.dw) / p.sw + 1u;
    let nh = c.rh + p.ph + p.sh * qh - kh * p.dh;
    let nw = c.rw + p.pw + p.sw * qw - kw * p.dw;
    let ohq = c.qa + nh / p.sh;
    let owq = c.qb + nw / p.sw;
    let inside = ohq >= qh && ohq < p.ho + qh && owq >= qw && owq < p.wo + qw;
    return Tap(nh % p.sh == 0u && nw % p.sw == 0u, inside, select(0u, (ohq - qh) * p.wo + owq - qw, inside));
}

// dx[n, ci, ih, iw] = bias[ci] + sum over co, kh, kw of dy[n, co, oh, ow] * w[co, ci, kh, kw]
// where ih = oh*sh - ph + kh*dh. Windows hold dy[n]. With stride s only taps with
// (ih + ph - kh*dh) % s == 0 reach a pixel, so a workgroup takes 8 pixels of one residue class
// (`class_pixel`): they share their taps, which the loops visit alone. One workgroup:
// 16 input channels x 8 pixels x 8 samples; output channels run in batches of 8.
// (ConvTranspose2d's forward, with its bias.)
@compute @workgroup_size(SG)
fn data_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let c = class_pixel(wid.y * nwg.x + wid.x, lane);
    let ci0 = c.block * TM;
    if (ci0 >= p.cin) { return; }
    let taps = p.kh * p.kw;
    let plane = p.ho * p.wo;
    let wcol = rows16(ci0, p.cin - 1u, taps);
    var a: Acc;
    for (var kh = 0u; kh < p.kh; kh++) {
        for (var kw = 0u; kw < p.kw; kw++) {
            let t = class_tap(c, kh, kw);
            if (!t.reaches || !subgroupAny(t.inside)) { continue; }
            let tap = kh * p.kw + kw;
            for (var co0 = 0u; co0 < p.cout; co0 += SG) {
                let w = load16(wcol, min(co0 + lane, p.cout - 1u) * p.cin * taps + tap);
                let batch = min(SG, p.cout - co0);
                var i = t.base + co0 * plane;
                for (var j = 0u; j < batch; j++) {
                    var x = gather(i);
                    if (!t.inside) { x = S8(); }
                    step(&a, w, j, x);
                    i += plane;
                }
            }
        }
    }
    if (!c.stored) { return; }
    let hw = p.h * p.w;
    put16(ci0, p.cin, (p.n0 * p.cin + ci0) * hw + c.ih * p.w + c.iw, hw, p.cin * hw, a);
}

// `data_grad` for one or two input channels, whose blocks of 16 would be mostly empty: a
// workgroup takes one channel. Each window gather then feeds one FMA per sample, so this is
// bound by the gathers, but does not compute 15 channels that do not exist.
@compute @workgroup_size(SG)
fn data_grad_one(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let c = class_pixel(wid.y * nwg.x + wid.x, lane);
    let ci = c.block;
    if (ci >= p.cin) { return; }
    let taps = p.kh * p.kw;
    let plane = p.ho * p.wo;
    var a: S8;
    for (var kh = 0u; kh < p.kh; kh++) {
        for (var kw = 0u; kw < p.kw; kw++) {
            let t = class_tap(c, kh, kw);
            if (!t.reaches || !subgroupAny(t.inside)) { continue; }
            let tap = ci * taps + kh * p.kw + kw;
            for (var co0 = 0u; co0 < p.cout; co0 += SG) {
                let w = wt[min(co0 + lane, p.cout - 1u) * p.cin * taps + tap];
                let batch = min(SG, p.cout - co0);
                var i = t.base + co0 * plane;
                for (var j = 0u; j < batch; j++) {
                    var x = gather(i);
                    if (!t.inside) { x = S8(); }
                    a = mac(a, subgroupShuffle(w, j), x);
                    i += plane;
                }
            }
        }
    }
    if (!c.stored) { return; }
    let hw = p.h * p.w;
    put(ci, p.cin, (p.n0 * p.cin + ci) * hw + c.ih * p.w + c.iw, p.cin * hw, a);
}
