use crate::support::*;
use kiln::gpu::Buffer;
use kiln::kernels::optim::{self, Adam, Sgd};
use kiln::reference::optim as reference;

// 1, a non-multiple of the 256 workgroup, and more than 65,535 workgroups; Adam runs its
// vec4 kernel on 1000 and the scalar one on the others.
const SIZES: [usize; 3] = [1, 1000, 65_535 * 256 + 5];

/// Five steps with a fresh gradient each; two at the huge size, which is there for the
/// workgroup fold and costs seconds per step on lavapipe.
fn steps(n: usize) -> u64 {
    if n > 1 << 20 { 2 } else { 5 }
}

fn step_buffer() -> Buffer {
    gpu().upload("step", &optim::step_words(0, 0.0, 0.0)).unwrap()
}

/// p − p0 as f64, so the comparison sees the size of the updates, not of the parameters.
fn delta(p: &[f32], p0: &[f32]) -> Vec<f32> {
    p.iter().zip(p0).map(|(&a, &b)| a - b).collect()
}

fn delta64(p: &[f64], p0: &[f32]) -> Vec<f64> {
    p.iter().zip(p0).map(|(&a, &b)| a - b as f64).collect()
}

fn reference_adam(h: &Adam) -> reference::Adam {
    let f = |x: f32| x as f64;
    reference::Adam { lr: f(h.lr), beta1: f(h.beta1), beta2: f(h.beta2), eps: f(h.eps), weight_decay: f(h.weight_decay) }
}

/// Runs `steps(n)` Adam steps with a fresh gradient each step on GPU and CPU, halving lr at step 3
/// through `set_lr` the way a scheduler would, and compares parameters and moments.
fn check_adam(h: Adam, n: usize, seed: u64) {
    let gpu = gpu();
    let p0 = rand(seed, n);
    let (p, g, m, v, step) = (upload("p", &p0), zeros("g", n), zeros("m", n), zeros("v", n), step_buffer());
    let program = optim::adam(gpu, &h, &p, &g, &m, &v, &step).unwrap();
    assert_eq!(program[1].kernel.entry, if n.is_multiple_of(4) { "adam4" } else { "adam" }, "n={n}");
    let mut cpu_h = reference_adam(&h);
    let (mut want, mut state) = (f64s(&p0), reference::AdamState::new(n));
    for s in 0..steps(n) {
        if s == 3 {
            optim::set_lr(gpu, &program[1], h.lr / 2.0).unwrap();
            cpu_h.lr = (h.lr / 2.0) as f64;
        }
        let grad = rand(seed * 100 + s, n);
        gpu.write(&g, &grad).unwrap();
        gpu.run(&program).unwrap();
        want = reference::adam_step(&cpu_h, &want, &f64s(&grad), &mut state);
    }
    let name = format!("adam {h:?} n={n}");
    assert_close(&format!("{name}: p - p0"), &delta(&read(&p), &p0), &delta64(&want, &p0), 1e-4);
    assert_close(&format!("{name}: m"), &read(&m), &state.m, 1e-5);
    assert_close(&format!("{name}: v"), &read(&v), &state.v, 1e-5);
}

fn check_sgd(h: Sgd, n: usize, seed: u64) {
    let gpu = gpu();
    let p0 = rand(seed, n);
    let (p, g, buf, step) = (upload("p", &p0), zeros("g", n), zeros("momentum_buffer", n), step_buffer());
    let with_momentum = h.momentum != 0.0;
    let program = optim::sgd(gpu, &h, &p, &g, with_momentum.then_some(&buf), &step).unwrap();
    let f = |x: f32| x as f64;
    let cpu_h = reference::Sgd { lr: f(h.lr), momentum: f(h.momentum), dampening: f(h.dampening), weight_decay: f(h.weight_decay), nesterov: h.nesterov };
    let (mut want, mut state) = (f64s(&p0), None);
    for s in 0..steps(n) {
        let grad = rand(seed * 100 + s, n);
        gpu.write(&g, &grad).unwrap();
        gpu.run(&program).unwrap();
        want = reference::sgd_step(&cpu_h, &want, &f64s(&grad), &mut state);
    }
    let name = format!("sgd {h:?} n={n}");
    assert_close(&format!("{name}: p - p0"), &delta(&read(&p), &p0), &delta64(&want, &p0), 1e-4);
    if let Some(b) = state {
        assert_close(&format!("{name}: momentum buffer"), &read(&buf), &b, 1e-5);
    }
}

#[test]
fn adam_matches_reference_over_several_steps() {
    let decayed = Adam { lr: 0.02, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 };
    for (s, &n) in SIZES.iter().enumerate() {
        check_adam(Adam { lr: 0.01, ..Adam::default() }, n, s as u64 + 1);
        if n < 10_000 {
            check_adam(decayed, n, s as u64 + 10);
        }
    }
    // vec4 over several workgroups and a partial one, and over fewer vec4s than one
    // workgroup. (Its grid cannot pass 65,535 workgroups within a 128 MiB binding.)
    check_adam(Adam { lr: 0.01, ..Adam::default() }, 4 * (256 * 3 + 5), 7);
    check_adam(Adam { lr: 0.01, weight_decay: 0.1, ..Adam::default() }, 12, 8);
}

#[test]
fn sgd_matches_reference_over_several_steps() {
    let plain = Sgd { lr: 0.1, ..Sgd::default() };
    let damped = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov: false };
    let nesterov = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-3, nesterov: true };
    for (s, &n) in SIZES.iter().enumerate() {
        check_sgd(damped, n, s as u64 + 1);
        if n < 10_000 {
            check_sgd(plain, n, s as u64 + 10);
            check_sgd(nesterov, n, s as u64 + 20);
        }
    }
}

#[test]
fn step_counter_advances_on_the_gpu() {
    let gpu = gpu();
    let h = Adam::default();
    let (p, g, m, v, step) = (upload("p", &[1.0]), upload("g", &[0.5]), zeros("m", 1), zeros("v", 1), step_buffer());
    let program = optim::adam(gpu, &h, &p, &g, &m, &v, &step).unwrap();
    for t in 1..=7u32 {
        gpu.run(&program).unwrap();
        let got: Vec<u32> = gpu.read_as(&step).unwrap();
        assert_eq!(got[0], t, "step counter after {t} replays");
        let want = optim::step_words(t, h.beta1, h.beta2);
        for k in 1..3 {
            let (a, b) = (f32::from_bits(got[k]) as f64, f32::from_bits(want[k]) as f64);
            assert!((a - b).abs() <= 1e-6 * b, "1 - beta{k}^{t}: GPU {a}, want {b}");
        }
    }
}

#[test]
fn optimizers_reject_bad_arguments() {
    let gpu = gpu();
    let (a, short, tiny, step) = (zeros("a", 10), zeros("short", 5), zeros("tiny", 3), step_buffer());
    let err = optim::adam(gpu, &Adam::default(), &a, &a, &short, &a, &step).err().expect("short m").to_string();
    assert!(err.contains("optim.adam") && err.contains("exp_avg m") && err.contains("needs 10"), "{err}");
    let bad_beta = Adam { beta2: 1.0, ..Adam::default() };
    let err = optim::adam(gpu, &bad_beta, &a, &a, &a, &a, &step).err().expect("beta2 = 1").to_string();
    assert!(err.contains("optim.adam") && err.contains("betas"), "{err}");
    let h = Sgd { lr: 0.1, momentum: 0.9, dampening: 0.5, weight_decay: 0.0, nesterov: true };
    let err = optim::sgd(gpu, &h, &a, &a, Some(&a), &step).err().expect("nesterov with dampening").to_string();
    assert!(err.contains("optim.sgd") && err.contains("nesterov"), "{err}");
    let h = Sgd { lr: 0.1, momentum: 0.9, ..Sgd::default() };
    let err = optim::sgd(gpu, &h, &a, &a, None, &step).err().expect("momentum without a buffer").to_string();
    assert!(err.contains("optim.sgd") && err.contains("momentum buffer"), "{err}");
    let err = optim::sgd(gpu, &h, &a, &a, Some(&a), &tiny).err().expect("short step buffer").to_string();
    assert!(err.contains("optim.sgd") && err.contains("step counter"), "{err}");
    let program = optim::adam(gpu, &Adam::default(), &a, &a, &a, &a, &step).unwrap();
    let err = optim::set_lr(gpu, &program[0], 0.1).expect_err("advance has no lr").to_string();
    assert!(err.contains("set_lr") && err.contains("optim.advance"), "{err}");
}
