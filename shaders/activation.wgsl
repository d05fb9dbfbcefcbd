// Activations, PyTorch semantics. Backward passes need only what forward saved, the output y
// (the graph saves x only for a leaky_relu with a negative slope): tanh's and sigmoid's
// derivatives are functions of y, and relu's and leaky_relu's (slope ≥ 0) test y > 0, which
// holds exactly when x > 0. So x need not be kept alive, and a GEMM that applies the
// activation as it stores (gemm.wgsl's epilogue, which shares stable_sigmoid and stable_tanh
// through include/activations.wgsl) never stores x at all.

struct Params {
    n: u32,
    negative_slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The input x in forward; in backward the saved tensor (y, or x for a negative slope).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
// y in forward, dx in backward.
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = max(x[i], 0.0);
}

// PyTorch's threshold_backward: the gradient at exactly 0 is 0 (x = 0 gives y = 0).
@compute @workgroup_size(WG)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = select(0.0, dy[i], x[i] > 0.0);
}

@compute @workgroup_size(WG)
fn leaky_relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = x[i];
    out[i] = select(v * p.negative_slope, v, v > 0.0);
}

// As PyTorch: x > 0 ? dy : dy * negative_slope, so x = 0 takes the slope; with y saved
// (slope ≥ 0), y > 0 is the same test.
@compute @workgroup_size(WG)
fn leaky_relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = select(dy[i] * p.negative_slope, dy[i], x[i] > 0.0);
}

@compute @workgroup_size(WG)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = stable_tanh(x[i]);
}

// dx = dy · (1 − y²) from the saved output y, factored so 1 − y stays exact as y → ±1.
@compute @workgroup_size(WG)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let y = x[i];
    out[i] = dy[i] * (1.0 - y) * (1.0 + y);
}

@compute @workgroup_size(WG)
fn sigmoid_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = stable_sigmoid(x[i]);
}

// dx = dy · y(1 − y), from the saved output y.
@compute @workgroup_size(WG)
fn sigmoid_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let y = x[i];
    out[i] = dy[i] * y * (1.0 - y);
}

// #include "activations.wgsl"
// #include "grid.wgsl"
