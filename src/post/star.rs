//! Star-convex nuclei (Schmidt et al., MICCAI 2018, "StarDist"): every pixel inside a nucleus
//! predicts its distance to the nucleus's outline along `rays` evenly spaced directions, so each
//! interior pixel proposes a whole polygon. The runtime keeps the best-scored proposals that do not
//! overlap a kept one too much (non-maximum suppression) and paints them as nuclei. This module
//! owns the ray geometry both sides share: the trainer's targets and the runtime's decoding.

/// Most rays a model may carry (the contract's limit; 32 is the usual choice for 2-D nuclei).
pub const MAX_RAYS: usize = 64;
/// Ray distances travel as a fraction of this many pixels, so that they fit the contract's
/// `[0, 1]` outputs (and int8 activations); longer rays saturate at it.
pub const MAX_RAY_PX: f32 = 64.0;
/// Step of the ray march that measures a target distance, px.
const MARCH_STEP: f32 = 0.5;

/// Unit direction (dx, dy) of ray `k` of `rays`, counter-clockwise from +x with y pointing down.
pub fn direction(k: usize, rays: usize) -> (f32, f32) {
    let a = std::f32::consts::TAU * k as f32 / rays as f32;
    (a.cos(), a.sin())
}

/// Training targets of the ray channels from instance labels (0 = background), written to
/// `dist` (`rays` planes of `w*h`: each pixel's distance to its nucleus's outline along the ray,
/// as a fraction of [`MAX_RAY_PX`], 0 outside nuclei) and `known` (1 where that distance is
/// known, 0 outside nuclei and where the ray left the image before the nucleus ended: a crop
/// cuts nuclei, and their true extent beyond it is unknown).
pub fn ray_targets<L: Copy + Into<u32>>(
    labels: &[L],
    w: usize,
    h: usize,
    rays: usize,
    dist: &mut [f32],
    known: &mut [f32],
) {
    let n = w * h;
    assert_eq!(labels.len(), n);
    assert!(dist.len() == rays * n && known.len() == rays * n);
    dist.iter_mut().for_each(|d| *d = 0.0);
    known.iter_mut().for_each(|d| *d = 0.0);
    for k in 0..rays {
        let (dx, dy) = direction(k, rays);
        for i in 0..n {
            let own: u32 = labels[i].into();
            if own == 0 {
                continue;
            }
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            let mut t = 0.0f32;
            let inside_image = loop {
                t += MARCH_STEP;
                if t > MAX_RAY_PX {
                    break true;
                }
                let (sx, sy) = ((x + dx * t).round(), (y + dy * t).round());
                if sx < 0.0 || sy < 0.0 || sx >= w as f32 || sy >= h as f32 {
                    break false;
                }
                if labels[sy as usize * w + sx as usize].into() != own {
                    break true;
                }
            };
            // The outline lies between the last sample inside and the first outside.
            let d = (t - MARCH_STEP / 2.0).min(MAX_RAY_PX);
            dist[k * n + i] = d / MAX_RAY_PX;
            known[k * n + i] = f32::from(u8::from(inside_image));
        }
    }
}

/// The network's maps that star-convex decoding reads, all `w*h` per plane.
#[derive(Clone, Copy, Debug)]
pub struct StarMaps<'a> {
    /// The core channel: the proposals' scores (highest near a nucleus's centre).
    pub core: &'a [f32],
    /// `rays` planes of ray distances, fractions of [`MAX_RAY_PX`].
    pub rays: &'a [f32],
    /// Number of rays.
    pub n_rays: usize,
}

/// A proposal is kept only if its polygon's IoU with every kept one stays at or below this.
/// StarDist's own default is 0.3-0.4, for rays accurate to about a pixel. With inexact rays a
/// polygon that overlaps a kept one is mostly the same nucleus proposed again, so the best value
/// falls as the rays' error grows (DSB2018 score on the 34 consistent validation images, see the
/// model card's History): rays 5.4 px off scored 0.360, 0.423, 0.445, 0.448 at 0.3, 0.1, 0.05,
/// 0.02; rays 2.9-3.1 px off (the longer run of session 21) score 0.479 and 0.486 at 0.1 against
/// 0.473 and 0.471 at 0.02, and rays 3.25 px off 0.418, 0.450 and 0.441 at 0.3, 0.1 and 0.02.
/// Raise it as the rays improve.
pub const NMS_IOU: f32 = 0.1;
/// Pixels whose core score is below this propose no polygon.
pub const MIN_SCORE: f32 = 0.5;

/// Reusable buffers of the decoding.
#[derive(Default)]
pub struct StarDecoder {
    /// Candidate pixels, best score first.
    candidates: Vec<u32>,
    /// Per kept polygon (by its first pixel's index): overlap counts of the proposal under test.
    overlap: Vec<u32>,
    /// Kept polygons the proposal under test touches (indices into `overlap`).
    touched: Vec<u32>,
    /// Breadth-first queue of the fill that gives uncovered mask pixels to a nucleus.
    queue: Vec<u32>,
}

/// Where a proposal's polygon lies: per row, the inclusive span of pixel centres inside it.
struct Polygon {
    vx: [f32; MAX_RAYS],
    vy: [f32; MAX_RAYS],
    n: usize,
    y0: usize,
    y1: usize,
}

impl Polygon {
    fn new(p: usize, maps: &StarMaps, w: usize, h: usize) -> Polygon {
        let n = w * h;
        let (x, y) = ((p % w) as f32, (p / w) as f32);
        let mut poly = Polygon {
            vx: [0.0; MAX_RAYS],
            vy: [0.0; MAX_RAYS],
            n: maps.n_rays,
            y0: 0,
            y1: 0,
        };
        let (mut lo, mut hi) = (y, y);
        for k in 0..maps.n_rays {
            let (dx, dy) = direction(k, maps.n_rays);
            let d = maps.rays[k * n + p].clamp(0.0, 1.0) * MAX_RAY_PX;
            poly.vx[k] = x + dx * d;
            poly.vy[k] = y + dy * d;
            lo = lo.min(poly.vy[k]);
            hi = hi.max(poly.vy[k]);
        }
        poly.y0 = lo.ceil().max(0.0) as usize;
        poly.y1 = (hi.floor().max(0.0) as usize).min(h - 1);
        poly
    }

    /// The span `[x0, x1]` of pixel centres inside the polygon on row `yy`, if any. A star-convex
    /// polygon seen from its own pixel crosses a row at most in a few places; the span from the
    /// leftmost to the rightmost crossing is exact for convex outlines and fills small dents.
    fn span(&self, yy: usize, w: usize) -> Option<(usize, usize)> {
        let yf = yy as f32;
        let (mut left, mut right) = (f32::INFINITY, f32::NEG_INFINITY);
        for k in 0..self.n {
            let j = (k + 1) % self.n;
            let (ay, by) = (self.vy[k], self.vy[j]);
            if (ay <= yf) != (by <= yf) {
                let x = self.vx[k] + (yf - ay) * (self.vx[j] - self.vx[k]) / (by - ay);
                left = left.min(x);
                right = right.max(x);
            }
        }
        if left > right {
            return None;
        }
        let x0 = left.ceil().max(0.0);
        let x1 = right.floor().min(w as f32 - 1.0);
        (x0 <= x1).then_some((x0 as usize, x1 as usize))
    }

    /// Indices of the frame's pixels whose centres lie inside, row by row.
    fn pixels(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        (self.y0..=self.y1.max(self.y0)).flat_map(move |yy| {
            self.span(yy, w)
                .into_iter()
                .flat_map(move |(x0, x1)| yy * w + x0..=yy * w + x1)
        })
    }
}

impl StarDecoder {
    /// Labels nuclei as polygons: `labels` gets the index of the proposing pixel of each kept
    /// polygon (`none` elsewhere) and `area` each kept polygon's painted pixel count at that
    /// index. Proposals come from pixels of `mask` whose core score reaches [`MIN_SCORE`], best
    /// first; a proposal whose own pixel a kept polygon already covers is dropped, and one whose
    /// IoU with a kept polygon exceeds [`NMS_IOU`] is suppressed. A kept polygon takes only pixels
    /// no better polygon holds, inside the mask: the mask says where nuclei are, the polygons
    /// which nucleus each pixel belongs to; mask pixels no polygon covers then go to the one they
    /// connect to. Allocates only while the frame grows.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        mask: &[u8],
        maps: &StarMaps,
        w: usize,
        h: usize,
        labels: &mut [u32],
        area: &mut [u32],
        none: u32,
    ) {
        let n = w * h;
        assert!(maps.n_rays >= 3 && maps.n_rays <= MAX_RAYS);
        assert!(maps.core.len() == n && maps.rays.len() == maps.n_rays * n);
        assert!(labels.len() == n && area.len() >= n && mask.len() == n);
        // Sized for the worst case once per frame size, so later frames allocate nothing.
        self.candidates.clear();
        self.candidates.reserve(n);
        self.touched.clear();
        self.touched.reserve(n);
        self.candidates.extend(
            (0..n as u32).filter(|&i| mask[i as usize] != 0 && maps.core[i as usize] >= MIN_SCORE),
        );
        let core = maps.core;
        // Ties go to the earlier pixel, so the result does not depend on the sort's internals.
        self.candidates.sort_unstable_by(|&a, &b| {
            core[b as usize]
                .total_cmp(&core[a as usize])
                .then(a.cmp(&b))
        });
        labels.iter_mut().for_each(|l| *l = none);
        self.overlap.resize(n, 0);
        for ci in 0..self.candidates.len() {
            let p = self.candidates[ci] as usize;
            if labels[p] != none {
                continue;
            }
            let poly = Polygon::new(p, maps, w, h);
            // Area of the proposal and its overlap with each kept polygon.
            let mut own = 0u32;
            self.touched.clear();
            for i in poly.pixels(w).filter(|&i| mask[i] != 0) {
                own += 1;
                let l = labels[i];
                if l != none {
                    if self.overlap[l as usize] == 0 {
                        self.touched.push(l);
                    }
                    self.overlap[l as usize] += 1;
                }
            }
            let mut suppressed = own == 0;
            for &t in &self.touched {
                let inter = self.overlap[t as usize] as f32;
                let union = own as f32 + area[t as usize] as f32 - inter;
                suppressed |= inter > NMS_IOU * union;
                self.overlap[t as usize] = 0;
            }
            if suppressed {
                continue;
            }
            let mut painted = 0;
            for i in poly.pixels(w) {
                if mask[i] != 0 && labels[i] == none {
                    labels[i] = p as u32;
                    painted += 1;
                }
            }
            area[p] = painted;
        }
        self.fill(mask, w, h, labels, area, none);
    }

    /// Gives the mask's pixels that no kept polygon covers to the polygon they connect to
    /// (breadth-first through the mask, so each goes to the nearest), and makes each part of the
    /// mask that no polygon reaches a nucleus of its own, as the watershed would: the mask, not
    /// the rays, says where nuclei are, so short rays must not cut a nucleus's rim off.
    fn fill(
        &mut self,
        mask: &[u8],
        w: usize,
        h: usize,
        labels: &mut [u32],
        area: &mut [u32],
        none: u32,
    ) {
        let n = w * h;
        self.queue.clear();
        self.queue.reserve(n);
        self.queue
            .extend((0..n as u32).filter(|&i| labels[i as usize] != none));
        let mut head = 0;
        let spread =
            |queue: &mut Vec<u32>, head: &mut usize, labels: &mut [u32], area: &mut [u32]| {
                while *head < queue.len() {
                    let p = queue[*head] as usize;
                    *head += 1;
                    let l = labels[p];
                    for q in crate::post::instances::neighbours4(p, w, h) {
                        if mask[q] != 0 && labels[q] == none {
                            labels[q] = l;
                            area[l as usize] += 1;
                            queue.push(q as u32);
                        }
                    }
                }
            };
        spread(&mut self.queue, &mut head, labels, area);
        for p in 0..n {
            if mask[p] != 0 && labels[p] == none {
                labels[p] = p as u32;
                area[p] = 1;
                self.queue.push(p as u32);
                spread(&mut self.queue, &mut head, labels, area);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of radius `r` around (cx, cy) labelled `id`.
    fn disk(labels: &mut [u16], w: usize, cx: f32, cy: f32, r: f32, id: u16) {
        for (i, l) in labels.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            if (x - cx).powi(2) + (y - cy).powi(2) <= r * r {
                *l = id;
            }
        }
    }

    /// Ray targets of `labels` as the maps a perfect network would give, core = closeness to
    /// the centre.
    fn perfect_maps(labels: &[u16], w: usize, h: usize, rays: usize) -> (Vec<f32>, Vec<f32>) {
        let n = w * h;
        let (mut d, mut known) = (vec![0.0; rays * n], vec![0.0; rays * n]);
        ray_targets(labels, w, h, rays, &mut d, &mut known);
        let core = crate::post::targets::normalized_distance(labels, w, h);
        (core, d)
    }

    /// Decodes with fresh buffers; returns the label and area planes.
    fn decode(
        mask: &[u8],
        core: &[f32],
        rays: &[f32],
        n_rays: usize,
        w: usize,
        h: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        let maps = StarMaps { core, rays, n_rays };
        let (mut out, mut area) = (vec![0u32; w * h], vec![0u32; w * h]);
        StarDecoder::default().decode(mask, &maps, w, h, &mut out, &mut area, u32::MAX);
        (out, area)
    }

    #[test]
    fn ray_targets_measure_the_outline_and_mark_rays_that_leave_the_image() {
        let (w, h) = (40, 30);
        let mut labels = vec![0u16; w * h];
        disk(&mut labels, w, 20.0, 15.0, 8.0, 1);
        disk(&mut labels, w, 2.0, 2.0, 5.0, 2);
        let rays = 8;
        let n = w * h;
        let (mut d, mut known) = (vec![0.0; rays * n], vec![0.0; rays * n]);
        ray_targets(&labels, w, h, rays, &mut d, &mut known);
        let centre = 15 * w + 20;
        for k in 0..rays {
            let px = d[k * n + centre] * MAX_RAY_PX;
            assert!((px - 8.5).abs() <= 1.0, "ray {k}: {px} px from the centre");
            assert_eq!(known[k * n + centre], 1.0);
        }
        // The corner disk's rays towards -x and -y leave the image: unknown, not short.
        let corner = 2 * w + 2;
        assert_eq!(known[4 * n + corner], 0.0, "ray 4 points to -x");
        assert_eq!(
            known[4 * n],
            0.0,
            "pixel (0, 0) looks out of the image along -x"
        );
        assert_eq!(known[corner], 1.0, "ray 0 points to +x, inside the image");
        assert_eq!(d[(h - 1) * w], 0.0, "background has no distance");
    }

    #[test]
    fn perfect_maps_decode_touching_disks_as_two_nuclei_with_their_outlines() {
        let (w, h) = (64, 48);
        let mut labels = vec![0u16; w * h];
        disk(&mut labels, w, 22.0, 24.0, 10.0, 1);
        disk(&mut labels, w, 40.0, 24.0, 9.0, 2);
        let (core, rays) = perfect_maps(&labels, w, h, 32);
        let mask: Vec<u8> = labels.iter().map(|&l| u8::from(l > 0)).collect();
        let (out, area) = decode(&mask, &core, &rays, 32, w, h);
        let mut kept: Vec<u32> = out.iter().copied().filter(|&l| l != u32::MAX).collect();
        kept.sort_unstable();
        kept.dedup();
        assert_eq!(kept.len(), 2, "two nuclei, not {}", kept.len());
        // Each decoded nucleus agrees with one true disk (IoU > 0.9).
        for &k in &kept {
            let truth = labels[k as usize];
            let inter = (0..w * h)
                .filter(|&i| out[i] == k && labels[i] == truth)
                .count();
            let union = (0..w * h)
                .filter(|&i| out[i] == k || labels[i] == truth)
                .count();
            assert!(
                inter as f32 > 0.9 * union as f32,
                "IoU {inter}/{union} for nucleus {truth}"
            );
            assert_eq!(
                area[k as usize] as usize,
                inter
                    + (0..w * h)
                        .filter(|&i| out[i] == k && labels[i] != truth)
                        .count()
            );
        }
    }

    #[test]
    fn mask_pixels_beyond_short_rays_join_their_polygon_and_unreached_blobs_stand_alone() {
        let (w, h) = (40, 20);
        let mut labels = vec![0u16; w * h];
        disk(&mut labels, w, 10.0, 10.0, 6.0, 1);
        disk(&mut labels, w, 32.0, 10.0, 3.0, 2);
        let (core, mut rays) = perfect_maps(&labels, w, h, 16);
        // Rays half as long as they should be, and no proposal in the small disk.
        rays.iter_mut().for_each(|r| *r *= 0.5);
        let core: Vec<f32> = core
            .iter()
            .zip(&labels)
            .map(|(&c, &l)| if l == 2 { 0.0 } else { c })
            .collect();
        let mask: Vec<u8> = labels.iter().map(|&l| u8::from(l > 0)).collect();
        let (out, area) = decode(&mask, &core, &rays, 16, w, h);
        for t in [1u16, 2] {
            let ids: std::collections::BTreeSet<u32> = (0..w * h)
                .filter(|&i| labels[i] == t)
                .map(|i| out[i])
                .collect();
            assert_eq!(ids.len(), 1, "disk {t} is one nucleus: {ids:?}");
            let id = *ids.iter().next().unwrap();
            assert_ne!(id, u32::MAX, "disk {t} is labelled whole");
            let size = labels.iter().filter(|&&l| l == t).count();
            assert_eq!(area[id as usize] as usize, size);
        }
        assert!((0..w * h).all(|i| (out[i] == u32::MAX) == (mask[i] == 0)));
    }

    #[test]
    fn low_scored_maps_propose_nothing_and_the_mask_alone_decides() {
        let (w, h) = (16, 16);
        let core = vec![0.2f32; w * h];
        let rays = vec![0.1f32; 8 * w * h];
        let mut mask = vec![0u8; w * h];
        let (out, _) = decode(&mask, &core, &rays, 8, w, h);
        assert!(
            out.iter().all(|&l| l == u32::MAX),
            "an empty mask has no nuclei"
        );
        // A mask without proposals is one nucleus per connected part, as the watershed gives.
        mask[..w * 4].iter_mut().for_each(|m| *m = 1);
        let (out, area) = decode(&mask, &core, &rays, 8, w, h);
        assert!(
            out[..w * 4].iter().all(|&l| l == 0) && out[w * 4..].iter().all(|&l| l == u32::MAX)
        );
        assert_eq!(area[0] as usize, w * 4);
    }
}
