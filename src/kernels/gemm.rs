//! shaders/gemm.wgsl: the tile engine that runs every GEMM on GPUs (matmul and the three
//! convolution GEMMs), its tile shapes, and how a product is cut into dispatches: tiles of C
//! over the grid, long sums split over grid layers (partial sums added by conv.wgsl's
//! `sum_partials`) or over dispatches that add to C.

use super::conv::{split_sum, LOOP_BUDGET};
use crate::gpu::{workgroups_1d, Buffer, Cost, Dispatch, Gpu, KernelId};
use crate::{Error, Result};

/// One tile shape: a workgroup of `cols/8 × rows/8` invocations computes a `rows × cols` tile
/// of C in steps of `depth` along k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub rows: usize,
    pub cols: usize,
    pub depth: usize,
    /// The pipeline constants that compile gemm.wgsl for this shape.
    pub constants: &'static [(&'static str, u32)],
}

/// The shapes kiln compiles, largest first. Each fits WebGPU's guaranteed limits (256
/// invocations, 8 KiB of the 16 KiB of workgroup storage), so any adapter runs them. The
/// larger the tile, the more FMAs per element staged (16 per element at 128², 8 at 64²); the
/// smaller, the more workgroups a small product spreads over.
pub const TILES: [Tile; 3] = [
    Tile { rows: 128, cols: 128, depth: 8, constants: &[("TX", 16), ("TY", 16), ("BK", 8)] },
    Tile { rows: 64, cols: 128, depth: 8, constants: &[("TX", 16), ("TY", 8), ("BK", 8)] },
    Tile { rows: 64, cols: 64, depth: 16, constants: &[("TX", 8), ("TY", 8), ("BK", 16)] },
];

/// Workgroups worth having in flight: a large GPU has 100+ compute units (an H100/H200 132
/// SMs, a 4090 128), a laptop's 8-40, so fewer tiles than this leave units idle.
const WANTED_WORKGROUPS: usize = 256;

/// Fewest steps of k a grid layer of a split sum takes: below this the partial sums' traffic
/// outweighs the parallelism gained.
const LEAST_LAYER_STEPS: usize = 256;

/// Most grid layers a sum is split into for parallelism alone.
const MOST_LAYERS: usize = 64;

impl Tile {
    /// `128x128x8`: rows, columns and depth, as the autotune cache and `bench` name it.
    pub fn name(&self) -> String {
        format!("{}x{}x{}", self.rows, self.cols, self.depth)
    }

    /// The tile whose pipeline constants these are (a gemm.wgsl dispatch's `KernelId`).
    pub fn of_constants(constants: &[(&str, u32)]) -> Option<Tile> {
        TILES.iter().copied().find(|t| t.constants == constants)
    }

    fn threads(&self) -> usize {
        self.rows * self.cols / 64
    }

    /// Loop iterations of one invocation per step of `depth` (gemm.wgsl's k loop: fetching
    /// and storing its share of both tiles, then the FMA loop), and those outside the k loop.
    fn iterations_per_step(&self) -> usize {
        let fetches = (self.rows + self.cols) * self.depth / self.threads();
        1 + 2 * fetches + self.depth
    }

    /// Most steps of k one invocation may sum within llvmpipe's loop budget (the stores: 16
    /// calls of a loop of 4; the first fetch: one step's).
    fn most_steps(&self) -> usize {
        (LOOP_BUDGET - 64 - 2 * self.iterations_per_step()) / self.iterations_per_step() * self.depth
    }

    fn tiles(&self, m: usize, n: usize) -> usize {
        m.div_ceil(self.rows) * n.div_ceil(self.cols)
    }
}

/// Grid layers a dense product (matmul, conv_weight) of `m × n × k` is summed over in `tile`:
/// as many as keep each invocation within the loop budget, and more where the sum is long and
/// the tiles too few to fill the GPU.
fn layers(tile: &Tile, m: usize, n: usize, k: usize) -> usize {
    let needed = k.div_ceil(tile.most_steps()).max(1);
    let wanted = WANTED_WORKGROUPS.div_ceil(tile.tiles(m, n)).min(k / LEAST_LAYER_STEPS).min(MOST_LAYERS);
    needed.max(wanted)
}

/// Whether a dense `m × n × k` product is summed in one grid layer whatever the tile, so its
/// epilogue stores final values: an activation applied there then changes nothing else (the
/// same dispatch, the same order of summation). The graph fuses an activation into a linear
/// layer only then; a product split over layers keeps its parallelism and the activation its
/// own pass.
pub fn sums_in_one_layer(m: usize, n: usize, k: usize) -> bool {
    TILES.iter().all(|tile| layers(tile, m, n, k) == 1)
}

/// The tile for an `m × n` product: the one with the least padded work once a tile count
/// below [`WANTED_WORKGROUPS`] is charged for the idle units, larger tiles counted slightly
/// cheaper per element (they stage fewer elements per FMA). An estimate, not a measurement:
/// the GPU benchmark (`scripts/device-bench.sh`) is where it gets checked.
pub fn choose_tile(m: usize, n: usize) -> Tile {
    let score = |t: &Tile| {
        let count = t.tiles(m, n);
        let staging = 1.0 + 8.0 / t.rows.min(t.cols) as f64;
        (count * t.rows * t.cols) as f64 * staging * (WANTED_WORKGROUPS as f64 / count as f64).max(1.0)
    };
    *TILES.iter().min_by(|a, b| score(a).total_cmp(&score(b))).unwrap()
}

thread_local! {
    static FORCED: std::cell::Cell<Option<Tile>> = const { std::cell::Cell::new(None) };
    static CHECKING: std::cell::RefCell<Option<Buffer>> = const { std::cell::RefCell::new(None) };
}

/// The arrays gemm.wgsl checks under CHECK_INDICES, in the order of their counts in the
/// violations buffer (its IN_* slots).
pub const CHECKED_ARRAYS: [&str; 6] = ["a", "b", "c", "tile_a", "tile_b", "next_a/next_b"];

/// Runs `f` with every product it launches on this thread compiled with gemm.wgsl's
/// CHECK_INDICES on: each access out of its array's range is skipped and counted in
/// `violations` (zeroed, one u32 per [`CHECKED_ARRAYS`] entry). The proof that kiln may run
/// the engine without wgpu's bounds checks (tests/kernels/trusted.rs).
pub fn with_index_checks<T>(violations: &Buffer, f: impl FnOnce() -> T) -> T {
    assert!(violations.len >= CHECKED_ARRAYS.len(), "gemm::with_index_checks: {} counts, want {}", violations.len, CHECKED_ARRAYS.len());
    let before = CHECKING.with(|checking| checking.replace(Some(violations.clone())));
    let value = f();
    CHECKING.with(|checking| checking.replace(before));
    value
}

/// `tile`'s pipeline constants with CHECK_INDICES on: made once per process, as KernelId keeps
/// constants by `'static` reference.
fn checked_constants(tile: Tile) -> &'static [(&'static str, u32)] {
    static SETS: std::sync::OnceLock<Vec<&'static [(&'static str, u32)]>> = std::sync::OnceLock::new();
    let sets = SETS.get_or_init(|| TILES.iter().map(|t| &*Vec::leak([t.constants, &[("CHECK_INDICES", 1)]].concat())).collect());
    sets[TILES.iter().position(|t| *t == tile).expect("one of TILES")]
}

/// Runs `f` with every product it launches on this thread tiled by `tile`, whatever
/// [`choose_tile`] would pick: how the tests prove each shape correct on any adapter.
pub fn with_tile<T>(tile: Tile, f: impl FnOnce() -> T) -> T {
    let before = FORCED.with(|forced| forced.replace(Some(tile)));
    let value = f();
    FORCED.with(|forced| forced.set(before));
    value
}

/// Field order and types match `Params` in shaders/gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub k_begin: u32,
    pub split: u32,
    pub flags: u32,
    pub tiles_n: u32,
    pub tiles: u32,
    pub sa_i: u32,
    pub sa_k: u32,
    pub sb_k: u32,
    pub sb_j: u32,
    pub cin: i32,
    pub cout: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub ih0: i32,
    pub iw0: i32,
    pub hp: i32,
    pub wp: i32,
    pub r0: i32,
    pub s0: i32,
    pub rstep: i32,
    pub sstep: i32,
    pub tr: i32,
    pub ts: i32,
    /// The epilogue's activation ([`Activation::code`]), set per dispatch by the launcher.
    pub act: u32,
    pub slope: f32,
}

/// An activation applied in the epilogue (gemm.wgsl's `store4`) to C's final values, after
/// the bias and any accumulation: a producer followed by an activation stores act(C) and
/// never C. A product with one is never split over grid layers (their total is formed by
/// `sum_partials`, outside the epilogue); a long sum is split over dispatches that add to C
/// instead, the last applying it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    LeakyRelu(f32),
    Tanh,
    Sigmoid,
}

impl Activation {
    /// `act` and `slope` of gemm.wgsl's Params.
    fn code(self) -> (u32, f32) {
        match self {
            Activation::Identity => (0, 0.0),
            Activation::Relu => (1, 0.0),
            Activation::LeakyRelu(slope) => (2, slope),
            Activation::Tanh => (3, 0.0),
            Activation::Sigmoid => (4, 0.0),
        }
    }
}

const ADD_BIAS: u32 = 1;
const ACCUMULATE: u32 = 2;
const PARTIAL: u32 = 4;

/// One product for the engine: `entry` of gemm.wgsl over operands `a`, `b` into `c`, with the
/// entry's geometry in `params` (m, n, k and the tiling are filled in here).
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub entry: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub params: Params,
    pub a: &'a Buffer,
    pub b: &'a Buffer,
    pub bias: Option<&'a Buffer>,
    pub c: &'a Buffer,
    pub accumulate: bool,
    /// Applied to C's final values in the epilogue.
    pub activation: Activation,
    /// Whether C is the row-major `m × n` array the partial sums of a split may be added into
    /// (matmul, conv_weight); otherwise long sums are split over dispatches that add to C.
    pub dense_c: bool,
    /// Flops the profiler counts for the product (2·m·n·k, or for a stride phase of a data
    /// gradient its share of the dense count, stride gaps included, as every conv kernel
    /// counts them), and the bytes it reads and writes once.
    pub flops: u64,
    pub bytes: u64,
}

/// The dispatches of `product`, in order: one, or with a long or narrow sum split over grid
/// layers, that and `sum_partials`' passes; or one per slice of k, the later ones adding.
pub(crate) fn run(gpu: &Gpu, op: &str, product: Product) -> Result<Vec<Dispatch>> {
    let forced = FORCED.with(|forced| forced.get());
    let tile = match forced {
        Some(tile) => tile,
        None => tuned(gpu, op, &product)?.unwrap_or_else(|| choose_tile(product.m, product.n)),
    };
    launch(gpu, op, product, tile)
}

/// The fastest tile for `product` on this adapter, timed now if no earlier launch (in this
/// process or, through the cache file, an earlier one) timed it; `None` without autotuning.
/// Each tile runs the product once to warm up and three times timed, on scratch operands of
/// the same sizes, so no caller's buffer is touched.
fn tuned(gpu: &Gpu, op: &str, product: &Product) -> Result<Option<Tile>> {
    let Some(cache) = &gpu.tune else { return Ok(None) };
    if product.m == 0 || product.n == 0 || product.k == 0 {
        return Ok(None);
    }
    let key = shape_key(product);
    let by_name = |name: &str| TILES.iter().copied().find(|t| t.name() == name);
    if let Some(tile) = cache.lock().unwrap().get(&key).and_then(by_name) {
        return Ok(Some(tile));
    }
    let scratch = |what: &str, like: &Buffer| gpu.zeros(&format!("autotune {what}"), like.len);
    let (a, b, c) = (scratch("a", product.a)?, scratch("b", product.b)?, scratch("c", product.c)?);
    let bias = product.bias.map(|bias| scratch("bias", bias)).transpose()?;
    let trial = Product { a: &a, b: &b, c: &c, bias: bias.as_ref(), ..*product };
    let mut best: Option<(f64, Tile)> = None;
    for tile in TILES {
        let dispatches = launch(gpu, op, trial, tile)?;
        let seconds = crate::bench::time_dispatches(gpu, &dispatches, 3)?;
        if best.is_none_or(|(fastest, _)| seconds < fastest) {
            best = Some((seconds, tile));
        }
    }
    let tile = best.map(|(_, t)| t).unwrap_or_else(|| choose_tile(product.m, product.n));
    cache.lock().unwrap().insert(key, tile.name());
    Ok(Some(tile))
}


/// What identifies a product for the autotune cache: entry, sizes, whether its sum may be
/// split, and the geometry fields of its parameters (FNV-1a of their bytes).
fn shape_key(p: &Product) -> String {
    let geometry = Params { m: 0, n: 0, k: 0, k_begin: 0, split: 0, flags: 0, tiles_n: 0, tiles: 0, ..p.params };
    let hash = bytemuck::bytes_of(&geometry).iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &byte| (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    // An activation changes how a sum may be split; keys without one are as they were.
    let act = if p.activation == Activation::Identity { String::new() } else { format!(" act={}", p.activation.code().0) };
    format!("{} {}x{}x{} split={} bias={}{act} {hash:016x}", p.entry, p.m, p.n, p.k, p.dense_c, p.bias.is_some())
}

/// The dispatches of `product` in `tile`.
fn launch(gpu: &Gpu, op: &str, product: Product, tile: Tile) -> Result<Vec<Dispatch>> {
    let Product { entry, m, n, k, params, a, b, bias, c, accumulate, activation, dense_c, flops, bytes } = product;
    let largest = (m * n).max(m * k).max(k * n);
    if m == 0 || n == 0 {
        return Ok(Vec::new());
    }
    if largest > u32::MAX as usize / 2 {
        return Err(Error::Limit(format!("{op}: a {m}×{n}×{k} product is over the tile kernels' 2^31 indexing")));
    }
    let checking = CHECKING.with(|checking| checking.borrow().clone());
    let constants = if checking.is_some() { checked_constants(tile) } else { tile.constants };
    let kernel = KernelId { shader: "gemm", entry, constants };
    let violations = checking.as_ref().unwrap_or(&gpu.dummy_rw);
    let tiles_n = n.div_ceil(tile.cols);
    let tiles = tile.tiles(m, n);
    let base = Params { m: m as u32, n: n as u32, tiles_n: tiles_n as u32, tiles: tiles as u32, ..params };
    let bias_flag = if bias.is_some() { ADD_BIAS } else { 0 };
    let bias_buffer = bias.unwrap_or(&gpu.dummy);
    let bias_flops = if bias.is_some() { (m * n) as u64 } else { 0 };
    let act_flops = if activation == Activation::Identity { 0 } else { (m * n) as u64 };
    let (act, slope) = activation.code();
    let most = tile.most_steps();
    let flops = |steps: usize| if k == 0 { 0 } else { flops * steps as u64 / k as u64 };

    // Layers of a split sum (see `layers`). Past the grid's depth or the largest binding for
    // their partial sums, slices of k add to C in turn instead. With an activation, only one
    // layer: partial sums are not final values (the graph fuses none where that matters:
    // `sums_in_one_layer`).
    let layered = dense_c && activation == Activation::Identity;
    let layers = if layered { layers(&tile, m, n, k) } else { k.div_ceil(most).max(1) };
    let scratch = (4 * m * n * layers) as u64;
    let deep = layers <= gpu.limits.max_compute_workgroups_per_dimension as usize && (layers == 1 || scratch <= gpu.max_binding_bytes());
    if dense_c && deep && (layers == 1 || layered) {
        let split = k.div_ceil(layers).next_multiple_of(tile.depth);
        let layers = k.div_ceil(split).max(1);
        let mut grid = workgroups_1d(tiles, 1);
        grid[2] = layers as u32;
        let cost = Cost { flops: flops(k) + bias_flops + act_flops, bytes };
        return split_sum(gpu, op, m * n, layers, c, accumulate, |out, add| {
            let partial = if layers > 1 { PARTIAL } else { 0 };
            let flags = bias_flag | partial | if add { ACCUMULATE } else { 0 };
            let p = Params { k: k as u32, k_begin: 0, split: split as u32, flags, act, slope, ..base };
            let cost = Cost { bytes: cost.bytes + if add { (4 * m * n) as u64 } else { 0 }, ..cost };
            Ok(vec![gpu.dispatch(kernel, op, &p, &[(1, a), (2, b), (3, bias_buffer), (4, out), (5, violations)], grid, cost)?])
        });
    }
    // One dispatch per slice of k; the first adds the bias (and C if asked), the rest add to C,
    // the last applies the activation.
    super::even_slices(k, most)
        .map(|(begin, end)| {
            let (first, last) = (begin == 0, end == k);
            let flags = if first { bias_flag | if accumulate { ACCUMULATE } else { 0 } } else { ACCUMULATE };
            let steps = end - begin;
            let (act, slope) = if last { (act, slope) } else { (0, 0.0) };
            let p = Params { k: end as u32, k_begin: begin as u32, split: steps.max(1) as u32, flags, act, slope, ..base };
            let share = |v: u64| if k == 0 { v } else { v * steps as u64 / k as u64 };
            let epilogue = if first { bias_flops } else { 0 } + if last { act_flops } else { 0 };
            let cost = Cost { flops: flops(steps) + epilogue, bytes: share(bytes) };
            gpu.dispatch(kernel, op, &p, &[(1, a), (2, b), (3, bias_buffer), (4, c), (5, violations)], workgroups_1d(tiles, 1), cost)
        })
        .collect()
}

/// Every constant set kiln may create a gemm.wgsl pipeline with, for the tests that translate
/// each pipeline for every back end: each tile's, and with CHECK_INDICES on (the proof test).
pub fn constant_sets() -> Vec<&'static [(&'static str, u32)]> {
    TILES.iter().flat_map(|&t| [t.constants, checked_constants(t)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gemm.wgsl's assumptions about a tile: its invocations cover whole rows, columns and
    /// steps of the tile (so each keeps one of them for all its fetches), each fetches at most
    /// MOST_FETCHES (16) elements of A and of B per step, and its workgroup storage and
    /// invocations fit WebGPU's guaranteed 16 KiB and 256.
    #[test]
    fn every_tile_meets_the_shaders_assumptions() {
        for t in TILES {
            let (tx, ty) = (t.cols / 8, t.rows / 8);
            let threads = tx * ty;
            assert!([8, 16].contains(&tx) && [8, 16].contains(&ty), "{t:?}");
            assert_eq!(threads % t.depth, 0, "{t:?}");
            assert!(t.rows * t.depth / threads <= 16 && t.cols * t.depth / threads <= 16, "{t:?}");
            assert!((t.rows + t.cols) * t.depth * 4 <= 16 * 1024 && threads <= 256, "{t:?}");
            let value = |name| t.constants.iter().find(|(n, _)| *n == name).map(|&(_, v)| v as usize);
            assert_eq!((value("TX"), value("TY"), value("BK")), (Some(tx), Some(ty), Some(t.depth)), "{t:?}");
        }
    }
}
