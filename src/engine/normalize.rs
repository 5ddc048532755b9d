//! The one definition of input normalization, shared by training, calibration and inference.
//!
//! Percentile normalization (as in CSBDeep/StarDist) makes the model indifferent to camera gain,
//! exposure and bit depth: 8-bit PNGs, 16-bit TIFFs and live frames all map to the same range.

use anyhow::{bail, Result};
use std::fmt;

/// At most this many pixels take part in the percentile estimate; larger frames are sampled on a
/// fixed stride so the cost per frame is bounded and the result is deterministic.
pub const MAX_PERCENTILE_SAMPLES: usize = 1 << 16;

/// How raw intensities become the model's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalization {
    /// `(x - P_low) / (P_high - P_low)` with per-frame percentiles.
    Percentile {
        /// Lower percentile, e.g. 1.0.
        low: f32,
        /// Upper percentile, e.g. 99.8.
        high: f32,
    },
    /// `(x - offset) * scale`, fixed (e.g. `/255` as in the Keras tutorial).
    Affine {
        /// Subtracted first.
        offset: f32,
        /// Then multiplied.
        scale: f32,
    },
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::Percentile {
            low: 1.0,
            high: 99.8,
        }
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Normalization::Percentile { low, high } => write!(f, "percentile:{low}:{high}"),
            Normalization::Affine { offset, scale } => write!(f, "affine:{offset}:{scale}"),
        }
    }
}

impl std::str::FromStr for Normalization {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<f32> {
            parts
                .get(i)
                .and_then(|p| p.trim().parse::<f32>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "bad normalization {s:?}: expected `percentile:LOW:HIGH` or `affine:OFFSET:SCALE`"
                    )
                })
        };
        match parts.first().copied() {
            Some("percentile") if parts.len() == 3 => {
                let (low, high) = (num(1)?, num(2)?);
                if !((0.0..100.0).contains(&low) && low < high && high <= 100.0) {
                    bail!("bad normalization {s:?}: need 0 <= LOW < HIGH <= 100");
                }
                Ok(Normalization::Percentile { low, high })
            }
            Some("affine") if parts.len() == 3 => Ok(Normalization::Affine {
                offset: num(1)?,
                scale: num(2)?,
            }),
            _ => bail!(
                "bad normalization {s:?}: expected `percentile:LOW:HIGH` or `affine:OFFSET:SCALE`"
            ),
        }
    }
}

impl Normalization {
    /// The (offset, scale) this normalization applies to `src`; `scratch` is reused and grows once.
    pub fn affine_for(&self, src: &[f32], scratch: &mut Vec<f32>) -> (f32, f32) {
        match *self {
            Normalization::Affine { offset, scale } => (offset, scale),
            Normalization::Percentile { low, high } => {
                if src.is_empty() {
                    return (0.0, 1.0);
                }
                let stride = src.len().div_ceil(MAX_PERCENTILE_SAMPLES);
                scratch.clear();
                scratch.extend(src.iter().step_by(stride).copied());
                let lo = percentile_in_place(scratch, low);
                let hi = percentile_in_place(scratch, high);
                // A flat frame would divide by zero; 1e-6 of the level keeps it finite and dark.
                let range = (hi - lo).max(1e-6 * hi.abs().max(1.0));
                (lo, 1.0 / range)
            }
        }
    }

    /// Normalizes `src` into `dst` (same length). Allocation-free once `scratch` has grown.
    pub fn apply(&self, src: &[f32], dst: &mut [f32], scratch: &mut Vec<f32>) {
        let (offset, scale) = self.affine_for(src, scratch);
        for (d, s) in dst.iter_mut().zip(src) {
            *d = (s - offset) * scale;
        }
    }

    /// Normalizes in place.
    pub fn apply_in_place(&self, data: &mut [f32], scratch: &mut Vec<f32>) {
        let (offset, scale) = self.affine_for(data, scratch);
        for d in data.iter_mut() {
            *d = (*d - offset) * scale;
        }
    }
}

/// The p-th percentile (0..=100) with linear interpolation between order statistics, like numpy's
/// default; reorders `v`.
pub fn percentile_in_place(v: &mut [f32], p: f32) -> f32 {
    let n = v.len();
    if n == 1 {
        return v[0];
    }
    let pos = (p.clamp(0.0, 100.0) as f64 / 100.0) * (n - 1) as f64;
    let k = pos.floor() as usize;
    let frac = (pos - k as f64) as f32;
    let (_, kth, rest) = v.select_nth_unstable_by(k, f32::total_cmp);
    let a = *kth;
    if frac == 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    a + (b - a) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let mut v: Vec<f32> = (0..=10).rev().map(|i| i as f32).collect();
        assert_eq!(percentile_in_place(&mut v, 50.0), 5.0);
        assert!((percentile_in_place(&mut v, 99.0) - 9.9).abs() < 1e-5);
        assert_eq!(percentile_in_place(&mut v, 0.0), 0.0);
        assert_eq!(percentile_in_place(&mut v, 100.0), 10.0);
    }

    #[test]
    fn percentile_norm_is_gain_and_offset_invariant() {
        let raw: Vec<f32> = (0..5000).map(|i| ((i * 37) % 1000) as f32).collect();
        let scaled: Vec<f32> = raw.iter().map(|x| 64.0 * x + 300.0).collect();
        let n = Normalization::default();
        let (mut a, mut b, mut s) = (vec![0.0; raw.len()], vec![0.0; raw.len()], Vec::new());
        n.apply(&raw, &mut a, &mut s);
        n.apply(&scaled, &mut b, &mut s);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4);
        }
        let lo = a.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(lo < 0.0 && lo > -0.05, "{lo}");
    }

    #[test]
    fn flat_frame_stays_finite() {
        let mut d = vec![7.0f32; 100];
        Normalization::default().apply_in_place(&mut d, &mut Vec::new());
        assert!(d.iter().all(|v| v.is_finite() && v.abs() < 1e-3));
    }

    #[test]
    fn parse_round_trip_and_errors() {
        let n: Normalization = "percentile:1:99.8".parse().unwrap();
        assert_eq!(n, Normalization::default());
        assert_eq!(n.to_string().parse::<Normalization>().unwrap(), n);
        let a: Normalization = "affine:0:0.00392".parse().unwrap();
        assert!(matches!(a, Normalization::Affine { .. }));
        for bad in [
            "",
            "percentile:99:1",
            "percentile:a:b",
            "zscore",
            "affine:1",
        ] {
            assert!(bad.parse::<Normalization>().is_err(), "{bad}");
        }
    }
}
