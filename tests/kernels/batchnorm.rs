use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::batchnorm::{self, Affine, BatchNorm, Reduction, Running, Saved};
use kiln::reference::batchnorm as reference;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

// Two-value batches, odd sizes, batch 1 with H·W > 1, channels of one spatial value, a
// realistic conv layer, and channels longer than one 4,096-value chunk.
const SHAPES: [&[usize]; 7] =
    [&[2, 3], &[7, 5], &[1, 4, 3, 5], &[5, 3, 7, 9], &[3, 2, 1, 1], &[64, 128, 7, 7], &[9, 2, 33, 31]];

/// A batch norm layer's tensors on the CPU (f32, as uploaded) and on the GPU.
struct Layer {
    shape: Vec<usize>,
    bn: BatchNorm,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
    b: Bufs,
}

struct Bufs {
    x: Buffer,
    dy: Buffer,
    gamma: Buffer,
    beta: Buffer,
    rm: Buffer,
    rv: Buffer,
    y: Buffer,
    mean: Buffer,
    invstd: Buffer,
    dx: Buffer,
    dgamma: Buffer,
    dbeta: Buffer,
    scratch: Buffer,
}

impl Layer {
    fn new(shape: &[usize], seed: u64) -> Layer {
        let n: usize = shape.iter().product();
        let x = rand(seed, n);
        Layer::with_x(shape, seed, x)
    }

    fn with_x(shape: &[usize], seed: u64, x: Vec<f32>) -> Layer {
        let (n, c) = (x.len(), shape[1]);
        let bn = BatchNorm::new(shape);
        let dy = rand(seed + 1, n);
        let gamma: Vec<f32> = rand(seed + 2, c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = rand(seed + 3, c);
        let rm = rand(seed + 4, c);
        let rv: Vec<f32> = rand(seed + 5, c).iter().map(|v| 0.6 + 0.4 * v).collect();
        let b = Bufs {
            x: upload("x", &x),
            dy: upload("dy", &dy),
            gamma: upload("gamma", &gamma),
            beta: upload("beta", &beta),
            rm: upload("running_mean", &rm),
            rv: upload("running_var", &rv),
            y: zeros("y", n),
            mean: zeros("saved mean", c),
            invstd: zeros("saved invstd", c),
            dx: zeros("dx", n),
            dgamma: zeros("dgamma", c),
            dbeta: zeros("dbeta", c),
            scratch: zeros("scratch", bn.scratch_len()),
        };
        Layer { shape: shape.to_vec(), bn, x, dy, gamma, beta, rm, rv, b }
    }

    fn reduced(mut self, reduction: Reduction) -> Layer {
        self.bn.reduction = reduction;
        self
    }

    /// Names the shape and, when forced, the reduction in messages.
    fn name(&self) -> String {
        match self.bn.reduction {
            Reduction::Auto => format!("{:?}", self.shape),
            r => format!("{:?} {r:?}", self.shape),
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine { gamma: &self.b.gamma, beta: &self.b.beta }
    }
    fn grads(&self) -> Affine<'_> {
        Affine { gamma: &self.b.dgamma, beta: &self.b.dbeta }
    }
    fn running(&self) -> Running<'_> {
        Running { mean: &self.b.rm, var: &self.b.rv }
    }
    fn saved(&self) -> Saved<'_> {
        Saved { mean: &self.b.mean, invstd: &self.b.invstd }
    }

    fn forward_train(&self) -> Vec<kiln::Dispatch> {
        let b = &self.b;
        batchnorm::forward_train(
            gpu(),
            &self.bn,
            &b.x,
            Some(self.affine()),
            Some(self.running()),
            &b.y,
            self.saved(),
            &b.scratch,
        )
        .unwrap()
    }

    fn backward_train(&self) -> Vec<kiln::Dispatch> {
        let b = &self.b;
        batchnorm::backward_train(
            gpu(),
            &self.bn,
            &b.x,
            &b.dy,
            Some(&b.gamma),
            self.saved(),
            &b.dx,
            Some(self.grads()),
            &b.scratch,
        )
        .unwrap()
    }

    fn want_train(&self) -> reference::Train {
        reference::forward_train(
            &f64s(&self.x),
            &self.shape,
            Some(&f64s(&self.gamma)),
            Some(&f64s(&self.beta)),
            &f64s(&self.rm),
            &f64s(&self.rv),
            EPS,
            MOMENTUM,
        )
    }

    fn check_forward_train(&self, tol: f64) {
        let (want, s) = (self.want_train(), self.name());
        assert_close(&format!("train y {s}"), &read(&self.b.y), &want.y, tol);
        // A mean near zero has few exact digits; what matters is its error against the spread.
        let std: Vec<f64> = want.invstd.iter().map(|v| 1.0 / v).collect();
        assert_close_to_scale(&format!("saved mean {s}"), &read(&self.b.mean), &want.mean, &std, tol);
        assert_close(&format!("saved invstd {s}"), &read(&self.b.invstd), &want.invstd, tol);
        assert_close(&format!("running_mean {s}"), &read(&self.b.rm), &want.running_mean, tol);
        assert_close(&format!("running_var {s}"), &read(&self.b.rv), &want.running_var, tol);
    }

    fn check_backward_train(&self, tol: f64) {
        let (fwd, s) = (self.want_train(), self.name());
        let want = reference::backward_train(
            &f64s(&self.x),
            &f64s(&self.dy),
            &self.shape,
            Some(&f64s(&self.gamma)),
            &fwd.mean,
            &fwd.invstd,
        );
        // dx = γ·invstd·(dy − (Σdy + x̂·Σdy·x̂)/m) subtracts terms of the size of γ·invstd·dy.
        // When the batch statistics absorb nearly all of dy (m = 2 pins x̂ to ±1), dx is far
        // smaller than those terms and f32 resolves it only relative to them, as in PyTorch.
        let c = self.shape[1];
        let hw = self.x.len() / self.shape[0] / c;
        let terms: Vec<f64> = (0..self.x.len())
            .map(|i| self.gamma[i / hw % c] as f64 * fwd.invstd[i / hw % c] * self.dy[i] as f64)
            .collect();
        assert_close_to_scale(&format!("train dx {s}"), &read(&self.b.dx), &want.dx, &terms, tol);
        assert_close(&format!("train dgamma {s}"), &read(&self.b.dgamma), &want.dgamma, tol);
        assert_close(&format!("train dbeta {s}"), &read(&self.b.dbeta), &want.dbeta, tol);
    }
}

/// Like `assert_close`, with the error measured against the norm of `scale` instead of `want`.
fn assert_close_to_scale(name: &str, got: &[f32], want: &[f64], scale: &[f64], tol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{name}: not finite");
    let diff = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
    let norm = scale.iter().map(|v| v * v).sum::<f64>().sqrt();
    eprintln!("{name}: rel L2 {:.2e} to its scale ({:.2e} to itself)", diff / norm, rel_l2(got, want));
    assert!(diff <= tol * norm, "{name}: error {:.3e} relative to its scale > {tol:e}", diff / norm);
}

// Every way of reducing a channel, whatever `Auto` would pick for the shape (it never picks
// Fused on a CPU adapter, so only forcing it proves the GPU path here).
const REDUCTIONS: [Reduction; 3] = [Reduction::Direct, Reduction::TwoLevel, Reduction::Fused];

#[test]
fn batch_norm_train_forward_matches_reference() {
    for (i, shape) in SHAPES.iter().enumerate() {
        for reduction in REDUCTIONS {
            let l = Layer::new(shape, 10 * i as u64).reduced(reduction);
            gpu().run(&l.forward_train()).unwrap();
            l.check_forward_train(1e-4);
        }
    }
}

#[test]
fn batch_norm_train_backward_matches_reference() {
    for (i, shape) in SHAPES.iter().enumerate() {
        for reduction in REDUCTIONS {
            let l = Layer::new(shape, 10 * i as u64).reduced(reduction);
            let mut steps = l.forward_train();
            steps.extend(l.backward_train());
            gpu().run(&steps).unwrap();
            l.check_backward_train(1e-4);
        }
    }
}

#[test]
fn batch_norm_eval_forward_matches_reference() {
    // Eval mode has no batch statistics, so one value per channel ([1, 3]) is fine.
    for (i, shape) in SHAPES.iter().chain([&[1usize, 3][..]].iter()).enumerate() {
        let l = Layer::new(shape, 10 * i as u64);
        let b = &l.b;
        gpu()
            .run(&[batchnorm::forward_eval(gpu(), &l.bn, &b.x, Some(l.affine()), l.running(), &b.y).unwrap()])
            .unwrap();
        let want = reference::forward_eval(
            &f64s(&l.x),
            shape,
            Some(&f64s(&l.gamma)),
            Some(&f64s(&l.beta)),
            &f64s(&l.rm),
            &f64s(&l.rv),
            EPS,
        );
        assert_close(&format!("eval y {shape:?}"), &read(&b.y), &want, 1e-4);
    }
}

#[test]
fn batch_norm_eval_backward_matches_reference() {
    let shapes = SHAPES.into_iter().chain([&[1usize, 3][..]]).enumerate();
    for ((i, shape), reduction) in shapes.flat_map(|s| REDUCTIONS.map(|r| (s, r))) {
        let l = Layer::new(shape, 10 * i as u64).reduced(reduction);
        let b = &l.b;
        let steps = batchnorm::backward_eval(
            gpu(),
            &l.bn,
            &b.x,
            &b.dy,
            Some(&b.gamma),
            l.running(),
            &b.dx,
            Some(l.grads()),
            &b.scratch,
        )
        .unwrap();
        gpu().run(&steps).unwrap();
        let want = reference::backward_eval(
            &f64s(&l.x),
            &f64s(&l.dy),
            shape,
            Some(&f64s(&l.gamma)),
            &f64s(&l.rm),
            &f64s(&l.rv),
            EPS,
        );
        let s = l.name();
        assert_close(&format!("eval dx {s}"), &read(&b.dx), &want.dx, 1e-4);
        assert_close(&format!("eval dgamma {s}"), &read(&b.dgamma), &want.dgamma, 1e-4);
        assert_close(&format!("eval dbeta {s}"), &read(&b.dbeta), &want.dbeta, 1e-4);
    }
}

#[test]
fn batch_norm_without_affine_or_running_stats_matches_reference() {
    let gpu = gpu();
    for (i, shape) in [&[7usize, 5][..], &[5, 3, 7, 9]].iter().enumerate() {
        let l = Layer::new(shape, 100 + i as u64);
        let b = &l.b;
        let (x, dy) = (f64s(&l.x), f64s(&l.dy));
        let mut steps = batchnorm::forward_train(gpu, &l.bn, &b.x, None, None, &b.y, l.saved(), &b.scratch).unwrap();
        steps.extend(
            batchnorm::backward_train(gpu, &l.bn, &b.x, &b.dy, None, l.saved(), &b.dx, None, &b.scratch).unwrap(),
        );
        gpu.run(&steps).unwrap();
        let fwd = reference::forward_train(&x, shape, None, None, &f64s(&l.rm), &f64s(&l.rv), EPS, MOMENTUM);
        let bwd = reference::backward_train(&x, &dy, shape, None, &fwd.mean, &fwd.invstd);
        assert_close(&format!("plain train y {shape:?}"), &read(&b.y), &fwd.y, 1e-4);
        assert_close(&format!("plain train dx {shape:?}"), &read(&b.dx), &bwd.dx, 1e-4);
        assert_eq!(read(&b.rm), l.rm, "running_mean must be left alone when not given");

        gpu.run(&[batchnorm::forward_eval(gpu, &l.bn, &b.x, None, l.running(), &b.y).unwrap()]).unwrap();
        let want = reference::forward_eval(&x, shape, None, None, &f64s(&l.rm), &f64s(&l.rv), EPS);
        assert_close(&format!("plain eval y {shape:?}"), &read(&b.y), &want, 1e-4);
        gpu.run(
            &batchnorm::backward_eval(gpu, &l.bn, &b.x, &b.dy, None, l.running(), &b.dx, None, &gpu.dummy).unwrap(),
        )
        .unwrap();
        let want = reference::backward_eval(&x, &dy, shape, None, &f64s(&l.rm), &f64s(&l.rv), EPS);
        assert_close(&format!("plain eval dx {shape:?}"), &read(&b.dx), &want.dx, 1e-4);
    }
}

#[test]
fn batch_norm_variance_is_accurate_for_data_with_large_mean() {
    // Mean 1000, std 1 over 50,176 values a channel: E[x²] − E[x]² in f32 would lose about
    // 1e6·6e-8 ≈ 6% of the variance; a running f32 mean near 1000 drifts by ulps of 6e-5.
    // Direct walks at most 32,768 values, so it gets a half batch.
    for (shape, reduction) in
        [([64, 2, 28, 28], Reduction::TwoLevel), ([32, 2, 28, 28], Reduction::Direct), ([64, 2, 28, 28], Reduction::Fused)]
    {
        let x: Vec<f32> = rand(7, shape.iter().product()).iter().map(|v| 1000.0 + 3f32.sqrt() * v).collect();
        let l = Layer::with_x(&shape, 7, x).reduced(reduction);
        let mut steps = l.forward_train();
        steps.extend(l.backward_train());
        gpu().run(&steps).unwrap();
        l.check_forward_train(1e-4);
        l.check_backward_train(1e-4);
    }
}

#[test]
fn batch_norm_handles_channels_of_a_million_values() {
    let shape = [4, 3, 512, 512];
    let x: Vec<f32> = rand(8, shape.iter().product()).iter().map(|v| 5.0 + 2.0 * v).collect();
    let l = Layer::with_x(&shape, 8, x);
    let mut steps = l.forward_train();
    assert_eq!(steps[0].kernel.entry, "stats_partial", "Auto must pick the two-level reduction");
    steps.extend(l.backward_train());
    gpu().run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);
}

#[test]
fn batch_norm_direct_reduction_handles_its_limit_and_refuses_longer_channels() {
    let gpu = gpu();
    // 32,768 values a channel: on llvmpipe a loop cut short at 65,535 iterations would show.
    let l = Layer::new(&[2, 2, 128, 128], 17).reduced(Reduction::Direct);
    let mut steps = l.forward_train();
    steps.extend(l.backward_train());
    gpu.run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);

    let shape = [2, 1, 128, 129];
    let l = Layer::new(&shape, 16).reduced(Reduction::Direct);
    let b = &l.b;
    let err = batchnorm::forward_train(gpu, &l.bn, &b.x, None, None, &b.y, l.saved(), &b.scratch)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("batch_norm forward (training)") && err.contains("33024") && err.contains("32768"), "{err}");
    let err = batchnorm::backward_train(gpu, &l.bn, &b.x, &b.dy, None, l.saved(), &b.dx, None, &b.scratch)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("batch_norm backward (training)") && err.contains("32768"), "{err}");
}

#[test]
fn batch_norm_fused_reduction_is_one_dispatch_each_way_handles_its_limit_and_refuses_longer_channels() {
    let gpu = gpu();
    // Without affine and running stats too: the flags that select what the fused pass binds.
    let l = Layer::new(&[5, 3, 7, 9], 31).reduced(Reduction::Fused);
    let b = &l.b;
    let (x, dy) = (f64s(&l.x), f64s(&l.dy));
    let forward = batchnorm::forward_train(gpu, &l.bn, &b.x, None, None, &b.y, l.saved(), &b.scratch).unwrap();
    let backward = batchnorm::backward_train(gpu, &l.bn, &b.x, &b.dy, None, l.saved(), &b.dx, None, &b.scratch).unwrap();
    let entries: Vec<&str> = forward.iter().chain(&backward).map(|d| d.kernel.entry).collect();
    assert_eq!(entries, ["fused_forward", "fused_backward"]);
    gpu.run(&[forward, backward].concat()).unwrap();
    let fwd = reference::forward_train(&x, &l.shape, None, None, &f64s(&l.rm), &f64s(&l.rv), EPS, MOMENTUM);
    let bwd = reference::backward_train(&x, &dy, &l.shape, None, &fwd.mean, &fwd.invstd);
    assert_close("fused plain y", &read(&b.y), &fwd.y, 1e-4);
    assert_close("fused plain dx", &read(&b.dx), &bwd.dx, 1e-4);
    assert_eq!(read(&b.rm), l.rm, "running_mean must be left alone when not given");

    // 4,194,304 values in one channel: each invocation walks 16,384 of them twice, which a
    // loop cut short at 65,535 iterations on llvmpipe would show.
    let l = Layer::new(&[4, 1, 1024, 1024], 32).reduced(Reduction::Fused);
    let mut steps = l.forward_train();
    steps.extend(l.backward_train());
    gpu.run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);

    let l = Layer::new(&[4, 1, 1024, 1025], 33).reduced(Reduction::Fused);
    let b = &l.b;
    let err = batchnorm::forward_train(gpu, &l.bn, &b.x, None, None, &b.y, l.saved(), &b.scratch)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("batch_norm forward (training)") && err.contains("4198400") && err.contains("4194304"), "{err}");
    let err = batchnorm::backward_train(gpu, &l.bn, &b.x, &b.dy, None, l.saved(), &b.dx, None, &b.scratch)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("batch_norm backward (training)") && err.contains("4194304"), "{err}");
}

#[test]
fn batch_norm_handles_70000_short_channels() {
    // Auto reduces channels of 2 values with one invocation each: 1,094 workgroups of 64.
    let l = Layer::new(&[2, 70_000], 9);
    let mut steps = l.forward_train();
    steps.extend(l.backward_train());
    gpu().run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);
}

#[test]
// Slow on CPU adapters (65k workgroup trees: ~10 s on lavapipe, ~30 s on GL) but it is the only
// test of the folded chunk grid, so it runs.
fn batch_norm_two_level_folds_more_than_65535_chunk_workgroups() {
    // One workgroup per (channel, chunk) in the partial passes: 65,537 of them, folded into a
    // grid of 32,769 × 2 whose last workgroup has no chunk.
    let l = Layer::new(&[2, 65_537], 9).reduced(Reduction::TwoLevel);
    let mut steps = l.forward_train();
    steps.extend(l.backward_train());
    assert_eq!((steps[0].workgroups, steps[3].workgroups), ([32_769, 2, 1], [32_769, 2, 1]));
    gpu().run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);
}

#[test]
fn batch_norm_two_level_lengthens_chunks_past_1024_per_channel() {
    // 4.3M values a channel: 1,050 chunks of 4,096, over the 1,024 that one invocation merges,
    // so chunks grow to 4,352 values (17 per invocation) and number 989. Until 2026-12 the
    // launcher refused channels of over 32,768 chunks (134M values) instead.
    let l = Layer::new(&[4_300_001, 1], 23).reduced(Reduction::TwoLevel);
    let mut steps = l.forward_train();
    steps.extend(l.backward_train());
    gpu().run(&steps).unwrap();
    l.check_forward_train(1e-4);
    l.check_backward_train(1e-4);
}

#[test]
fn batch_norm_eval_folds_more_than_65535_elementwise_workgroups() {
    let (shape, gpu) = ([2, 3, 1700, 1650], gpu());
    let l = Layer::new(&shape, 11);
    let b = &l.b;
    let fwd = batchnorm::forward_eval(gpu, &l.bn, &b.x, Some(l.affine()), l.running(), &b.y).unwrap();
    assert!(fwd.workgroups[1] > 1, "grid {:?} should fold", fwd.workgroups);
    gpu.run(&[fwd]).unwrap();
    let want = reference::forward_eval(
        &f64s(&l.x),
        &shape,
        Some(&f64s(&l.gamma)),
        Some(&f64s(&l.beta)),
        &f64s(&l.rm),
        &f64s(&l.rv),
        EPS,
    );
    assert_close("eval y 16.8M", &read(&b.y), &want, 1e-4);
}

#[test]
fn batch_norm_recorded_dispatches_replay_with_new_data() {
    // Recorded once, run twice with a new batch in between: the running stats move twice.
    let l = Layer::new(&[6, 4, 5, 3], 12);
    let steps = l.forward_train();
    gpu().run(&steps).unwrap();
    let first = l.want_train();
    let x2 = rand(13, l.x.len());
    gpu().write(&l.b.x, &x2).unwrap();
    gpu().run(&steps).unwrap();
    let second = reference::forward_train(
        &f64s(&x2),
        &l.shape,
        Some(&f64s(&l.gamma)),
        Some(&f64s(&l.beta)),
        &first.running_mean,
        &first.running_var,
        EPS,
        MOMENTUM,
    );
    assert_close("replayed y", &read(&l.b.y), &second.y, 1e-4);
    assert_close("running_mean after two steps", &read(&l.b.rm), &second.running_mean, 1e-4);
    assert_close("running_var after two steps", &read(&l.b.rv), &second.running_var, 1e-4);
}

#[test]
fn batch_norm_training_with_one_value_per_channel_is_an_error() {
    let gpu = gpu();
    for shape in [&[1usize, 3][..], &[1, 3, 1, 1]] {
        let l = Layer::new(shape, 14);
        let b = &l.b;
        let err = batchnorm::forward_train(gpu, &l.bn, &b.x, None, Some(l.running()), &b.y, l.saved(), &b.scratch)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.contains("batch_norm forward (training)") && err.contains("more than 1 value per channel"),
            "{err}"
        );
        let err = batchnorm::backward_train(gpu, &l.bn, &b.x, &b.dy, None, l.saved(), &b.dx, None, &b.scratch)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains("batch_norm backward (training)") && err.contains(&format!("{shape:?}")), "{err}");
    }
}

#[test]
fn batch_norm_rejects_bad_shapes_and_short_buffers() {
    let gpu = gpu();
    let l = Layer::new(&[4, 3, 2, 2], 15);
    let b = &l.b;
    let bad = BatchNorm::new(&[4, 3, 4]);
    let err = batchnorm::forward_eval(gpu, &bad, &b.x, None, l.running(), &b.y).err().expect("must fail").to_string();
    assert!(err.contains("batch_norm forward (eval)") && err.contains("[4, 3, 4]"), "{err}");

    let wide = BatchNorm::new(&[4, 5, 2, 2]);
    let err = batchnorm::forward_train(gpu, &wide, &b.x, None, None, &b.y, l.saved(), &b.scratch)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("batch_norm forward (training)") && err.contains("input x") && err.contains("needs 80"),
        "{err}"
    );

    let short = Affine { gamma: &b.gamma, beta: &b.dbeta };
    let c4 = BatchNorm::new(&[4, 4, 2, 2]);
    let x = zeros("x", 64);
    let err = batchnorm::forward_eval(gpu, &c4, &x, Some(short), Running { mean: &x, var: &x }, &x)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("gamma") && err.contains("needs 4"), "{err}");

    let err = batchnorm::forward_train(gpu, &l.bn, &b.x, None, None, &b.y, l.saved(), &gpu.dummy)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("scratch"), "{err}");
}

// ---- the reference's backward against finite differences of its forward ----------------------

fn fd_inputs(shape: &[usize]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c) = (shape.iter().product(), shape[1]);
    let x = f64s(&rand(20, n));
    let dy = f64s(&rand(21, n));
    let gamma: Vec<f64> = f64s(&rand(22, c)).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = f64s(&rand(23, c));
    (x, dy, gamma, beta)
}

#[test]
fn batch_norm_train_backward_reference_matches_finite_differences() {
    for shape in [&[4usize, 3][..], &[2, 3, 2, 3], &[1, 2, 3, 2]] {
        let (x, dy, gamma, beta) = fd_inputs(shape);
        let c = shape[1];
        let (rm, rv) = (vec![0.0; c], vec![1.0; c]);
        let y = |x: &[f64], g: &[f64], b: &[f64]| {
            reference::forward_train(x, shape, Some(g), Some(b), &rm, &rv, EPS, MOMENTUM).y
        };
        let fwd = reference::forward_train(&x, shape, Some(&gamma), Some(&beta), &rm, &rv, EPS, MOMENTUM);
        let got = reference::backward_train(&x, &dy, shape, Some(&gamma), &fwd.mean, &fwd.invstd);
        assert_grad_matches_fd(
            &format!("train dx {shape:?}"),
            &got.dx,
            &finite_difference(|x| y(x, &gamma, &beta), &x, &dy),
        );
        assert_grad_matches_fd(
            &format!("train dgamma {shape:?}"),
            &got.dgamma,
            &finite_difference(|g| y(&x, g, &beta), &gamma, &dy),
        );
        assert_grad_matches_fd(
            &format!("train dbeta {shape:?}"),
            &got.dbeta,
            &finite_difference(|b| y(&x, &gamma, b), &beta, &dy),
        );
    }
}

#[test]
fn batch_norm_eval_backward_reference_matches_finite_differences() {
    let shape = &[3, 2, 2, 3];
    let (x, dy, gamma, beta) = fd_inputs(shape);
    let (rm, rv) = (vec![0.3, -0.2], vec![0.5, 1.5]);
    let y = |x: &[f64], g: &[f64], b: &[f64]| reference::forward_eval(x, shape, Some(g), Some(b), &rm, &rv, EPS);
    let got = reference::backward_eval(&x, &dy, shape, Some(&gamma), &rm, &rv, EPS);
    assert_grad_matches_fd("eval dx", &got.dx, &finite_difference(|x| y(x, &gamma, &beta), &x, &dy));
    assert_grad_matches_fd("eval dgamma", &got.dgamma, &finite_difference(|g| y(&x, g, &beta), &gamma, &dy));
    assert_grad_matches_fd("eval dbeta", &got.dbeta, &finite_difference(|b| y(&x, &gamma, b), &beta, &dy));
}
