// GEMM for CPU adapters (lavapipe) whose per-invocation operand comes from uniform buffers:
// the matmul family's `Windowed` variant. Same semantics as matmul.wgsl: C[M,N] = op(A)·op(B)
// (+ bias[N]) (+ C when accumulating), transposes as the strides sa_i/sa_k/sb_k/sb_j. The
// launcher, src/kernels/matmul.rs, picks it where it applies and matmul.wgsl's `blocked`
// elsewhere.
//
// Why this shape: the same costs as conv_window_subgroup.wgsl (see its header and
// docs/BENCHMARKS.md). On llvmpipe a storage-buffer load costs ~100 FMAs per lane, a
// uniform-buffer gather ~4 and a subgroupShuffle ~1, so:
// - `pack` copies op(A) into 64 KiB uniform-buffer windows, 8 per (block of 64 rows, chunk of
//   up to 2048 steps of k): window s holds op(A)[row0 + 8l + s, k0 + kk] at index kk*8 + l, so
//   one load from each window gives lane l its 8 rows 8l..8l+7 at step kk (`gather`).
//   `pack16`/`product16` do the same with 16 rows per lane (blocks of 128 rows, chunks of up
//   to 1024 steps, two gathers per step), so each op(B) value loaded feeds twice the FMAs.
// - op(B) is loaded from storage once per subgroup of 8: lane l loads step l of the next 8
//   for 16 columns, and subgroupShuffle hands the values to every lane.
// - 16 columns x 8 rows per lane accumulate in named struct fields (llvmpipe keeps those in
//   registers; arrays indexed in loops go through memory).
// One step costs 8 gathers, 16 shuffles, 2 storage loads and 128 FMAs per lane (16 gathers
// and 256 FMAs with 16 rows). A product
// dispatch covers one row block and one k-chunk (about 2,300 loop iterations per invocation,
// far below llvmpipe's 65,535); chunks after the first add to C.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    sa_i: u32,
    sa_k: u32,
    sb_k: u32,
    sb_j: u32,
    // product: for this dispatch (the first chunk's flags; later chunks only accumulate).
    has_bias: u32,
    accumulate: u32,
    // matmul.wgsl's slice start, unused here: chunks split k instead (row0, k0, steps).
    k_begin: u32,
    // product: the row block's first row, the chunk's first step and its length.
    row0: u32,
    k0: u32,
    steps: u32,
    // pack: steps per chunk, floats between windows, chunks per row block, elements to write.
    kc: u32,
    stride: u32,
    chunks: u32,
    tasks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// pack: A; product: B.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
// pack: the windows; product: C.
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<uniform> v0: array<vec4<f32>, 4096>;
@group(0) @binding(5) var<uniform> v1: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> v2: array<vec4<f32>, 4096>;
@group(0) @binding(7) var<uniform> v3: array<vec4<f32>, 4096>;
@group(0) @binding(8) var<uniform> v4: array<vec4<f32>, 4096>;
@group(0) @binding(9) var<uniform> v5: array<vec4<f32>, 4096>;
@group(0) @binding(10) var<uniform> v6: array<vec4<f32>, 4096>;
@group(0) @binding(11) var<uniform> v7: array<vec4<f32>, 4096>;

// Columns per workgroup (the 16 named accumulators below), the subgroup size, and rows per
// row block (8 per lane).
const TN: u32 = 16u;
const SG: u32 = 8u;
const ROWS: u32 = 64u;
const PACK_WG: u32 = 64u;

// Element t of the windows for r rows per lane (8 or 16), in window order (row block,
// chunk, s), each window kc*r long and `stride` apart: window s holds row 8r*block + r*l +
// 8h + s at index kk*r + (r/8)*l + h, h < r/8, so lane l's gathers at one step are adjacent.
// The padding between windows stays zero from allocation.
fn pack_rows(t: u32, r: u32) {
    if (t >= p.tasks) { return; }
    let len = p.kc * r;
    let win = t / len;
    let e = t - win * len;
    let kk = e / r;
    let q = e % r;
    let l = q / (r / SG);
    let h = q % (r / SG);
    let s = win % SG;
    let block = win / SG;
    let chunk = block % p.chunks;
    let row = (block / p.chunks) * (SG * r) + l * r + h * SG + s;
    let k = chunk * p.kc + kk;
    var v = 0.0;
    if (row < p.m && k < p.k) { v = src[row * p.sa_i + k * p.sa_k]; }
    dst[win * p.stride + e] = v;
}

@compute @workgroup_size(PACK_WG)
fn pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    pack_rows((wid.y * nwg.x + wid.x) * PACK_WG + lid.x, SG);
}

@compute @workgroup_size(PACK_WG)
fn pack16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    pack_rows((wid.y * nwg.x + wid.x) * PACK_WG + lid.x, 2u * SG);
}

// One value for each of a lane's 8 rows.
struct S8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Element i of every window (i < 16384: a chunk is at most 2048 steps of 8 rows per lane or
// 1024 of 16).
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

// Offsets `column * stride` of columns first .. first + 15, clamped to the last column so
// that blocks past the end load valid memory (their results are never stored).
fn cols16(first: u32, last: u32, stride: u32) -> array<vec4<u32>, 4> {
    let f = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
    let l = vec4<u32>(last);
    return array<vec4<u32>, 4>(min(f, l) * stride, min(f + 4u, l) * stride, min(f + 8u, l) * stride, min(f + 12u, l) * stride);
}

// 16 values of op(B) per lane: src[o[r] + k] for r < 16.
fn load16(o: array<vec4<u32>, 4>, k: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(src[o[0].x + k], src[o[0].y + k], src[o[0].z + k], src[o[0].w + k]),
        vec4<f32>(src[o[1].x + k], src[o[1].y + k], src[o[1].z + k], src[o[1].w + k]),
        vec4<f32>(src[o[2].x + k], src[o[2].y + k], src[o[2].z + k], src[o[2].w + k]),
        vec4<f32>(src[o[3].x + k], src[o[3].y + k], src[o[3].z + k], src[o[3].w + k]));
}

// C[o] (+)= x where `ok`.
fn put1(o: u32, ok: bool, x: f32) {
    if (ok) {
        var y = x;
        if (p.accumulate != 0u) { y += dst[o]; }
        dst[o] = y;
    }
}

// C[row + s, j] (+)= acc[s] (+ bias[j]) for the lane's rows that exist, when column j does.
// Unrolled: a loop would index the values through memory.
fn put(j: u32, row: u32, acc: S8) {
    if (j >= p.n) { return; }
    var b = 0.0;
    if (p.has_bias != 0u) { b = bias[j]; }
    let o = row * p.n + j;
    put1(o, row < p.m, acc.a.x + b);
    put1(o + p.n, row + 1u < p.m, acc.a.y + b);
    put1(o + 2u * p.n, row + 2u < p.m, acc.a.z + b);
    put1(o + 3u * p.n, row + 3u < p.m, acc.a.w + b);
    put1(o + 4u * p.n, row + 4u < p.m, acc.b.x + b);
    put1(o + 5u * p.n, row + 5u < p.m, acc.b.y + b);
    put1(o + 6u * p.n, row + 6u < p.m, acc.b.z + b);
    put1(o + 7u * p.n, row + 7u < p.m, acc.b.w + b);
}

// The 16 columns' accumulators, updated for one step with op(B) values w (shuffled from
// lane j) and the lane's 8 rows of op(A) x.
struct Acc {
    c0: S8, c1: S8, c2: S8, c3: S8, c4: S8, c5: S8, c6: S8, c7: S8,
    c8: S8, c9: S8, c10: S8, c11: S8, c12: S8, c13: S8, c14: S8, c15: S8,
}

// Shuffles lane j's 16 op(B) values to every lane.
fn shuffled(w: array<vec4<f32>, 4>, j: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupShuffle(w[0], j), subgroupShuffle(w[1], j), subgroupShuffle(w[2], j), subgroupShuffle(w[3], j));
}

fn mac16(a: ptr<function, Acc>, w: array<vec4<f32>, 4>, x: S8) {
    let w0 = w[0];
    let w1 = w[1];
    let w2 = w[2];
    let w3 = w[3];
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

fn step(a: ptr<function, Acc>, w: array<vec4<f32>, 4>, j: u32, x: S8) {
    mac16(a, shuffled(w, j), x);
}

// C rows row0 + 8*lane .. +7, columns j0 .. j0 + 15 over steps k0 .. k0 + steps of the
// dispatch's chunk. Workgroup g (one subgroup) takes columns 16g .. 16g + 15. Steps run in
// batches of 8, one op(B) row per lane.
@compute @workgroup_size(SG)
fn product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let j0 = (wid.y * nwg.x + wid.x) * TN;
    if (j0 >= p.n) { return; }
    let cols = cols16(j0, p.n - 1u, p.sb_j);
    var a: Acc;
    for (var kb = 0u; kb < p.steps; kb += SG) {
        // Steps past the chunk load a valid row and are never used.
        let w = load16(cols, min(p.k0 + kb + lane, p.k - 1u) * p.sb_k);
        let batch = min(SG, p.steps - kb);
        var i = kb * SG + lane;
        for (var j = 0u; j < batch; j++) {
            step(&a, w, j, gather(i));
            i += SG;
        }
    }
    put16(j0, p.row0 + lane * SG, a);
}

// `step` for a lane's two sets of 8 rows, sharing the shuffles.
fn step2(a: ptr<function, Acc>, b: ptr<function, Acc>, w: array<vec4<f32>, 4>, j: u32, x: S8, y: S8) {
    let ws = shuffled(w, j);
    mac16(a, ws, x);
    mac16(b, ws, y);
}

fn put16(j: u32, row: u32, a: Acc) {
    put(j, row, a.c0);
    put(j + 1u, row, a.c1);
    put(j + 2u, row, a.c2);
    put(j + 3u, row, a.c3);
    put(j + 4u, row, a.c4);
    put(j + 5u, row, a.c5);
    put(j + 6u, row, a.c6);
    put(j + 7u, row, a.c7);
    put(j + 8u, row, a.c8);
    put(j + 9u, row, a.c9);
    put(j + 10u, row, a.c10);
    put(j + 11u, row, a.c11);
    put(j + 12u, row, a.c12);
    put(j + 13u, row, a.c13);
    put(j + 14u, row, a.c14);
    put(j + 15u, row, a.c15);
}

// `product` with 16 rows per lane (a row block of 128): lane l's rows 16l .. 16l + 7 sit at
// index kk*16 + 2l of the windows, rows 16l + 8 .. 16l + 15 at the next index, so each op(B)
// value loaded from storage feeds 256 FMAs per subgroup step instead of 128.
@compute @workgroup_size(SG)
fn product16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let j0 = (wid.y * nwg.x + wid.x) * TN;
    if (j0 >= p.n) { return; }
    let cols = cols16(j0, p.n - 1u, p.sb_j);
    var a: Acc;
    var b: Acc;
    for (var kb = 0u; kb < p.steps; kb += SG) {
        let w = load16(cols, min(p.k0 + kb + lane, p.k - 1u) * p.sb_k);
        let batch = min(SG, p.steps - kb);
        var i = kb * 2u * SG + 2u * lane;
        for (var j = 0u; j < batch; j++) {
            step2(&a, &b, w, j, gather(i), gather(i + 1u));
            i += 2u * SG;
        }
    }
    let row = p.row0 + lane * 2u * SG;
    put16(j0, row, a);
    put16(j0, row + SG, b);
}
