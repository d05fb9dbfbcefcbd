use crate::support::*;
use kiln::kernels::resize::{self, Bilinear};
use kiln::reference::resize as reference;

/// Up and down, by non-integer ratios, to and from a side of 1, batch 1, and Inception's
/// 28 → 299 with its 2x − 1 folded in. (PyTorch's own answers: tests/inception.rs.) The
/// shader computes source coordinates in f32, as PyTorch does: near coordinate 300 an f32 ulp
/// is 3e-5 of a pixel, which bounds the agreement with the f64 reference.
#[test]
fn bilinear_matches_the_reference() {
    let gpu = gpu();
    let cases = [
        Bilinear { planes: 6, size: [13, 17], out: [29, 7], alpha: 1.0, beta: 0.0 },
        Bilinear { planes: 1, size: [1, 5], out: [4, 1], alpha: 1.0, beta: 0.0 },
        Bilinear { planes: 2, size: [9, 9], out: [9, 9], alpha: 1.0, beta: 0.0 },
        Bilinear { planes: 3, size: [28, 28], out: [299, 299], alpha: 2.0, beta: -1.0 },
        Bilinear { planes: 1, size: [300, 7], out: [299, 11], alpha: 0.5, beta: 0.25 },
    ];
    for (i, s) in cases.iter().enumerate() {
        let x = rand(i as u64, s.input_len());
        let y = zeros("y", s.output_len());
        gpu.run(&[resize::bilinear(gpu, "interpolate", s, &upload("x", &x), &y).unwrap()]).unwrap();
        assert_close(&format!("bilinear {:?} -> {:?}", s.size, s.out), &read(&y), &reference::bilinear(s, &f64s(&x)), 2e-5);
    }
}

/// Resizing to the same size is the identity; a constant image stays constant.
#[test]
fn bilinear_keeps_identities() {
    let s = Bilinear { planes: 2, size: [5, 8], out: [5, 8], alpha: 1.0, beta: 0.0 };
    let x: Vec<f64> = (0..s.input_len()).map(|i| i as f64).collect();
    assert_eq!(reference::bilinear(&s, &x), x);
    let s = Bilinear { planes: 1, size: [3, 4], out: [11, 2], alpha: 2.0, beta: -1.0 };
    assert!(reference::bilinear(&s, &[0.75; 12]).iter().all(|&v| (v - 0.5).abs() < 1e-12));
}

#[test]
fn empty_sizes_are_refused() {
    let s = Bilinear { planes: 1, size: [3, 3], out: [0, 4], alpha: 1.0, beta: 0.0 };
    let err = resize::bilinear(gpu(), "interpolate", &s, &zeros("x", 9), &zeros("y", 1)).err().expect("must fail").to_string();
    assert!(err.contains("interpolate") && err.contains("positive"), "{err}");
}
