//! A tiny seeded PRNG (SplitMix64) so weights, synthetic data and tests are reproducible
//! without pulling a random-number crate into the edge binary.

/// SplitMix64 generator: fast, seedable, good enough for data synthesis and initialisation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed; equal seeds give equal streams.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); n must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// Standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Poisson sample with mean `lambda` (Knuth below 12, rounded normal approximation above).
    pub fn poisson(&mut self, lambda: f32) -> f32 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 12.0 {
            return (lambda + lambda.sqrt() * self.normal()).max(0.0).round();
        }
        let l = (-lambda as f64).exp();
        let mut k = 0.0f32;
        let mut p = 1.0f64;
        loop {
            p *= self.uniform() as f64;
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let n = 20_000;
        let mean: f32 = (0..n).map(|_| a.normal()).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.05, "{mean}");
        let pm: f32 = (0..n).map(|_| a.poisson(4.0)).sum::<f32>() / n as f32;
        assert!((pm - 4.0).abs() < 0.1, "{pm}");
        assert!((0..1000).all(|_| a.below(3) < 3));
    }
}
