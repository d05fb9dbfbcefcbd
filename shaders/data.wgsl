// Batches gathered on the GPU from a dataset uploaded once as bytes (four 8-bit pixels per
// u32 word): y[b, j] = scale * pixel(index[first + b], j) + offset, so a training step reads
// its batch from GPU memory instead of uploading it. The epoch's shuffled order lives in
// `order`; a step only moves `first`. A dataset larger than one storage binding is split
// into up to four chunks of `per_chunk` whole images each.

struct Params {
    batch: u32,
    image_len: u32,
    first: u32,
    scale: f32,
    offset: f32,
    per_chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(4) var<storage, read> pixels1: array<u32>;
@group(0) @binding(5) var<storage, read> pixels2: array<u32>;
@group(0) @binding(6) var<storage, read> pixels3: array<u32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn gather_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= p.batch * p.image_len) { return; }
    let b = i / p.image_len;
    let j = i - b * p.image_len;
    let image = order[p.first + b];
    let chunk = image / p.per_chunk;
    let byte = (image - chunk * p.per_chunk) * p.image_len + j;
    var word: u32;
    switch chunk {
        case 0u: { word = pixels[byte >> 2u]; }
        case 1u: { word = pixels1[byte >> 2u]; }
        case 2u: { word = pixels2[byte >> 2u]; }
        default: { word = pixels3[byte >> 2u]; }
    }
    let value = (word >> ((byte & 3u) * 8u)) & 255u;
    y[i] = p.scale * f32(value) + p.offset;
}
