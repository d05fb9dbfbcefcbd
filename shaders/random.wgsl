// Counter-based random numbers: Philox 4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011; Random123). Bits are a pure function of (seed, offset, element):
// element i reads word i % 4 of philox(counter = (i / 4 + shard · ⌈n / 4⌉, 0, offset_lo,
// offset_hi), key = (seed_lo, seed_hi)). Nothing is stored between dispatches, so dropout backward
// recomputes forward's mask, and a fill is reproducible from its seed and offset.
//
// Every RNG entry point handles one Philox block (4 consecutive elements) per invocation.
// The reparameterization trick lives here too: it consumes a normal fill.

struct Params {
    // The first 16 bytes are the RNG state; the executor rewrites them to advance a step.
    seed_lo: u32,
    seed_hi: u32,
    offset_lo: u32,
    offset_hi: u32,
    n: u32,
    a: f32,          // uniform: lo, normal: mean, dropout: 1 / (1 - p) (0 when p = 1)
    b: f32,          // uniform: hi, normal: std
    threshold: u32,  // dropout: keep element when its top 24 bits >= ceil(p * 2^24)
    // Data-parallel rank: rank r of N, holding samples rB..rB+B of a global batch, reads the
    // blocks one process at batch NB reads for them (when n is a multiple of 4). 0 alone.
    shard: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Entry points reuse binding numbers under their own names: collisions are checked per entry
// point, and the auto layout holds only the variables an entry uses.
// philox_bits: raw blocks, for known-answer tests.
@group(0) @binding(1) var<storage, read> counters: array<u32>;
@group(0) @binding(2) var<storage, read_write> bits: array<u32>;
// uniform_fill, normal_fill (binding 2), dropout.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// dropout_backward.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
// reparameterize and its backward.
@group(0) @binding(1) var<storage, read> mu: array<f32>;
@group(0) @binding(2) var<storage, read> logvar: array<f32>;
@group(0) @binding(3) var<storage, read> eps: array<f32>;
@group(0) @binding(4) var<storage, read_write> z: array<f32>;
@group(0) @binding(1) var<storage, read> dz: array<f32>;
@group(0) @binding(4) var<storage, read_write> dmu: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogvar: array<f32>;

// 64 threads × 4 elements: the same 256 elements per workgroup as the elementwise kernels.
const WG: u32 = 64u;
const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;
const INV_2_24: f32 = 5.9604644775390625e-8;
const PI: f32 = 3.14159265358979;

// High 32 bits of a 32×32 product. WGSL has no 64-bit integers, so multiply 16-bit halves;
// the middle column sums three values below 2^16 each and cannot overflow.
fn mulhi(a: u32, b: u32) -> u32 {
    let a0 = a & 0xFFFFu;
    let a1 = a >> 16u;
    let b0 = b & 0xFFFFu;
    let b1 = b >> 16u;
    let lo_lo = a0 * b0;
    let hi_lo = a1 * b0;
    let lo_hi = a0 * b1;
    let middle = (lo_lo >> 16u) + (hi_lo & 0xFFFFu) + (lo_hi & 0xFFFFu);
    return a1 * b1 + (hi_lo >> 16u) + (lo_hi >> 16u) + (middle >> 16u);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
        }
        let hi0 = mulhi(PHILOX_M0, c.x);
        let hi1 = mulhi(PHILOX_M1, c.z);
        c = vec4<u32>(hi1 ^ c.y ^ k.x, PHILOX_M1 * c.z, hi0 ^ c.w ^ k.y, PHILOX_M0 * c.x);
    }
    return c;
}

fn block_bits(block: u32) -> vec4<u32> {
    let first = p.shard * ((p.n + 3u) / 4u);
    return philox(vec4<u32>(first + block, 0u, p.offset_lo, p.offset_hi), vec2<u32>(p.seed_lo, p.seed_hi));
}

// The top 24 bits as a float in [0, 1 - 2^-24]: exact in f32, so 1.0 is never produced.
fn unit(word: u32) -> f32 {
    return f32(word >> 8u) * INV_2_24;
}

// -ln(1 - x) for x in [0, 1 - 2^-24]: 1 - x >= 2^-24, so log never sees 0. GPU log is only
// accurate in absolute terms near 1 (2^-21 by the Vulkan spec), which sqrt would turn into
// errors up to 1e-3 in small radii, so small x takes the series Σ x^k / k instead
// (truncation below 1e-8 relative for x < 1/8).
fn neg_log_one_minus(x: f32) -> f32 {
    if (x < 0.125) {
        return x * (1.0 + x * (0.5 + x * (1.0 / 3.0 + x * (0.25 + x * (0.2 + x * (1.0 / 6.0 + x * (1.0 / 7.0 + x * 0.125)))))));
    }
    return -log(1.0 - x);
}

// Box–Muller on two words: radius from u1 = 1 - unit(w0) in (0, 1], angle kept in [-π, π),
// where GPU sin/cos are accurate.
fn gaussian_pair(w0: u32, w1: u32) -> vec2<f32> {
    let r = sqrt(2.0 * neg_log_one_minus(unit(w0)));
    let theta = PI * (2.0 * unit(w1) - 1.0);
    return r * vec2<f32>(cos(theta), sin(theta));
}

// bits[4b..4b+4] = philox(counters[4b..4b+4], seed), for p.n blocks.
@compute @workgroup_size(WG)
fn philox_bits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat(wid, nwg, lid);
    if (b >= p.n) { return; }
    let c = vec4<u32>(counters[4u * b], counters[4u * b + 1u], counters[4u * b + 2u], counters[4u * b + 3u]);
    let r = philox(c, vec2<u32>(p.seed_lo, p.seed_hi));
    for (var k = 0u; k < 4u; k++) {
        bits[4u * b + k] = r[k];
    }
}

// y = lo + (hi - lo) · u, u uniform in [0, 1).
@compute @workgroup_size(WG)
fn uniform_fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat(wid, nwg, lid);
    if (4u * b >= p.n) { return; }
    let r = block_bits(b);
    for (var k = 0u; k < 4u; k++) {
        let i = 4u * b + k;
        if (i < p.n) {
            y[i] = p.a + (p.b - p.a) * unit(r[k]);
        }
    }
}

// y = mean + std · N(0, 1); words (0, 1) give elements 0 and 1, words (2, 3) elements 2 and 3.
@compute @workgroup_size(WG)
fn normal_fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat(wid, nwg, lid);
    if (4u * b >= p.n) { return; }
    let r = block_bits(b);
    let g = vec4<f32>(gaussian_pair(r.x, r.y), gaussian_pair(r.z, r.w));
    for (var k = 0u; k < 4u; k++) {
        let i = 4u * b + k;
        if (i < p.n) {
            y[i] = p.a + p.b * g[k];
        }
    }
}

// Keep element i with probability 1 - p, scaled by 1 / (1 - p) (inverted dropout, as PyTorch).
@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat(wid, nwg, lid);
    if (4u * b >= p.n) { return; }
    let r = block_bits(b);
    for (var k = 0u; k < 4u; k++) {
        let i = 4u * b + k;
        if (i < p.n) {
            y[i] = select(0.0, x[i] * p.a, (r[k] >> 8u) >= p.threshold);
        }
    }
}

// dx = dy · mask / (1 - p), the mask recomputed from the same (seed, offset) as forward.
@compute @workgroup_size(WG)
fn dropout_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat(wid, nwg, lid);
    if (4u * b >= p.n) { return; }
    let r = block_bits(b);
    for (var k = 0u; k < 4u; k++) {
        let i = 4u * b + k;
        if (i < p.n) {
            dx[i] = select(0.0, dy[i] * p.a, (r[k] >> 8u) >= p.threshold);
        }
    }
}

// z = mu + eps · exp(logvar / 2), eps from a normal fill. One element per invocation.
@compute @workgroup_size(WG)
fn reparameterize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    z[i] = mu[i] + eps[i] * exp(0.5 * logvar[i]);
}

// dmu = dz, dlogvar = dz · eps · exp(logvar / 2) / 2.
@compute @workgroup_size(WG)
fn reparameterize_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = dz[i];
    dmu[i] = g;
    dlogvar[i] = g * eps[i] * 0.5 * exp(0.5 * logvar[i]);
}

// #include "grid.wgsl"
