// Batch normalization over x viewed as [N, C, HW] (HW = 1 for BatchNorm1d on [N, C]), PyTorch
// semantics. Each channel's m = N·HW values are reduced one of two ways:
// - two-level (long channels): a workgroup tree per (channel, chunk of p.chunk values) writes
//   a partial to scratch, then one invocation per channel merges that channel's partials, at
//   most 1,024 of them: chunks are 4,096 values, longer past 4M values a channel (the launcher
//   sizes them; stats_partial + stats_finalize, grad_partial + grad_reduce);
// - direct (short channels): one invocation per channel loops over its values (stats_direct,
//   grad_direct): a 256-wide tree over a few dozen values is mostly barriers, for [N, C]
//   neighbouring invocations read neighbouring addresses, and on CPU adapters barriers cost
//   far more than the lost parallelism. The launcher keeps m ≤ 32,768: llvmpipe ends an
//   invocation silently after 65,535 loop iterations.
// Then one elementwise pass: normalize (forward), grad_input (training backward) or
// grad_input_eval (eval backward).
// - fused (GPUs, channels of a few thousand values): one workgroup per channel reduces the
//   channel and then normalizes it (fused_forward) or computes its dx (fused_backward), in one
//   dispatch instead of two or three; the second walk over the channel reads what the first
//   just brought into cache. Per-dispatch overhead, not bandwidth, is what a GAN's small batch
//   norms cost on a GPU.
//
// Scratch layout (f32): partials at [3·(c·chunks + k) ..] — (count, mean, M2) forward,
// (Σdy, Σdy·x̂) backward — and the per-channel backward sums (Σdy, Σdy·x̂) at
// [3·C·chunks + 2c ..].

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    // Chunks per channel and values per chunk (two-level passes).
    chunks: u32,
    chunk: u32,
    eps: f32,
    momentum: f32,
    flags: u32,
}

// normalize, grad_input*: γ (and β) are bound.
const AFFINE: u32 = 1u;
// normalize, grad_partial, grad_direct: the stat buffers hold the running (mean, var), not
// the saved (mean, invstd).
const EVAL: u32 = 2u;
// stats_finalize, stats_direct: update running_mean and running_var.
const RUNNING: u32 = 4u;
// grad_reduce, grad_direct: write dγ and dβ.
const GRADS: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> stat_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> stat_scale: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(8) var<storage, read> gamma: array<f32>;
@group(0) @binding(9) var<storage, read> beta: array<f32>;
@group(0) @binding(10) var<storage, read_write> out: array<f32>;
@group(0) @binding(11) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(12) var<storage, read_write> dbeta: array<f32>;

const WG: u32 = 256u;
// One invocation per channel: small workgroups so that a few hundred channels still spread
// over several workgroups (CPU cores, GPU SMs).
const CH_WG: u32 = 64u;
// Values summed together before joining a direct (one invocation per channel) total.
const BLOCK: u32 = 32u;

// Grids wider than 65,535 workgroups fold into y; this undoes the fold.
fn group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Flat index of value j (0 ≤ j < N·HW) of channel c.
fn at(c: u32, j: u32) -> u32 {
    let n = j / p.hw;
    return (n * p.c + c) * p.hw + (j - n * p.hw);
}

fn values_per_channel() -> u32 {
    return p.n * p.hw;
}

// Count, mean and sum of squared deviations of a set of values.
struct Summary {
    n: f32,
    mean: f32,
    m2: f32,
}

// Chan et al.'s merge of two summaries. Merging in one value at a time is Welford's update;
// neither ever forms E[x²] − E[x]², so a large mean does not cancel the variance away.
fn combine(a: Summary, b: Summary) -> Summary {
    let n = a.n + b.n;
    if (n == 0.0) {
        return a;
    }
    let d = b.mean - a.mean;
    let f = b.n / n;
    return Summary(n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f);
}

var<workgroup> w_stats: array<Summary, WG>;
var<workgroup> w_sums: array<vec2<f32>, WG>;

// Tree reductions in workgroup memory; every invocation has stored its slot before the call.
fn reduce_stats(t: u32) -> Summary {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (t < s) {
            w_stats[t] = combine(w_stats[t], w_stats[t + s]);
        }
        workgroupBarrier();
    }
    return w_stats[0];
}

fn reduce_sums(t: u32) -> vec2<f32> {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (t < s) {
            w_sums[t] = w_sums[t] + w_sums[t + s];
        }
        workgroupBarrier();
    }
    return w_sums[0];
}

// The values are summarized shifted by the channel's first value: means of the shifted data
// stay near the spread of the data instead of its offset, so f32 rounding of the accumulating
// mean does not grow with |mean| (mean 1000, std 1 keeps full precision).
fn shift(c: u32) -> f32 {
    return x[c * p.hw];
}

// ---- forward -------------------------------------------------------------------------------

// One workgroup per (channel, chunk): Welford per invocation, then a tree of merges.
@compute @workgroup_size(WG)
fn stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = group(wid, nwg);
    if (g >= p.c * p.chunks) {
        return;
    }
    let c = g / p.chunks;
    let start = (g % p.chunks) * p.chunk;
    let end = min(start + p.chunk, values_per_channel());
    let k = shift(c);
    var s = Summary(0.0, 0.0, 0.0);
    for (var j = start + lid.x; j < end; j += WG) {
        s = combine(s, Summary(1.0, x[at(c, j)] - k, 0.0));
    }
    w_stats[lid.x] = s;
    let total = reduce_stats(lid.x);
    if (lid.x == 0u) {
        scratch[3u * g] = total.n;
        scratch[3u * g + 1u] = total.mean;
        scratch[3u * g + 2u] = total.m2;
    }
}

// 1/sqrt(var + eps) of a channel's summary, with the biased variance as PyTorch normalizes.
fn batch_invstd(total: Summary) -> f32 {
    return 1.0 / sqrt(total.m2 / f32(values_per_channel()) + p.eps);
}

// Saved mean and 1/sqrt(var + eps) (biased variance) from channel c's summary, and the running
// stats moved toward the batch's (unbiased variance).
fn finish_stats(c: u32, total: Summary) {
    let n = f32(values_per_channel());
    let mean = shift(c) + total.mean;
    stat_mean[c] = mean;
    stat_scale[c] = batch_invstd(total);
    if ((p.flags & RUNNING) != 0u) {
        let m = p.momentum;
        running_mean[c] = (1.0 - m) * running_mean[c] + m * mean;
        running_var[c] = (1.0 - m) * running_var[c] + m * total.m2 / (n - 1.0);
    }
}

// One invocation per channel merges its partials.
@compute @workgroup_size(CH_WG)
fn stats_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg) * CH_WG + lid.x;
    if (c >= p.c) {
        return;
    }
    var s = Summary(0.0, 0.0, 0.0);
    for (var k = 0u; k < p.chunks; k++) {
        let i = 3u * (c * p.chunks + k);
        s = combine(s, Summary(scratch[i], scratch[i + 1u], scratch[i + 2u]));
    }
    finish_stats(c, s);
}

// One invocation per channel, Welford over blocks of its values merged in turn: a rounding
// error then builds over a block and over the blocks, not over all m values.
@compute @workgroup_size(CH_WG)
fn stats_direct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg) * CH_WG + lid.x;
    if (c >= p.c) {
        return;
    }
    let k = shift(c);
    let m = values_per_channel();
    var s = Summary(0.0, 0.0, 0.0);
    for (var j0 = 0u; j0 < m; j0 += BLOCK) {
        var b = Summary(0.0, 0.0, 0.0);
        for (var j = j0; j < min(j0 + BLOCK, m); j++) {
            b = combine(b, Summary(1.0, x[at(c, j)] - k, 0.0));
        }
        s = combine(s, b);
    }
    finish_stats(c, s);
}

// 1/sqrt(var + eps) from the stat buffers in either mode.
fn invstd(c: u32) -> f32 {
    if ((p.flags & EVAL) != 0u) {
        return 1.0 / sqrt(stat_scale[c] + p.eps);
    }
    return stat_scale[c];
}

// y = (x − mean)·invstd·γ + β, elementwise.
@compute @workgroup_size(WG)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = group(wid, nwg) * WG + lid.x;
    if (i >= p.n * p.c * p.hw) {
        return;
    }
    let c = (i / p.hw) % p.c;
    out[i] = normalized(i, c, stat_mean[c], invstd(c));
}

// Element i of channel c normalized, then scaled and shifted by γ and β where bound.
fn normalized(i: u32, c: u32, mean: f32, scale: f32) -> f32 {
    let y = (x[i] - mean) * scale;
    if ((p.flags & AFFINE) != 0u) {
        return y * gamma[c] + beta[c];
    }
    return y;
}

// One workgroup per channel: its statistics (a Welford sum per invocation, merged by the
// tree), saved and moved into the running stats by invocation 0, then the channel normalized
// by the whole workgroup with the total every invocation read from the tree's root.
@compute @workgroup_size(WG)
fn fused_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg);
    if (c >= p.c) {
        return;
    }
    let k = shift(c);
    let m = values_per_channel();
    var s = Summary(0.0, 0.0, 0.0);
    for (var j = lid.x; j < m; j += WG) {
        s = combine(s, Summary(1.0, x[at(c, j)] - k, 0.0));
    }
    w_stats[lid.x] = s;
    let total = reduce_stats(lid.x);
    if (lid.x == 0u) {
        finish_stats(c, total);
    }
    let mean = k + total.mean;
    let scale = batch_invstd(total);
    for (var j = lid.x; j < m; j += WG) {
        let i = at(c, j);
        out[i] = normalized(i, c, mean, scale);
    }
}

// ---- backward ------------------------------------------------------------------------------

// One workgroup per (channel, chunk): partial Σdy and Σdy·x̂.
@compute @workgroup_size(WG)
fn grad_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = group(wid, nwg);
    if (g >= p.c * p.chunks) {
        return;
    }
    let c = g / p.chunks;
    let start = (g % p.chunks) * p.chunk;
    let end = min(start + p.chunk, values_per_channel());
    let mean = stat_mean[c];
    let scale = invstd(c);
    var s = vec2<f32>(0.0);
    for (var j = start + lid.x; j < end; j += WG) {
        let i = at(c, j);
        s += vec2<f32>(dy[i], dy[i] * (x[i] - mean) * scale);
    }
    w_sums[lid.x] = s;
    let total = reduce_sums(lid.x);
    if (lid.x == 0u) {
        scratch[3u * g] = total.x;
        scratch[3u * g + 1u] = total.y;
    }
}

// Channel c's Σdy (= dβ) and Σdy·x̂ (= dγ), kept in scratch for grad_input.
fn finish_sums(c: u32, total: vec2<f32>) {
    let tail = 3u * p.c * p.chunks + 2u * c;
    scratch[tail] = total.x;
    scratch[tail + 1u] = total.y;
    if ((p.flags & GRADS) != 0u) {
        dbeta[c] = total.x;
        dgamma[c] = total.y;
    }
}

// One invocation per channel sums its partials.
@compute @workgroup_size(CH_WG)
fn grad_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg) * CH_WG + lid.x;
    if (c >= p.c) {
        return;
    }
    var s = vec2<f32>(0.0);
    for (var k = 0u; k < p.chunks; k++) {
        let i = 3u * (c * p.chunks + k);
        s += vec2<f32>(scratch[i], scratch[i + 1u]);
    }
    finish_sums(c, s);
}

// One invocation per channel over its values, summed in blocks like stats_direct.
@compute @workgroup_size(CH_WG)
fn grad_direct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg) * CH_WG + lid.x;
    if (c >= p.c) {
        return;
    }
    let mean = stat_mean[c];
    let scale = invstd(c);
    let m = values_per_channel();
    var s = vec2<f32>(0.0);
    for (var j0 = 0u; j0 < m; j0 += BLOCK) {
        var b = vec2<f32>(0.0);
        for (var j = j0; j < min(j0 + BLOCK, m); j++) {
            let i = at(c, j);
            b += vec2<f32>(dy[i], dy[i] * (x[i] - mean) * scale);
        }
        s += b;
    }
    finish_sums(c, s);
}

// Training: dx = γ·invstd·(dy − (Σdy + x̂·Σdy·x̂)/m), the batch statistics' share of the
// gradient folded into the two channel sums.
@compute @workgroup_size(WG)
fn grad_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = group(wid, nwg) * WG + lid.x;
    if (i >= p.n * p.c * p.hw) {
        return;
    }
    let c = (i / p.hw) % p.c;
    let tail = 3u * p.c * p.chunks + 2u * c;
    out[i] = input_gradient(i, c, stat_mean[c], stat_scale[c], vec2<f32>(scratch[tail], scratch[tail + 1u]));
}

// dx of element i of channel c from the channel's saved stats and its sums (Σdy, Σdy·x̂).
fn input_gradient(i: u32, c: u32, mean: f32, scale: f32, sums: vec2<f32>) -> f32 {
    var g = scale;
    if ((p.flags & AFFINE) != 0u) {
        g = g * gamma[c];
    }
    let xhat = (x[i] - mean) * scale;
    return g * (dy[i] - (sums.x + xhat * sums.y) / f32(values_per_channel()));
}

// Training backward, one workgroup per channel: the two sums by the tree (dβ, dγ written by
// invocation 0 with GRADS), then the channel's dx by the whole workgroup.
@compute @workgroup_size(WG)
fn fused_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = group(wid, nwg);
    if (c >= p.c) {
        return;
    }
    let mean = stat_mean[c];
    let scale = stat_scale[c];
    let m = values_per_channel();
    var s = vec2<f32>(0.0);
    for (var j = lid.x; j < m; j += WG) {
        let i = at(c, j);
        s += vec2<f32>(dy[i], dy[i] * (x[i] - mean) * scale);
    }
    w_sums[lid.x] = s;
    let total = reduce_sums(lid.x);
    if (lid.x == 0u && (p.flags & GRADS) != 0u) {
        dbeta[c] = total.x;
        dgamma[c] = total.y;
    }
    for (var j = lid.x; j < m; j += WG) {
        let i = at(c, j);
        out[i] = input_gradient(i, c, mean, scale, total);
    }
}

// Eval: the running stats are constants, dx = γ·dy/sqrt(running_var + eps).
@compute @workgroup_size(WG)
fn grad_input_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = group(wid, nwg) * WG + lid.x;
    if (i >= p.n * p.c * p.hw) {
        return;
    }
    let c = (i / p.hw) % p.c;
    var g = 1.0 / sqrt(stat_scale[c] + p.eps);
    if ((p.flags & AFFINE) != 0u) {
        g = g * gamma[c];
    }
    out[i] = g * dy[i];
}
