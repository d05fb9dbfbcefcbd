use crate::support::*;
use kiln::kernels::concat::{self, Block};
use kiln::reference::concat as reference;

/// Odd sizes: outer 1 (batch 1), inner 1 (a concat along the last dim), parts of one channel,
/// and a block over 65,535 workgroups' worth of elements is not needed (no loops).
const CASES: &[(usize, &[usize], usize)] = &[(2, &[3, 1, 5], 7), (1, &[4, 4], 13 * 11), (3, &[1, 2, 1, 3], 1), (5, &[7], 9)];

/// cat of the parts into one tensor, then each part's slice back out (the backward), against
/// the reference; the backward against finite differences of the reference cat.
#[test]
fn cat_and_its_backward_match_the_reference() {
    let gpu = gpu();
    for (case, &(outer, channels, inner)) in CASES.iter().enumerate() {
        let b = Block { outer, inner };
        let total: usize = channels.iter().sum();
        let parts: Vec<Vec<f32>> = channels.iter().enumerate().map(|(i, &c)| rand(10 * case as u64 + i as u64, outer * c * inner)).collect();
        let y = zeros("y", outer * total * inner);
        let mut offset = 0;
        let mut dispatches = Vec::new();
        let bufs: Vec<_> = parts.iter().map(|p| upload("part", p)).collect();
        for (buf, &c) in bufs.iter().zip(channels) {
            dispatches.push(concat::copy_channels(gpu, "cat", b, c, buf, c, 0, &y, total, offset).unwrap());
            offset += c;
        }
        gpu.run(&dispatches).unwrap();
        let f64_parts: Vec<Vec<f64>> = parts.iter().map(|p| f64s(p)).collect();
        let refs: Vec<(usize, &[f64])> = channels.iter().zip(&f64_parts).map(|(&c, p)| (c, p.as_slice())).collect();
        let want = reference::cat(&refs, outer, inner);
        assert_close(&format!("cat {outer}x{channels:?}x{inner}"), &read(&y), &want, 0.0);

        let dy = rand(99 + case as u64, outer * total * inner);
        let dyb = upload("dy", &dy);
        let mut offset = 0;
        for (i, &c) in channels.iter().enumerate() {
            let dx = zeros("dx", outer * c * inner);
            gpu.run(&[concat::copy_channels(gpu, "narrow", b, c, &dyb, total, offset, &dx, c, 0).unwrap()]).unwrap();
            let analytic = reference::narrow(&f64s(&dy), outer, total, inner, offset, c);
            assert_close(&format!("narrow {i} of {channels:?}"), &read(&dx), &analytic, 0.0);
            let numeric = finite_difference(
                |x| {
                    let mut r = refs.clone();
                    r[i] = (c, x);
                    reference::cat(&r, outer, inner)
                },
                &f64_parts[i],
                &f64s(&dy),
            );
            assert_grad_matches_fd(&format!("cat backward, part {i} of {channels:?}"), &analytic, &numeric);
            offset += c;
        }
    }
}

#[test]
fn a_slice_past_the_tensor_is_refused() {
    let gpu = gpu();
    let (x, y) = (zeros("x", 12), zeros("y", 12));
    let err = concat::copy_channels(gpu, "cat [Mixed_5b]", Block { outer: 1, inner: 4 }, 2, &x, 3, 0, &y, 3, 2).err().expect("must fail").to_string();
    assert!(err.contains("Mixed_5b") && err.contains("do not fit"), "{err}");
}
