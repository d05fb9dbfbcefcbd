// Class embeddings (torch.nn.functional.embedding) for conditional models: row `label[r]` of
// a [classes, dim] weight, and the weight's gradient. Labels are f32 as kiln stores them; a
// label that is not an integer in [0, classes) gives NaN rows, so a bad label stops training
// at the NaN check instead of reading another class's row.

struct Params {
    batch: u32,
    dim: u32,
    classes: u32,
    // embedding_backward: rows of the batch this dispatch adds (row_begin..row_end), so no
    // invocation walks more than the launcher's loop budget.
    row_begin: u32,
    row_end: u32,
    // 1: add to the gradient the previous slice wrote; 0: overwrite it.
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<f32>;
// embedding: weight in, rows out.
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;
// embedding_backward: dy in, dweight out.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dweight: array<f32>;

const WG: u32 = 256u;

// The class of row r, or `classes` for a label outside [0, classes) or not an integer (NaN too).
fn class_of(r: u32) -> u32 {
    let t = labels[r];
    if (t >= 0.0 && t < f32(p.classes) && floor(t) == t) { return u32(t); }
    return p.classes;
}

@compute @workgroup_size(WG)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.batch * p.dim) { return; }
    let c = class_of(i / p.dim);
    if (c == p.classes) {
        rows[i] = bitcast<f32>(0x7fc00000u);
        return;
    }
    rows[i] = weight[c * p.dim + i % p.dim];
}

// dweight[c, j] = Σ over rows r of this slice with label c of dy[r, j]: one invocation per
// weight element, walking the slice's rows (few classes, so a scatter would collide).
@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.classes * p.dim) { return; }
    let c = i / p.dim;
    let j = i % p.dim;
    var sum = 0.0;
    for (var r = p.row_begin; r < p.row_end; r = r + 1u) {
        if (class_of(r) == c) {
            sum = sum + dy[r * p.dim + j];
        }
    }
    if (p.accumulate != 0u) {
        sum = sum + dweight[i];
    }
    dweight[i] = sum;
}

// #include "grid.wgsl"
