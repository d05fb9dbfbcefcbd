// Batches gathered on the GPU from a dataset uploaded once as bytes (four 8-bit pixels per
// u32 word): y[b, j] = scale * pixel(index[first + b], j) + offset, so a training step reads
// its batch from GPU memory instead of uploading it. The epoch's shuffled order lives in
// `order`; a step only moves `first`.

struct Params {
    batch: u32,
    image_len: u32,
    first: u32,
    scale: f32,
    offset: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn gather_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= p.batch * p.image_len) { return; }
    let b = i / p.image_len;
    let j = i - b * p.image_len;
    let byte = order[p.first + b] * p.image_len + j;
    let value = (pixels[byte >> 2u] >> ((byte & 3u) * 8u)) & 255u;
    y[i] = p.scale * f32(value) + p.offset;
}
