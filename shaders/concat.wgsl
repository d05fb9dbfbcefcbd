// torch.cat and its backward as one block copy: a tensor seen as [outer, channels, inner]
// (channels = the concatenated dim) copies `channels` slices starting at `src_offset` of a
// source with `src_channels` into a destination with `dst_channels` starting at
// `dst_offset`. Forward copies each input into its slice of the output; backward copies each
// slice of dy back out into that input's gradient. No loops: one invocation per element.

struct Params {
    // Elements copied: outer · channels · inner.
    total: u32,
    channels: u32,
    inner: u32,
    src_channels: u32,
    src_offset: u32,
    dst_channels: u32,
    dst_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn copy_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat(wid, nwg, lid);
    if (i >= p.total) { return; }
    let s = i % p.inner;
    let t = i / p.inner;
    let c = t % p.channels;
    let o = t / p.channels;
    dst[((o * p.dst_channels) + p.dst_offset + c) * p.inner + s] = src[((o * p.src_channels) + p.src_offset + c) * p.inner + s];
}

// #include "grid.wgsl"
