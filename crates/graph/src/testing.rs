//! Helpers for the tests of this crate and of the runtime (not part of the API).

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f32 {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A seeded 64-bit linear congruential generator (Knuth's MMIX constants) for test data; the
/// graph crate has no use for the runtime's statistical generator.
pub struct Lcg(u64);

impl Lcg {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    /// Uniform in [0, 1), from the generator's high bits.
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}
