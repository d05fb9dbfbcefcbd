use crate::support::*;
use kiln::bench::{bench_kernels, measure_peak, ConvLayer, Suite};
use kiln::kernels::conv::{Conv2d, ConvTranspose2d, ConvVariant};
use kiln::kernels::matmul::MatmulVariant;

/// The benchmark machinery end to end on tiny shapes: every requested kernel gives a row with
/// a positive, finite time and throughput. Speed itself is never asserted.
#[test]
fn kernel_benchmark_gives_a_finite_row_per_kernel() {
    let gpu = gpu();
    let peak = measure_peak(gpu).unwrap();
    assert!(peak.fma_gflops.is_finite() && peak.fma_gflops > 0.0, "FMA peak {}", peak.fma_gflops);
    assert!(peak.copy_gbps.is_finite() && peak.copy_gbps > 0.0, "copy peak {}", peak.copy_gbps);
    let conv = Conv2d { stride: [2, 2], padding: [1, 1], ..Conv2d::new(2, 3, 5, [9, 9], [3, 3]) };
    let transpose = ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [1, 1], ..ConvTranspose2d::new(2, 5, 3, [5, 5], [3, 3]) };
    let suite = Suite {
        matmuls: vec![(33, MatmulVariant::Simple), (17, MatmulVariant::Blocked), (33, MatmulVariant::Blocked), (33, MatmulVariant::Tiled)],
        convs: vec![ConvLayer::Conv("tiny", conv), ConvLayer::Transpose("tiny", transpose)],
        conv_variants: vec![ConvVariant::Auto],
        min_seconds: 0.002,
    };
    let mut streamed = 0;
    let rows = bench_kernels(gpu, &peak, &suite, |_| streamed += 1).unwrap();
    let kernels: Vec<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
    #[rustfmt::skip]
    let want = ["matmul", "matmul", "matmul", "matmul",
        "conv2d", "conv2d.data_grad", "conv2d.weight_grad",
        "conv_transpose2d", "conv_transpose2d.data_grad", "conv_transpose2d.weight_grad"];
    assert_eq!(kernels, want);
    assert_eq!(streamed, rows.len(), "every row is reported as it is measured");
    // The tile engine's row names the tile the size rule chose for 33x33 (one 64x64 tile).
    let variants: Vec<&str> = rows[..4].iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(variants, ["blocked", "simple", "blocked", "tiled 64x64x16"], "sizes in order: 17, then 33");
    for r in &rows {
        eprintln!("{} {} {}: {:.3} ms, {:.3} GFLOP/s", r.kernel, r.shape, r.variant, r.seconds * 1e3, r.gflops);
        let finite = [r.seconds, r.gflops, r.fraction_of_peak].iter().all(|v| v.is_finite() && *v > 0.0);
        assert!(finite, "{} {} {}: seconds {}, GFLOP/s {}, fraction {}", r.kernel, r.shape, r.variant, r.seconds, r.gflops, r.fraction_of_peak);
        assert!((r.fraction_of_peak - r.gflops / peak.fma_gflops).abs() <= 1e-12 * r.fraction_of_peak.max(1.0));
        assert_eq!(r.json()["gflops"].as_f64(), Some(r.gflops));
    }
}
