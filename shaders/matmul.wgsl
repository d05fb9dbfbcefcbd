// GEMM, row-major f32: C[M,N] = op(A)·op(B) (+ bias[N] broadcast over rows) (+ C when
// accumulating). Transposes are strides: op(A)[i,k] = a[i*sa_i + k*sa_k] and
// op(B)[k,j] = b[k*sb_k + j*sb_j], so one kernel covers Linear forward (x·Wᵀ), dX = dY·W and
// dW = dYᵀ·X without copies.
//
// Two variants of the product here, picked per adapter by the launcher:
//   simple  — one output per invocation: the readable oracle.
//   blocked — 16×16 outputs per invocation from registers, no workgroup memory: fastest on
//             CPU adapters (lavapipe, llvmpipe), where barriers and shared memory cost more
//             than they save.
// The GPU kernel, `tiled`, is the tile engine in gemm.wgsl (workgroup-memory tiles, shared
// with the convolutions); `windowed`, in matmul_window.wgsl, keeps op(A) in uniform-buffer
// windows and shuffles op(B) round a subgroup of 8, for CPU adapters with subgroups
// (lavapipe), 2-3× blocked.
// Every grid is a flat list of output tiles folded into y past 65,535 workgroups.
//
// column_sum is the bias gradient of Linear: db[j] (+)= Σ_i dy[i, j].
//
// llvmpipe (lavapipe, GL on Mesa) silently ends an invocation after 65,535 loop iterations, so
// no invocation here walks a caller-chosen length in full: the launcher splits k (column_sum:
// the rows) into slices of at most 48,000 steps, one dispatch each over k_begin..k, the slices
// after the first adding to C.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    sa_i: u32,
    sa_k: u32,
    sb_k: u32,
    sb_j: u32,
    has_bias: u32,
    accumulate: u32,
    // This dispatch's slice of the reduction: steps k_begin..k of k (column_sum: rows k_begin..m).
    k_begin: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Bias and accumulation, fused into the store so neither costs a pass of its own.
fn store(i: u32, j: u32, acc: f32) {
    var v = acc;
    if (p.has_bias != 0u) { v += bias[j]; }
    let o = i * p.n + j;
    if (p.accumulate != 0u) { v += c[o]; }
    c[o] = v;
}

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

const SIMPLE_WG: u32 = 64u;

@compute @workgroup_size(SIMPLE_WG)
fn simple(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = flat_group(wid, nwg) * SIMPLE_WG + lid.x;
    if (idx >= p.m * p.n) { return; }
    let i = idx / p.n;
    let j = idx % p.n;
    var acc = 0.0;
    for (var kk = p.k_begin; kk < p.k; kk++) {
        acc = fma(a[i * p.sa_i + kk * p.sa_k], b[kk * p.sb_k + j * p.sb_j], acc);
    }
    store(i, j, acc);
}

// A 16×16 block of C per invocation, accumulated in registers with no workgroup memory. On
// llvmpipe every buffer load costs a scalar loop over the SIMD lanes, which dwarfs the FMAs, so
// the block is as large as pays: 32 loads feed 256 FMAs per step of k (lavapipe: 16×16 ran
// ~3× faster per CPU-second than 4×8, and 32×16 only ~15% faster again). The accumulators are
// named vec4s, not an array: llvmpipe keeps those in registers but indexes arrays through
// memory (half the speed). A workgroup is one 8-wide SIMD batch of llvmpipe's: the smallest
// unit its threads share out, so small products still spread over every core.
const BLOCKED_WG: u32 = 8u;
const BLOCK: u32 = 16u;

// Offsets of 4 consecutive rows of op(A) or columns of op(B) from `first`, clamped to the last
// one: edge blocks read in-range duplicates whose results the masked store discards, so the
// inner loop has no branches.
fn offsets4(first: u32, last: u32, stride: u32) -> vec4<u32> {
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * stride;
}

fn b4_at(kb: u32, o: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(b[kb + o.x], b[kb + o.y], b[kb + o.z], b[kb + o.w]);
}

@compute @workgroup_size(BLOCKED_WG)
fn blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let blocks_n = (p.n + BLOCK - 1u) / BLOCK;
    let t = flat_group(wid, nwg) * BLOCKED_WG + lid.x;
    if (t >= blocks_n * ((p.m + BLOCK - 1u) / BLOCK)) { return; }
    let i0 = (t / blocks_n) * BLOCK;
    let j0 = (t % blocks_n) * BLOCK;
    let r0 = offsets4(i0, p.m - 1u, p.sa_i);
    let r1 = offsets4(i0 + 4u, p.m - 1u, p.sa_i);
    let r2 = offsets4(i0 + 8u, p.m - 1u, p.sa_i);
    let r3 = offsets4(i0 + 12u, p.m - 1u, p.sa_i);
    let o0 = offsets4(j0, p.n - 1u, p.sb_j);
    let o1 = offsets4(j0 + 4u, p.n - 1u, p.sb_j);
    let o2 = offsets4(j0 + 8u, p.n - 1u, p.sb_j);
    let o3 = offsets4(j0 + 12u, p.n - 1u, p.sb_j);
    // c<row><a..d>: columns j0+0..3, 4..7, 8..11, 12..15 of row i0+<row>.
    let z = vec4<f32>(0.0);
    var c0a = z; var c0b = z; var c0c = z; var c0d = z;
    var c1a = z; var c1b = z; var c1c = z; var c1d = z;
    var c2a = z; var c2b = z; var c2c = z; var c2d = z;
    var c3a = z; var c3b = z; var c3c = z; var c3d = z;
    var c4a = z; var c4b = z; var c4c = z; var c4d = z;
    var c5a = z; var c5b = z; var c5c = z; var c5d = z;
    var c6a = z; var c6b = z; var c6c = z; var c6d = z;
    var c7a = z; var c7b = z; var c7c = z; var c7d = z;
    var c8a = z; var c8b = z; var c8c = z; var c8d = z;
    var c9a = z; var c9b = z; var c9c = z; var c9d = z;
    var c10a = z; var c10b = z; var c10c = z; var c10d = z;
    var c11a = z; var c11b = z; var c11c = z; var c11d = z;
    var c12a = z; var c12b = z; var c12c = z; var c12d = z;
    var c13a = z; var c13b = z; var c13c = z; var c13d = z;
    var c14a = z; var c14b = z; var c14c = z; var c14d = z;
    var c15a = z; var c15b = z; var c15c = z; var c15d = z;
    var ka = p.k_begin * p.sa_k;
    var kb = p.k_begin * p.sb_k;
    for (var kk = p.k_begin; kk < p.k; kk++) {
        let b0 = b4_at(kb, o0);
        let b1 = b4_at(kb, o1);
        let b2 = b4_at(kb, o2);
        let b3 = b4_at(kb, o3);
        var x: vec4<f32>;
        x = vec4<f32>(a[r0.x + ka]); c0a = fma(x, b0, c0a); c0b = fma(x, b1, c0b); c0c = fma(x, b2, c0c); c0d = fma(x, b3, c0d);
        x = vec4<f32>(a[r0.y + ka]); c1a = fma(x, b0, c1a); c1b = fma(x, b1, c1b); c1c = fma(x, b2, c1c); c1d = fma(x, b3, c1d);
        x = vec4<f32>(a[r0.z + ka]); c2a = fma(x, b0, c2a); c2b = fma(x, b1, c2b); c2c = fma(x, b2, c2c); c2d = fma(x, b3, c2d);
        x = vec4<f32>(a[r0.w + ka]); c3a = fma(x, b0, c3a); c3b = fma(x, b1, c3b); c3c = fma(x, b2, c3c); c3d = fma(x, b3, c3d);
        x = vec4<f32>(a[r1.x + ka]); c4a = fma(x, b0, c4a); c4b = fma(x, b1, c4b); c4c = fma(x, b2, c4c); c4d = fma(x, b3, c4d);
        x = vec4<f32>(a[r1.y + ka]); c5a = fma(x, b0, c5a); c5b = fma(x, b1, c5b); c5c = fma(x, b2, c5c); c5d = fma(x, b3, c5d);
        x = vec4<f32>(a[r1.z + ka]); c6a = fma(x, b0, c6a); c6b = fma(x, b1, c6b); c6c = fma(x, b2, c6c); c6d = fma(x, b3, c6d);
        x = vec4<f32>(a[r1.w + ka]); c7a = fma(x, b0, c7a); c7b = fma(x, b1, c7b); c7c = fma(x, b2, c7c); c7d = fma(x, b3, c7d);
        x = vec4<f32>(a[r2.x + ka]); c8a = fma(x, b0, c8a); c8b = fma(x, b1, c8b); c8c = fma(x, b2, c8c); c8d = fma(x, b3, c8d);
        x = vec4<f32>(a[r2.y + ka]); c9a = fma(x, b0, c9a); c9b = fma(x, b1, c9b); c9c = fma(x, b2, c9c); c9d = fma(x, b3, c9d);
        x = vec4<f32>(a[r2.z + ka]); c10a = fma(x, b0, c10a); c10b = fma(x, b1, c10b); c10c = fma(x, b2, c10c); c10d = fma(x, b3, c10d);
        x = vec4<f32>(a[r2.w + ka]); c11a = fma(x, b0, c11a); c11b = fma(x, b1, c11b); c11c = fma(x, b2, c11c); c11d = fma(x, b3, c11d);
        x = vec4<f32>(a[r3.x + ka]); c12a = fma(x, b0, c12a); c12b = fma(x, b1, c12b); c12c = fma(x, b2, c12c); c12d = fma(x, b3, c12d);
        x = vec4<f32>(a[r3.y + ka]); c13a = fma(x, b0, c13a); c13b = fma(x, b1, c13b); c13c = fma(x, b2, c13c); c13d = fma(x, b3, c13d);
        x = vec4<f32>(a[r3.z + ka]); c14a = fma(x, b0, c14a); c14b = fma(x, b1, c14b); c14c = fma(x, b2, c14c); c14d = fma(x, b3, c14d);
        x = vec4<f32>(a[r3.w + ka]); c15a = fma(x, b0, c15a); c15b = fma(x, b1, c15b); c15c = fma(x, b2, c15c); c15d = fma(x, b3, c15d);
        ka += p.sa_k;
        kb += p.sb_k;
    }
    store_row(i0 + 0u, j0, c0a, c0b, c0c, c0d);
    store_row(i0 + 1u, j0, c1a, c1b, c1c, c1d);
    store_row(i0 + 2u, j0, c2a, c2b, c2c, c2d);
    store_row(i0 + 3u, j0, c3a, c3b, c3c, c3d);
    store_row(i0 + 4u, j0, c4a, c4b, c4c, c4d);
    store_row(i0 + 5u, j0, c5a, c5b, c5c, c5d);
    store_row(i0 + 6u, j0, c6a, c6b, c6c, c6d);
    store_row(i0 + 7u, j0, c7a, c7b, c7c, c7d);
    store_row(i0 + 8u, j0, c8a, c8b, c8c, c8d);
    store_row(i0 + 9u, j0, c9a, c9b, c9c, c9d);
    store_row(i0 + 10u, j0, c10a, c10b, c10c, c10d);
    store_row(i0 + 11u, j0, c11a, c11b, c11c, c11d);
    store_row(i0 + 12u, j0, c12a, c12b, c12c, c12d);
    store_row(i0 + 13u, j0, c13a, c13b, c13c, c13d);
    store_row(i0 + 14u, j0, c14a, c14b, c14c, c14d);
    store_row(i0 + 15u, j0, c15a, c15b, c15c, c15d);
}

fn store_row(i: u32, j0: u32, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) {
    if (i >= p.m) { return; }
    var row = array<vec4<f32>, 4>(c0, c1, c2, c3);
    for (var q = 0u; q < BLOCK && j0 + q < p.n; q++) {
        store(i, j0 + q, row[q / 4u][q % 4u]);
    }
}

// db[j] (+)= Σ_i a[i*n + j] over m rows. A workgroup owns 16 columns; its 16 row lanes each
// walk every 16th row, adding 64 rows into a block sum before folding it into the lane total,
// then the lanes are added as a tree. That keeps f32 error near (64 + m/1024 + 4)·ε instead of
// m·ε for one long chain, so 100k-row batches stay accurate.
const CS: u32 = 16u;
const CS_BLOCK: u32 = 64u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn column_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = flat_group(wid, nwg) * CS + lid.x;
    var total = 0.0;
    if (j < p.n) {
        var r = p.k_begin + lid.y;
        while (r < p.m) {
            let end = min(r + CS * CS_BLOCK, p.m);
            var block = 0.0;
            for (; r < end; r += CS) { block += a[r * p.n + j]; }
            total += block;
        }
    }
    partial[lid.y * CS + lid.x] = total;
    workgroupBarrier();
    for (var s = CS / 2u; s > 0u; s /= 2u) {
        if (lid.y < s) { partial[lid.y * CS + lid.x] += partial[(lid.y + s) * CS + lid.x]; }
        workgroupBarrier();
    }
    if (lid.y == 0u && j < p.n) {
        var v = partial[lid.x];
        if (p.accumulate != 0u) { v += c[j]; }
        c[j] = v;
    }
}
