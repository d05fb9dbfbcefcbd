//! Philox 4x32-10 with 64-bit products, and the fills, dropout and reparameterization built on
//! it, bit for bit the stream of shaders/random.wgsl: element `i` reads word `i % 4` of
//! `philox((i / 4, 0, offset_lo, offset_hi), (seed_lo, seed_hi))`.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox 4x32-10 of Random123: 10 rounds, the key bumped by the Weyl constants between rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The four words of Philox block `block` in stream (seed, offset).
pub fn block(seed: u64, offset: u64, block: u64) -> [u32; 4] {
    let counter = [block as u32, (block >> 32) as u32, offset as u32, (offset >> 32) as u32];
    philox4x32_10(counter, [seed as u32, (seed >> 32) as u32])
}

/// The random word of element `i`.
pub fn word(seed: u64, offset: u64, i: usize) -> u32 {
    block(seed, offset, i as u64 / 4)[i % 4]
}

/// Top 24 bits as a float in [0, 1): 1.0 is never produced.
fn unit(word: u32) -> f64 {
    (word >> 8) as f64 / 16_777_216.0
}

pub fn uniform(n: usize, seed: u64, offset: u64, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|i| lo + (hi - lo) * unit(word(seed, offset, i))).collect()
}

/// Box–Muller: words (0, 1) of a block give elements 0 and 1 (cos, sin), words (2, 3) give 2, 3.
pub fn normal(n: usize, seed: u64, offset: u64, mean: f64, std: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let w = block(seed, offset, i as u64 / 4);
            let pair = (i % 4) / 2;
            // u1 = 1 - unit in (0, 1], so ln never sees 0.
            let r = (-2.0 * (-unit(w[2 * pair])).ln_1p()).sqrt();
            let theta = std::f64::consts::PI * (2.0 * unit(w[2 * pair + 1]) - 1.0);
            let z = if i % 2 == 0 { r * theta.cos() } else { r * theta.sin() };
            mean + std * z
        })
        .collect()
}

/// Whether dropout with probability `p` keeps element `i`: its top 24 bits ≥ ceil(p · 2^24).
pub fn dropout_keeps(p: f64, seed: u64, offset: u64, i: usize) -> bool {
    (word(seed, offset, i) >> 8) as f64 >= (p * 16_777_216.0).ceil()
}

/// Inverted dropout; p = 1 gives zeros, as PyTorch.
pub fn dropout(x: &[f64], p: f64, seed: u64, offset: u64) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| if p < 1.0 && dropout_keeps(p, seed, offset, i) { v / (1.0 - p) } else { 0.0 })
        .collect()
}

/// Dropout is linear in x for a fixed mask, so its backward is itself applied to dy.
pub fn dropout_backward(dy: &[f64], p: f64, seed: u64, offset: u64) -> Vec<f64> {
    dropout(dy, p, seed, offset)
}

pub fn reparameterize(mu: &[f64], logvar: &[f64], eps: &[f64]) -> Vec<f64> {
    (0..mu.len()).map(|i| mu[i] + eps[i] * (0.5 * logvar[i]).exp()).collect()
}

/// Returns (dmu, dlogvar).
pub fn reparameterize_backward(dz: &[f64], logvar: &[f64], eps: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dlogvar = (0..dz.len()).map(|i| dz[i] * eps[i] * 0.5 * (0.5 * logvar[i]).exp()).collect();
    (dz.to_vec(), dlogvar)
}
