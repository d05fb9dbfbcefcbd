// Conv2d as an implicit GEMM over NCHW tensors, PyTorch semantics, weight [Cout, Cin, kh, kw].
// Every entry speaks in conv2d's terms: x [n, cin, h, w] -> y [n, cout, ho, wo] with
// ih = oh*sh - ph + kh*dh. ConvTranspose2d is the same three GEMMs with the roles swapped
// (its forward is `data_grad`, its data gradient is `forward`, its weight gradient is
// `weight_grad` with x and dy exchanged), so the launcher reuses these entries.
//
// Register blocking, no workgroup memory. On CPU adapters (lavapipe, llvmpipe) invocations are
// SIMD lanes, barriers are expensive and every storage-buffer load is a loop over the lanes,
// costing far more than an FMA. So each invocation keeps an 8x8 block of outputs in registers
// (16 vec4 accumulators) and loads 16 values per 64 FMAs; 4x4 blocks ran at half the speed.
// Blocks that hang over an edge compute with clamped indices and store only what exists.
//
// llvmpipe ends every invocation's loops, silently, after 65,535 iterations summed over all its
// loops. The launcher splits the channel sums of forward/data_grad into dispatches over ranges
// of channels (c_begin..c_end, the later ones adding to dst), and the long sums of weight_grad
// and bias_grad into slices whose partial sums `sum_partials` adds up.

struct Params {
    n: i32,
    cin: i32,
    cout: i32,
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
    // forward/data_grad: bit 1 adds the bias, bit 2 adds to the output (ADD_BIAS, ACCUMULATE);
    // weight_grad/sum_partials: 1 adds to the output.
    flag: i32,
    // Invocations that have a block to compute; the grid rounds up past it.
    tasks: u32,
    // Split reductions (weight_grad, bias_grad): each of `chunks` slices covers `rows` rows
    // (weight_grad: of n*ho, within one of `nseg` column segments `seg` wide; bias_grad:
    // `rows` elements of n*ho*wo) and writes its partial sums to slice `chunk` of dst.
    rows: i32,
    seg: i32,
    nseg: i32,
    chunks: i32,
    // forward/data_grad: the channels this dispatch sums (input channels forward, output
    // channels data_grad).
    c_begin: i32,
    c_end: i32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const WG: u32 = 64u;
// Channels and pixels per invocation; the launcher's grids assume these.
const CB: i32 = 8;
const PX: i32 = 8;
const LANES: vec4<i32> = vec4<i32>(0, 1, 2, 3);
const ADD_BIAS: i32 = 1;
const ACCUMULATE: i32 = 2;

fn blocks(size: i32, block: i32) -> i32 {
    return (size + block - 1) / block;
}

// Offsets of channels c0..c0+7 from c0, clamped to the last channel so that a block past the
// end reads valid memory (its results are never stored).
fn channel_offsets(c0: i32, count: i32, stride: i32) -> array<i32, 8> {
    var o: array<i32, 8>;
    for (var j = 0; j < CB; j++) {
        o[j] = (min(c0 + j, count - 1) - c0) * stride;
    }
    return o;
}

// The first `count` of 8 values (lo, then hi) to dst[base], dst[base + stride], ..., added
// to what is there for the later dispatches of a channel-sliced sum.
fn store8(base: i32, stride: i32, count: i32, lo: vec4<f32>, hi: vec4<f32>) {
    let add = (p.flag & ACCUMULATE) != 0;
    for (var l = 0; l < 4; l++) {
        let i = base + l * stride;
        let k = base + (l + 4) * stride;
        if (l < count) { dst[i] = select(lo[l], lo[l] + dst[i], add); }
        if (l + 4 < count) { dst[k] = select(hi[l], hi[l] + dst[k], add); }
    }
}

// y[n, co, oh, ow] = bias[co] + sum over ci, kh, kw of x[n, ci, ih, iw] * w[co, ci, kh, kw].
// One invocation: 8 output channels x 8 neighbouring columns of one output row, in acc[2j]
// (columns 0-3 of channel j) and acc[2j + 1] (columns 4-7). The channel sum is innermost so
// that padding masks are computed once per tap, not once per FMA.
// src = x, wt = w, bias, dst = y.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= p.tasks) { return; }
    var r = i32(t);
    let owb = blocks(p.wo, PX);
    let ow0 = (r % owb) * PX;
    r = r / owb;
    let oh = r % p.ho;
    r = r / p.ho;
    let cob = blocks(p.cout, CB);
    let co0 = (r % cob) * CB;
    let n = r / cob;

    let taps = p.kh * p.kw;
    let hw = p.h * p.w;
    let wrow = p.cin * taps;
    let wo = channel_offsets(co0, p.cout, wrow);
    var acc: array<vec4<f32>, 16>;
    for (var kh = 0; kh < p.kh; kh++) {
        let ih = oh * p.sh - p.ph + kh * p.dh;
        if (ih < 0 || ih >= p.h) { continue; }
        for (var kw = 0; kw < p.kw; kw++) {
            let iw_lo = (ow0 + LANES) * p.sw - p.pw + kw * p.dw;
            let iw_hi = iw_lo + 4 * p.sw;
            let in_lo = (iw_lo >= vec4<i32>(0)) & (iw_lo < vec4<i32>(p.w));
            let in_hi = (iw_hi >= vec4<i32>(0)) & (iw_hi < vec4<i32>(p.w));
            let c_lo = clamp(iw_lo, vec4<i32>(0), vec4<i32>(p.w - 1));
            let c_hi = clamp(iw_hi, vec4<i32>(0), vec4<i32>(p.w - 1));
            var xi = ((n * p.cin + p.c_begin) * p.h + ih) * p.w;
            var wi = co0 * wrow + p.c_begin * taps + kh * p.kw + kw;
            for (var ci = p.c_begin; ci < p.c_end; ci++) {
                let lo = select(vec4<f32>(0.0), vec4<f32>(src[xi + c_lo.x], src[xi + c_lo.y], src[xi + c_lo.z], src[xi + c_lo.w]), in_lo);
                let hi = select(vec4<f32>(0.0), vec4<f32>(src[xi + c_hi.x], src[xi + c_hi.y], src[xi + c_hi.z], src[xi + c_hi.w]), in_hi);
                for (var j = 0; j < CB; j++) {
                    let wj = wt[wi + wo[j]];
                    acc[2 * j] += wj * lo;
                    acc[2 * j + 1] += wj * hi;
                }
                xi += hw;
                wi += taps;
            }
        }
    }
    for (var j = 0; j < CB; j++) {
        let co = co0 + j;
        if (co >= p.cout) { break; }
        var b = 0.0;
        if ((p.flag & ADD_BIAS) != 0) { b = bias[co]; }
        let yi = ((n * p.cout + co) * p.ho + oh) * p.wo + ow0;
        store8(yi, 1, p.wo - ow0, acc[2 * j] + b, acc[2 * j + 1] + b);
    }
}

// dx[n, ci, ih, iw] = bias[ci] + sum over co, kh, kw of dy[n, co, oh, ow] * w[co, ci, kh, kw]
// where ih = oh*sh - ph + kh*dh. With stride s only taps with (ih + ph - kh*dh) % s == 0 reach
// a pixel, so an invocation takes 8 input channels x 8 columns of one residue class mod sw
// (iw = rw + sw*j): all eight share the same valid taps and read 8 adjacent dy values. Residues
// of rows and columns are slow grid dimensions so that neighbouring lanes branch alike.
// src = dy, wt = w, bias (ConvTranspose2d's), dst = dx.
@compute @workgroup_size(WG)
fn data_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= p.tasks) { return; }
    var r = i32(t);
    let wcls = blocks(p.w, p.sw);
    let jb = blocks(wcls, PX);
    let j0 = (r % jb) * PX;
    r = r / jb;
    let hcls = blocks(p.h, p.sh);
    let ihq = r % hcls;
    r = r / hcls;
    let rw = r % p.sw;
    r = r / p.sw;
    let rh = r % p.sh;
    r = r / p.sh;
    let cib = blocks(p.cin, CB);
    let ci0 = (r % cib) * CB;
    let n = r / cib;
    let ih = rh + p.sh * ihq;
    if (ih >= p.h) { return; }

    let taps = p.kh * p.kw;
    let howo = p.ho * p.wo;
    let wrow = p.cin * taps;
    let wo = channel_offsets(ci0, p.cin, taps);
    // GLSL leaves % and / of negative integers undefined, so column numerators are shifted by
    // a multiple of the stride that makes them non-negative.
    let shift_q = (p.kw - 1) * p.dw / p.sw + 1;
    let shift = p.sw * shift_q;
    var acc: array<vec4<f32>, 16>;
    for (var kh = 0; kh < p.kh; kh++) {
        let num = ih + p.ph - kh * p.dh;
        if (num < 0) { continue; }
        if (num % p.sh != 0) { continue; }
        let oh = num / p.sh;
        if (oh >= p.ho) { continue; }
        for (var kw = 0; kw < p.kw; kw++) {
            let numw = rw + p.pw - kw * p.dw + shift;
            if (numw % p.sw != 0) { continue; }
            let ow_lo = numw / p.sw - shift_q + j0 + LANES;
            let ow_hi = ow_lo + 4;
            let in_lo = (ow_lo >= vec4<i32>(0)) & (ow_lo < vec4<i32>(p.wo));
            let in_hi = (ow_hi >= vec4<i32>(0)) & (ow_hi < vec4<i32>(p.wo));
            let c_lo = clamp(ow_lo, vec4<i32>(0), vec4<i32>(p.wo - 1));
            let c_hi = clamp(ow_hi, vec4<i32>(0), vec4<i32>(p.wo - 1));
            var di = ((n * p.cout + p.c_begin) * p.ho + oh) * p.wo;
            var wi = p.c_begin * wrow + ci0 * taps + kh * p.kw + kw;
            for (var co = p.c_begin; co < p.c_end; co++) {
                let lo = select(vec4<f32>(0.0), vec4<f32>(src[di + c_lo.x], src[di + c_lo.y], src[di + c_lo.z], src[di + c_lo.w]), in_lo);
                let hi = select(vec4<f32>(0.0), vec4<f32>(src[di + c_hi.x], src[di + c_hi.y], src[di + c_hi.z], src[di + c_hi.w]), in_hi);
                for (var j = 0; j < CB; j++) {
                    let wj = wt[wi + wo[j]];
                    acc[2 * j] += wj * lo;
                    acc[2 * j + 1] += wj * hi;
                }
                di += howo;
                wi += wrow;
            }
        }
    }
    // Columns of residue class rw: iw = rw + sw*j for j < ceil((w - rw) / sw).
    let count = blocks(p.w - rw, p.sw) - j0;
    for (var j = 0; j < CB; j++) {
        let ci = ci0 + j;
        if (ci >= p.cin) { break; }
        var b = 0.0;
        if ((p.flag & ADD_BIAS) != 0) { b = bias[ci]; }
        let xi = ((n * p.cin + ci) * p.h + ih) * p.w + rw + p.sw * j0;
        store8(xi, p.sw, count, acc[2 * j] + b, acc[2 * j + 1] + b);
    }
}

// First index i in [0, count) with 0 <= i*s - pad + k*d < size, and one past the last.
fn valid_range(k: i32, s: i32, pad: i32, d: i32, size: i32, count: i32) -> vec2<i32> {
    // Numerators clamped at 0 keep / away from negative operands (undefined in GLSL).
    let lo_num = pad - k * d;
    let hi_num = size - 1 + pad - k * d;
    let lo = (max(lo_num, 0) + s - 1) / s;
    let hi = select(0, min(count, max(hi_num, 0) / s + 1), hi_num >= 0);
    return vec2<i32>(lo, max(lo, hi));
}

// dw[co, ci, kh, kw] (+)= sum over n, oh, ow of dy[n, co, oh, ow] * x[n, ci, ih, iw].
// As a GEMM: rows co, columns q = (ci, kh, kw) flattened, summed over pixels. One invocation:
// 8 rows x 8 consecutive columns, acc[2j] holding columns 0-3 of row j and acc[2j + 1]
// columns 4-7. Blocking the flattened columns, not input channels, keeps layers with one or
// three input channels (a discriminator's first layer) as busy as wide ones; each column
// masks its own padding. Pixels run over the union of the columns' valid ranges. Column blocks
// are the fastest grid dimension, so neighbouring lanes run similar trip counts.
// src = x, wt = dy, dst = dw, or the partial sums of slice `chunk` when chunks > 1.
@compute @workgroup_size(WG)
fn weight_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= p.tasks) { return; }
    let taps = p.kh * p.kw;
    let cols = p.cin * taps;
    var r = i32(t);
    let qb = blocks(cols, PX);
    let q0 = (r % qb) * PX;
    r = r / qb;
    let cob = blocks(p.cout, CB);
    let co0 = (r % cob) * CB;
    let chunk = r / cob;
    let seg = chunk % p.nseg;
    let row0 = (chunk / p.nseg) * p.rows;
    let row1 = min(row0 + p.rows, p.n * p.ho);

    // Per column l: x offset of (n, oh, ow) = (0, 0, 0), row and column offsets of its tap.
    var xoff: array<i32, 8>;
    var hoff: array<i32, 8>;
    var woff: array<i32, 8>;
    var span = vec4<i32>(p.ho, 0, p.wo, 0);
    for (var l = 0; l < PX; l++) {
        let q = min(q0 + l, cols - 1);
        let ci = q / taps;
        let kh = (q % taps) / p.kw;
        let kw = q % p.kw;
        hoff[l] = kh * p.dh - p.ph;
        woff[l] = kw * p.dw - p.pw;
        xoff[l] = ci * p.h * p.w + hoff[l] * p.w + woff[l];
        let rr = valid_range(kh, p.sh, p.ph, p.dh, p.h, p.ho);
        let cc = valid_range(kw, p.sw, p.pw, p.dw, p.w, p.wo);
        span = vec4<i32>(min(span.x, rr.x), max(span.y, rr.y), min(span.z, cc.x), max(span.w, cc.y));
    }
    let x_lo = vec4<i32>(xoff[0], xoff[1], xoff[2], xoff[3]);
    let x_hi = vec4<i32>(xoff[4], xoff[5], xoff[6], xoff[7]);
    let h_lo = vec4<i32>(hoff[0], hoff[1], hoff[2], hoff[3]);
    let h_hi = vec4<i32>(hoff[4], hoff[5], hoff[6], hoff[7]);
    let w_lo = vec4<i32>(woff[0], woff[1], woff[2], woff[3]);
    let w_hi = vec4<i32>(woff[4], woff[5], woff[6], woff[7]);
    let col0 = max(span.z, seg * p.seg);
    let col1 = min(span.w, (seg + 1) * p.seg);
    let dyo = channel_offsets(co0, p.cout, p.ho * p.wo);
    var acc: array<vec4<f32>, 16>;
    for (var row = row0; row < row1; row++) {
        let n = row / p.ho;
        let oh = row - n * p.ho;
        if (oh < span.x || oh >= span.y) { continue; }
        let ih_lo = oh * p.sh + h_lo;
        let ih_hi = oh * p.sh + h_hi;
        let rin_lo = (ih_lo >= vec4<i32>(0)) & (ih_lo < vec4<i32>(p.h));
        let rin_hi = (ih_hi >= vec4<i32>(0)) & (ih_hi < vec4<i32>(p.h));
        let xrow = (n * p.cin * p.h + oh * p.sh) * p.w;
        let drow = ((n * p.cout + co0) * p.ho + oh) * p.wo;
        for (var ow = col0; ow < col1; ow++) {
            let iw_lo = ow * p.sw + w_lo;
            let iw_hi = ow * p.sw + w_hi;
            let in_lo = rin_lo & (iw_lo >= vec4<i32>(0)) & (iw_lo < vec4<i32>(p.w));
            let in_hi = rin_hi & (iw_hi >= vec4<i32>(0)) & (iw_hi < vec4<i32>(p.w));
            // Outside the image the index may leave the buffer: read element 0 instead.
            let i_lo = select(vec4<i32>(0), xrow + ow * p.sw + x_lo, in_lo);
            let i_hi = select(vec4<i32>(0), xrow + ow * p.sw + x_hi, in_hi);
            let lo = select(vec4<f32>(0.0), vec4<f32>(src[i_lo.x], src[i_lo.y], src[i_lo.z], src[i_lo.w]), in_lo);
            let hi = select(vec4<f32>(0.0), vec4<f32>(src[i_hi.x], src[i_hi.y], src[i_hi.z], src[i_hi.w]), in_hi);
            let di = drow + ow;
            for (var j = 0; j < CB; j++) {
                let d = wt[di + dyo[j]];
                acc[2 * j] += d * lo;
                acc[2 * j + 1] += d * hi;
            }
        }
    }
    let slice = chunk * p.cout * cols;
    for (var j = 0; j < CB; j++) {
        let co = co0 + j;
        if (co >= p.cout) { break; }
        for (var l = 0; l < PX; l++) {
            if (q0 + l >= cols) { break; }
            let i = slice + co * cols + q0 + l;
            var v = acc[2 * j + l / 4][l % 4];
            if (p.flag == 1) { v += dst[i]; }
            dst[i] = v;
        }
    }
}

// dst[g * tasks + i] (+)= sum over the slices c of group g of src[c * tasks + i]: a level of
// the second pass of a split reduction, over `chunks` slices in groups of `rows` (the
// launcher adds more groups than one in further levels; only the last may add to dst).
// Runs of 64 slices are summed first, then the runs, so that thousands of partial sums lose
// no more than a sum of about a hundred would.
@compute @workgroup_size(WG)
fn sum_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    let chunks = u32(p.chunks);
    let size = u32(p.rows);
    let group = t / p.tasks;
    if (group >= (chunks + size - 1u) / size) { return; }
    let i = t - group * p.tasks;
    let last = min((group + 1u) * size, chunks);
    var total = 0.0;
    for (var c0 = group * size; c0 < last; c0 += 64u) {
        var run = 0.0;
        for (var c = c0; c < min(c0 + 64u, last); c++) {
            run += src[c * p.tasks + i];
        }
        total += run;
    }
    if (p.flag == 1) { total += dst[t]; }
    dst[t] = total;
}

// Partial sums of db[c] = sum over n, oh, ow of dy[n, c, oh, ow]. One workgroup per channel
// and slice of `rows` elements; lane l sums elements l, l + 64, ... of the slice (neighbouring
// lanes read neighbouring addresses) and writes its own partial sum to slice
// (slice * 64 + l) of dst, which `sum_partials` adds up: no running sum grows over more than
// rows/64 terms, and no barriers, which CPU adapters pay dearly for.
@compute @workgroup_size(WG)
fn bias_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = i32(wid.y * nwg.x + wid.x);
    if (g >= p.cout * p.chunks / i32(WG)) { return; }
    let c = g % p.cout;
    let slice = g / p.cout;
    let howo = p.ho * p.wo;
    let begin = slice * p.rows;
    let end = min(begin + p.rows, p.n * howo);
    var s = 0.0;
    for (var i = begin + i32(lid.x); i < end; i += i32(WG)) {
        let n = i / howo;
        s += src[(n * p.cout + c) * howo + (i - n * howo)];
    }
    dst[(slice * i32(WG) + i32(lid.x)) * p.cout + c] = s;
}

// #include "grid.wgsl"
