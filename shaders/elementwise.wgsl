// Elementwise arithmetic. Their backward passes are these same kernels (square_root has its own):
// d(a+b) = (dy, dy), d(a*b) = (dy*b, dy*a), d(alpha*x) = alpha*dy; and broadcast_rows is the
// backward of a row sum.

struct Params {
    n: u32,
    alpha: f32,
    // Row length for broadcast_rows.
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = a[i] + b[i];
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = a[i] * b[i];
}

// y = alpha * a
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = p.alpha * a[i];
}

// y += alpha * a: accumulates the gradient of a tensor used more than once.
@compute @workgroup_size(WG)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = y[i] + p.alpha * a[i];
}

// y = alpha: constant fills (the loss gradient's seed of 1, zeroing accumulators).
@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = p.alpha;
}

// y[r, c] = alpha * a[r]: spreads a per-row value over its row (the gradient of a row sum).
@compute @workgroup_size(WG)
fn broadcast_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = p.alpha * a[i / p.cols];
}

// y = sqrt(a + alpha): alpha is a small eps that keeps the gradient finite at a = 0 (a
// gradient norm that vanishes, in WGAN-GP).
@compute @workgroup_size(WG)
fn square_root(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = sqrt(a[i] + p.alpha);
}

// dx = 0.5 * dy / y, from square_root's output a = y and the upstream gradient b = dy.
@compute @workgroup_size(WG)
fn square_root_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = 0.5 * b[i] / a[i];
}

// #include "grid.wgsl"
