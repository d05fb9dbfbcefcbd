use crate::support::*;
use kiln::kernels::random::{self, Rng};
use kiln::reference::random as reference;

// More than 65,535 workgroups of 256 elements (64 invocations × one 4-element Philox block).
const HUGE: usize = 65_535 * 256 + 5;

// Random123's known-answer vectors for philox4x32-10 (kat_vectors): counter, key, result.
const KNOWN_ANSWERS: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([0xffffffff; 4], [0xffffffff; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    (
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

fn seed_of(key: [u32; 2]) -> u64 {
    key[0] as u64 | (key[1] as u64) << 32
}

/// Random u32 words (splitmix64), for counters.
fn words(seed: u64, n: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = (s ^ (s >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u32
        })
        .collect()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

fn mean_var(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn run_fill(d: kiln::Result<kiln::Dispatch>, y: &kiln::gpu::Buffer) -> Vec<f32> {
    gpu().run(&[d.unwrap()]).unwrap();
    read(y)
}

#[test]
fn philox_matches_random123_known_answers_on_cpu_and_gpu() {
    let gpu = gpu();
    for (counter, key, want) in KNOWN_ANSWERS {
        assert_eq!(reference::philox4x32_10(counter, key), want, "CPU philox({counter:08x?}, {key:08x?})");
        let (c, bits) = (gpu.upload("counters", &counter).unwrap(), zeros("bits", 4));
        gpu.run(&[random::philox_bits(gpu, seed_of(key), &c, &bits, 1).unwrap()]).unwrap();
        let got: Vec<u32> = gpu.read_as(&bits).unwrap();
        assert_eq!(got, want, "GPU philox({counter:08x?}, {key:08x?})");
    }
}

#[test]
fn philox_gpu_matches_cpu_bit_for_bit_on_random_counters() {
    let gpu = gpu();
    let blocks = 4099;
    let counters = words(7, 4 * blocks);
    let key = [0x8badf00d, 0xdeadbeef];
    let (c, bits) = (gpu.upload("counters", &counters).unwrap(), zeros("bits", 4 * blocks));
    gpu.run(&[random::philox_bits(gpu, seed_of(key), &c, &bits, blocks).unwrap()]).unwrap();
    let got: Vec<u32> = gpu.read_as(&bits).unwrap();
    for b in 0..blocks {
        let counter = counters[4 * b..4 * b + 4].try_into().unwrap();
        assert_eq!(got[4 * b..4 * b + 4], reference::philox4x32_10(counter, key), "block {b}");
    }
}

#[test]
fn uniform_fill_matches_reference_elementwise() {
    for (s, &n) in [1, 5, 1003, HUGE].iter().enumerate() {
        let rng = Rng { seed: 0x1234_5678_9abc_def0 + s as u64, offset: 3 + ((s as u64) << 33) };
        let (lo, hi) = (-2.0, 3.0);
        let y = zeros("y", n);
        let got = run_fill(random::uniform(gpu(), rng, lo, hi, &y, n), &y);
        let want = reference::uniform(n, rng.seed, rng.offset, lo as f64, hi as f64);
        assert_close(&format!("uniform n={n}"), &got, &want, 1e-6);
        let worst = max_abs_diff(&got, &want);
        assert!(worst <= 1e-6, "uniform n={n}: worst element differs by {worst:e}");
        assert!(got.iter().all(|&v| (lo..hi).contains(&v)), "uniform n={n}: value outside [lo, hi)");
    }
}

#[test]
fn normal_fill_matches_reference_elementwise() {
    for (s, &n) in [1, 6, 1003, 100_003].iter().enumerate() {
        let rng = Rng { seed: 99 + s as u64, offset: s as u64 };
        let y = zeros("y", n);
        let got = run_fill(random::normal(gpu(), rng, 0.5, 2.0, &y, n), &y);
        let want = reference::normal(n, rng.seed, rng.offset, 0.5, 2.0);
        assert_close(&format!("normal n={n}"), &got, &want, 1e-5);
        let worst = max_abs_diff(&got, &want);
        eprintln!("normal n={n}: worst element differs by {worst:.1e}");
        assert!(worst <= 1e-5, "normal n={n}: worst element differs by {worst:e}");
    }
}

#[test]
fn uniform_and_normal_fills_have_the_right_moments_over_1m_samples() {
    let n = 1 << 20;
    let bound = |sd: f64| 5.0 * sd; // five standard errors
    let y = zeros("y", n);

    let (lo, hi) = (-1.0f64, 3.0f64);
    let got = run_fill(random::uniform(gpu(), Rng { seed: 5, offset: 0 }, lo as f32, hi as f32, &y, n), &y);
    let (mean, var) = mean_var(&got);
    let want_var = (hi - lo).powi(2) / 12.0;
    eprintln!("uniform[-1, 3): mean {mean:.5} (want 1), var {var:.5} (want {want_var:.5})");
    assert!((mean - 1.0).abs() < bound((want_var / n as f64).sqrt()), "uniform mean {mean}");
    // Var of the sample variance of U(a, b) is (b − a)^4 / 180 / n.
    assert!((var - want_var).abs() < bound(((hi - lo).powi(4) / 180.0 / n as f64).sqrt()), "uniform var {var}");

    let got = run_fill(random::normal(gpu(), Rng { seed: 6, offset: 0 }, 0.5, 2.0, &y, n), &y);
    let (mean, var) = mean_var(&got);
    let within_1sd = got.iter().filter(|&&v| (v - 0.5).abs() < 2.0).count() as f64 / n as f64;
    eprintln!("normal(0.5, 2): mean {mean:.5}, var {var:.5} (want 4), within 1 sd {within_1sd:.5} (want 0.68269)");
    assert!((mean - 0.5).abs() < bound(2.0 / (n as f64).sqrt()), "normal mean {mean}");
    assert!((var - 4.0).abs() < bound(4.0 * (2.0 / n as f64).sqrt()), "normal var {var}");
    let p1 = 0.682_689_492;
    assert!((within_1sd - p1).abs() < bound((p1 * (1.0 - p1) / n as f64).sqrt()), "normal within 1 sd {within_1sd}");
}

#[test]
fn dropout_forward_and_backward_match_reference() {
    let gpu = gpu();
    for (s, &n) in [1, 7, 1003, HUGE].iter().enumerate() {
        for p in [0.1f32, 0.5] {
            let rng = Rng { seed: 42 + s as u64, offset: 17 };
            let (x, dy) = (rand(s as u64, n), rand(50 + s as u64, n));
            let (xb, dyb, y, dx) = (upload("x", &x), upload("dy", &dy), zeros("y", n), zeros("dx", n));
            let fwd = random::dropout(gpu, rng, p, &xb, &y, n).unwrap();
            let bwd = random::dropout_backward(gpu, rng, p, &dyb, &dx, n).unwrap();
            gpu.run(&[fwd, bwd]).unwrap();
            let (p64, (seed, offset)) = (p as f64, (rng.seed, rng.offset));
            assert_close(&format!("dropout p={p} n={n}"), &read(&y), &reference::dropout(&f64s(&x), p64, seed, offset), 1e-6);
            let want = reference::dropout_backward(&f64s(&dy), p64, seed, offset);
            assert_close(&format!("dropout_backward p={p} n={n}"), &read(&dx), &want, 1e-6);
        }
    }
}

#[test]
fn dropout_keeps_one_minus_p_and_backward_reuses_the_forward_mask() {
    let gpu = gpu();
    let n = 1 << 20;
    let ones = upload("ones", &vec![1.0; n]);
    let dy = rand(3, n);
    let (dyb, y, dx) = (upload("dy", &dy), zeros("y", n), zeros("dx", n));
    for p in [0.2f32, 0.5, 0.9] {
        let rng = Rng { seed: 7, offset: 1 };
        let fwd = random::dropout(gpu, rng, p, &ones, &y, n).unwrap();
        let bwd = random::dropout_backward(gpu, rng, p, &dyb, &dx, n).unwrap();
        gpu.run(&[fwd, bwd]).unwrap();
        let (mask, grad) = (read(&y), read(&dx));
        let scale = 1.0 / (1.0 - p);
        assert!(mask.iter().all(|&m| m == 0.0 || (m - scale).abs() <= 1e-6 * scale), "p={p}: kept values not 1/(1-p)");
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
        let sd = (p as f64 * (1.0 - p as f64) / n as f64).sqrt();
        eprintln!("dropout p={p}: dropped {dropped:.5}");
        assert!((dropped - p as f64).abs() < 5.0 * sd, "p={p}: dropped fraction {dropped}");
        let same = (0..n).all(|i| grad[i] == dy[i] * mask[i]);
        assert!(same, "p={p}: backward's mask differs from forward's");
    }
}

#[test]
fn dropout_p0_is_identity_and_p1_gives_zeros() {
    let gpu = gpu();
    let n = 1003;
    let x = rand(9, n);
    let (xb, y) = (upload("x", &x), zeros("y", n));
    let rng = Rng { seed: 1, offset: 2 };
    gpu.run(&[random::dropout(gpu, rng, 0.0, &xb, &y, n).unwrap()]).unwrap();
    assert_eq!(read(&y), x, "p = 0 must be the identity");
    gpu.run(&[random::dropout_backward(gpu, rng, 1.0, &xb, &y, n).unwrap()]).unwrap();
    assert!(read(&y).iter().all(|&v| v == 0.0), "p = 1 must give zeros");
}

#[test]
fn dropout_masks_differ_across_offsets_and_seeds_and_replay_exactly() {
    let gpu = gpu();
    let (n, p) = (100_000, 0.5f32);
    let (ones, y) = (upload("ones", &vec![1.0; n]), zeros("y", n));
    // One recorded dispatch, its stream rewritten in place as an executor does per step.
    let d = random::dropout(gpu, Rng { seed: 11, offset: 0 }, p, &ones, &y, n).unwrap();
    let mask = |rng: Rng| {
        random::set_rng(gpu, &d, rng).unwrap();
        gpu.run(std::slice::from_ref(&d)).unwrap();
        read(&y)
    };
    let base = mask(Rng { seed: 11, offset: 0 });
    let next_step = mask(Rng { seed: 11, offset: 1 });
    let other_seed = mask(Rng { seed: 12, offset: 0 });
    let far_step = mask(Rng { seed: 11, offset: 1 << 40 });
    let again = mask(Rng { seed: 11, offset: 0 });
    assert_eq!(base, again, "the same (seed, offset) must give the same mask");
    assert_close("mask at offset 1", &next_step, &reference::dropout(&vec![1.0; n], 0.5, 11, 1), 1e-6);
    // Independent masks disagree on 2 p (1 − p) of the elements.
    for (what, other) in [("offset 1", &next_step), ("seed 12", &other_seed), ("offset 2^40", &far_step)] {
        let differ = (0..n).filter(|&i| base[i] != other[i]).count() as f64 / n as f64;
        eprintln!("mask vs {what}: {differ:.4} of elements differ");
        assert!((differ - 0.5).abs() < 0.01, "mask vs {what}: {differ} differ, want about 0.5");
    }
}

#[test]
fn dropout_backward_by_finite_differences() {
    let n = 41;
    let (x, dy) = (f64s(&rand(1, n)), f64s(&rand(2, n)));
    let analytic = reference::dropout_backward(&dy, 0.3, 5, 6);
    let numeric = finite_difference(|x| reference::dropout(x, 0.3, 5, 6), &x, &dy);
    assert!(analytic.contains(&0.0) && analytic.iter().any(|&v| v != 0.0), "the mask should drop some and keep some");
    assert_grad_matches_fd("dropout dx", &analytic, &numeric);
}

#[test]
fn reparameterize_matches_reference() {
    let gpu = gpu();
    // 65,535 · 64 + 1 needs 65,536 workgroups of 64 (one element per invocation).
    for (s, &n) in [1, 257, 1003, 65_535 * 64 + 1].iter().enumerate() {
        let (mu, logvar, dz) = (rand(s as u64, n), rand(20 + s as u64, n), rand(40 + s as u64, n));
        let (mub, lvb, dzb) = (upload("mu", &mu), upload("logvar", &logvar), upload("dz", &dz));
        let (eps, z, dmu, dlv) = (zeros("eps", n), zeros("z", n), zeros("dmu", n), zeros("dlogvar", n));
        gpu.run(&[
            random::normal(gpu, Rng { seed: 3, offset: s as u64 }, 0.0, 1.0, &eps, n).unwrap(),
            random::reparameterize(gpu, &mub, &lvb, &eps, &z, n).unwrap(),
            random::reparameterize_backward(gpu, &dzb, &lvb, &eps, &dmu, &dlv, n).unwrap(),
        ])
        .unwrap();
        let (mu, logvar, dz, eps) = (f64s(&mu), f64s(&logvar), f64s(&dz), f64s(&read(&eps)));
        assert_close(&format!("reparameterize n={n}"), &read(&z), &reference::reparameterize(&mu, &logvar, &eps), 1e-6);
        let (want_dmu, want_dlv) = reference::reparameterize_backward(&dz, &logvar, &eps);
        assert_close(&format!("reparameterize dmu n={n}"), &read(&dmu), &want_dmu, 1e-6);
        assert_close(&format!("reparameterize dlogvar n={n}"), &read(&dlv), &want_dlv, 1e-6);
    }
}

#[test]
fn reparameterize_backward_by_finite_differences() {
    let n = 23;
    let (mu, logvar, eps, dz) = (f64s(&rand(1, n)), f64s(&rand(2, n)), reference::normal(n, 4, 0, 0.0, 1.0), f64s(&rand(3, n)));
    let (dmu, dlogvar) = reference::reparameterize_backward(&dz, &logvar, &eps);
    let numeric = finite_difference(|m| reference::reparameterize(m, &logvar, &eps), &mu, &dz);
    assert_grad_matches_fd("reparameterize dmu", &dmu, &numeric);
    let numeric = finite_difference(|lv| reference::reparameterize(&mu, lv, &eps), &logvar, &dz);
    assert_grad_matches_fd("reparameterize dlogvar", &dlogvar, &numeric);
}

#[test]
fn random_ops_reject_bad_arguments() {
    let gpu = gpu();
    let (a, short) = (zeros("a", 10), zeros("short", 5));
    let rng = Rng::default();
    let err = random::dropout(gpu, rng, 1.5, &a, &a, 10).err().expect("p > 1 must fail").to_string();
    assert!(err.contains("random.dropout") && err.contains("1.5"), "{err}");
    let err = random::uniform(gpu, rng, 0.0, 1.0, &short, 10).err().expect("short output must fail").to_string();
    assert!(err.contains("random.uniform") && err.contains("output y") && err.contains("needs 10"), "{err}");
    let err = random::normal(gpu, rng, 0.0, -1.0, &a, 10).err().expect("std < 0 must fail").to_string();
    assert!(err.contains("random.normal"), "{err}");
    let err = random::reparameterize_backward(gpu, &a, &a, &short, &a, &a, 10).err().expect("short eps").to_string();
    assert!(err.contains("random.reparameterize_backward") && err.contains("eps"), "{err}");
    let d = random::reparameterize(gpu, &a, &a, &a, &a, 10).unwrap();
    let err = random::set_rng(gpu, &d, rng).expect_err("no stream to set").to_string();
    assert!(err.contains("set_rng") && err.contains("reparameterize"), "{err}");
}
