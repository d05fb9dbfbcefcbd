//! The proof behind creating shaders/gemm.wgsl without wgpu's runtime checks
//! (`kiln::gpu::TRUSTED_SHADERS`): every entry of the tile engine, in every tile shape, over
//! the edge shapes of each launcher, run with the shader's CHECK_INDICES accessors on, indexes
//! no array out of range and still matches the f64 reference; and the check does catch a
//! launch whose parameters claim more than its buffers hold.

use crate::conv::{check_conv2d_in, check_conv_transpose2d_in, conv2d, transpose, FITS};
use crate::matmul::{gpu_matmul, label, one_at_a_time, TRANSPOSES};
use crate::support::*;
use kiln::kernels::conv::{Conv2d, ConvTranspose2d, ConvVariant};
use kiln::kernels::gemm::{self, Tile, CHECKED_ARRAYS, TILES};
use kiln::kernels::matmul::{self, Matmul, MatmulVariant};
use kiln::reference::matmul as reference;

/// Runs `f` in `tile` with index checks on; the accesses found out of range, per array.
fn violations_in(tile: Tile, f: impl FnOnce()) -> Vec<(&'static str, u32)> {
    let counts = zeros("violations", CHECKED_ARRAYS.len());
    gemm::with_tile(tile, || gemm::with_index_checks(&counts, f));
    CHECKED_ARRAYS.iter().copied().zip(read(&counts).iter().map(|v| v.to_bits())).collect()
}

fn assert_none(what: &str, violations: &[(&str, u32)]) {
    let found: Vec<_> = violations.iter().filter(|(_, count)| *count > 0).collect();
    assert!(found.is_empty(), "{what}: accesses out of range {found:?}");
}

// 1×1; rows and columns one past a 128 and a 64 tile; k one past a step of 8 and of 16; a
// narrow product whose sum is split over grid layers; and one whose k is past llvmpipe's
// 65,535 loop iterations.
const MATMULS: [(usize, usize, usize); 5] = [(1, 1, 1), (129, 65, 17), (65, 129, 9), (5, 3, 3001), (3, 2, 70_000)];

/// Each transpose combination once per shape, with bias and accumulation rotating so that each
/// combination meets each of the four (bias, accumulate) pairs across the shapes.
fn check_matmuls() {
    for (s, &(m, n, k)) in MATMULS.iter().enumerate() {
        let seed = 700 + 10 * s as u64;
        let (a, b, bias, c0) = (rand(seed, m * k), rand(seed + 1, k * n), rand(seed + 2, n), rand(seed + 3, m * n));
        for (t, (trans_a, trans_b)) in TRANSPOSES.into_iter().enumerate() {
            let (with_bias, accumulate) = ((s + t) % 2 == 1, (s + t) / 2 % 2 == 1);
            let shape = Matmul { m, n, k, trans_a, trans_b, accumulate, variant: MatmulVariant::Tiled };
            let bias64 = with_bias.then(|| f64s(&bias));
            let product = reference::matmul(&f64s(&a), &f64s(&b), bias64.as_deref(), m, n, k, trans_a, trans_b);
            let want: Vec<f64> = product.iter().zip(&c0).map(|(p, &c)| if accumulate { p + c as f64 } else { *p }).collect();
            let got = gpu_matmul(&shape, &a, &b, with_bias.then_some(&bias[..]), accumulate.then_some(&c0[..]));
            assert_close(&format!("checked {}", label(&shape, with_bias)), &got, &want, 1e-4);
        }
    }
}

/// Convolutions whose GEMMs reach every launcher path: batch 1, odd sizes, stride 2 and
/// padding (data gradients by stride phase), strides and dilations that leave phases without
/// taps, weight gradients split over grid layers, and sums past the loop budget in each of
/// the three GEMMs (slices of k that add to the output, for forward and data gradient).
fn check_convs() {
    let tiled = [ConvVariant::Tiled];
    let convs = [
        conv2d(1, 3, 5, [7, 9], 3, 1, 1),
        conv2d(2, 5, 17, [13, 13], 5, 2, 2),
        // Stride 2 with dilation 2 along h: dx's odd rows are a phase without taps.
        Conv2d { stride: [2, 3], padding: [1, 0], dilation: [2, 1], ..Conv2d::new(3, 4, 6, [11, 10], [3, 2]) },
        // 1,200 pixels in the weight gradient's sum over one tile: grid layers.
        conv2d(3, 2, 3, [20, 20], 3, 1, 1),
        // Forward sums 7,300 × 9 = 65,700 taps; the data gradient of the next 65,700 too.
        conv2d(1, 7300, 2, [3, 3], 3, 1, 1),
        conv2d(1, 2, 7300, [3, 3], 3, 1, 1),
        // The weight gradient sums 260 × 260 = 67,600 pixels.
        conv2d(1, 1, 2, [260, 260], 3, 1, 1),
    ];
    let transposes = [
        transpose(3, 9, 5, [7, 6], 5, 2, 2, 1),
        ConvTranspose2d { stride: [2, 2], dilation: [2, 2], output_padding: [1, 1], ..ConvTranspose2d::new(1, 3, 4, [5, 4], [3, 3]) },
    ];
    for (i, s) in convs.iter().enumerate() {
        check_conv2d_in(&format!("checked conv2d {}", s.describe()), *s, i % 2 == 0, 800 + i as u64, FITS, &tiled);
    }
    for (i, t) in transposes.iter().enumerate() {
        check_conv_transpose2d_in(&format!("checked conv_transpose2d {}", t.describe()), *t, true, 900 + i as u64, FITS, &tiled);
    }
}

#[test]
fn every_gemm_entry_indexes_in_range_in_every_tile() {
    let _turn = one_at_a_time();
    for tile in TILES {
        assert_none(&format!("{} tile, matmul", tile.name()), &violations_in(tile, check_matmuls));
        assert_none(&format!("{} tile, convolutions", tile.name()), &violations_in(tile, check_convs));
    }
}

/// A 5×3×9 product (one tile) whose parameters are rewritten after the launcher checked its
/// buffers: gemm.wgsl's `Params` begins with m and n.
fn lying_matmul(tile: Tile, field: u64, claimed: u32) -> Vec<(&'static str, u32)> {
    let gpu = gpu();
    let (m, n, k) = (5, 3, 9);
    let (a, b, c) = (upload("a", &rand(1, m * k)), upload("b", &rand(2, k * n)), zeros("c", m * n));
    let shape = Matmul { m, n, k, variant: MatmulVariant::Tiled, ..Default::default() };
    violations_in(tile, || {
        let dispatches = matmul::matmul(gpu, &shape, &a, &b, None, &c).unwrap();
        assert_eq!(dispatches.len(), 1);
        gpu.queue.write_buffer(&dispatches[0].params, 4 * field, &claimed.to_le_bytes());
        gpu.run(&dispatches).unwrap();
    })
}

#[test]
fn index_checks_catch_a_launch_claiming_more_than_its_buffers_hold() {
    let _turn = one_at_a_time();
    let count = |violations: &[(&str, u32)], array: &str| violations.iter().find(|(name, _)| *name == array).unwrap().1;
    for tile in TILES {
        // 100 rows of a tile whose A has 5 and C 5: rows past them read A and write C.
        let rows = lying_matmul(tile, 0, 100);
        eprintln!("{} tile, m claimed 100: {rows:?}", tile.name());
        assert!(count(&rows, "a") > 0 && count(&rows, "c") > 0, "{} tile: {rows:?}", tile.name());
        assert_eq!(count(&rows, "b"), 0, "{} tile: B's columns are as many as claimed: {rows:?}", tile.name());
        // 100 columns where B and C have 3.
        let cols = lying_matmul(tile, 1, 100);
        eprintln!("{} tile, n claimed 100: {cols:?}", tile.name());
        assert!(count(&cols, "b") > 0 && count(&cols, "c") > 0, "{} tile: {cols:?}", tile.name());
        assert_eq!(count(&cols, "a"), 0, "{} tile: A's rows are as many as claimed: {cols:?}", tile.name());
    }
}

#[test]
fn only_the_embedded_tile_engine_is_trusted() {
    let gpu = gpu();
    let embedded = |name: &str| kiln::gpu::SHADER_FILES.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(gpu.trusts("gemm", embedded("gemm")), gpu.trusted_shaders);
    assert!(!gpu.trusts("gemm", &format!("{}\n// edited in a shader folder\n", embedded("gemm"))), "an edited copy is not what the test proved");
    assert!(!gpu.trusts("matmul", embedded("matmul")), "no test proves the other shaders' indexing");
}
