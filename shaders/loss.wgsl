// Losses, PyTorch semantics. Forward entries write per-element terms (per-row for
// cross_entropy): reduction="none"'s output itself, or what reduce.wgsl sums (times 1/n for a
// mean). Backward entries read the
// upstream gradient g from a buffer, so the graph can chain it without a CPU round trip.

struct Params {
    // Elements; for cross_entropy, rows.
    n: u32,
    // Backward only: 1/n for reduction="mean", 1 for "sum" and "none" (forward scales in the
    // reduction).
    scale: f32,
    // Backward only: g[i * g_stride] is element i's upstream gradient; 0 reads one scalar
    // (mean, sum), 1 an upstream gradient shaped like the input (none). For cross_entropy,
    // i is the row.
    g_stride: u32,
    // cross_entropy only: logits per row.
    classes: u32,
    // cross_entropy only: NaN, what a row with an invalid target gets (WGSL has no NaN
    // constant).
    nan: f32,
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
// cross_entropy backward: each row's max logit and Σ e^(x − max), interleaved.
@group(0) @binding(6) var<storage, read_write> row_stats: array<f32>;

const WG: u32 = 256u;

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

// cross_entropy: x is [n, classes] logits, t holds each row's class index as an f32.

// Row r's class, or `classes` when t[r] is not an integer in [0, classes) (NaN included, found
// by its bits as comparisons may assume NaN away): such a row's loss and gradient are NaN, so
// a bad label stops training instead of giving a plausible wrong number.
fn class_of(r: u32) -> u32 {
    let c = t[r];
    let nan = (bitcast<u32>(c) & 0x7fffffffu) > 0x7f800000u;
    let ok = !nan && c >= 0.0 && c < f32(p.classes) && floor(c) == c;
    return select(p.classes, u32(max(c, 0.0)), ok);
}

// Row r's max logit m and Σ e^(x − m) in one pass, the sum rescaled whenever the max grows:
// no exp overflows, and an invocation loops classes − 1 times (the launcher keeps that under
// llvmpipe's loop limit).
fn row_max_and_sum(r: u32) -> vec2<f32> {
    let base = r * p.classes;
    var m = x[base];
    var s = 1.0;
    for (var c = 1u; c < p.classes; c++) {
        let v = x[base + c];
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    return vec2<f32>(m, s);
}

// Per-row loss log Σ e^x − x[t], written (m − x[t]) + log Σ e^(x − m) so that two large
// nearly equal numbers are never subtracted.
@compute @workgroup_size(WG)
fn cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = flat(wid, nwg, lid);
    if (r >= p.n) { return; }
    let ms = row_max_and_sum(r);
    let k = class_of(r);
    let loss = (ms.x - x[r * p.classes + min(k, p.classes - 1u)]) + log(ms.y);
    out[r] = select(loss, p.nan, k == p.classes);
}

// The first pass of the backward: (m, Σ e^(x − m)) of each row into row_stats.
@compute @workgroup_size(WG)
fn cross_entropy_row_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = flat(wid, nwg, lid);
    if (r >= p.n) { return; }
    let ms = row_max_and_sum(r);
    row_stats[2u * r] = ms.x;
    row_stats[2u * r + 1u] = ms.y;
}

// d(logits) = (softmax − onehot(t))·scale·g, one invocation per logit.
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.classes) { return; }
    let r = i / p.classes;
    let k = class_of(r);
    let softmax = exp(x[i] - row_stats[2u * r]) / row_stats[2u * r + 1u];
    let d = (softmax - select(0.0, 1.0, i % p.classes == k)) * p.scale * g[r * p.g_stride];
    out[i] = select(d, p.nan, k == p.classes);
}

// #include "grid.wgsl"
