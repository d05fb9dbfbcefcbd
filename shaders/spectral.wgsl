// Spectral normalization (torch.nn.utils.parametrizations.spectral_norm): W_sn = W / σ with
// σ = uᵀ W_mat v, and u, v from power iterations kept as state between steps.
//
// W_mat [rows, cols] is the weight with dim `dim` moved first and the rest flattened. Seen as
// W [outer, rows, inner] (outer = 1 for dim 0; outer = in_channels, inner = k·k for a
// transposed conv's dim 1), W_mat[r, a·inner + b] = W[a, r, b], so no permuted copy is made.
//
// Mat-vec products are split along the summed axis into slices of at most SLICE elements
// (src/kernels/spectral.rs), one invocation per (output, slice), so no invocation walks a long
// row; reduce.wgsl adds the slices' partial sums. A dot product is a mat-vec of a 1-row matrix.

struct Params {
    outer: u32,
    rows: u32,
    inner: u32,
    // 1: y = W_matᵀ x (one output per column); 0: y = W_mat x (one per row).
    transposed: u32,
    // Slices per output, and the length of each (the last may be shorter).
    slices: u32,
    slice_len: u32,
    // Elements of `y` for the elementwise entries.
    n: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The weight (or, in the backward, dL/dW_sn), in W's own layout.
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// One value: ‖x‖² for normalize, σ for divide_by_sigma and backward.
@group(0) @binding(4) var<storage, read> scalar: array<f32>;
@group(0) @binding(5) var<storage, read> u: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
// Σ G∘W for the backward.
@group(0) @binding(7) var<storage, read> gw: array<f32>;

const WG: u32 = 256u;
// Elements per invocation of divide_by_sigma and backward (a constant-bound, unrolled loop).
const PER: u32 = 8u;

// Partial sum `slice` of output `o`: Σ over the slice of W_mat[o, c] x[c] (or W_mat[r, o] x[r]
// when transposed), written to y[o · slices + slice].
@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = flat(wid, nwg, lid);
    let cols = p.outer * p.inner;
    let outputs = select(p.rows, cols, p.transposed == 1u);
    if (g >= outputs * p.slices) { return; }
    let o = g / p.slices;
    let start = (g % p.slices) * p.slice_len;
    var acc = 0.0;
    if (p.transposed == 1u) {
        // Column o = (a, b): rows r of it lie inner apart.
        let a = o / p.inner;
        let b = o % p.inner;
        let end = min(start + p.slice_len, p.rows);
        for (var r = start; r < end; r++) {
            acc += w[(a * p.rows + r) * p.inner + b] * x[r];
        }
    } else {
        // Row o: runs of `inner` contiguous elements, one run per a. (a, b) step along with c
        // so that no element costs a division.
        let end = min(start + p.slice_len, cols);
        var a = start / p.inner;
        var b = start % p.inner;
        for (var c = start; c < end; c++) {
            acc += w[(a * p.rows + o) * p.inner + b] * x[c];
            b += 1u;
            if (b == p.inner) {
                b = 0u;
                a += 1u;
            }
        }
    }
    y[g] = acc;
}

// y = x / max(‖x‖, eps), as F.normalize; scalar[0] holds ‖x‖².
@compute @workgroup_size(WG)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = x[i] / max(sqrt(scalar[0]), p.eps);
}

// Forward: W_sn = W / σ. Each invocation does PER elements, so that σ is loaded once per PER
// (a storage load costs as much as a hundred FMAs on CPU adapters, the same address or not).
@compute @workgroup_size(WG)
fn divide_by_sigma(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let first = flat(wid, nwg, lid) * PER;
    if (first >= p.n) { return; }
    let sigma = scalar[0];
    for (var k = 0u; k < PER; k++) {
        let i = first + k;
        if (i < p.n) {
            y[i] = w[i] / sigma;
        }
    }
}

// Backward with u, v constant (PyTorch computes them under no_grad): σ = uᵀ W_mat v gives
// dσ/dW_mat = u vᵀ, so dL/dW = G/σ − (Σ G∘W)/σ² · u vᵀ, G = dL/dW_sn (bound as `w`).
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let first = flat(wid, nwg, lid) * PER;
    if (first >= p.n) { return; }
    let sigma = scalar[0];
    let correction = gw[0] / (sigma * sigma);
    // Element i of W is W[a, r, b], the matrix's (r, a·inner + b): divided out once, then
    // stepped along with i (integer division is slow on CPU adapters).
    var b = first % p.inner;
    var r = (first / p.inner) % p.rows;
    var a = first / p.inner / p.rows;
    for (var k = 0u; k < PER; k++) {
        let i = first + k;
        if (i < p.n) {
            y[i] = w[i] / sigma - correction * u[r] * v[a * p.inner + b];
        }
        b += 1u;
        if (b == p.inner) {
            b = 0u;
            r += 1u;
            if (r == p.rows) {
                r = 0u;
                a += 1u;
            }
        }
    }
}

// #include "grid.wgsl"
