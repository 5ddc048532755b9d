//! The one Euclidean distance transform (Felzenszwalb & Huttenlocher's lower envelope of
//! parabolas, exact, linear time): the instance step floods its result, the trainer weighs
//! borders with it.

/// Reusable buffers of the transform; sized once per frame size, so a frame allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct Edt {
    f: Vec<f32>,
    v: Vec<usize>,
    z: Vec<f32>,
}

impl Edt {
    /// Sizes the buffers for images whose larger side is below `m`.
    pub fn reserve(&mut self, m: usize) {
        if self.f.len() < m {
            self.f.resize(m, 0.0);
            self.v.resize(m, 0);
            self.z.resize(m + 1, 0.0);
        }
    }

    /// Replaces `d` (0 at the seeds, a large value elsewhere) by each pixel's Euclidean distance
    /// to the nearest seed.
    pub fn euclidean_in_place(&mut self, d: &mut [f32], w: usize, h: usize) {
        assert_eq!(d.len(), w * h);
        self.reserve(w.max(h) + 1);
        for x in 0..w {
            for y in 0..h {
                self.f[y] = d[y * w + x];
            }
            edt_1d(&self.f[..h], &mut self.v, &mut self.z, |y, val| {
                d[y * w + x] = val
            });
        }
        for y in 0..h {
            self.f[..w].copy_from_slice(&d[y * w..(y + 1) * w]);
            let row = &mut d[y * w..(y + 1) * w];
            edt_1d(&self.f[..w], &mut self.v, &mut self.z, |x, val| {
                row[x] = val
            });
        }
        for v in d.iter_mut() {
            *v = v.sqrt();
        }
    }
}

/// Euclidean distance of every pixel to the nearest pixel where `seed` is true; with no seed at
/// all, every distance is larger than the image's diagonal.
pub fn distance_to(seed: &[bool], w: usize, h: usize) -> Vec<f32> {
    let big = ((w + h) * (w + h)) as f32;
    let mut d: Vec<f32> = seed.iter().map(|&s| if s { 0.0 } else { big }).collect();
    Edt::default().euclidean_in_place(&mut d, w, h);
    d
}

/// 1-D squared distance transform of sampled function `f` (lower envelope of parabolas).
fn edt_1d(f: &[f32], v: &mut [usize], z: &mut [f32], mut out: impl FnMut(usize, f32)) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f32::NEG_INFINITY;
    z[1] = f32::INFINITY;
    let meet = |q: usize, p: usize| {
        ((f[q] + (q * q) as f32) - (f[p] + (p * p) as f32)) / (2.0 * (q as f32 - p as f32))
    };
    for q in 1..n {
        let mut s = meet(q, v[k]);
        // z[0] is -inf, so this stops at k = 0.
        while s <= z[k] {
            k -= 1;
            s = meet(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f32::INFINITY;
    }
    k = 0;
    for q in 0..n {
        while z[k + 1] < q as f32 {
            k += 1;
        }
        let d = q as f32 - v[k] as f32;
        out(q, d * d + f[v[k]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_euclidean_to_the_nearest_seed() {
        let (w, h) = (9, 7);
        let mut seed = vec![false; w * h];
        seed[3 * w + 2] = true;
        seed[6 * w + 8] = true;
        let d = distance_to(&seed, w, h);
        for y in 0..h {
            for x in 0..w {
                let a = ((x as f32 - 2.0).powi(2) + (y as f32 - 3.0).powi(2)).sqrt();
                let b = ((x as f32 - 8.0).powi(2) + (y as f32 - 6.0).powi(2)).sqrt();
                assert!((d[y * w + x] - a.min(b)).abs() < 1e-5, "({x},{y})");
            }
        }
        let none = distance_to(&[false; 6], 3, 2);
        assert!(none.iter().all(|&v| v > 4.0));
    }
}
