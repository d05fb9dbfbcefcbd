//! torch.cat along a dim and its backward (narrow), on `[outer, channels, inner]` views.

/// Concatenates `parts` (each `[outer, channels_i, inner]`, given as (channels_i, data)) along
/// the middle dim.
pub fn cat(parts: &[(usize, &[f64])], outer: usize, inner: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
    for o in 0..outer {
        for &(channels, x) in parts {
            y.extend_from_slice(&x[o * channels * inner..(o + 1) * channels * inner]);
        }
    }
    y
}

/// Slices `offset..offset + channels` of the middle dim of `x` (`[outer, total, inner]`).
pub fn narrow(x: &[f64], outer: usize, total: usize, inner: usize, offset: usize, channels: usize) -> Vec<f64> {
    (0..outer).flat_map(|o| x[(o * total + offset) * inner..(o * total + offset + channels) * inner].iter().copied()).collect()
}
