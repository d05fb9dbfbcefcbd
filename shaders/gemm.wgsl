// The tile engine: every GEMM kiln runs on a GPU, C[M,N] (+)= Σ_k A[i,k]·B[k,j], with tiles of
// A and B staged through workgroup memory. The entry points differ only in how they gather an
// element of A or B and where an element of C goes:
//   matmul       op(A)·op(B) through strides (transposes without copies), bias per column;
//   conv_forward the implicit GEMM of Conv2d: A = weight [cout][cin·kh·kw], B = the input's
//                im2col, gathered in the tile load and never materialised, bias per channel;
//   conv_data    one stride phase of Conv2d's data gradient (ConvTranspose2d's forward):
//                pixels ih ≡ phase (mod stride) and only the taps that reach them, so no zero
//                tap of a strided conv is multiplied; the launcher runs one per phase;
//   conv_weight  Conv2d's weight gradient, A = dy [cout][n·ho·wo], B = the im2col transposed;
//                the long sum over pixels is split over grid layers z, each writing its own
//                partial sums, which conv.wgsl's `sum_partials` adds.
// Each entry passes its mode as a literal to `tile_product`; drivers inline the calls (NIR,
// NVIDIA's and Apple's compilers all do for compute shaders), so the switches below fold away.
//
// Tile shape (pipeline-overridable, so the launcher picks it per product and adapter): a
// workgroup of TX×TY invocations owns an 8·TY × 8·TX tile of C; invocation (tx, ty) owns rows
// 4ty..4ty+3 and BM/2+4ty.. of it, columns 4tx..4tx+3 and BN/2+4tx.., as 16 named vec4
// accumulators. Split halves rather than 8 contiguous rows/columns, so a quarter-warp's vec4
// reads of a tile row cover 32 consecutive words (no bank conflicts) and its stores of C are
// contiguous. Each step of BK, the next tiles' elements are fetched into registers while the
// current ones are multiplied (double buffering through registers: one workgroup copy of each
// tile, two barriers per step).
//
// The loads are scalar: a gather (im2col, strided transposes) has no vec4 to load, and on the
// aligned paths coalescing across lanes already reads whole cache lines. Lanes of a load walk
// whichever axis of the operand is contiguous in memory.
//
// llvmpipe stops an invocation's loops after 65,535 iterations: the launcher keeps each
// invocation's share of k within LOOP_BUDGET (src/kernels/gemm.rs counts the loops per step).
//
// kiln creates this module without wgpu's injected runtime checks (src/gpu/mod.rs), because
// tests/kernels/trusted.rs runs every entry in every tile shape with CHECK_INDICES on and
// finds no index out of range. Under it, every access to a storage, workgroup or register
// array goes through an accessor below that compares the index with the array's length and,
// past it, counts a violation in `violations` and skips the access (a load reads 0); store4's
// reads of bias and of the c it accumulates onto are bounded by the guards of its checked
// write. Off, as kiln compiles it, naga turns each check into `if (false)` once the override
// is set, which the driver drops: no slower than the kernel without accessors.

override TX: u32 = 16u;
override TY: u32 = 16u;
override BK: u32 = 8u;
override CHECK_INDICES: bool = false;

const MATMUL: u32 = 0u;
const CONV_FORWARD: u32 = 1u;
const CONV_DATA: u32 = 2u;
const CONV_WEIGHT: u32 = 3u;

// Bits of `flags`.
const ADD_BIAS: u32 = 1u;
const ACCUMULATE: u32 = 2u;
// Grid layer z writes its partial sums to c[z·m·n + i·n + j] (conv_weight).
const PARTIAL: u32 = 4u;

// Values of `act` (0: none): the activation store4 applies to C's final values (after the
// bias and any accumulation), so a producer followed by an activation stores act(C) and never
// C. The launcher sets it only on a dispatch whose stores are final: never with PARTIAL, and
// of a sum split over dispatches only on the last.
const RELU: u32 = 1u;
const LEAKY_RELU: u32 = 2u;
const TANH: u32 = 3u;
const SIGMOID: u32 = 4u;

struct Params {
    m: u32,
    n: u32,
    // This dispatch sums steps k_begin..k of k, in layers of `split` steps along grid z.
    k: u32,
    k_begin: u32,
    split: u32,
    flags: u32,
    tiles_n: u32,
    tiles: u32,
    // matmul: op(A)[i,k] = a[i*sa_i + k*sa_k], op(B)[k,j] = b[k*sb_k + j*sb_j].
    sa_i: u32,
    sa_k: u32,
    sb_k: u32,
    sb_j: u32,
    // Convolutions, in Conv2d's terms: x [nb, cin, h, w] -> y [nb, cout, ho, wo].
    cin: i32,
    cout: i32,
    h: i32,
    w: i32,
    ho: i32,
    wo: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    // conv_data's phase: pixels ih0 + t·sh (hp of them) by iw0 + t·sw (wp), taps r0 + j·rstep
    // (tr of them) by s0 + j·sstep (ts).
    ih0: i32,
    iw0: i32,
    hp: i32,
    wp: i32,
    r0: i32,
    s0: i32,
    rstep: i32,
    sstep: i32,
    tr: i32,
    ts: i32,
    // The epilogue's activation (0, RELU, ...) and leaky_relu's negative slope.
    act: u32,
    slope: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
// Accesses CHECK_INDICES found out of range, per array (slots below); gpu.dummy_rw otherwise.
@group(0) @binding(5) var<storage, read_write> violations: array<atomic<u32>>;

// [BK][BM/4] and [BK][BN/4]: A is kept transposed so that a step's column of it is contiguous.
override TILE_A_LEN: u32 = BK * TY * 2u;
override TILE_B_LEN: u32 = BK * TX * 2u;
var<workgroup> tile_a: array<vec4<f32>, TILE_A_LEN>;
var<workgroup> tile_b: array<vec4<f32>, TILE_B_LEN>;

// Most elements of A or B one invocation fetches per step (8·BK/TX, 8·BK/TY: BK ≤ 16, TX, TY
// ≥ 8, checked by the launcher): the length of its registers next_a, next_b.
const MOST_FETCHES: u32 = 16u;

// Slots of `violations` (src/kernels/gemm.rs: CHECKED_ARRAYS names them).
const IN_A: u32 = 0u;
const IN_B: u32 = 1u;
const IN_C: u32 = 2u;
const IN_TILE_A: u32 = 3u;
const IN_TILE_B: u32 = 4u;
const IN_REGISTERS: u32 = 5u;

// Whether element `index` of an array of `len` may be accessed: always, unless CHECK_INDICES,
// under which an index past the end is counted against `array` and refused.
fn in_range(array: u32, index: u32, len: u32) -> bool {
    if (!CHECK_INDICES || index < len) { return true; }
    atomicAdd(&violations[array], 1u);
    return false;
}

// The accessors. Signed indices arrive as u32(i32), so a negative one is past the end too.
fn read_a(index: u32) -> f32 {
    if (!in_range(IN_A, index, arrayLength(&a))) { return 0.0; }
    return a[index];
}

fn read_b(index: u32) -> f32 {
    if (!in_range(IN_B, index, arrayLength(&b))) { return 0.0; }
    return b[index];
}

fn write_c(index: u32, v: f32) {
    if (in_range(IN_C, index, arrayLength(&c))) { c[index] = v; }
}

fn tile_a_at(index: u32) -> vec4<f32> {
    if (!in_range(IN_TILE_A, index, TILE_A_LEN)) { return vec4<f32>(0.0); }
    return tile_a[index];
}

fn tile_b_at(index: u32) -> vec4<f32> {
    if (!in_range(IN_TILE_B, index, TILE_B_LEN)) { return vec4<f32>(0.0); }
    return tile_b[index];
}

fn set_tile_a(index: u32, component: u32, v: f32) {
    if (in_range(IN_TILE_A, index, TILE_A_LEN) && in_range(IN_TILE_A, component, 4u)) { tile_a[index][component] = v; }
}

fn set_tile_b(index: u32, component: u32, v: f32) {
    if (in_range(IN_TILE_B, index, TILE_B_LEN) && in_range(IN_TILE_B, component, 4u)) { tile_b[index][component] = v; }
}

// conv_data: output channel and taps of step kk of a phase.
struct Tap {
    co: i32,
    r: i32,
    s: i32,
}

fn phase_tap(kk: u32) -> Tap {
    let taps = p.tr * p.ts;
    let co = i32(kk) / taps;
    let t = i32(kk) % taps;
    return Tap(co, p.r0 + (t / p.ts) * p.rstep, p.s0 + (t % p.ts) * p.sstep);
}

// An output pixel (conv_forward's columns, conv_weight's steps): sample and position.
struct Pixel {
    nb: i32,
    oh: i32,
    ow: i32,
}

fn out_pixel(q: u32) -> Pixel {
    let plane = u32(p.ho * p.wo);
    let t = i32(q % plane);
    return Pixel(i32(q / plane), t / p.wo, t % p.wo);
}

// An im2col row (kk = (ci, r, s)): x at the tap's offset from an output pixel, 0 in padding.
fn im2col(ci: i32, r: i32, s: i32, px: Pixel) -> f32 {
    let ih = px.oh * p.sh - p.ph + r * p.dh;
    let iw = px.ow * p.sw - p.pw + s * p.dw;
    if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) { return 0.0; }
    return read_b(u32(((px.nb * p.cin + ci) * p.h + ih) * p.w + iw));
}

fn load_a(mode: u32, i: u32, kk: u32) -> f32 {
    switch mode {
        case MATMUL: { return read_a(i * p.sa_i + kk * p.sa_k); }
        case CONV_FORWARD: { return read_a(i * u32(p.cin * p.kh * p.kw) + kk); }
        case CONV_DATA: {
            let t = phase_tap(kk);
            return read_a(u32(((t.co * p.cin + i32(i)) * p.kh + t.r) * p.kw + t.s));
        }
        default: {
            let plane = u32(p.ho * p.wo);
            return read_a(((kk / plane) * u32(p.cout) + i) * plane + kk % plane);
        }
    }
}

fn load_b(mode: u32, kk: u32, j: u32) -> f32 {
    switch mode {
        case MATMUL: { return read_b(kk * p.sb_k + j * p.sb_j); }
        case CONV_FORWARD: {
            let taps = p.kh * p.kw;
            let t = i32(kk) % taps;
            return im2col(i32(kk) / taps, t / p.kw, t % p.kw, out_pixel(j));
        }
        case CONV_DATA: {
            let t = phase_tap(kk);
            let plane = u32(p.hp * p.wp);
            let q = i32(j % plane);
            let ih = p.ih0 + (q / p.wp) * p.sh;
            let iw = p.iw0 + (q % p.wp) * p.sw;
            // Exact divisions: the phase's taps are those that land on a stride step. Negative
            // offsets are out of range anyway, and GLSL leaves their division undefined.
            let offset_h = ih + p.ph - t.r * p.dh;
            let offset_w = iw + p.pw - t.s * p.dw;
            if (offset_h < 0 || offset_w < 0) { return 0.0; }
            let oh = offset_h / p.sh;
            let ow = offset_w / p.sw;
            if (oh >= p.ho || ow >= p.wo) { return 0.0; }
            return read_b(u32(((i32(j / plane) * p.cout + t.co) * p.ho + oh) * p.wo + ow));
        }
        default: {
            let taps = p.kh * p.kw;
            let t = i32(j) % taps;
            return im2col(i32(j) / taps, t / p.kw, t % p.kw, out_pixel(kk));
        }
    }
}

// Where C[i, j] lives.
fn c_index(mode: u32, i: u32, j: u32) -> u32 {
    switch mode {
        case CONV_FORWARD: {
            let plane = u32(p.ho * p.wo);
            return ((j / plane) * u32(p.cout) + i) * plane + j % plane;
        }
        case CONV_DATA: {
            let plane = u32(p.hp * p.wp);
            let q = i32(j % plane);
            let ih = p.ih0 + (q / p.wp) * p.sh;
            let iw = p.iw0 + (q % p.wp) * p.sw;
            return u32(((i32(j / plane) * p.cin + i32(i)) * p.h + ih) * p.w + iw);
        }
        default: { return i * p.n + j; }
    }
}

// Whether the lanes of a fetch walk k (else the rows of A / columns of B): the axis along
// which neighbouring elements are neighbours in memory.
fn a_along_k(mode: u32) -> bool {
    return mode != MATMUL || p.sa_k == 1u;
}

fn b_along_k(mode: u32) -> bool {
    switch mode {
        case MATMUL: { return p.sb_j != 1u; }
        case CONV_WEIGHT: { return true; }
        default: { return false; }
    }
}

// Element q of an invocation's share of a tile, as (row or column, step). A workgroup's
// invocations are a whole number of the tile's rows, columns and steps (TY, TX ∈ {8, 16},
// BK | 64), so an invocation keeps one row or column or one step of k for all its q: the
// index arithmetic that depends on it alone is done once, outside the k loop.
fn a_element(mode: u32, lane: u32, q: u32) -> vec2<u32> {
    let threads = TX * TY;
    let bm = 8u * TY;
    if (a_along_k(mode)) { return vec2<u32>(lane / BK + q * (threads / BK), lane % BK); }
    return vec2<u32>(lane % bm, lane / bm + q * (threads / bm));
}

fn b_element(mode: u32, lane: u32, q: u32) -> vec2<u32> {
    let threads = TX * TY;
    let bn = 8u * TX;
    if (b_along_k(mode)) { return vec2<u32>(lane / BK + q * (threads / BK), lane % BK); }
    return vec2<u32>(lane % bn, lane / bn + q * (threads / bn));
}

fn fetch_a(mode: u32, lane: u32, q: u32, i0: u32, k0: u32) -> f32 {
    let e = a_element(mode, lane, q);
    if (i0 + e.x >= p.m || k0 + e.y >= p.k) { return 0.0; }
    return load_a(mode, i0 + e.x, k0 + e.y);
}

fn put_a(mode: u32, lane: u32, q: u32, v: f32) {
    let e = a_element(mode, lane, q);
    set_tile_a(e.y * 2u * TY + e.x / 4u, e.x % 4u, v);
}

fn fetch_b(mode: u32, lane: u32, q: u32, j0: u32, k0: u32) -> f32 {
    let e = b_element(mode, lane, q);
    if (j0 + e.x >= p.n || k0 + e.y >= p.k) { return 0.0; }
    return load_b(mode, k0 + e.y, j0 + e.x);
}

fn put_b(mode: u32, lane: u32, q: u32, v: f32) {
    let e = b_element(mode, lane, q);
    set_tile_b(e.y * 2u * TX + e.x / 4u, e.x % 4u, v);
}

// The epilogue's activation (stable_tanh, stable_sigmoid: include/activations.wgsl, pasted in
// at the end of this file, the same text activation.wgsl runs).
fn activate(x: f32) -> f32 {
    switch p.act {
        case RELU: { return max(x, 0.0); }
        case LEAKY_RELU: { return select(x * p.slope, x, x > 0.0); }
        case TANH: { return stable_tanh(x); }
        case SIGMOID: { return stable_sigmoid(x); }
        default: { return x; }
    }
}

// Stores 4 outputs of row i from column j on: bias, accumulation, partial sums and the
// activation fused.
fn store4(mode: u32, z: u32, i: u32, j: u32, v: vec4<f32>) {
    if (i >= p.m) { return; }
    for (var q = 0u; q < 4u; q++) {
        if (j + q >= p.n) { return; }
        var o = c_index(mode, i, j + q);
        var x = v[q];
        // A split sum's bias goes into layer 0's partial sums only.
        if ((p.flags & ADD_BIAS) != 0u && z == 0u) {
            if (mode == MATMUL) { x += bias[j + q]; } else { x += bias[i]; }
        }
        if ((p.flags & PARTIAL) != 0u) { o += z * p.m * p.n; }
        if ((p.flags & ACCUMULATE) != 0u) { x += c[o]; }
        write_c(o, activate(x));
    }
}

fn tile_product(mode: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) {
    let t = wid.y * nwg.x + wid.x;
    // t and z are the same for the whole workgroup: these returns keep the barriers uniform.
    if (t >= p.tiles) { return; }
    let z = wid.z;
    let k_first = p.k_begin + z * p.split;
    let k_last = min(p.k, k_first + p.split);
    let i0 = (t / p.tiles_n) * 8u * TY;
    let j0 = (t % p.tiles_n) * 8u * TX;
    let tx = lid.x;
    let ty = lid.y;
    let lane = ty * TX + tx;
    let fetches_a = 8u * BK / TX;
    let fetches_b = 8u * BK / TY;
    // next_a and next_b are indexed by q < fetches_a, fetches_b, which the tile shape alone
    // sets: one check each covers every access (and leaves the barriers uniform).
    if (!in_range(IN_REGISTERS, fetches_a - 1u, MOST_FETCHES) || !in_range(IN_REGISTERS, fetches_b - 1u, MOST_FETCHES)) { return; }

    let zero = vec4<f32>(0.0);
    var c0l = zero; var c0h = zero; var c1l = zero; var c1h = zero;
    var c2l = zero; var c2h = zero; var c3l = zero; var c3h = zero;
    var c4l = zero; var c4h = zero; var c5l = zero; var c5h = zero;
    var c6l = zero; var c6h = zero; var c7l = zero; var c7h = zero;

    var next_a: array<f32, MOST_FETCHES>;
    var next_b: array<f32, MOST_FETCHES>;
    if (k_first < k_last) {
        for (var q = 0u; q < fetches_a; q++) { next_a[q] = fetch_a(mode, lane, q, i0, k_first); }
        for (var q = 0u; q < fetches_b; q++) { next_b[q] = fetch_b(mode, lane, q, j0, k_first); }
    }
    for (var k0 = k_first; k0 < k_last; k0 += BK) {
        workgroupBarrier();
        for (var q = 0u; q < fetches_a; q++) { put_a(mode, lane, q, next_a[q]); }
        for (var q = 0u; q < fetches_b; q++) { put_b(mode, lane, q, next_b[q]); }
        workgroupBarrier();
        let k1 = k0 + BK;
        if (k1 < k_last) {
            for (var q = 0u; q < fetches_a; q++) { next_a[q] = fetch_a(mode, lane, q, i0, k1); }
            for (var q = 0u; q < fetches_b; q++) { next_b[q] = fetch_b(mode, lane, q, j0, k1); }
        }
        // Steps past k_last hold zeros: a full BK keeps the loop's trip count constant.
        for (var kk = 0u; kk < BK; kk++) {
            let lo = tile_a_at(kk * 2u * TY + ty);
            let hi = tile_a_at(kk * 2u * TY + TY + ty);
            let bl = tile_b_at(kk * 2u * TX + tx);
            let bh = tile_b_at(kk * 2u * TX + TX + tx);
            c0l = fma(vec4<f32>(lo.x), bl, c0l); c0h = fma(vec4<f32>(lo.x), bh, c0h);
            c1l = fma(vec4<f32>(lo.y), bl, c1l); c1h = fma(vec4<f32>(lo.y), bh, c1h);
            c2l = fma(vec4<f32>(lo.z), bl, c2l); c2h = fma(vec4<f32>(lo.z), bh, c2h);
            c3l = fma(vec4<f32>(lo.w), bl, c3l); c3h = fma(vec4<f32>(lo.w), bh, c3h);
            c4l = fma(vec4<f32>(hi.x), bl, c4l); c4h = fma(vec4<f32>(hi.x), bh, c4h);
            c5l = fma(vec4<f32>(hi.y), bl, c5l); c5h = fma(vec4<f32>(hi.y), bh, c5h);
            c6l = fma(vec4<f32>(hi.z), bl, c6l); c6h = fma(vec4<f32>(hi.z), bh, c6h);
            c7l = fma(vec4<f32>(hi.w), bl, c7l); c7h = fma(vec4<f32>(hi.w), bh, c7h);
        }
    }

    let lo_row = i0 + 4u * ty;
    let hi_row = i0 + 4u * TY + 4u * ty;
    let lo_col = j0 + 4u * tx;
    let hi_col = j0 + 4u * TX + 4u * tx;
    store4(mode, z, lo_row, lo_col, c0l); store4(mode, z, lo_row, hi_col, c0h);
    store4(mode, z, lo_row + 1u, lo_col, c1l); store4(mode, z, lo_row + 1u, hi_col, c1h);
    store4(mode, z, lo_row + 2u, lo_col, c2l); store4(mode, z, lo_row + 2u, hi_col, c2h);
    store4(mode, z, lo_row + 3u, lo_col, c3l); store4(mode, z, lo_row + 3u, hi_col, c3h);
    store4(mode, z, hi_row, lo_col, c4l); store4(mode, z, hi_row, hi_col, c4h);
    store4(mode, z, hi_row + 1u, lo_col, c5l); store4(mode, z, hi_row + 1u, hi_col, c5h);
    store4(mode, z, hi_row + 2u, lo_col, c6l); store4(mode, z, hi_row + 2u, hi_col, c6h);
    store4(mode, z, hi_row + 3u, lo_col, c7l); store4(mode, z, hi_row + 3u, hi_col, c7h);
}

@compute @workgroup_size(TX, TY)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_product(MATMUL, wid, nwg, lid);
}

@compute @workgroup_size(TX, TY)
fn conv_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_product(CONV_FORWARD, wid, nwg, lid);
}

@compute @workgroup_size(TX, TY)
fn conv_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_product(CONV_DATA, wid, nwg, lid);
}

@compute @workgroup_size(TX, TY)
fn conv_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_product(CONV_WEIGHT, wid, nwg, lid);
}

// #include "activations.wgsl"
