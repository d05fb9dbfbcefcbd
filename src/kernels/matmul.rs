//! shaders/matmul.wgsl and matmul_window.wgsl: GEMM with transpose flags, fused bias and
//! accumulation, in four variants chosen per adapter; and the Linear layer's forward and
//! backward built on it.

use super::gemm::Activation;
use super::{check_len, even_slices, gemm};
use super::conv::{has_subgroups_of_8, has_windows, LOOP_BUDGET, WINDOW};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::Result;

/// Which kernel computes the product. `Auto` picks per adapter; the others force one (tests
/// check every variant against the reference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulVariant {
    #[default]
    Auto,
    /// One output per invocation: the readable oracle.
    Simple,
    /// 16×16 outputs per invocation from registers, no workgroup memory: best on CPU adapters
    /// without subgroups of 8 (llvmpipe-GL).
    Blocked,
    /// shaders/gemm.wgsl, the tile engine: 128×128, 64×128 or 64×64 tiles through workgroup
    /// memory, 8×8 outputs per invocation, long or narrow sums split over grid layers: the
    /// GPU kernel.
    Tiled,
    /// shaders/matmul_window.wgsl: op(A) copied into 64 KiB uniform-buffer windows, op(B)
    /// handed round a subgroup of 8 by shuffles; a copy and one dispatch per 128 rows and
    /// 1024 steps of k (64 rows and 2048 steps where M pads less so). Best on CPU adapters
    /// with subgroups of 8 (lavapipe); where those or the windows are missing it runs as
    /// `Blocked`.
    Windowed,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 4] = [MatmulVariant::Simple, MatmulVariant::Blocked, MatmulVariant::Tiled, MatmulVariant::Windowed];

    /// The concrete variant for `gpu`: on CPU adapters workgroup memory and barriers cost more
    /// than they save (lavapipe on 2 busy cores, 1024²: 1.5 GFLOP/s blocked, 0.22 tiled, 0.07
    /// simple), on GPUs the opposite; where subgroups of 8 and uniform windows exist, storage
    /// loads are what a CPU adapter spends its time on, and the windowed kernel avoids most
    /// (docs/BENCHMARKS.md).
    pub fn resolve(self, gpu: &Gpu) -> MatmulVariant {
        use crate::gpu::Kernels;
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        match (self, gpu.kernels) {
            (MatmulVariant::Auto, Kernels::Tiled) => MatmulVariant::Tiled,
            (MatmulVariant::Auto, Kernels::Windowed) => MatmulVariant::Windowed,
            (MatmulVariant::Auto, Kernels::Blocked) => MatmulVariant::Blocked,
            (MatmulVariant::Auto, Kernels::Auto) if cpu && windows_apply(gpu) => MatmulVariant::Windowed,
            (MatmulVariant::Auto, Kernels::Auto) if cpu => MatmulVariant::Blocked,
            (MatmulVariant::Auto, Kernels::Auto) => MatmulVariant::Tiled,
            (v, _) => v,
        }
    }
}

/// C[m,n] (+)= op(A)·op(B) (+ bias). A is stored [m,k], or [k,m] when `trans_a`; B is stored
/// [k,n], or [n,k] when `trans_b`. Build with `Matmul { m, n, k, ..Default::default() }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// C += product instead of C = product (gradient accumulation).
    pub accumulate: bool,
    pub variant: MatmulVariant,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    sa_i: u32,
    sa_k: u32,
    sb_k: u32,
    sb_j: u32,
    has_bias: u32,
    accumulate: u32,
    /// This dispatch's slice of the reduction: steps `k_begin..k` (column_sum: rows `k_begin..m`).
    k_begin: u32,
}

/// Field order and types match `Params` in shaders/matmul_window.wgsl: matmul.wgsl's, then
/// one product dispatch's row block and chunk, then the windows' layout for `pack`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WindowParams {
    base: Params,
    row0: u32,
    k0: u32,
    steps: u32,
    kc: u32,
    stride: u32,
    chunks: u32,
    tasks: u32,
}

// Grid geometry, as in the shader: invocations per workgroup and the square of C each
// invocation (BLOCK) or workgroup (TILE, COLUMN_SUM_COLS columns) computes.
const SIMPLE_WG: u32 = 64;
const BLOCKED_WG: u32 = 8;
const BLOCK: usize = 16;
const COLUMN_SUM_COLS: u32 = 16;
// Windowed: columns per workgroup and lanes per workgroup (a row block is SG lanes x 8 or 16
// rows per lane; one chunk of windows holds WINDOW / rows per lane steps of k).
const WINDOW_COLS: usize = 16;
const SG: usize = 8;
/// Most steps of k one dispatch of matmul.wgsl sums; longer products are split into slices
/// that add to C in turn. llvmpipe silently ends an invocation after 65,535 loop iterations
/// (docs/ARCHITECTURE.md), and a slice costs at most this many plus the stores: `simple` k,
/// `blocked` k + 256.
const K_SLICE: usize = 48_000;
/// `column_sum`'s slice of rows: each of its 16 row lanes walks 1/16 of them.
const ROW_SLICE: usize = 16 * K_SLICE;

impl Matmul {
    fn describe(&self) -> String {
        let (ta, tb) = (if self.trans_a { "ᵀ" } else { "" }, if self.trans_b { "ᵀ" } else { "" });
        format!("matmul m={} n={} k={} (A{ta}·B{tb})", self.m, self.n, self.k)
    }

    fn shapes(&self) -> ([usize; 2], [usize; 2]) {
        let a = if self.trans_a { [self.k, self.m] } else { [self.m, self.k] };
        let b = if self.trans_b { [self.n, self.k] } else { [self.k, self.n] };
        (a, b)
    }

    pub fn cost(&self, bias: bool) -> Cost {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        let extra = u64::from(bias) + u64::from(self.accumulate);
        let reads = m * k + k * n + if bias { n } else { 0 } + if self.accumulate { m * n } else { 0 };
        Cost { flops: 2 * m * n * k + extra * m * n, bytes: 4 * (reads + m * n) }
    }
}

fn u32_dim(what: &str, name: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| crate::Error::Shape(format!("{what}: {name}={v} is over 2³²")))
}

/// C = op(A)·op(B) (+ bias[n] on every row) (+ C when `shape.accumulate`). One dispatch, or
/// with `MatmulVariant::Windowed` a copy of op(A) into windows and one per row block and chunk.
pub fn matmul(gpu: &Gpu, shape: &Matmul, a: &Buffer, b: &Buffer, bias: Option<&Buffer>, c: &Buffer) -> Result<Vec<Dispatch>> {
    matmul_activated(gpu, shape, a, b, bias, Activation::Identity, c)
}

/// [`matmul`] with `act` applied to C's final values in the tile engine's epilogue. Refused
/// unless the product runs on the tile engine (`shape.variant.resolve(gpu) ==
/// MatmulVariant::Tiled`) or `act` is the identity.
pub fn matmul_activated(gpu: &Gpu, shape: &Matmul, a: &Buffer, b: &Buffer, bias: Option<&Buffer>, act: Activation, c: &Buffer) -> Result<Vec<Dispatch>> {
    let what = shape.describe();
    let (sa, sb) = shape.shapes();
    let (m, n, k) = (u32_dim(&what, "m", shape.m)?, u32_dim(&what, "n", shape.n)?, u32_dim(&what, "k", shape.k)?);
    // Saturating, so absurd sizes fail the length check instead of wrapping. A buffer that
    // passes is under the binding limit (< 2³² bytes), so every index fits the shader's u32.
    check_len(&what, &format!("A {sa:?}"), a, sa[0].saturating_mul(sa[1]))?;
    check_len(&what, &format!("B {sb:?}"), b, sb[0].saturating_mul(sb[1]))?;
    check_len(&what, &format!("C [{}, {}]", shape.m, shape.n), c, shape.m.saturating_mul(shape.n))?;
    if let Some(bias) = bias {
        check_len(&what, &format!("bias [{}]", shape.n), bias, shape.n)?;
    }
    let params = Params {
        m,
        n,
        k,
        sa_i: if shape.trans_a { 1 } else { k },
        sa_k: if shape.trans_a { m } else { 1 },
        sb_k: if shape.trans_b { 1 } else { n },
        sb_j: if shape.trans_b { k } else { 1 },
        has_bias: u32::from(bias.is_some()),
        accumulate: u32::from(shape.accumulate),
        k_begin: 0,
    };
    let variant = shape.variant.resolve(gpu);
    if variant == MatmulVariant::Tiled {
        let gemm_params = gemm::Params { sa_i: params.sa_i, sa_k: params.sa_k, sb_k: params.sb_k, sb_j: params.sb_j, ..Default::default() };
        let product = gemm::Product {
            entry: "matmul",
            m: shape.m,
            n: shape.n,
            k: shape.k,
            params: gemm_params,
            a,
            b,
            bias,
            c,
            accumulate: shape.accumulate,
            activation: act,
            dense_c: true,
            flops: (2 * shape.m * shape.n * shape.k) as u64,
            bytes: shape.cost(bias.is_some()).bytes,
        };
        return gemm::run(gpu, &what, product);
    }
    if act != Activation::Identity {
        return Err(crate::Error::Invalid(format!("{what}: a fused {act:?} runs only on the tile engine, not the {variant:?} kernel")));
    }
    if variant == MatmulVariant::Windowed {
        if let Some(d) = windowed(gpu, shape, params, a, b, bias, c)? {
            return Ok(d);
        }
    }
    let (entry, grid) = match variant {
        MatmulVariant::Simple => ("simple", workgroups_1d(shape.m * shape.n, SIMPLE_WG)),
        // Blocked, and Windowed where its kernel does not apply (Tiled returned above).
        _ => ("blocked", workgroups_1d(shape.m.div_ceil(BLOCK) * shape.n.div_ceil(BLOCK), BLOCKED_WG)),
    };
    let kernel = KernelId::new("matmul", entry);
    let bindings = [(1, a), (2, b), (3, bias.unwrap_or(&gpu.dummy)), (4, c)];
    // One dispatch per slice of k; the first adds the bias (and C if asked), the rest add to C.
    even_slices(shape.k, K_SLICE)
        .map(|(begin, end)| {
            let first = begin == 0;
            let slice = Params { k: end as u32, k_begin: begin as u32, has_bias: params.has_bias * u32::from(first), accumulate: params.accumulate | u32::from(!first), ..params };
            let cost = Matmul { k: end - begin, accumulate: slice.accumulate != 0, ..*shape }.cost(slice.has_bias != 0);
            gpu.dispatch(kernel, "", &slice, &bindings, grid, cost)
        })
        .collect()
}

/// Whether `gpu` can run matmul_window.wgsl at all: subgroups of exactly 8, and the 8 windows
/// plus params as uniform bindings.
fn windows_apply(gpu: &Gpu) -> bool {
    has_subgroups_of_8(gpu) && has_windows(gpu, SG as u32 + 1)
}

/// The windowed product: `pack` copies op(A) into 8 windows per (row block, chunk of `kc`
/// steps), then one `product` dispatch per block and chunk; chunks after the first add to C.
/// Blocks of 128 rows (`pack16`/`product16`, 16 rows per lane: each op(B) value loaded from
/// storage feeds twice the FMAs, 10-15% faster) unless they would pad M more than blocks of
/// 64 do (`pack`/`product`): padded rows cost as much as real ones (M = 400: 512 rows
/// against 448, and the 16-row kernel was no faster; docs/BENCHMARKS.md). `None` where the
/// kernel does not apply (no subgroups of 8 or windows, an empty product, windows over the
/// binding limit), for the caller to fall back on.
fn windowed(gpu: &Gpu, shape: &Matmul, base: Params, a: &Buffer, b: &Buffer, bias: Option<&Buffer>, c: &Buffer) -> Result<Option<Vec<Dispatch>>> {
    let (m, n, k) = (shape.m, shape.n, shape.k);
    if !windows_apply(gpu) || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    // Rows per lane.
    let r = if m.div_ceil(16 * SG) * 2 == m.div_ceil(8 * SG) { 2 * SG } else { SG };
    let (entries, rows_per_block) = (if r == SG { ("pack", "product") } else { ("pack16", "product16") }, SG * r);
    // Chunks of equal length (a multiple of 8, at most WINDOW / r), so that k just past a
    // chunk does not leave a nearly empty last one with windows as large as the others.
    let (blocks, chunks) = (m.div_ceil(rows_per_block), k.div_ceil(WINDOW / r));
    let kc = k.div_ceil(chunks).next_multiple_of(SG);
    // Per product invocation: batches of 8 steps and their inner loops, and the stores.
    if kc / SG * (SG + 1) + WINDOW_COLS * (r + r / SG) > LOOP_BUDGET {
        return Ok(None);
    }
    let align = (gpu.limits.min_uniform_buffer_offset_alignment as usize / 4).max(1);
    let stride = (kc * r).next_multiple_of(align);
    let windows = blocks * chunks * SG;
    let total = (windows - 1) * stride + WINDOW;
    let tasks = windows * kc * r;
    if total as u64 * 4 > gpu.max_binding_bytes() || tasks > u32::MAX as usize {
        return Ok(None);
    }
    let u = |v: usize| v as u32;
    let params = |row0: usize, k0: usize, steps: usize, first: bool| WindowParams {
        base: Params { has_bias: base.has_bias * u32::from(first), accumulate: if first { base.accumulate } else { 1 }, ..base },
        row0: u(row0),
        k0: u(k0),
        steps: u(steps),
        kc: u(kc),
        stride: u(stride),
        chunks: u(chunks),
        tasks: u(tasks),
    };
    let kernel = |entry| KernelId::new("matmul_window", entry);
    let buffer = gpu.zeros("matmul windows", total)?;
    let pack_cost = Cost { flops: 0, bytes: 4 * (m * k + tasks) as u64 };
    let mut dispatches = vec![gpu.dispatch(kernel(entries.0), "", &params(0, 0, 0, true), &[(1, a), (3, &buffer)], workgroups_1d(tasks, 64), pack_cost)?];
    let bias = bias.unwrap_or(&gpu.dummy);
    for block in 0..blocks {
        let rows = (m - block * rows_per_block).min(rows_per_block);
        for chunk in 0..chunks {
            let steps = (k - chunk * kc).min(kc);
            let first = (block * chunks + chunk) * SG;
            let views: Vec<Buffer> = (0..SG).map(|s| buffer.view("matmul window", (first + s) * stride, WINDOW)).collect::<Result<_>>()?;
            let mut bindings = vec![(1, b), (2, bias), (3, c)];
            bindings.extend(views.iter().enumerate().map(|(s, v)| (4 + s as u32, v)));
            let p = params(block * rows_per_block, chunk * kc, steps, chunk == 0);
            let extra = u64::from(p.base.has_bias) + u64::from(p.base.accumulate);
            let cost = Cost {
                flops: (2 * rows * n * steps) as u64 + extra * (rows * n) as u64,
                bytes: 4 * (rows * steps + steps * n + rows * n * (1 + p.base.accumulate as usize)) as u64,
            };
            dispatches.push(gpu.dispatch(kernel(entries.1), "", &p, &bindings, workgroups_1d(n.div_ceil(WINDOW_COLS), 1), cost)?);
        }
    }
    Ok(Some(dispatches))
}

/// A Linear layer over `rows` inputs: x [rows, in_features], weight [out_features, in_features]
/// (PyTorch's layout), bias and db [out_features], y and dy [rows, out_features].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Linear {
    pub rows: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub variant: MatmulVariant,
}

impl Linear {
    fn check(&self, op: &str, operands: &[(&str, &Buffer, &[usize])]) -> Result<()> {
        let what = format!(
            "linear {op} (rows={}, in_features={}, out_features={})",
            self.rows, self.in_features, self.out_features
        );
        for (name, buffer, dims) in operands {
            let len = dims.iter().fold(1usize, |n, &d| n.saturating_mul(d));
            check_len(&what, &format!("{name} {dims:?}"), buffer, len)?;
        }
        Ok(())
    }

    fn product(&self, m: usize, n: usize, k: usize) -> Matmul {
        Matmul { m, n, k, variant: self.variant, ..Default::default() }
    }
}

/// y = x·Wᵀ + b
pub fn linear_forward(gpu: &Gpu, shape: &Linear, x: &Buffer, w: &Buffer, b: Option<&Buffer>, y: &Buffer) -> Result<Vec<Dispatch>> {
    linear_forward_activated(gpu, shape, x, w, b, Activation::Identity, y)
}

/// y = act(x·Wᵀ + b), the activation in the tile engine's epilogue: see [`matmul_activated`].
pub fn linear_forward_activated(gpu: &Gpu, shape: &Linear, x: &Buffer, w: &Buffer, b: Option<&Buffer>, act: Activation, y: &Buffer) -> Result<Vec<Dispatch>> {
    let (r, i, o) = (shape.rows, shape.in_features, shape.out_features);
    shape.check("forward", &[("x", x, &[r, i]), ("weight", w, &[o, i]), ("y", y, &[r, o])])?;
    if let Some(b) = b {
        shape.check("forward", &[("bias", b, &[o])])?;
    }
    matmul_activated(gpu, &Matmul { trans_b: true, ..shape.product(r, o, i) }, x, w, b, act, y)
}

/// dX = dY·W
pub fn linear_backward_input(gpu: &Gpu, shape: &Linear, dy: &Buffer, w: &Buffer, dx: &Buffer) -> Result<Vec<Dispatch>> {
    let (r, i, o) = (shape.rows, shape.in_features, shape.out_features);
    shape.check("backward_input", &[("dy", dy, &[r, o]), ("weight", w, &[o, i]), ("dx", dx, &[r, i])])?;
    matmul(gpu, &shape.product(r, i, o), dy, w, None, dx)
}

/// dW (+)= dYᵀ·X
pub fn linear_backward_weight(gpu: &Gpu, shape: &Linear, dy: &Buffer, x: &Buffer, dw: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let (r, i, o) = (shape.rows, shape.in_features, shape.out_features);
    shape.check("backward_weight", &[("dy", dy, &[r, o]), ("x", x, &[r, i]), ("dweight", dw, &[o, i])])?;
    matmul(gpu, &Matmul { trans_a: true, accumulate, ..shape.product(o, i, r) }, dy, x, None, dw)
}

/// db (+)= Σ over rows of dY, summed in blocks so long batches keep f32 accuracy; one dispatch
/// per slice of [`ROW_SLICE`] rows, the slices after the first adding to db.
pub fn linear_backward_bias(gpu: &Gpu, shape: &Linear, dy: &Buffer, db: &Buffer, accumulate: bool) -> Result<Vec<Dispatch>> {
    let (r, o) = (shape.rows, shape.out_features);
    shape.check("backward_bias", &[("dy", dy, &[r, o]), ("dbias", db, &[o])])?;
    let what = "linear backward_bias";
    u32_dim(what, "rows", r)?;
    let n = u32_dim(what, "out_features", o)?;
    let kernel = KernelId::new("matmul", "column_sum");
    even_slices(r, ROW_SLICE)
        .map(|(begin, end)| {
            let add = accumulate || begin > 0;
            let params = Params { m: end as u32, n, k_begin: begin as u32, accumulate: u32::from(add), ..bytemuck::Zeroable::zeroed() };
            let (len, o) = ((end - begin) as u64, o as u64);
            let cost = Cost { flops: len * o + if add { o } else { 0 }, bytes: 4 * (len * o + o + if add { o } else { 0 }) };
            gpu.dispatch(kernel, "", &params, &[(1, dy), (4, db)], workgroups_1d(o as usize, COLUMN_SUM_COLS), cost)
        })
        .collect()
}
