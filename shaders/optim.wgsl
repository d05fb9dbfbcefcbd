// Optimizer updates over one flat parameter arena: Adam and SGD with momentum, exactly as
// torch.optim.Adam and torch.optim.SGD, and the exponential moving average of the
// parameters that GAN generators are sampled from. Each is one dispatch over all parameters.
//
// The step counter lives on the GPU: `advance` (one invocation) bumps it before the update
// dispatch reads it, so replaying the recorded pair each step needs no CPU write. lr is the
// first params field so a scheduler can rewrite it with a 4-byte write.

struct Params {
    lr: f32,
    beta1: f32,        // Adam
    beta2: f32,        // Adam
    eps: f32,          // Adam
    weight_decay: f32, // both: L2, added to the gradient
    momentum: f32,     // SGD
    dampening: f32,    // SGD
    nesterov: u32,     // SGD
    n: u32,
}

// bias1 = 1 - beta1^t and bias2 = 1 - beta2^t, kept by the recurrence
// 1 - b^t = (1 - b) + b (1 - b^(t-1)): all terms positive, so no cancellation. Computing
// 1 - pow(b, t) in f32 instead loses ~1e-4 relative for b = 0.999 at small t.
struct Step {
    t: u32,
    bias1: f32,
    bias2: f32,
    unused: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>; // Adam exp_avg; SGD momentum_buffer
@group(0) @binding(4) var<storage, read_write> v: array<f32>; // Adam exp_avg_sq
@group(0) @binding(5) var<storage, read_write> step: Step;

const WG: u32 = 256u;

@compute @workgroup_size(1)
fn advance() {
    step.t = step.t + 1u;
    step.bias1 = (1.0 - p.beta1) + p.beta1 * step.bias1;
    step.bias2 = (1.0 - p.beta2) + p.beta2 * step.bias2;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    var g = grad[i];
    if (p.weight_decay != 0.0) {
        g = g + p.weight_decay * param[i];
    }
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    // torch's order: denom = sqrt(v) / sqrt(1 - beta2^t) + eps, step = lr / (1 - beta1^t).
    let denom = sqrt(vi) / sqrt(step.bias2) + p.eps;
    param[i] = param[i] - (p.lr / step.bias1) * mi / denom;
}

// `adam` four elements at a time, for arenas of a multiple of 4 (the store pads its arenas so):
// on CPU adapters each load costs the same whatever its width, so vec4 loads and stores do a
// quarter of the work, and the step's bias terms are loaded once per four elements.
@group(0) @binding(1) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn adam4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n / 4u) { return; }
    let p0 = param4[i];
    var g = grad4[i];
    if (p.weight_decay != 0.0) {
        g = g + p.weight_decay * p0;
    }
    let mi = p.beta1 * m4[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v4[i] + (1.0 - p.beta2) * g * g;
    m4[i] = mi;
    v4[i] = vi;
    let denom = sqrt(vi) / sqrt(step.bias2) + p.eps;
    param4[i] = p0 - (p.lr / step.bias1) * mi / denom;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    var d = grad[i];
    if (p.weight_decay != 0.0) {
        d = d + p.weight_decay * param[i];
    }
    if (p.momentum != 0.0) {
        // torch starts the buffer at the first gradient itself, undamped.
        var buf = d;
        if (step.t > 1u) {
            buf = p.momentum * m[i] + (1.0 - p.dampening) * d;
        }
        m[i] = buf;
        d = select(buf, d + p.momentum * buf, p.nesterov != 0u);
    }
    param[i] = param[i] - p.lr * d;
}

// The exponential moving average of a parameter arena (the generator weights that StyleGAN,
// BigGAN and lucidrains' trainers sample from), after each optimizer update:
// average = β·average + (1 − β)·param, with β = min(decay, (1 + t) / (10 + t)) at the
// optimizer's step t (`step`, bound read-only in effect): TensorFlow's
// ExponentialMovingAverage warm-up, so the average does not carry the random initial weights
// for thousands of steps. `beta1` holds the decay; `m` is the average.
@compute @workgroup_size(WG)
fn ema(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let t = f32(step.t);
    let beta = min(p.beta1, (1.0 + t) / (10.0 + t));
    m[i] = beta * m[i] + (1.0 - beta) * param[i];
}

// #include "grid.wgsl"
