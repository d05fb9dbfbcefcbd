// F.interpolate(x, size, mode='bilinear', align_corners=False) over NCHW planes, then
// y = alpha · value + beta (Inception's input scaling 2x − 1 folds in here). One invocation
// per output element; no loops. PyTorch's rule per axis: the source coordinate is
// (o + 0.5) · in / out − 0.5, clamped at 0; it blends row ⌊src⌋ with the next one (the same
// row at the last), weighted by the fraction.

struct Params {
    total: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    // in / out per axis, as PyTorch computes it without a scale_factor.
    scale_h: f32,
    scale_w: f32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

// (first source index, its neighbour, the neighbour's weight) along one axis.
fn source(o: u32, scale: f32, size: u32) -> vec3<f32> {
    let src = max(scale * (f32(o) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(src), size - 1u);
    let i1 = min(i0 + 1u, size - 1u);
    return vec3<f32>(f32(i0), f32(i1), src - f32(i0));
}

@compute @workgroup_size(WG)
fn bilinear_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.total) { return; }
    let ox = i % p.wo;
    let t = i / p.wo;
    let oy = t % p.ho;
    let plane = t / p.ho;
    let r = source(oy, p.scale_h, p.h);
    let c = source(ox, p.scale_w, p.w);
    let base = plane * p.h * p.w;
    let r0 = base + u32(r.x) * p.w;
    let r1 = base + u32(r.y) * p.w;
    let c0 = u32(c.x);
    let c1 = u32(c.y);
    let top = (1.0 - c.z) * x[r0 + c0] + c.z * x[r0 + c1];
    let bottom = (1.0 - c.z) * x[r1 + c0] + c.z * x[r1 + c1];
    y[i] = p.alpha * ((1.0 - r.z) * top + r.z * bottom) + p.beta;
}

// #include "grid.wgsl"
