//! The tile engine (shaders/gemm.wgsl) in every tile shape it compiles, forced whatever the
//! launcher would choose: products across tile edges in every direction, split sums, and the
//! three convolution GEMMs including stride phases without taps.

use crate::conv::{check_conv2d_in, check_conv_transpose2d_in, conv2d, transpose, FITS};
use crate::matmul::{gpu_matmul, label, one_at_a_time, TRANSPOSES};
use crate::support::*;
use kiln::kernels::conv::{Conv2d, ConvTranspose2d, ConvVariant};
use kiln::kernels::gemm::{self, TILES};
use kiln::kernels::matmul::{Matmul, MatmulVariant};
use kiln::reference::matmul as reference;

#[test]
fn every_tile_shape_multiplies_across_tile_edges() {
    let _turn = one_at_a_time();
    // 1x1; rows and columns one past a 128 and a 64 tile; k one past a step of 8 and 16; and a
    // narrow product with a long sum, which is split over grid layers (bias in layer 0 only).
    let shapes = [(1, 1, 1), (129, 65, 17), (65, 129, 9), (5, 3, 3001)];
    for tile in TILES {
        for (s, &(m, n, k)) in shapes.iter().enumerate() {
            let seed = 100 + 10 * s as u64;
            let (a, b, bias, c0) = (rand(seed, m * k), rand(seed + 1, k * n), rand(seed + 2, n), rand(seed + 3, m * n));
            for (trans_a, trans_b) in TRANSPOSES {
                let accumulate = trans_a != trans_b;
                let shape = Matmul { m, n, k, trans_a, trans_b, accumulate, variant: MatmulVariant::Tiled };
                let product = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, trans_a, trans_b);
                let want: Vec<f64> = product.iter().zip(&c0).map(|(p, &c)| if accumulate { p + c as f64 } else { *p }).collect();
                let got = gemm::with_tile(tile, || gpu_matmul(&shape, &a, &b, Some(&bias), accumulate.then_some(&c0[..])));
                assert_close(&format!("{} tile: {}", tile.name(), label(&shape, true)), &got, &want, 1e-4);
            }
        }
    }
}

#[test]
fn a_long_narrow_product_is_split_over_grid_layers() {
    // 5x3 outputs fill one tile; 3001 steps of k make 11 layers of partial sums, then one
    // sum_partials pass.
    let gpu = gpu();
    let shape = Matmul { m: 5, n: 3, k: 3001, variant: MatmulVariant::Tiled, ..Default::default() };
    let (a, b, c) = (zeros("a", 5 * 3001), zeros("b", 3001 * 3), zeros("c", 15));
    let dispatches = kiln::kernels::matmul::matmul(gpu, &shape, &a, &b, None, &c).unwrap();
    let entries: Vec<String> = dispatches.iter().map(|d| format!("{}.{}", d.kernel.shader, d.kernel.entry)).collect();
    assert_eq!(entries, ["gemm.matmul", "conv.sum_partials"]);
    assert_eq!(dispatches[0].workgroups[2], 11, "grid layers");
}

#[test]
fn every_tile_shape_convolves_forward_and_back() {
    let tiled = [ConvVariant::Tiled];
    let convs = [
        conv2d(2, 5, 17, [13, 13], 5, 2, 2),
        conv2d(1, 3, 70, [9, 7], 3, 1, 1),
        Conv2d { stride: [2, 3], padding: [1, 0], dilation: [2, 1], ..Conv2d::new(3, 4, 6, [11, 10], [3, 2]) },
    ];
    // Stride 2 with dilation 2: odd phases have no taps, so their pixels hold the bias alone.
    let transposes = [
        transpose(3, 9, 5, [7, 6], 5, 2, 2, 1),
        ConvTranspose2d { stride: [2, 2], dilation: [2, 2], output_padding: [1, 1], ..ConvTranspose2d::new(2, 3, 4, [5, 4], [3, 3]) },
    ];
    for tile in TILES {
        let at = format!("{} tile", tile.name());
        gemm::with_tile(tile, || {
            for (i, s) in convs.iter().enumerate() {
                check_conv2d_in(&format!("{at} conv2d {}", s.describe()), *s, i % 2 == 0, 200 + i as u64, FITS, &tiled);
            }
            for (i, t) in transposes.iter().enumerate() {
                check_conv_transpose2d_in(&format!("{at} conv_transpose2d {}", t.describe()), *t, true, 300 + i as u64, FITS, &tiled);
            }
        });
    }
}

#[test]
fn autotune_times_a_shape_once_and_keeps_its_choice_in_the_cache_file() {
    let _turn = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("kiln-autotune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("autotune.json");
    let open = || {
        let options = kiln::gpu::GpuOptions {
            kernels: Some(kiln::gpu::Kernels::Tiled),
            autotune: Some(true),
            autotune_cache: Some(cache.clone()),
            ..crate::options()
        };
        kiln::Gpu::new(&options).unwrap()
    };
    let (m, n, k) = (70, 33, 20);
    let (a, b, bias) = (rand(500, m * k), rand(501, k * n), rand(502, n));
    let want = reference::matmul(&f64s(&a), &f64s(&b), Some(&f64s(&bias)), m, n, k, false, false);
    let product = |gpu: &kiln::Gpu| {
        let (ab, bb, biasb, c) = (gpu.upload("a", &a).unwrap(), gpu.upload("b", &b).unwrap(), gpu.upload("bias", &bias).unwrap(), gpu.zeros("c", m * n).unwrap());
        let shape = Matmul { m, n, k, ..Default::default() };
        gpu.run(&kiln::kernels::matmul::matmul(gpu, &shape, &ab, &bb, Some(&biasb), &c).unwrap()).unwrap();
        gpu.read(&c).unwrap()
    };
    let timed = |gpu: &kiln::Gpu| gpu.tune.as_ref().unwrap().lock().unwrap().timed;

    let first = open();
    assert_close("autotuned matmul", &product(&first), &want, 1e-4);
    assert_eq!(timed(&first), 1, "the first launch of a shape times it");
    assert_close("autotuned matmul again", &product(&first), &want, 1e-4);
    assert_eq!(timed(&first), 1, "a shape is timed once per process");
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.contains("matmul 70x33x20") && TILES.iter().any(|t| text.contains(&t.name())), "{text}");

    let second = open();
    assert_close("matmul tuned by an earlier process", &product(&second), &want, 1e-4);
    assert_eq!(timed(&second), 0, "the cache file's choice is used");

    std::fs::write(&cache, "not json").unwrap();
    let third = open();
    assert_close("matmul over a corrupt cache", &product(&third), &want, 1e-4);
    assert_eq!(timed(&third), 1, "a corrupt cache is ignored and rewritten");
    assert!(std::fs::read_to_string(&cache).unwrap().contains("matmul 70x33x20"));
    let _ = std::fs::remove_dir_all(&dir);
}
