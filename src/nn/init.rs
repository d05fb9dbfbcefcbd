//! Initial values on the CPU, once per run: a seeded generator (splitmix64) so a model's
//! starting point is reproducible from its seed.

pub struct InitRng {
    state: u64,
}

impl InitRng {
    pub fn new(seed: u64) -> InitRng {
        InitRng { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// n values from U(−bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n).map(|_| ((self.unit() * 2.0 - 1.0) * bound) as f32).collect()
    }

    /// n values from N(mean, std²) by Box–Muller.
    pub fn normal(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2) = (1.0 - self.unit(), self.unit());
                (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }
}
