// Activation formulas shared by activation.wgsl and gemm.wgsl's epilogue (pasted in where a
// file says `// #include "activations.wgsl"`), so fused and separate activations round alike.

// exp only ever sees -|x|, so it cannot overflow: for x ≥ 0, 1/(1+e^-x); for x < 0, e^x/(1+e^x).
fn stable_sigmoid(v: f32) -> f32 {
    let e = exp(-abs(v));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
}

// Builtin tanh is NaN for large |x| on some drivers ((e^2x - 1)/(e^2x + 1) overflows), and that
// form also loses relative accuracy near 0. So: an odd Taylor polynomial for |x| < 0.5 (terms
// shrink by ~(2x/π)² each, 8 of them leave < 1e-8), and (1 - e)/(1 + e) with e = e^-2|x| ≤ 0.37
// beyond, where 1 - e has no cancellation and e underflows harmlessly to 0.
fn stable_tanh(v: f32) -> f32 {
    let a = abs(v);
    if (a < 0.5) {
        let s = v * v;
        let poly = 1.0 + s * (-1.0 / 3.0 + s * (2.0 / 15.0 + s * (-17.0 / 315.0 + s * (62.0 / 2835.0
            + s * (-1382.0 / 155925.0 + s * (21844.0 / 6081075.0 + s * (-929569.0 / 638512875.0)))))));
        return v * poly;
    }
    let e = exp(-2.0 * a);
    return sign(v) * (1.0 - e) / (1.0 + e);
}
