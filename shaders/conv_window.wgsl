// Conv2d weight gradient for CPU adapters, reading both operands from uniform-buffer windows,
// and the copy that fills those windows. Same semantics as conv.wgsl's `weight_grad`; the
// launcher, src/kernels/conv/window.rs, picks it where it applies. No subgroups: it runs on
// lavapipe and on llvmpipe-GL alike.
//
// llvmpipe turns each storage-buffer load into a loop over the SIMD lanes (~100 FMAs' worth)
// but a uniform-buffer load into an unrolled gather (~4 FMAs), so each sample's x and dy are
// copied (`pack`) into 64 KiB windows that a dispatch binds as uniform buffers: 7 samples' x
// and 7 samples' dy, 14 of the 15 uniform buffers a stage may have.

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
    // weight_grad: 1 adds to dst instead of overwriting it.
    flag: u32,
    // weight_grad: samples in this dispatch's windows; the output rows of each of `chunks`
    // slices; the first slice this dispatch writes (slice s of dst starts at s * cout*cin*kh*kw).
    count: u32,
    rows: u32,
    chunks: u32,
    slice0: u32,
    // pack: elements per sample, tasks, and the windows' layout (see `pack`).
    len: u32,
    tasks: u32,
    stride: u32,
    row: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> x0: array<vec4<f32>, 4096>;
@group(0) @binding(4) var<uniform> x1: array<vec4<f32>, 4096>;
@group(0) @binding(5) var<uniform> x2: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> x3: array<vec4<f32>, 4096>;
@group(0) @binding(7) var<uniform> x4: array<vec4<f32>, 4096>;
@group(0) @binding(8) var<uniform> x5: array<vec4<f32>, 4096>;
@group(0) @binding(9) var<uniform> x6: array<vec4<f32>, 4096>;
@group(0) @binding(10) var<uniform> d0: array<vec4<f32>, 4096>;
@group(0) @binding(11) var<uniform> d1: array<vec4<f32>, 4096>;
@group(0) @binding(12) var<uniform> d2: array<vec4<f32>, 4096>;
@group(0) @binding(13) var<uniform> d3: array<vec4<f32>, 4096>;
@group(0) @binding(14) var<uniform> d4: array<vec4<f32>, 4096>;
@group(0) @binding(15) var<uniform> d5: array<vec4<f32>, 4096>;
@group(0) @binding(16) var<uniform> d6: array<vec4<f32>, 4096>;

const WG: u32 = 64u;

// Sample n's elements i (of `len`, in rows of `row`) to dst[n * stride + pad + r * (row + pad)
// + c] for element (r, c) of the rows: with pad > 0 every row is followed by `pad` zeros (the
// destination starts zeroed and pads are never written), which serve as the row's right
// padding and the next row's left padding, and the first row is preceded by `pad` zeros.
@compute @workgroup_size(WG)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (t >= p.tasks) { return; }
    let n = t / p.len;
    let i = t - n * p.len;
    let r = i / p.row;
    dst[n * p.stride + p.pad + r * (p.row + p.pad) + i - r * p.row] = src[t];
}

// Four elements of one window.
fn gx0(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x0[i.x >> 2u][i.x & 3u], x0[i.y >> 2u][i.y & 3u], x0[i.z >> 2u][i.z & 3u], x0[i.w >> 2u][i.w & 3u]); }
fn gx1(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x1[i.x >> 2u][i.x & 3u], x1[i.y >> 2u][i.y & 3u], x1[i.z >> 2u][i.z & 3u], x1[i.w >> 2u][i.w & 3u]); }
fn gx2(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x2[i.x >> 2u][i.x & 3u], x2[i.y >> 2u][i.y & 3u], x2[i.z >> 2u][i.z & 3u], x2[i.w >> 2u][i.w & 3u]); }
fn gx3(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x3[i.x >> 2u][i.x & 3u], x3[i.y >> 2u][i.y & 3u], x3[i.z >> 2u][i.z & 3u], x3[i.w >> 2u][i.w & 3u]); }
fn gx4(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x4[i.x >> 2u][i.x & 3u], x4[i.y >> 2u][i.y & 3u], x4[i.z >> 2u][i.z & 3u], x4[i.w >> 2u][i.w & 3u]); }
fn gx5(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x5[i.x >> 2u][i.x & 3u], x5[i.y >> 2u][i.y & 3u], x5[i.z >> 2u][i.z & 3u], x5[i.w >> 2u][i.w & 3u]); }
fn gx6(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(x6[i.x >> 2u][i.x & 3u], x6[i.y >> 2u][i.y & 3u], x6[i.z >> 2u][i.z & 3u], x6[i.w >> 2u][i.w & 3u]); }
fn gd0(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d0[i.x >> 2u][i.x & 3u], d0[i.y >> 2u][i.y & 3u], d0[i.z >> 2u][i.z & 3u], d0[i.w >> 2u][i.w & 3u]); }
fn gd1(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d1[i.x >> 2u][i.x & 3u], d1[i.y >> 2u][i.y & 3u], d1[i.z >> 2u][i.z & 3u], d1[i.w >> 2u][i.w & 3u]); }
fn gd2(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d2[i.x >> 2u][i.x & 3u], d2[i.y >> 2u][i.y & 3u], d2[i.z >> 2u][i.z & 3u], d2[i.w >> 2u][i.w & 3u]); }
fn gd3(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d3[i.x >> 2u][i.x & 3u], d3[i.y >> 2u][i.y & 3u], d3[i.z >> 2u][i.z & 3u], d3[i.w >> 2u][i.w & 3u]); }
fn gd4(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d4[i.x >> 2u][i.x & 3u], d4[i.y >> 2u][i.y & 3u], d4[i.z >> 2u][i.z & 3u], d4[i.w >> 2u][i.w & 3u]); }
fn gd5(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d5[i.x >> 2u][i.x & 3u], d5[i.y >> 2u][i.y & 3u], d5[i.z >> 2u][i.z & 3u], d5[i.w >> 2u][i.w & 3u]); }
fn gd6(i: vec4<u32>) -> vec4<f32> { return vec4<f32>(d6[i.x >> 2u][i.x & 3u], d6[i.y >> 2u][i.y & 3u], d6[i.z >> 2u][i.z & 3u], d6[i.w >> 2u][i.w & 3u]); }

struct V16 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

fn add4(a: array<vec4<u32>, 4>, b: u32) -> array<vec4<u32>, 4> {
    return array<vec4<u32>, 4>(a[0] + b, a[1] + b, a[2] + b, a[3] + b);
}

// acc += dy * x for one output row (16 columns in x).
fn mac(acc: V16, dy: f32, x: V16) -> V16 {
    let d = vec4<f32>(dy);
    return V16(fma(d, x.a, acc.a), fma(d, x.b, acc.b), fma(d, x.c, acc.c), fma(d, x.d, acc.d));
}

// Named, not an array: llvmpipe keeps these in registers, arrays indexed in loops in memory.
struct Acc {
    r0: V16, r1: V16, r2: V16, r3: V16, r4: V16, r5: V16, r6: V16, r7: V16,
    r8: V16, r9: V16, r10: V16, r11: V16, r12: V16, r13: V16, r14: V16, r15: V16,
}

fn step(a: ptr<function, Acc>, dy: V16, x: V16) {
    (*a).r0 = mac((*a).r0, dy.a.x, x);
    (*a).r1 = mac((*a).r1, dy.a.y, x);
    (*a).r2 = mac((*a).r2, dy.a.z, x);
    (*a).r3 = mac((*a).r3, dy.a.w, x);
    (*a).r4 = mac((*a).r4, dy.b.x, x);
    (*a).r5 = mac((*a).r5, dy.b.y, x);
    (*a).r6 = mac((*a).r6, dy.b.z, x);
    (*a).r7 = mac((*a).r7, dy.b.w, x);
    (*a).r8 = mac((*a).r8, dy.c.x, x);
    (*a).r9 = mac((*a).r9, dy.c.y, x);
    (*a).r10 = mac((*a).r10, dy.c.z, x);
    (*a).r11 = mac((*a).r11, dy.c.w, x);
    (*a).r12 = mac((*a).r12, dy.d.x, x);
    (*a).r13 = mac((*a).r13, dy.d.y, x);
    (*a).r14 = mac((*a).r14, dy.d.z, x);
    (*a).r15 = mac((*a).r15, dy.d.w, x);
}

// Row co of the output block: columns q0 .. q0 + 15 that exist.
fn put(co: u32, q0: u32, cols: u32, base: u32, v: V16) {
    if (co >= p.cout) { return; }
    let a = array<vec4<f32>, 4>(v.a, v.b, v.c, v.d);
    for (var l = 0u; l < 16u && q0 + l < cols; l++) {
        let i = base + co * cols + q0 + l;
        var s = a[l / 4u][l % 4u];
        if (p.flag == 1u) { s += dst[i]; }
        dst[i] = s;
    }
}

fn vec16(first: u32) -> array<vec4<u32>, 4> {
    let f = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
    return array<vec4<u32>, 4>(f, f + 4u, f + 8u, f + 12u);
}

// Columns q = (ci, kh, kw) of the weight-gradient GEMM, clamped to the last of `cols`: the
// x-window offset ci*h*wp + kw*dw of (oh, ow) = (0, 0) without its row, and kh*dh.
fn column_offset(q: vec4<u32>, cols: u32, wp: u32) -> vec4<u32> {
    let c = min(q, vec4<u32>(cols - 1u));
    let taps = p.kh * p.kw;
    let ci = c / taps;
    let kw = (c - ci * taps) % vec4<u32>(p.kw);
    return ci * (p.h * wp) + kw * p.dw;
}

fn row_offset(q: vec4<u32>, cols: u32) -> vec4<u32> {
    let c = min(q, vec4<u32>(cols - 1u));
    let taps = p.kh * p.kw;
    return ((c % vec4<u32>(taps)) / vec4<u32>(p.kw)) * p.dh;
}

// Offsets c*plane of channels first .. first + 3, clamped to the last.
fn channel_offset(first: u32, plane: u32) -> vec4<u32> {
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.cout - 1u)) * plane;
}

// Rows shifted by ph: inside x when ph <= row < h + ph.
fn row_inside(r: vec4<u32>) -> vec4<bool> {
    return (r >= vec4<u32>(p.ph)) & (r < vec4<u32>(p.h + p.ph));
}

struct Row {
    base: array<vec4<u32>, 4>,
    inside: array<vec4<bool>, 4>,
}

// Row ih + ph = oh*sh + kh*dh of each column, whether it is inside x, and the window offset
// of (oh, ow = 0) (0 outside).
fn row(oh: u32, coff: array<vec4<u32>, 4>, hoff: array<vec4<u32>, 4>, wp: u32) -> Row {
    let ihp = oh * p.sh;
    let inside = array<vec4<bool>, 4>(row_inside(ihp + hoff[0]), row_inside(ihp + hoff[1]), row_inside(ihp + hoff[2]), row_inside(ihp + hoff[3]));
    let base = array<vec4<u32>, 4>(
        select(vec4<u32>(0u), coff[0] + (ihp + hoff[0] - p.ph) * wp, inside[0]),
        select(vec4<u32>(0u), coff[1] + (ihp + hoff[1] - p.ph) * wp, inside[1]),
        select(vec4<u32>(0u), coff[2] + (ihp + hoff[2] - p.ph) * wp, inside[2]),
        select(vec4<u32>(0u), coff[3] + (ihp + hoff[3] - p.ph) * wp, inside[3]));
    return Row(base, inside);
}

fn masked(x: V16, inside: array<vec4<bool>, 4>) -> V16 {
    let z = vec4<f32>(0.0);
    return V16(select(z, x.a, inside[0]), select(z, x.b, inside[1]), select(z, x.c, inside[2]), select(z, x.d, inside[3]));
}

// dw[co, ci, kh, kw] (+)= sum over this dispatch's samples and the output rows of one slice,
// over oh and ow, of dy[n, co, oh, ow] * x[n, ci, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw].
// As a GEMM: rows co, columns q = (ci, kh, kw) flattened. One invocation: 16 rows x 16
// consecutive columns; a workgroup's lanes share the rows, so their dy loads are uniform.
// x windows are packed with `pad` = pw zero columns per row, so columns need no test; rows
// are tested once per output row. dy windows are packed plainly.
@compute @workgroup_size(8)
fn weight_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    var g = wid.y * nwg.x + wid.x;
    let taps = p.kh * p.kw;
    let cols = p.cin * taps;
    let qgroups = (cols + 127u) / 128u;
    let q0 = ((g % qgroups) * 8u + lid.x) * 16u;
    g /= qgroups;
    let cob = (p.cout + 15u) / 16u;
    let co0 = (g % cob) * 16u;
    let chunk = g / cob;
    if (chunk >= p.chunks) { return; }
    let row0 = chunk * p.rows;
    let row1 = min(row0 + p.rows, p.ho);

    // Per column (clamped to the last, whose results are not stored): the window offset of
    // its channel and kw*dw, and its row offset kh*dh.
    let wp = p.w + p.pw;
    let c = vec16(q0);
    let coff = array<vec4<u32>, 4>(column_offset(c[0], cols, wp), column_offset(c[1], cols, wp), column_offset(c[2], cols, wp), column_offset(c[3], cols, wp));
    let hoff = array<vec4<u32>, 4>(row_offset(c[0], cols), row_offset(c[1], cols), row_offset(c[2], cols), row_offset(c[3], cols));
    let plane = p.ho * p.wo;
    let dyoff = array<vec4<u32>, 4>(channel_offset(co0, plane), channel_offset(co0 + 4u, plane), channel_offset(co0 + 8u, plane), channel_offset(co0 + 12u, plane));

    // One copy of the loops per sample window: a binding cannot be chosen by index, and a
    // switch inside the pixel loop ran this kernel 2.8x slower (lavapipe, DCGAN gen.1).
    var a: Acc;
    for (var s = 0u; s < p.count; s++) {
        switch s {
            case 0u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd0(di[0]), gd0(di[1]), gd0(di[2]), gd0(di[3])), masked(V16(gx0(xi[0]), gx0(xi[1]), gx0(xi[2]), gx0(xi[3])), r.inside));
                    }
                }
            }
            case 1u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd1(di[0]), gd1(di[1]), gd1(di[2]), gd1(di[3])), masked(V16(gx1(xi[0]), gx1(xi[1]), gx1(xi[2]), gx1(xi[3])), r.inside));
                    }
                }
            }
            case 2u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd2(di[0]), gd2(di[1]), gd2(di[2]), gd2(di[3])), masked(V16(gx2(xi[0]), gx2(xi[1]), gx2(xi[2]), gx2(xi[3])), r.inside));
                    }
                }
            }
            case 3u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd3(di[0]), gd3(di[1]), gd3(di[2]), gd3(di[3])), masked(V16(gx3(xi[0]), gx3(xi[1]), gx3(xi[2]), gx3(xi[3])), r.inside));
                    }
                }
            }
            case 4u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd4(di[0]), gd4(di[1]), gd4(di[2]), gd4(di[3])), masked(V16(gx4(xi[0]), gx4(xi[1]), gx4(xi[2]), gx4(xi[3])), r.inside));
                    }
                }
            }
            case 5u: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd5(di[0]), gd5(di[1]), gd5(di[2]), gd5(di[3])), masked(V16(gx5(xi[0]), gx5(xi[1]), gx5(xi[2]), gx5(xi[3])), r.inside));
                    }
                }
            }
            default: {
                for (var oh = row0; oh < row1; oh++) {
                    let r = row(oh, coff, hoff, wp);
                    let d = add4(dyoff, oh * p.wo);
                    for (var ow = 0u; ow < p.wo; ow++) {
                        let xi = add4(r.base, ow * p.sw);
                        let di = add4(d, ow);
                        step(&a, V16(gd6(di[0]), gd6(di[1]), gd6(di[2]), gd6(di[3])), masked(V16(gx6(xi[0]), gx6(xi[1]), gx6(xi[2]), gx6(xi[3])), r.inside));
                    }
                }
            }
        }
    }
    let out = (p.slice0 + chunk) * p.cout * cols;
    put(co0, q0, cols, out, a.r0);
    put(co0 + 1u, q0, cols, out, a.r1);
    put(co0 + 2u, q0, cols, out, a.r2);
    put(co0 + 3u, q0, cols, out, a.r3);
    put(co0 + 4u, q0, cols, out, a.r4);
    put(co0 + 5u, q0, cols, out, a.r5);
    put(co0 + 6u, q0, cols, out, a.r6);
    put(co0 + 7u, q0, cols, out, a.r7);
    put(co0 + 8u, q0, cols, out, a.r8);
    put(co0 + 9u, q0, cols, out, a.r9);
    put(co0 + 10u, q0, cols, out, a.r10);
    put(co0 + 11u, q0, cols, out, a.r11);
    put(co0 + 12u, q0, cols, out, a.r12);
    put(co0 + 13u, q0, cols, out, a.r13);
    put(co0 + 14u, q0, cols, out, a.r14);
    put(co0 + 15u, q0, cols, out, a.r15);
}
