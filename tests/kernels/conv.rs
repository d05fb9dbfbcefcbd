use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::conv::{self, Conv2d, ConvTranspose2d, ConvVariant};
use kiln::reference::conv as reference;
use kiln::Dispatch;

pub fn conv2d(batch: usize, cin: usize, cout: usize, size: [usize; 2], k: usize, stride: usize, padding: usize) -> Conv2d {
    Conv2d { stride: [stride; 2], padding: [padding; 2], ..Conv2d::new(batch, cin, cout, size, [k, k]) }
}

#[allow(clippy::too_many_arguments)]
pub fn transpose(batch: usize, cin: usize, cout: usize, size: [usize; 2], k: usize, stride: usize, padding: usize, output_padding: usize) -> ConvTranspose2d {
    ConvTranspose2d {
        stride: [stride; 2],
        padding: [padding; 2],
        output_padding: [output_padding; 2],
        ..ConvTranspose2d::new(batch, cin, cout, size, [k, k])
    }
}

/// Random operands of one layer, on the CPU (f32 and f64) and on the GPU.
struct Operands {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    dy: Vec<f64>,
    gpu: [Buffer; 4],
}

/// Runs single dispatches and multi-pass ops together, in order, in one submission.
fn run(dispatches: Vec<Vec<Dispatch>>) {
    gpu().run(&dispatches.into_iter().flatten().collect::<Vec<_>>()).unwrap();
}

fn operands(seed: u64, x_len: usize, w_len: usize, channels: usize, y_len: usize) -> Operands {
    // rand(s + k) is rand(s) shifted by k elements; seeds 2^32 apart share no elements.
    let r = |k: u64, len| rand(seed + (k << 32), len);
    let host = [r(0, x_len), r(1, w_len), r(2, channels), r(3, y_len)];
    let gpu = [upload("x", &host[0]), upload("w", &host[1]), upload("b", &host[2]), upload("dy", &host[3])];
    let [x, w, b, dy] = host.map(|v| f64s(&v));
    Operands { x, w, b, dy, gpu }
}

/// Whether dispatches ran the window kernels (shaders/conv_window*.wgsl).
fn windowed(dispatches: &[Dispatch]) -> bool {
    dispatches.iter().any(|d| d.kernel.shader.starts_with("conv_window"))
}

/// Whether every convolution product of dispatches ran on the tile engine (shaders/gemm.wgsl;
/// conv.wgsl's `sum_partials` may add a split sum's partial sums).
fn tiled(dispatches: &[Dispatch]) -> bool {
    dispatches.iter().all(|d| d.kernel.shader == "gemm" || d.kernel.entry == "sum_partials") && dispatches.iter().any(|d| d.kernel.shader == "gemm")
}

/// Subgroups of exactly the 8 lanes the subgroup window kernels hand weights round (lavapipe
/// at LLVM's 256-bit vectors; not llvmpipe-GL, nor lavapipe with LP_NATIVE_VECTOR_WIDTH=1024).
fn subgroups_of_8() -> bool {
    let gpu = gpu();
    gpu.has(wgpu::Features::SUBGROUP) && gpu.info.subgroup_min_size == 8 && gpu.info.subgroup_max_size == 8
}

/// Operands fit the windows of the conv's forward, data-gradient and weight-gradient kernels.
pub const FITS: [bool; 3] = [true; 3];

/// With `ConvVariant::Windowed`, asserts that the conv kernels (forward, data gradient, weight
/// gradient) whose operands `fit` ran in windows where the adapter has them: on every CPU
/// adapter, the weight gradient where 15 uniform buffers may be bound (7 x and 7 dy windows,
/// params; not under WebGPU's default 12), the others where there are subgroups of 8 and 9
/// uniform buffers. Blocked never does; Tiled runs gemm.wgsl alone.
fn check_kernels(name: &str, variant: ConvVariant, fits: [bool; 3], [forward, data, weight]: [&[Dispatch]; 3]) {
    let gpu = gpu();
    let ran = [windowed(forward), windowed(data), windowed(weight)];
    if variant == ConvVariant::Tiled {
        assert!(tiled(forward) && tiled(data) && tiled(weight), "{name}: tiled ran other kernels than gemm.wgsl's");
    } else if variant == ConvVariant::Blocked {
        assert_eq!(ran, [false; 3], "{name}: blocked ran window kernels");
    } else if gpu.info.device_type == wgpu::DeviceType::Cpu {
        let uniforms = |n| gpu.limits.max_uniform_buffers_per_shader_stage >= n;
        let subgroups = subgroups_of_8() && uniforms(9);
        assert_eq!(ran, [fits[0] && subgroups, fits[1] && subgroups, fits[2] && uniforms(15)], "{name}: window kernels of forward, dx, dw");
    }
}

/// Forward (with bias when `bias`), dX, dW and db of a Conv2d against the reference, in every
/// variant; `fits` as for `check_kernels`.
fn check_conv2d(name: &str, s: Conv2d, bias: bool, seed: u64, fits: [bool; 3]) {
    check_conv2d_in(name, s, bias, seed, fits, &ConvVariant::ALL);
}

/// As `check_conv2d`, in `variants`.
pub fn check_conv2d_in(name: &str, s: Conv2d, bias: bool, seed: u64, fits: [bool; 3], variants: &[ConvVariant]) {
    let gpu = gpu();
    let o = operands(seed, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
    let [xb, wb, bb, dyb] = &o.gpu;
    for &variant in variants {
        let s = Conv2d { variant, ..s };
        let name = format!("{name} {variant:?}");
        let (y, dx, dw, db) = (zeros("y", s.output_len()), zeros("dx", s.input_len()), zeros("dw", s.weight_len()), zeros("db", s.out_channels));
        let forward = conv::conv2d(gpu, &s, xb, wb, bias.then_some(bb), &y).unwrap();
        let data = conv::conv2d_data_grad(gpu, &s, dyb, wb, &dx).unwrap();
        let weight = conv::conv2d_weight_grad(gpu, &s, xb, dyb, &dw, false).unwrap();
        check_kernels(&name, variant, fits, [&forward, &data, &weight]);
        run(vec![forward, data, weight, conv::conv2d_bias_grad(gpu, &s, dyb, &db, false).unwrap()]);
        let want = reference::conv2d(&s, &o.x, &o.w, bias.then_some(&o.b[..]));
        assert_close(&format!("{name} forward"), &read(&y), &want, 1e-4);
        assert_close(&format!("{name} dx"), &read(&dx), &reference::conv2d_data_grad(&s, &o.dy, &o.w), 1e-4);
        assert_close(&format!("{name} dw"), &read(&dw), &reference::conv2d_weight_grad(&s, &o.x, &o.dy), 1e-4);
        assert_close(&format!("{name} db"), &read(&db), &reference::conv2d_bias_grad(&s, &o.dy), 1e-4);
    }
}

/// As `check_conv2d`; `fits` in the terms of the conv it transposes (its forward is that
/// conv's data gradient).
fn check_conv_transpose2d(name: &str, s: ConvTranspose2d, bias: bool, seed: u64, fits: [bool; 3]) {
    check_conv_transpose2d_in(name, s, bias, seed, fits, &ConvVariant::ALL);
}

/// As `check_conv_transpose2d`, in `variants`.
pub fn check_conv_transpose2d_in(name: &str, s: ConvTranspose2d, bias: bool, seed: u64, fits: [bool; 3], variants: &[ConvVariant]) {
    let gpu = gpu();
    let o = operands(seed, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
    let [xb, wb, bb, dyb] = &o.gpu;
    for &variant in variants {
        let s = ConvTranspose2d { variant, ..s };
        let name = format!("{name} {variant:?}");
        let (y, dx, dw, db) = (zeros("y", s.output_len()), zeros("dx", s.input_len()), zeros("dw", s.weight_len()), zeros("db", s.out_channels));
        let forward = conv::conv_transpose2d(gpu, &s, xb, wb, bias.then_some(bb), &y).unwrap();
        let data = conv::conv_transpose2d_data_grad(gpu, &s, dyb, wb, &dx).unwrap();
        let weight = conv::conv_transpose2d_weight_grad(gpu, &s, xb, dyb, &dw, false).unwrap();
        // ConvTranspose2d's forward runs conv's data gradient and vice versa.
        check_kernels(&name, variant, fits, [&data, &forward, &weight]);
        run(vec![forward, data, weight, conv::conv_transpose2d_bias_grad(gpu, &s, dyb, &db, false).unwrap()]);
        let want = reference::conv_transpose2d(&s, &o.x, &o.w, bias.then_some(&o.b[..]));
        assert_close(&format!("{name} forward"), &read(&y), &want, 1e-4);
        let dx_want = reference::conv_transpose2d_data_grad(&s, &o.dy, &o.w);
        assert_close(&format!("{name} dx"), &read(&dx), &dx_want, 1e-4);
        let dw_want = reference::conv_transpose2d_weight_grad(&s, &o.x, &o.dy);
        assert_close(&format!("{name} dw"), &read(&dw), &dw_want, 1e-4);
        assert_close(&format!("{name} db"), &read(&db), &reference::conv_transpose2d_bias_grad(&s, &o.dy), 1e-4);
    }
}

#[test]
fn conv2d_matches_reference_for_odd_sizes() {
    // Channels of 3, 5 and 17 leave partial 8-channel blocks; widths of 7, 9 and 13 leave
    // partial 8-column blocks; batch 1 and kernels 1, 3, 5 with strides 1, 2, padding 0, 1, 2.
    let shapes = [
        conv2d(1, 3, 5, [7, 9], 3, 1, 1),
        conv2d(2, 5, 17, [13, 13], 5, 2, 2),
        conv2d(1, 17, 3, [13, 13], 1, 1, 0),
        conv2d(3, 3, 5, [7, 9], 3, 2, 0),
        conv2d(1, 5, 3, [9, 7], 5, 1, 2),
        Conv2d { stride: [2, 1], padding: [0, 2], ..Conv2d::new(2, 4, 6, [9, 7], [3, 5]) },
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        check_conv2d(&format!("conv2d {}", s.describe()), s, i % 2 == 0, 10 * i as u64, FITS);
    }
}

#[test]
fn conv2d_supports_dilation() {
    let s = Conv2d { padding: [2, 1], dilation: [2, 3], ..Conv2d::new(2, 3, 5, [11, 10], [3, 3]) };
    check_conv2d(&format!("conv2d {}", s.describe()), s, true, 7, FITS);
    let s = Conv2d { stride: [2, 2], dilation: [2, 2], ..Conv2d::new(1, 2, 3, [9, 9], [2, 2]) };
    check_conv2d(&format!("conv2d {}", s.describe()), s, false, 8, FITS);
}

#[test]
fn conv2d_matches_reference_for_dcgan_discriminator_layer() {
    // 5x5, stride 2, padding 2, 1 -> 64 channels, 28x28 -> 14x14.
    check_conv2d("conv2d dcgan 1->64 28x28", conv2d(2, 1, 64, [28, 28], 5, 2, 2), true, 100, FITS);
}

#[test]
fn conv_transpose2d_matches_reference_for_odd_sizes() {
    let shapes = [
        transpose(1, 3, 5, [7, 9], 3, 2, 1, 1),
        transpose(2, 17, 3, [13, 13], 5, 2, 2, 1),
        transpose(1, 5, 17, [7, 9], 1, 1, 0, 0),
        transpose(3, 3, 5, [6, 5], 3, 1, 1, 0),
        transpose(1, 5, 3, [7, 7], 5, 2, 0, 0),
        ConvTranspose2d { stride: [2, 3], padding: [1, 0], output_padding: [1, 2], ..ConvTranspose2d::new(2, 4, 6, [5, 4], [3, 4]) },
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        check_conv_transpose2d(&format!("conv_transpose2d {}", s.describe()), s, i % 2 == 0, 10 * i as u64, FITS);
    }
}

#[test]
fn conv_transpose2d_supports_dilation() {
    // PyTorch allows output_padding up to max(stride, dilation) - 1: here 1 with stride 1.
    let s = ConvTranspose2d { padding: [1, 1], output_padding: [1, 0], dilation: [2, 2], ..ConvTranspose2d::new(2, 3, 5, [6, 7], [3, 3]) };
    check_conv_transpose2d(&format!("conv_transpose2d {}", s.describe()), s, true, 3, FITS);
    let s = ConvTranspose2d { stride: [2, 2], dilation: [3, 2], output_padding: [2, 1], ..ConvTranspose2d::new(1, 2, 3, [5, 4], [2, 3]) };
    check_conv_transpose2d(&format!("conv_transpose2d {}", s.describe()), s, false, 4, FITS);
}

#[test]
fn conv_transpose2d_matches_reference_for_dcgan_generator_layer() {
    // 5x5, stride 2, padding 2, output_padding 1, 128 -> 64 channels, 7x7 -> 14x14.
    let s = transpose(2, 128, 64, [7, 7], 5, 2, 2, 1);
    assert_eq!(s.out_size().unwrap(), [14, 14]);
    check_conv_transpose2d("conv_transpose2d dcgan 128->64 7x7", s, true, 200, FITS);
}

#[test]
fn convs_match_reference_for_one_or_few_channels() {
    // Window kernels switch below 5 input channels (forward batches flattened taps) and below
    // 3 (data gradient, i.e. ConvTranspose2d's forward, takes one channel per workgroup):
    // the DCGAN's image-side layers, gen.3 (64 -> 1) and disc.1 (1 -> 64), at odd sizes.
    check_conv_transpose2d("conv_transpose2d 6 -> 1 channel", transpose(9, 6, 1, [7, 6], 5, 2, 2, 1), true, 960, FITS);
    check_conv_transpose2d("conv_transpose2d 19 -> 2 channels", transpose(3, 19, 2, [5, 5], 3, 1, 1, 0), false, 970, FITS);
    check_conv2d("conv2d 1 -> 20 channels", Conv2d { stride: [2, 2], padding: [2, 1], ..Conv2d::new(10, 1, 20, [13, 12], [5, 4]) }, true, 980, FITS);
    check_conv2d("conv2d 4 -> 3 channels", conv2d(2, 4, 3, [6, 7], 3, 1, 1), false, 990, FITS);
    let gpu = gpu();
    if gpu.info.device_type == wgpu::DeviceType::Cpu && subgroups_of_8() {
        let s = Conv2d { variant: ConvVariant::Windowed, ..Conv2d::new(2, 1, 3, [5, 5], [3, 3]) };
        let (x, w, y) = (zeros("x", s.input_len()), zeros("w", s.weight_len()), zeros("y", s.output_len()));
        let entries = |d: Vec<Dispatch>| d.iter().map(|d| d.kernel.entry).collect::<Vec<_>>();
        assert!(entries(conv::conv2d(gpu, &s, &x, &w, None, &y).unwrap()).contains(&"forward_narrow"));
        assert!(entries(conv::conv2d_data_grad(gpu, &s, &y, &w, &x).unwrap()).contains(&"data_grad_one"));
    }
}

/// Runs dw and db of a layer with `accumulate` onto random prior values; returns the number of
/// dispatches each took (2 when the sum was split into slices, as db's always is).
fn check_accumulate(name: &str, seed: u64, lens: [usize; 4], grads: impl FnOnce(&Operands, &Buffer, &Buffer) -> [Vec<kiln::Dispatch>; 2], want: impl FnOnce(&Operands) -> [Vec<f64>; 2]) -> [usize; 2] {
    let [x_len, w_len, channels, y_len] = lens;
    let o = operands(seed, x_len, w_len, channels, y_len);
    let (prior_w, prior_b) = (rand(seed + (10 << 32), w_len), rand(seed + (11 << 32), channels));
    let (dw, db) = (upload("dw", &prior_w), upload("db", &prior_b));
    let [dw_pass, db_pass] = grads(&o, &dw, &db);
    let passes = [dw_pass.len(), db_pass.len()];
    run(vec![dw_pass, db_pass]);
    let plus = |prior: &[f32], g: Vec<f64>| -> Vec<f64> { prior.iter().zip(g).map(|(&p, g)| p as f64 + g).collect() };
    let [dw_want, db_want] = want(&o);
    assert_close(&format!("{name} dw accumulated"), &read(&dw), &plus(&prior_w, dw_want), 1e-4);
    assert_close(&format!("{name} db accumulated"), &read(&db), &plus(&prior_b, db_want), 1e-4);
    passes
}

#[test]
fn conv_weight_and_bias_grads_accumulate() {
    let gpu = gpu();
    // Blocked: small layers sum dw in one pass; larger ones split the sum, and the second pass
    // accumulates. Windowed: copies into windows, then one pass per 7 samples.
    for variant in ConvVariant::ALL {
        let blocked = variant == ConvVariant::Blocked;
        for (s, passes) in [(conv2d(2, 3, 5, [7, 9], 3, 2, 1), [1, 2]), (conv2d(8, 3, 5, [28, 28], 3, 1, 1), [2, 2])] {
            let s = Conv2d { variant, ..s };
            let lens = [s.input_len(), s.weight_len(), s.out_channels, s.output_len()];
            let got = check_accumulate(
                &format!("conv2d {} {variant:?}", s.describe()),
                50,
                lens,
                |o, dw, db| {
                    [conv::conv2d_weight_grad(gpu, &s, &o.gpu[0], &o.gpu[3], dw, true).unwrap(), conv::conv2d_bias_grad(gpu, &s, &o.gpu[3], db, true).unwrap()]
                },
                |o| [reference::conv2d_weight_grad(&s, &o.x, &o.dy), reference::conv2d_bias_grad(&s, &o.dy)],
            );
            if blocked {
                assert_eq!(got, passes, "dispatches of dw and db");
            }
        }
        for (t, passes) in [(transpose(2, 3, 5, [4, 5], 3, 2, 1, 1), [1, 2]), (transpose(8, 3, 5, [14, 14], 3, 2, 1, 1), [2, 2])] {
            let t = ConvTranspose2d { variant, ..t };
            let lens = [t.input_len(), t.weight_len(), t.out_channels, t.output_len()];
            let got = check_accumulate(
                &format!("conv_transpose2d {} {variant:?}", t.describe()),
                70,
                lens,
                |o, dw, db| {
                    [
                        conv::conv_transpose2d_weight_grad(gpu, &t, &o.gpu[0], &o.gpu[3], dw, true).unwrap(),
                        conv::conv_transpose2d_bias_grad(gpu, &t, &o.gpu[3], db, true).unwrap(),
                    ]
                },
                |o| [reference::conv_transpose2d_weight_grad(&t, &o.x, &o.dy), reference::conv_transpose2d_bias_grad(&t, &o.dy)],
            );
            if blocked {
                assert_eq!(got, passes, "dispatches of dw and db");
            }
        }
    }
}

/// A tall one-pixel-wide image: one 8x8 block per row, and 4.2M-term weight and bias sums.
fn tall() -> (Conv2d, Operands) {
    let s = Conv2d::new(1, 1, 1, [4_200_000, 1], [1, 1]);
    (s, operands(300, s.input_len(), s.weight_len(), s.out_channels, s.output_len()))
}

#[test]
fn conv2d_forward_folds_grids_over_65535_workgroups() {
    // 4.2M blocks: more than 65,535 workgroups of 64 (ConvTranspose2d's data gradient too).
    let (s, o) = tall();
    let y = zeros("y", s.output_len());
    run(vec![conv::conv2d(gpu(), &s, &o.gpu[0], &o.gpu[1], Some(&o.gpu[2]), &y).unwrap()]);
    assert_close("conv2d tall forward", &read(&y), &reference::conv2d(&s, &o.x, &o.w, Some(&o.b)), 1e-4);
}

#[test]
fn conv2d_data_grad_folds_grids_over_65535_workgroups() {
    // 4.2M blocks (ConvTranspose2d's forward too).
    let (s, o) = tall();
    let dx = zeros("dx", s.input_len());
    run(vec![conv::conv2d_data_grad(gpu(), &s, &o.gpu[3], &o.gpu[1], &dx).unwrap()]);
    assert_close("conv2d tall dx", &read(&dx), &reference::conv2d_data_grad(&s, &o.dy, &o.w), 1e-4);
}

#[test]
fn conv2d_weight_and_bias_grads_sum_millions_of_terms() {
    // 4.2M terms, split into slices short enough for llvmpipe's loop limit: 4,102 slices for
    // the weight gradient and 16,448 lane sums for the bias gradient, over the 4,096 one
    // sum_partials pass adds, so both partial sums are added in two levels. Every variant.
    let (s, o) = tall();
    for variant in ConvVariant::ALL {
        let s = Conv2d { variant, ..s };
        let (dw, db) = (zeros("dw", 1), zeros("db", 1));
        let weight = conv::conv2d_weight_grad(gpu(), &s, &o.gpu[0], &o.gpu[3], &dw, false).unwrap();
        let bias = conv::conv2d_bias_grad(gpu(), &s, &o.gpu[3], &db, false).unwrap();
        let levels = |d: &[Dispatch]| d.iter().filter(|d| d.kernel.entry == "sum_partials").count();
        // The tile engine's grid layers are longer (11,792 steps at its 64x64 tile): 357
        // partial sums of dw, added in one level.
        let dw_levels = if variant == ConvVariant::Tiled { 1 } else { 2 };
        assert_eq!((levels(&weight), levels(&bias)), (dw_levels, 2), "{variant:?}: sum_partials levels of dw and db");
        run(vec![weight, bias]);
        assert_close(&format!("{variant:?} conv2d tall dw"), &read(&dw), &reference::conv2d_weight_grad(&s, &o.x, &o.dy), 1e-4);
        assert_close(&format!("{variant:?} conv2d tall db"), &read(&db), &reference::conv2d_bias_grad(&s, &o.dy), 1e-4);
    }
}

#[test]
fn conv2d_bias_grad_folds_grids_over_65535_workgroups() {
    // 70,000 channels: one bias-gradient workgroup each. (Weight-gradient grids that large
    // need over 2^25 weights; the fold is the same `flat` as in every entry.)
    let gpu = gpu();
    let s = Conv2d::new(1, 1, 70_000, [1, 1], [1, 1]);
    let o = operands(330, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
    let (y, db) = (zeros("y", s.output_len()), zeros("db", s.out_channels));
    let forward = conv::conv2d(gpu, &s, &o.gpu[0], &o.gpu[1], Some(&o.gpu[2]), &y).unwrap();
    run(vec![forward, conv::conv2d_bias_grad(gpu, &s, &o.gpu[3], &db, false).unwrap()]);
    assert_close("conv2d 70000 channels forward", &read(&y), &reference::conv2d(&s, &o.x, &o.w, Some(&o.b)), 1e-4);
    assert_close("conv2d 70000 channels db", &read(&db), &reference::conv2d_bias_grad(&s, &o.dy), 1e-4);
}

#[test]
fn conv2d_sums_just_under_the_loop_limit_in_full() {
    // 2000 channels x 5x5 taps = 50,000 terms per output, the most the launcher allows near
    // llvmpipe's 65,535 loop iterations per invocation: every term must arrive.
    // (The 2000-channel sides are over a window, so the blocked kernels run; the 9-channel
    // sides fit.)
    check_conv2d("conv2d 2000 -> 9 channels", conv2d(1, 2000, 9, [5, 5], 5, 1, 2), false, 700, [false, true, false]);
    check_conv2d("conv2d 9 -> 2000 channels", conv2d(1, 9, 2000, [5, 5], 5, 1, 2), false, 710, [true, false, false]);
}

#[test]
fn conv2d_sums_channels_far_past_the_loop_limit_in_slices() {
    // 20,000 channels x 3x3 taps = 180,000 terms per output, about three times what one
    // invocation may loop over on llvmpipe: forward (over input channels) and data gradient
    // (over output channels) each run as dispatches over ranges of channels, adding up.
    // Every variant; the long sides are over a window, so the blocked kernels run them.
    check_conv2d("conv2d 20000 -> 3 channels", conv2d(1, 20_000, 3, [4, 5], 3, 1, 1), true, 720, [false, true, false]);
    check_conv2d("conv2d 3 -> 20000 channels", conv2d(1, 3, 20_000, [4, 5], 3, 1, 1), false, 730, [true, false, false]);
    let t = transpose(1, 20_000, 2, [3, 4], 3, 2, 1, 1);
    check_conv_transpose2d(&format!("conv_transpose2d {}", t.describe()), t, true, 740, [true, false, false]);
}

#[test]
fn conv2d_refuses_a_kernel_whose_taps_alone_pass_the_loop_limit() {
    // 250x250 taps of one channel are 125,564 loop iterations per output block: no slicing of
    // channels brings that under the limit, so forward and data gradient refuse it by name.
    let gpu = gpu();
    let s = conv2d(1, 1, 1, [250, 250], 250, 1, 0);
    let (x, w, y) = (zeros("x", s.input_len()), zeros("w", s.weight_len()), zeros("y", s.output_len()));
    let e = conv::conv2d(gpu, &s, &x, &w, None, &y).err().expect("must be refused").to_string();
    assert!(e.contains("conv2d") && e.contains("250x250") && e.contains("60000"), "{e}");
    let e = conv::conv2d_data_grad(gpu, &s, &y, &w, &x).err().expect("must be refused").to_string();
    assert!(e.contains("conv2d") && e.contains("250x250") && e.contains("60000"), "{e}");
}

#[test]
fn windowed_convs_match_reference_across_dispatches() {
    // 25 samples: forward and dx in dispatches of 8, 8, 8 and 1, dw in passes of 7, 7, 7 and 4;
    // 17 and 33 channels leave partial 16-channel blocks; stride 2 over odd sizes gives residue
    // classes of different sizes.
    let s = Conv2d { stride: [2, 2], padding: [1, 2], ..Conv2d::new(25, 17, 33, [9, 11], [3, 5]) };
    check_conv2d(&format!("conv2d {}", s.describe()), s, true, 900, FITS);
    let t = transpose(13, 33, 17, [5, 6], 5, 2, 2, 1);
    check_conv_transpose2d(&format!("conv_transpose2d {}", t.describe()), t, true, 910, FITS);
}

#[test]
fn windowed_convs_sum_just_under_the_loop_limit_in_full() {
    // 1800 channels x 5x5 taps, in windows of 1800 x 3x3 = 16,200 elements: ~51,000 of
    // llvmpipe's 65,535 loop iterations per invocation, summed by the forward kernel in the
    // first case, by the data-gradient kernel in the second (x with padding is too big for
    // the weight-gradient window in the first).
    check_conv2d("conv2d 1800 -> 5 channels", conv2d(1, 1800, 5, [3, 3], 5, 1, 2), false, 920, [true, true, false]);
    check_conv2d("conv2d 5 -> 1800 channels", conv2d(1, 5, 1800, [3, 3], 5, 1, 2), false, 930, FITS);
}

#[test]
fn windowed_conv_grids_fold_over_65535_workgroups() {
    // 600 channels x 128x128 pixels: 38 blocks of 16 channels x 2048 groups of 8 pixels.
    let gpu = gpu();
    let s = Conv2d { variant: ConvVariant::Windowed, ..Conv2d::new(1, 1, 600, [128, 128], [1, 1]) };
    let o = operands(940, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
    let y = zeros("y", s.output_len());
    let forward = conv::conv2d(gpu, &s, &o.gpu[0], &o.gpu[1], Some(&o.gpu[2]), &y).unwrap();
    let t = Conv2d { variant: ConvVariant::Windowed, ..Conv2d::new(1, 600, 1, [128, 128], [1, 1]) };
    let p = operands(950, t.input_len(), t.weight_len(), t.out_channels, t.output_len());
    let dx = zeros("dx", t.input_len());
    let data = conv::conv2d_data_grad(gpu, &t, &p.gpu[3], &p.gpu[1], &dx).unwrap();
    check_kernels("conv2d 600 channels 128x128", ConvVariant::Windowed, [true, true, false], [&forward, &data, &[]]);
    run(vec![forward, data]);
    assert_close("conv2d 600 channels forward", &read(&y), &reference::conv2d(&s, &o.x, &o.w, Some(&o.b)), 1e-4);
    assert_close("conv2d 600 channels dx", &read(&dx), &reference::conv2d_data_grad(&t, &p.dy, &p.w), 1e-4);
}

#[test]
fn conv_bias_grad_is_accurate_over_large_batches() {
    // 8·256·256 = 524,288 terms per channel with a nonzero mean: one running f32 sum drifts
    // by 3e-6 to 2e-5 relative; short sums, then sums of their partial sums, stay near 2e-7.
    let gpu = gpu();
    let s = Conv2d::new(8, 1, 3, [256, 256], [1, 1]);
    let dy: Vec<f32> = rand(400, s.output_len()).iter().map(|v| v + 0.5).collect();
    let db = zeros("db", 3);
    run(vec![conv::conv2d_bias_grad(gpu, &s, &upload("dy", &dy), &db, false).unwrap()]);
    assert_close("conv2d db over 524288 terms", &read(&db), &reference::conv2d_bias_grad(&s, &f64s(&dy)), 1e-6);
}

#[test]
fn conv2d_reference_backward_matches_finite_differences() {
    let shapes = [
        conv2d(2, 2, 3, [5, 4], 3, 2, 1),
        Conv2d { padding: [1, 2], dilation: [2, 1], stride: [1, 2], ..Conv2d::new(1, 2, 2, [6, 5], [2, 3]) },
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let o = operands(seed, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
        let (x, w, b, dy) = (&o.x, &o.w, &o.b, &o.dy);
        let name = format!("conv2d {}", s.describe());
        let fd = finite_difference(|x| reference::conv2d(&s, x, w, Some(b)), x, dy);
        assert_grad_matches_fd(&format!("{name} dx"), &reference::conv2d_data_grad(&s, dy, w), &fd);
        let fd = finite_difference(|w| reference::conv2d(&s, x, w, Some(b)), w, dy);
        assert_grad_matches_fd(&format!("{name} dw"), &reference::conv2d_weight_grad(&s, x, dy), &fd);
        let fd = finite_difference(|b| reference::conv2d(&s, x, w, Some(b)), b, dy);
        assert_grad_matches_fd(&format!("{name} db"), &reference::conv2d_bias_grad(&s, dy), &fd);
    }
}

#[test]
fn conv_transpose2d_reference_backward_matches_finite_differences() {
    let shapes = [
        transpose(2, 2, 3, [3, 4], 3, 2, 1, 1),
        ConvTranspose2d { padding: [1, 0], dilation: [2, 1], stride: [1, 2], output_padding: [1, 1], ..ConvTranspose2d::new(1, 2, 2, [4, 3], [2, 3]) },
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        let seed = 600 + 10 * i as u64;
        let o = operands(seed, s.input_len(), s.weight_len(), s.out_channels, s.output_len());
        let (x, w, b, dy) = (&o.x, &o.w, &o.b, &o.dy);
        let name = format!("conv_transpose2d {}", s.describe());
        let fd = finite_difference(|x| reference::conv_transpose2d(&s, x, w, Some(b)), x, dy);
        assert_grad_matches_fd(&format!("{name} dx"), &reference::conv_transpose2d_data_grad(&s, dy, w), &fd);
        let fd = finite_difference(|w| reference::conv_transpose2d(&s, x, w, Some(b)), w, dy);
        assert_grad_matches_fd(&format!("{name} dw"), &reference::conv_transpose2d_weight_grad(&s, x, dy), &fd);
        let fd = finite_difference(|b| reference::conv_transpose2d(&s, x, w, Some(b)), b, dy);
        assert_grad_matches_fd(&format!("{name} db"), &reference::conv_transpose2d_bias_grad(&s, dy), &fd);
    }
}

fn expect_err(result: kiln::Result<impl Sized>, needles: &[&str]) {
    let err = result.err().expect("must fail").to_string();
    assert!(needles.iter().all(|n| err.contains(n)), "{err:?} should mention {needles:?}");
}

#[test]
fn conv_rejects_bad_shapes_naming_the_op() {
    let gpu = gpu();
    let buf = zeros("buf", 1000);
    expect_err(Conv2d::from_dims(&[2, 3, 8, 8], &[4, 5, 3, 3]), &["conv2d", "[2, 3, 8, 8] has 3 channels", "expects 5"]);
    expect_err(ConvTranspose2d::from_dims(&[2, 3, 8, 8], &[4, 5, 3, 3]), &["conv_transpose2d", "has 3 channels", "expects 4"]);
    expect_err(Conv2d::from_dims(&[3, 8, 8], &[4, 3, 3, 3]), &["conv2d", "4 dims"]);

    let too_small = Conv2d::new(1, 1, 1, [3, 3], [5, 5]);
    expect_err(conv::conv2d(gpu, &too_small, &buf, &buf, None, &buf), &["conv2d", "kernel spans 5", "only 3"]);
    let t = ConvTranspose2d { padding: [2, 2], ..ConvTranspose2d::new(1, 1, 1, [1, 1], [3, 3]) };
    expect_err(conv::conv_transpose2d(gpu, &t, &buf, &buf, None, &buf), &["conv_transpose2d", "not positive"]);

    let s = conv2d(2, 3, 4, [8, 8], 3, 1, 1);
    let short = zeros("short", 10);
    expect_err(conv::conv2d(gpu, &s, &buf, &buf, None, &short), &["conv2d", "output y [2, 4, 8, 8]", "needs 512"]);
    expect_err(conv::conv2d(gpu, &s, &buf, &buf, Some(&zeros("b", 3)), &buf), &["conv2d", "bias [4]", "needs 4"]);
    expect_err(conv::conv2d_weight_grad(gpu, &s, &buf, &buf, &short, false), &["conv2d.weight_grad", "dw [4, 3, 3, 3]"]);
    expect_err(conv::conv2d(gpu, &Conv2d { groups: 2, ..s }, &buf, &buf, None, &buf), &["conv2d", "groups = 2"]);
    expect_err(conv::conv2d(gpu, &Conv2d { stride: [0, 1], ..s }, &buf, &buf, None, &buf), &["conv2d", "positive"]);

    let t = transpose(2, 4, 3, [4, 4], 5, 2, 2, 2);
    expect_err(conv::conv_transpose2d(gpu, &t, &buf, &buf, None, &buf), &["conv_transpose2d", "output_padding 2"]);
    let t = transpose(2, 4, 3, [4, 4], 5, 2, 2, 1);
    expect_err(conv::conv_transpose2d_data_grad(gpu, &t, &buf, &buf, &short), &["conv_transpose2d.data_grad", "dx [2, 4, 4, 4]"]);
    expect_err(conv::conv_transpose2d_bias_grad(gpu, &t, &short, &buf, false), &["conv_transpose2d.bias_grad", "dy [2, 3, 8, 8]"]);
}


