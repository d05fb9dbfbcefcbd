// Sum over the last axis of a [rows, cols] array, times `scale` (1 for sum, 1/cols for mean).
// Long rows go through sum_chunks repeatedly: each pass turns [rows, cols] into
// [rows, ceil(cols / CHUNK)] partial sums, so a 10⁷-long row takes two short passes and every
// f32 addition chain stays short (PER_THREAD serial adds, then a log₂(WG)-deep tree), which
// keeps the result accurate as well as parallel. Short rows, and many medium ones, use
// sum_rows, one thread per row (src/kernels/reduce.rs says when).

struct Params {
    rows: u32,
    cols: u32,
    // Output columns of sum_chunks: ceil(cols / CHUNK).
    chunks: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
const CHUNK: u32 = WG * PER_THREAD;

var<workgroup> partial: array<f32, WG>;

// One workgroup per (row, chunk), the grid folded into y past 65,535 workgroups. Thread t adds
// elements t, t + WG, ... of its chunk, so neighbouring threads read neighbouring addresses.
@compute @workgroup_size(WG)
fn sum_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.y * nwg.x + wid.x;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if (g >= p.rows * p.chunks) { return; }
    let row = g / p.chunks;
    let base = row * p.cols;
    let end = min((g % p.chunks + 1u) * CHUNK, p.cols);
    var acc = 0.0;
    for (var c = (g % p.chunks) * CHUNK + lid.x; c < end; c += WG) {
        acc += x[base + c];
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial[lid.x] += partial[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        y[g] = partial[0] * p.scale;
    }
}

// One thread per row: for rows of a few elements, where a workgroup per row would idle.
@compute @workgroup_size(WG)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (r >= p.rows) { return; }
    var acc = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        acc += x[r * p.cols + c];
    }
    y[r] = acc * p.scale;
}
