// Losses, PyTorch semantics. Forward entries write per-element terms: reduction="none"'s
// output itself, or what reduce.wgsl sums (times 1/n for a mean). Backward entries read the
// upstream gradient g from a buffer, so the graph can chain it without a CPU round trip.

struct Params {
    n: u32,
    // Backward only: 1/n for reduction="mean", 1 for "sum" and "none" (forward scales in the
    // reduction).
    scale: f32,
    // Backward only: g[i * g_stride] is element i's upstream gradient; 0 reads one scalar
    // (mean, sum), 1 an upstream gradient shaped like the input (none).
    g_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The input (logits x, probabilities p, or mu for kl_normal).
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The target (logvar for kl_normal).
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
// Per-element terms (or the output, for reduction="none") in forward, d(input) in backward.
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// d(logvar), kl_normal_backward only.
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// log(1 + u) without losing u when |u| is small (WGSL has no log1p): the Taylor series below
// 1/16 (its 8th term is < 5e-10 relative), where rounding 1 + u would cost up to 1e-6.
fn log1p(u: f32) -> f32 {
    if (abs(u) < 0.0625) {
        return u * (1.0 + u * (-1.0 / 2.0 + u * (1.0 / 3.0 + u * (-1.0 / 4.0 + u * (1.0 / 5.0
            + u * (-1.0 / 6.0 + u * (1.0 / 7.0)))))));
    }
    return log(1.0 + u);
}

// PyTorch clamps BCE's log terms at −100, which in f32 only matters at 0 (every normal float
// has log > −88); testing v > 0 keeps log(0) = −inf out of the arithmetic altogether.
fn log_clamped(v: f32) -> f32 {
    return select(-100.0, max(log(v), -100.0), v > 0.0);
}

// e^u − 1 − u, which cancels to nothing in f32 near u = 0: series below |u| = 1/2.
fn expm1_minus_x(u: f32) -> f32 {
    if (abs(u) < 0.5) {
        return u * u * (1.0 / 2.0 + u * (1.0 / 6.0 + u * (1.0 / 24.0 + u * (1.0 / 120.0 + u * (1.0 / 720.0
            + u * (1.0 / 5040.0 + u * (1.0 / 40320.0 + u * (1.0 / 362880.0))))))));
    }
    return exp(u) - 1.0 - u;
}

// max(x, 0) − x·t + log1p(e^−|x|): exp never overflows, and for |x| > 50 the log1p keeps the
// tiny e^−|x| instead of rounding it away. x(1 − t) for x ≥ 0 avoids x − x·t cancelling at t ≈ 1.
@compute @workgroup_size(WG)
fn bce_with_logits_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = x[i];
    let linear = select(-v * t[i], v * (1.0 - t[i]), v >= 0.0);
    out[i] = linear + log1p(exp(-abs(v)));
}

// (sigmoid(x) − t)·scale·g, with sigmoid(x) − t written so a saturated sigmoid keeps its tiny
// distance from the target: for x ≥ 0 it is (1 − t) − e/(1 + e), for x < 0 e/(1 + e) − t.
@compute @workgroup_size(WG)
fn bce_with_logits_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = x[i];
    let e = exp(-abs(v));
    let tail = e / (1.0 + e);
    let diff = select(tail - t[i], (1.0 - t[i]) - tail, v >= 0.0);
    out[i] = diff * p.scale * g[i * p.g_stride];
}

// −(t·log(p) + (1 − t)·log1p(−p)), each log clamped at −100 as PyTorch does.
@compute @workgroup_size(WG)
fn bce_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let pr = x[i];
    // log(1 − p): the series near p = 0, else 1 − p is exact enough and may be 0 (clamped).
    let log_q = select(log1p(-pr), log_clamped(1.0 - pr), pr >= 0.0625);
    out[i] = -(t[i] * log_clamped(pr) + (1.0 - t[i]) * log_q);
}

// PyTorch's formula: (p − t) / max(p(1 − p), 1e-12) · g [/ n].
@compute @workgroup_size(WG)
fn bce_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let pr = x[i];
    out[i] = (pr - t[i]) / max((1.0 - pr) * pr, 1e-12) * p.scale * g[i * p.g_stride];
}

@compute @workgroup_size(WG)
fn mse_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let d = x[i] - t[i];
    out[i] = d * d;
}

// d/dx = 2(x − t)·scale·g; d/dtarget is its negative.
@compute @workgroup_size(WG)
fn mse_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = 2.0 * (x[i] - t[i]) * p.scale * g[i * p.g_stride];
}

// −½(1 + lv − mu² − e^lv) = ½(mu² + (e^lv − 1 − lv)): both parts are ≥ 0, so nothing cancels
// even when the posterior matches the prior (mu, lv → 0) and the term itself → 0.
@compute @workgroup_size(WG)
fn kl_normal_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let mu = x[i];
    out[i] = 0.5 * (mu * mu + expm1_minus_x(t[i]));
}

// dmu = mu·g, dlogvar = ½(e^lv − 1)·g.
@compute @workgroup_size(WG)
fn kl_normal_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let lv = t[i];
    out[i] = x[i] * p.scale * g[i * p.g_stride];
    out2[i] = 0.5 * (expm1_minus_x(lv) + lv) * p.scale * g[i * p.g_stride];
}
