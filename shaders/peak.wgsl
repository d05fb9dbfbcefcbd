// Microbenchmarks that measure what an adapter can do at best, so kernel reports can say
// which fraction of it they reach: an FMA-bound loop and a bandwidth-bound copy.

struct Params {
    n: u32,
    iterations: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

const WG: u32 = 256u;

// Eight independent vec4 FMA chains, unrolled four times per loop iteration so the loop's
// own bookkeeping (CPU drivers run it per SIMD group, with masks) stays small against the
// arithmetic. The multiplier stays just below 1 so values neither overflow nor denormalize.
// 256 flops per iteration.
@compute @workgroup_size(WG)
fn fma_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= p.n) { return; }
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(f32(i & 7u) * 1e-4);
    var a0 = vec4<f32>(1.0); var a1 = vec4<f32>(1.1); var a2 = vec4<f32>(1.2); var a3 = vec4<f32>(1.3);
    var a4 = vec4<f32>(1.4); var a5 = vec4<f32>(1.5); var a6 = vec4<f32>(1.6); var a7 = vec4<f32>(1.7);
    for (var k = 0u; k < p.iterations; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    dst[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

// One vec4 per invocation. On llvmpipe (lavapipe, GL) this reaches ~2 GB/s on 2 idle cores,
// under a third of memcpy (numpy, same 64 MiB: 7 GB/s), and about half that on busy cores.
// The driver is the limit, not this kernel: llvmpipe loads and stores storage buffers one SIMD
// lane at a time, and no layout escapes that (lavapipe, idle): a scalar f32 per invocation
// 1.65 GB/s, a grid-stride loop 1.3-1.9, 4096 contiguous vec4s per invocation 2.1, and the
// same kernel without wgpu's bounds checks (create_shader_module_trusted) 2.05. So the figure
// is what a kiln kernel can stream there, which is the ceiling its reports should use.
@compute @workgroup_size(WG)
fn copy_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= p.n) { return; }
    dst[i] = src[i] * f32(p.iterations);
}
