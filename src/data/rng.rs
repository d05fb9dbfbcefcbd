//! SplitMix64: a tiny, seedable generator for data-side randomness (synthetic glyphs, split
//! shuffles). Host-side only; GPU randomness is Philox (see DESIGN.md). Its output for a seed
//! is fixed forever, so a synthetic set is the same on every machine and release.

pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for item `index` of stream `seed`: items are independent, so they can be
    /// generated in any order or in parallel and still give the same bytes.
    pub fn for_item(seed: u64, stream: u64, index: u64) -> Self {
        let mut g = SplitMix64(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let base = g.next_u64();
        SplitMix64(base ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal with standard deviation `sd` (sum of three uniforms: cheap, bounded at
    /// ±3·sd, which keeps jittered glyphs from ever flying apart).
    pub fn jitter(&mut self, sd: f32) -> f32 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0 * sd
    }

    /// Uniform in 0..n (multiply-shift; the bias, below n/2^64, is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}
