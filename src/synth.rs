//! Synthetic fluorescence-nuclei images with instance ground truth.
//!
//! One generator serves the trainer (default training data), the quantizer (calibration) and the
//! tests (a fake camera), so it lives here and depends on nothing heavy. It models what a
//! widefield fluorescence image of stained nuclei shows: irregular ellipse-like nuclei of many sizes,
//! touching and overlapping clusters, chromatin texture, dim to saturated brightness, out-of-focus
//! blur, uneven illumination, cytoplasmic haze, debris, and Poisson-Gaussian sensor noise.

use crate::rng::Rng;
use std::f32::consts::PI;

/// One synthetic image and its instance labels (0 = background, 1..=n nuclei).
#[derive(Clone, Debug)]
pub struct Sample {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Raw intensities on the simulated camera's scale (8- or 12/16-bit counts).
    pub image: Vec<f32>,
    /// Instance labels.
    pub labels: Vec<u16>,
}

impl Sample {
    /// Binary foreground mask (0/1).
    pub fn mask(&self) -> Vec<u8> {
        self.labels.iter().map(|&l| u8::from(l > 0)).collect()
    }

    /// Number of nuclei that have at least one pixel.
    pub fn count(&self) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        seen.extend(self.labels.iter().copied().filter(|&l| l > 0));
        seen.len()
    }
}

/// Smallest nucleus semi-axis drawn, px: 5 px across, the low end of the model card's scale.
pub const MIN_RADIUS: f32 = 2.5;

/// Ranges the generator draws from.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Range of the per-image typical nucleus radius, px (log-uniform).
    pub radius: (f32, f32),
    /// Fraction of the image area nuclei cover on average, range.
    pub coverage: (f32, f32),
    /// Probability that a nucleus joins a touching cluster.
    pub cluster_prob: f32,
    /// Optical blur sigma range, px.
    pub blur: (f32, f32),
    /// Peak photon count range (lower = noisier).
    pub photons: (f32, f32),
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            radius: (2.5, 28.0),
            coverage: (0.04, 0.45),
            cluster_prob: 0.45,
            blur: (0.4, 2.2),
            photons: (15.0, 1500.0),
        }
    }
}

struct Nucleus {
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    cos: f32,
    sin: f32,
    harmonics: [(f32, f32); 4],
    brightness: f32,
    texture_gain: f32,
}

impl Nucleus {
    /// Normalised radius of point (x, y): < 1 inside, 1 on the irregular boundary.
    fn s(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.a;
        let v = (-dx * self.sin + dy * self.cos) / self.b;
        let rho = (u * u + v * v).sqrt();
        let phi = v.atan2(u);
        let mut r = 1.0;
        for (k, (amp, ph)) in self.harmonics.iter().enumerate() {
            r += amp * ((k as f32 + 2.0) * phi + ph).cos();
        }
        rho / r
    }

    fn extent(&self) -> f32 {
        self.a.max(self.b) * 1.35 + 2.0
    }
}

/// Generates one `width`x`height` sample from `rng`.
pub fn generate(rng: &mut Rng, width: usize, height: usize, cfg: &SynthConfig) -> Sample {
    let n_px = width * height;
    let log_uniform = |rng: &mut Rng, lo: f32, hi: f32| (rng.range(lo.ln(), hi.ln())).exp();
    let r_typ = log_uniform(rng, cfg.radius.0, cfg.radius.1);
    let coverage = rng.range(cfg.coverage.0, cfg.coverage.1);
    // Some images have nothing in them; the model must learn to say so.
    let empty = rng.uniform() < 0.04;
    let n_target = if empty {
        0
    } else {
        ((coverage * n_px as f32) / (PI * r_typ * r_typ))
            .round()
            .max(1.0) as usize
    };
    let n_target = n_target.min(400);
    let dim_fraction = rng.range(0.0, 0.5);
    let bg = rng.range(0.01, 0.08);
    let mitotic_rate = if rng.uniform() < 0.5 {
        rng.range(0.0, 0.12)
    } else {
        0.0
    };

    let mut nuclei: Vec<Nucleus> = Vec::with_capacity(n_target);
    let mut tries = 0;
    while nuclei.len() < n_target && tries < n_target * 20 {
        tries += 1;
        // Nuclei below 5 px across are outside the model card's scale (and specks, not nuclei).
        let r = (r_typ * (1.0 + 0.28 * rng.normal()).clamp(0.5, 1.8)).max(MIN_RADIUS);
        let ecc = rng.range(0.0, 0.35);
        let (a, b) = (r * (1.0 + ecc), r * (1.0 - ecc * 0.7));
        let (cx, cy) = if !nuclei.is_empty() && rng.uniform() < cfg.cluster_prob {
            // Touching or slightly overlapping a random existing nucleus.
            let other = &nuclei[rng.below(nuclei.len())];
            let ang = rng.range(0.0, 2.0 * PI);
            let d = (other.a.min(other.b) + a.min(b)) * rng.range(0.72, 1.02);
            (other.cx + d * ang.cos(), other.cy + d * ang.sin())
        } else {
            (
                rng.range(-r, width as f32 + r),
                rng.range(-r, height as f32 + r),
            )
        };
        // Reject heavy overlaps: real nuclei touch and overlap a little, they do not stack.
        let crowded = nuclei.iter().any(|o| {
            let d = ((o.cx - cx).powi(2) + (o.cy - cy).powi(2)).sqrt();
            d < 0.62 * (o.a.min(o.b) + a.min(b))
        });
        if crowded {
            continue;
        }
        let ang = rng.range(0.0, PI);
        let irregular = rng.range(0.0, 0.08);
        let mut harmonics = [(0.0, 0.0); 4];
        for (k, h) in harmonics.iter_mut().enumerate() {
            *h = (
                irregular * rng.normal() / (k as f32 + 1.0),
                rng.range(0.0, 2.0 * PI),
            );
        }
        let mut brightness = if rng.uniform() < dim_fraction {
            rng.range(0.15, 0.35)
        } else {
            rng.range(0.35, 1.4)
        }
        // Labelled nuclei stay visible: a dim one still stands clear of the background.
        .max(2.5 * bg + 0.06);
        let (mut a, mut b) = (a, b);
        // Mitotic and apoptotic nuclei: small, condensed, several times brighter than the rest,
        // often saturated; after percentile normalization they push ordinary nuclei down to dim.
        if rng.uniform() < mitotic_rate {
            brightness *= rng.range(2.5, 6.0);
            a = (a * 0.55).max(MIN_RADIUS);
            b = (b * 0.45).max(MIN_RADIUS);
        }
        nuclei.push(Nucleus {
            cx,
            cy,
            a,
            b,
            cos: ang.cos(),
            sin: ang.sin(),
            harmonics,
            brightness,
            texture_gain: rng.range(0.03, 0.3),
        });
    }

    // Chromatin texture: smoothed noise at two scales, shared by all nuclei of the image.
    let (fine_sigma, coarse_sigma) = (rng.range(0.8, 1.8), rng.range(2.5, 5.0));
    let fine = smooth_noise(rng, width, height, fine_sigma);
    let coarse = smooth_noise(rng, width, height, coarse_sigma);

    let mut signal = vec![0.0f32; n_px];
    let mut labels = vec![0u16; n_px];
    let mut best_s = vec![f32::INFINITY; n_px];
    let halo = rng.uniform() < 0.35;
    let halo_gain = rng.range(0.03, 0.12);
    let edge_soft = rng.range(0.04, 0.15);
    for (id, n) in nuclei.iter().enumerate() {
        let e = n.extent() * if halo { 2.2 } else { 1.0 };
        let x0 = (n.cx - e).floor().max(0.0) as usize;
        let y0 = (n.cy - e).floor().max(0.0) as usize;
        let x1 = ((n.cx + e).ceil().max(0.0) as usize).min(width);
        let y1 = ((n.cy + e).ceil().max(0.0) as usize).min(height);
        // Nucleoli and chromocentres: a few bright spots inside larger nuclei.
        let spots: Vec<(f32, f32, f32)> = (0..if n.a > 6.0 { rng.below(4) } else { 0 })
            .map(|_| {
                let (ang, rr) = (rng.range(0.0, 2.0 * PI), rng.range(0.0, 0.6));
                (
                    n.cx + rr * n.a * ang.cos(),
                    n.cy + rr * n.b * ang.sin(),
                    rng.range(0.8, 2.0),
                )
            })
            .collect();
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * width + x;
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let s = n.s(px, py);
                if s < 1.0 && s < best_s[i] {
                    best_s[i] = s;
                    labels[i] = (id + 1) as u16;
                }
                // Soft edge: full intensity inside, a short ramp across the boundary.
                let profile = smoothstep(1.0 + edge_soft, 1.0 - edge_soft, s);
                if profile > 0.0 {
                    let tex = 1.0 + n.texture_gain * (fine[i] + coarse[i]);
                    let mut v = n.brightness * profile * tex.max(0.5);
                    for &(sx, sy, sr) in &spots {
                        let d2 = (px - sx).powi(2) + (py - sy).powi(2);
                        v += 0.5 * n.brightness * (-d2 / (2.0 * sr * sr)).exp() * profile;
                    }
                    signal[i] += v;
                }
                if halo && (1.0..2.2).contains(&s) {
                    signal[i] += n.brightness * halo_gain * (1.0 - (s - 1.0) / 1.2);
                }
            }
        }
    }
    // Labels of nuclei whose centre fell outside keep their visible part; relabel 1..n densely.
    relabel_dense(&mut labels);

    // Debris: small bright specks and larger faint out-of-focus blobs, never labelled.
    let n_debris = rng.below(6);
    for _ in 0..n_debris {
        let (cx, cy) = (rng.range(0.0, width as f32), rng.range(0.0, height as f32));
        let (sig, amp) = if rng.uniform() < 0.6 {
            (rng.range(0.5, 1.3), rng.range(0.3, 1.5))
        } else {
            (rng.range(6.0, 18.0), rng.range(0.03, 0.12))
        };
        let e = (sig * 3.0).ceil() as isize;
        for y in (cy as isize - e).max(0)..(cy as isize + e).min(height as isize) {
            for x in (cx as isize - e).max(0)..(cx as isize + e).min(width as isize) {
                let d2 = (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2);
                signal[y as usize * width + x as usize] += amp * (-d2 / (2.0 * sig * sig)).exp();
            }
        }
    }

    let sigma = rng.range(cfg.blur.0, cfg.blur.1);
    gaussian_blur(&mut signal, width, height, sigma);

    // Uneven illumination: background plus a tilted, vignetted field multiplying the signal.
    let (gx, gy) = (rng.range(-0.35, 0.35), rng.range(-0.35, 0.35));
    let vignette = rng.range(0.0, 0.4);
    let photons = log_uniform(rng, cfg.photons.0, cfg.photons.1);
    let read_noise = rng.range(0.0, 0.015);
    let full_scale = if rng.uniform() < 0.6 {
        255.0
    } else {
        [1023.0, 4095.0, 65535.0][rng.below(3)]
    };
    let offset = rng.range(0.0, 0.05);
    let mut image = vec![0.0f32; n_px];
    let (cw, ch) = (width as f32 / 2.0, height as f32 / 2.0);
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            let (u, v) = ((x as f32 - cw) / cw.max(1.0), (y as f32 - ch) / ch.max(1.0));
            let field = (1.0 + gx * u + gy * v) * (1.0 - vignette * 0.5 * (u * u + v * v));
            let clean = (bg + signal[i]) * field.max(0.1);
            let counts = rng.poisson(clean * photons) / photons;
            let noisy = offset + counts + read_noise * rng.normal();
            image[i] = (noisy.clamp(0.0, 1.0) * full_scale).round();
        }
    }
    Sample {
        width,
        height,
        image,
        labels,
    }
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Gaussian-smoothed white noise with unit standard deviation.
fn smooth_noise(rng: &mut Rng, width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..width * height).map(|_| rng.normal()).collect();
    gaussian_blur(&mut v, width, height, sigma);
    let sd = (v.iter().map(|x| x * x).sum::<f32>() / v.len().max(1) as f32)
        .sqrt()
        .max(1e-6);
    v.iter_mut().for_each(|x| *x /= sd);
    v
}

/// Separable Gaussian blur in place with mirrored borders.
pub fn gaussian_blur(data: &mut [f32], width: usize, height: usize, sigma: f32) {
    if sigma <= 0.05 {
        return;
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let mut tmp = vec![0.0f32; data.len()];
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let sx = crate::engine::tiling::reflect(x as isize + j as isize - r, width);
                acc += kv * data[y * width + sx];
            }
            tmp[y * width + x] = acc;
        }
    }
    for y in 0..height {
        for x in 0..width {
            let mut acc = 0.0;
            for (j, kv) in k.iter().enumerate() {
                let sy = crate::engine::tiling::reflect(y as isize + j as isize - r, height);
                acc += kv * tmp[sy * width + x];
            }
            data[y * width + x] = acc;
        }
    }
}

/// Renumbers labels to 1..=n in order of first appearance, dropping ids with no pixels.
pub fn relabel_dense(labels: &mut [u16]) {
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut map = vec![0u16; max + 1];
    let mut next = 0u16;
    for l in labels.iter_mut() {
        if *l == 0 {
            continue;
        }
        if map[*l as usize] == 0 {
            next += 1;
            map[*l as usize] = next;
        }
        *l = map[*l as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let cfg = SynthConfig::default();
        let a = generate(&mut Rng::new(3), 128, 128, &cfg);
        let b = generate(&mut Rng::new(3), 128, 128, &cfg);
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
        let mut counts = Vec::new();
        let mut contrast_ok = 0;
        for seed in 0..40 {
            let s = generate(&mut Rng::new(seed), 128, 128, &cfg);
            assert!(s.image.iter().all(|v| v.is_finite() && *v >= 0.0));
            counts.push(s.count());
            let (mut fg, mut nf, mut bg, mut nb) = (0.0, 0, 0.0, 0);
            for (v, l) in s.image.iter().zip(&s.labels) {
                if *l > 0 {
                    fg += v;
                    nf += 1
                } else {
                    bg += v;
                    nb += 1
                }
            }
            if nf > 0 && nb > 0 && fg / nf as f32 > 1.5 * bg / nb as f32 {
                contrast_ok += 1;
            }
        }
        // Nuclei are brighter than background in (nearly) every image that has both.
        assert!(contrast_ok >= 30, "{contrast_ok}");
        // Counts vary widely: sparse large nuclei to crowded small ones.
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo <= 3 && *hi >= 40, "{counts:?}");
    }

    #[test]
    fn relabel_makes_ids_dense() {
        let mut l = vec![0, 7, 7, 3, 0, 9];
        relabel_dense(&mut l);
        assert_eq!(l, vec![0, 1, 1, 2, 0, 3]);
    }

    #[test]
    fn blur_preserves_mean() {
        let mut rng = Rng::new(1);
        let mut d: Vec<f32> = (0..64 * 64).map(|_| rng.uniform()).collect();
        let m0: f32 = d.iter().sum::<f32>() / d.len() as f32;
        gaussian_blur(&mut d, 64, 64, 2.0);
        let m1: f32 = d.iter().sum::<f32>() / d.len() as f32;
        assert!((m0 - m1).abs() < 0.01);
    }
}
