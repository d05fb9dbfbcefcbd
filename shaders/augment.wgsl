// DiffAugment (Zhao et al. 2020) on [N, C, H, W] images, given its random draws: a [N, 7]
// array of uniforms in [0, 1) per sample (columns below), drawn by a uniform fill each step.
// Nothing here is random, so a backward pass sees the forward's exact augmentation.
//
// Both families are affine in x, and their linear parts have simple transposes:
// - color: brightness x + b, saturation (x − mean_c)·s + mean_c, contrast
//   (x − mean)·k + mean. Saturation and contrast are symmetric maps (s·I + (1 − s)·P_c and
//   k·I + (1 − k)·P with P_c, P the channel and per-sample averaging projections), and they
//   commute (P·P_c = P_c·P = P), so the backward is the same kernel without the brightness
//   offset. The per-sample mean comes from reduce.wgsl's means (src/kernels/augment.rs),
//   not from a loop here.
// - shift: translation by (tx, ty) with zero fill, then the cutout square zeroed. Its
//   transpose moves the masked gradient back by (−tx, −ty), zero where it came from outside.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    // color: 1 adds the brightness offset (forward), 0 leaves it out (backward).
    brightness: u32,
    // shift: which of the two are on (0 or 1), and the sizes they derive from H and W.
    translation: u32,
    cutout: u32,
    shift_h: u32,
    shift_w: u32,
    cut_h: u32,
    cut_w: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> draws: array<f32>;
// color only: the per-sample mean of x over C·H·W.
@group(0) @binding(3) var<storage, read> means: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
// Columns of the draws array (PARAMS_PER_SAMPLE in src/kernels/augment.rs).
const DRAWS: u32 = 7u;
const BRIGHTNESS: u32 = 0u;
const SATURATION: u32 = 1u;
const CONTRAST: u32 = 2u;
const TRANSLATE_X: u32 = 3u;
const TRANSLATE_Y: u32 = 4u;
const CUTOUT_X: u32 = 5u;
const CUTOUT_Y: u32 = 6u;

// An integer uniform on 0..m from a uniform u in [0, 1), in f32 as the CPU reference and
// scripts/augment_fixtures.py do (the min guards u·m rounding up to m).
fn pick(u: f32, m: u32) -> u32 {
    return min(u32(max(floor(u * f32(m)), 0.0)), m - 1u);
}

// Pixels per invocation in both families: a storage load costs about 100 FMAs on llvmpipe,
// so the draws (and color's mean) are loaded once for several pixels. Loops over PIXELS have
// a constant bound (unrolled).
const PIXELS: u32 = 4u;

// Invocation t covers pixels PIXELS·(t − n·blocks) .. + PIXELS of sample n (flat within the
// H·W plane): their channel means, then every channel written. Its C-long loops are the only
// ones here, and the launcher keeps them under llvmpipe's loop limit.
fn color(t: u32, with_brightness: bool) {
    let hw = p.h * p.w;
    let blocks = (hw + PIXELS - 1u) / PIXELS;
    let n = t / blocks;
    let first = (t - n * blocks) * PIXELS;
    let count = min(PIXELS, hw - first);
    let base = n * p.c * hw + first;
    let r = n * DRAWS;
    let b = select(0.0, draws[r + BRIGHTNESS] - 0.5, with_brightness);
    let s = draws[r + SATURATION] * 2.0;
    let k = draws[r + CONTRAST] + 0.5;
    // The mean of x + b is mean(x) + b, and saturation keeps every mean over channels.
    let sample_mean = means[n] + b;
    var sums = vec4<f32>(0.0);
    for (var c = 0u; c < p.c; c++) {
        for (var q = 0u; q < PIXELS; q++) {
            if (q < count) {
                sums[q] += x[base + c * hw + q];
            }
        }
    }
    let channel_means = sums / f32(p.c) + b;
    for (var c = 0u; c < p.c; c++) {
        for (var q = 0u; q < PIXELS; q++) {
            if (q < count) {
                let i = base + c * hw + q;
                let saturated = (x[i] + b - channel_means[q]) * s + channel_means[q];
                y[i] = (saturated - sample_mean) * k + sample_mean;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn color_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= p.n * ((p.h * p.w + PIXELS - 1u) / PIXELS)) { return; }
    color(t, p.brightness != 0u);
}

// dx = (the linear part of color) dy: `means` holds dy's per-sample means.
@compute @workgroup_size(WG)
fn color_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= p.n * ((p.h * p.w + PIXELS - 1u) / PIXELS)) { return; }
    color(t, false);
}

// The draws follow DiffAugment_pytorch.py: translation by randint(−s, s + 1) along each axis
// with s = int(size / 8 + 0.5), and a cutout square of int(size / 2 + 0.5) at offset
// randint(0, size + 1 − cut % 2), its first row offset − cut / 2, clipped at the border.

// Sample n's translation (row, column): output pixel (i, j) reads input pixel (i, j) + t.
fn translation(n: u32) -> vec2<i32> {
    if (p.translation == 0u) { return vec2<i32>(0, 0); }
    let r = n * DRAWS;
    let dx = i32(pick(draws[r + TRANSLATE_X], 2u * p.shift_h + 1u)) - i32(p.shift_h);
    let dy = i32(pick(draws[r + TRANSLATE_Y], 2u * p.shift_w + 1u)) - i32(p.shift_w);
    return vec2<i32>(dx, dy);
}

// Sample n's cutout square as (first row, first column, end row, end column); empty when
// cutout is off.
fn cutout_square(n: u32) -> vec4<i32> {
    if (p.cutout == 0u) { return vec4<i32>(0, 0, 0, 0); }
    let r = n * DRAWS;
    let top = i32(pick(draws[r + CUTOUT_X], p.h + 1u - p.cut_h % 2u)) - i32(p.cut_h / 2u);
    let left = i32(pick(draws[r + CUTOUT_Y], p.w + 1u - p.cut_w % 2u)) - i32(p.cut_w / 2u);
    return vec4<i32>(top, left, top + i32(p.cut_h), left + i32(p.cut_w));
}

fn covers(square: vec4<i32>, q: vec2<i32>) -> bool {
    return q.x >= square.x && q.x < square.z && q.y >= square.y && q.y < square.w;
}

fn inside(q: vec2<i32>) -> bool {
    return q.x >= 0 && q.x < i32(p.h) && q.y >= 0 && q.y < i32(p.w);
}

// Invocation t covers row i of plane n·C + c, columns j0 .. j0 + PIXELS (those below W).
struct Run {
    plane: u32,
    n: u32,
    i: u32,
    j0: u32,
}

fn run_of(t: u32) -> Run {
    let blocks = (p.w + PIXELS - 1u) / PIXELS;
    let row = t / blocks;
    let plane = row / p.h;
    return Run(plane, plane / p.c, row - plane * p.h, (t - row * blocks) * PIXELS);
}

fn runs() -> u32 {
    return p.n * p.c * p.h * ((p.w + PIXELS - 1u) / PIXELS);
}

// y[n, c, q] = x[n, c, q + t], zero past the border or under the cutout square.
@compute @workgroup_size(WG)
fn shift_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= runs()) { return; }
    let run = run_of(t);
    let moved = translation(run.n);
    let square = cutout_square(run.n);
    for (var k = 0u; k < PIXELS; k++) {
        let q = vec2<i32>(i32(run.i), i32(run.j0 + k));
        if (q.y < i32(p.w)) {
            let read_at = q + moved;
            var v = 0.0;
            if (inside(read_at) && !covers(square, q)) {
                v = x[run.plane * p.h * p.w + u32(read_at.x) * p.w + u32(read_at.y)];
            }
            y[run.plane * p.h * p.w + run.i * p.w + run.j0 + k] = v;
        }
    }
}

// The transpose: dx[n, c, q] = dy[n, c, q − t] where that output pixel exists and was kept.
@compute @workgroup_size(WG)
fn shift_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = flat(wid, nwg, lid);
    if (t >= runs()) { return; }
    let run = run_of(t);
    let moved = translation(run.n);
    let square = cutout_square(run.n);
    for (var k = 0u; k < PIXELS; k++) {
        let q = vec2<i32>(i32(run.i), i32(run.j0 + k));
        if (q.y < i32(p.w)) {
            let written_at = q - moved;
            var v = 0.0;
            if (inside(written_at) && !covers(square, written_at)) {
                v = x[run.plane * p.h * p.w + u32(written_at.x) * p.w + u32(written_at.y)];
            }
            y[run.plane * p.h * p.w + run.i * p.w + run.j0 + k] = v;
        }
    }
}

// #include "grid.wgsl"
