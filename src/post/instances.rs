//! From a foreground mask to individual nuclei: Euclidean distance transform, then a
//! flooding watershed on it whose basins merge unless their peak stands clear of the saddle
//! (h-maxima by dynamics, done with union-find in one pass), then a minimum-size filter and
//! per-nucleus measurements. Buffers are sized once per frame size; later frames allocate nothing.

use super::distance::Edt;
use super::star::{StarDecoder, StarMaps};

/// What the network tells the instance step besides the mask.
#[derive(Clone, Copy, Debug)]
pub enum Guide<'a> {
    /// The mask alone: nuclei split where its distance transform has a neck.
    Mask,
    /// The core channel (see [`Instances::run`]).
    Core(&'a [f32]),
    /// Star-convex polygons: the mask's pixels go to the best non-overlapping polygons (see
    /// [`crate::post::star`]).
    Star(StarMaps<'a>),
}

impl<'a> From<Option<&'a [f32]>> for Guide<'a> {
    /// A core channel if there is one, else the mask alone.
    fn from(core: Option<&'a [f32]>) -> Guide<'a> {
        core.map_or(Guide::Mask, Guide::Core)
    }
}

/// Instance-separation settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceConfig {
    /// Two basins stay apart only if the lower peak rises above the saddle by at least
    /// `max(h_abs, h_rel * peak)` px of distance.
    pub h_abs: f32,
    /// Relative part of the split criterion.
    pub h_rel: f32,
    /// Objects smaller than this many pixels are dropped.
    pub min_area: usize,
    /// Each nucleus grows this many pixels into the background after the split (a pixel that
    /// borders two nuclei stays background, so touching nuclei never merge): the boundary
    /// correction for a model whose masks run inside the annotated outlines (see the model
    /// card); 0 keeps the mask as it is.
    pub grow: usize,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            h_abs: 1.0,
            h_rel: 0.1,
            min_area: 12,
            grow: 0,
        }
    }
}

/// Measurements of one nucleus.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nucleus {
    /// Label in the label image (1..=count).
    pub id: u32,
    /// Centroid x, px.
    pub cx: f32,
    /// Centroid y, px.
    pub cy: f32,
    /// Area, px.
    pub area: u32,
    /// Mean raw intensity.
    pub mean_intensity: f32,
    /// Bounding box: x0, y0, x1, y1 (inclusive).
    pub bbox: [u32; 4],
    /// Whether the nucleus touches the frame border (likely cut off).
    pub touches_border: bool,
    /// Full length of the major axis of the ellipse with the same second moments, px.
    pub major_axis: f32,
    /// Full length of its minor axis, px.
    pub minor_axis: f32,
    /// Angle of the major axis from the image x axis, degrees in (-90, 90], y pointing down.
    pub orientation_deg: f32,
}

impl Nucleus {
    /// Eccentricity of the same-moments ellipse: 0 for a disk, towards 1 for elongated nuclei.
    pub fn eccentricity(&self) -> f32 {
        if self.major_axis <= 0.0 {
            return 0.0;
        }
        let r = self.minor_axis / self.major_axis;
        (1.0 - r * r).max(0.0).sqrt()
    }
}

/// Frame-level statistics of the nuclei found, for the per-frame JSON lines.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Nuclei found.
    pub count: usize,
    /// Nuclei that do not touch the frame border (whole ones, the count to compare across frames).
    pub whole: usize,
    /// Mean area of the whole nuclei, px (0 without any).
    pub mean_area: f32,
    /// Mean over the whole nuclei of their mean raw intensity (0 without any).
    pub mean_intensity: f32,
}

/// Reusable instance segmenter.
#[derive(Default)]
pub struct Instances {
    width: usize,
    height: usize,
    dist: Vec<f32>,
    labels: Vec<u32>,
    order: Vec<u32>,
    /// Breadth-first queue of one level's pixels.
    fifo: Vec<u32>,
    bucket: Vec<u32>,
    parent: Vec<u32>,
    peak: Vec<f32>,
    area: Vec<u32>,
    remap: Vec<u32>,
    /// Per nucleus: its first pixel's x and y, then the sums of dx², dy² and dx·dy about that
    /// pixel (f64, and about a nearby origin, so large frames lose no precision).
    moments: Vec<[f64; 5]>,
    edt: Edt,
    star: StarDecoder,
    nuclei: Vec<Nucleus>,
}

const LEVELS_PER_PX: f32 = 8.0;
/// Weight of the mask's own distance transform where the core channel says "not core".
const RIM_FLOOR: f32 = 0.5;
const NONE: u32 = u32::MAX;
/// A pixel waiting in the flood's queue.
const QUEUED: u32 = NONE - 1;

impl Instances {
    /// A segmenter with no buffers yet.
    pub fn new() -> Instances {
        Instances::default()
    }

    fn prepare(&mut self, w: usize, h: usize) {
        if (self.width, self.height) == (w, h) {
            return;
        }
        let n = w * h;
        self.width = w;
        self.height = h;
        self.dist.resize(n, 0.0);
        self.labels.resize(n, 0);
        self.order.resize(n, 0);
        self.fifo.resize(n, 0);
        self.parent.resize(n, 0);
        self.peak.resize(n, 0.0);
        self.area.resize(n, 0);
        self.remap.resize(n + 1, 0);
        let m = w.max(h) + 1;
        self.edt.reserve(m);
        // Distances cannot exceed half the larger side.
        self.bucket
            .resize((m as f32 * LEVELS_PER_PX) as usize + 2, 0);
        self.nuclei.reserve(n / 64 + 16);
        self.moments.reserve(n / 64 + 16);
    }

    /// Labels nuclei in `mask` (non-zero = foreground); `intensity` feeds the measurements.
    /// With [`Guide::Star`] the mask's pixels go to the kept polygons. Otherwise a watershed
    /// floods the mask's distance transform; with [`Guide::Core`] (the model's core channel) the
    /// flooding landscape becomes the
    /// mask's distance transform times (0.5 + core), which sinks low where the network sees two
    /// nuclei touch, so they separate even when the mask shows no neck; the 0.5 keeps the rims
    /// ordered from the inside out, so they are shared out by distance, not by scan order.
    /// Returns the number of nuclei.
    pub fn run(
        &mut self,
        mask: &[u8],
        guide: Guide,
        intensity: &[f32],
        w: usize,
        h: usize,
        cfg: &InstanceConfig,
    ) -> usize {
        assert_eq!(mask.len(), w * h);
        assert_eq!(intensity.len(), w * h);
        self.prepare(w, h);
        if let Guide::Star(maps) = guide {
            self.star
                .decode(mask, &maps, w, h, &mut self.labels, &mut self.area, NONE);
        } else {
            self.edt(mask);
            if let Guide::Core(d) = guide {
                assert_eq!(d.len(), w * h);
                for (e, &p) in self.dist.iter_mut().zip(d) {
                    *e *= RIM_FLOOR + p.clamp(0.0, 1.0);
                }
            }
            self.flood(mask, cfg);
        }
        for _ in 0..cfg.grow {
            self.grow_once();
        }
        self.measure(intensity, cfg.min_area);
        self.nuclei.len()
    }

    /// The label image of the last run (0 = background, 1..=count).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The nuclei of the last run, by label.
    pub fn nuclei(&self) -> &[Nucleus] {
        &self.nuclei
    }

    /// Statistics of the last run's nuclei; cut-off nuclei count but do not enter the means.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            count: self.nuclei.len(),
            ..Summary::default()
        };
        for n in self.nuclei.iter().filter(|n| !n.touches_border) {
            s.whole += 1;
            s.mean_area += n.area as f32;
            s.mean_intensity += n.mean_intensity;
        }
        if s.whole > 0 {
            s.mean_area /= s.whole as f32;
            s.mean_intensity /= s.whole as f32;
        }
        s
    }

    /// Exact squared-Euclidean distance to the background (Felzenszwalb & Huttenlocher), then sqrt.
    /// Outside the frame counts as foreground, so nuclei cut by the border are not thinned there.
    fn edt(&mut self, mask: &[u8]) {
        let (w, h) = (self.width, self.height);
        let big = ((w + h) * (w + h)) as f32;
        for (d, &m) in self.dist.iter_mut().zip(mask) {
            *d = if m != 0 { big } else { 0.0 };
        }
        self.edt.euclidean_in_place(&mut self.dist, w, h);
    }

    fn find(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let p = self.parent[i as usize];
            self.parent[i as usize] = self.parent[p as usize];
            i = p;
        }
        i
    }

    /// Floods foreground pixels from the highest distance down, merging basins whose lower peak
    /// is within the dynamics threshold of the current level.
    fn flood(&mut self, mask: &[u8], cfg: &InstanceConfig) {
        let (w, h) = (self.width, self.height);
        let n = w * h;
        // Counting sort of foreground pixels by quantized distance, descending.
        let levels = self.bucket.len();
        self.bucket.iter_mut().for_each(|b| *b = 0);
        let q = |d: f32| ((d * LEVELS_PER_PX) as usize).min(levels - 1);
        let mut fg = 0;
        for (&m, &d) in mask.iter().zip(&self.dist) {
            if m != 0 {
                self.bucket[q(d)] += 1;
                fg += 1;
            }
        }
        let mut start = 0u32;
        for b in self.bucket.iter_mut().rev() {
            let c = *b;
            *b = start;
            start += c;
        }
        for (i, (&m, &d)) in mask.iter().zip(&self.dist).enumerate() {
            if m != 0 {
                let k = q(d);
                self.order[self.bucket[k] as usize] = i as u32;
                self.bucket[k] += 1;
            }
        }
        for l in self.labels.iter_mut() {
            *l = NONE;
        }
        // Level by level, highest first. Within a level, pixels are taken breadth-first from
        // the basins already there, so a plateau is shared out by distance from each basin; in
        // scan order one basin would run along a whole row or column of it first, and cut its
        // neighbour with straight, axis-parallel lines.
        let mut start = 0;
        for k in (0..levels).rev() {
            let end = self.bucket[k] as usize;
            if end == start {
                continue;
            }
            let (mut head, mut tail) = (0, 0);
            for idx in start..end {
                let p = self.order[idx] as usize;
                if neighbours4(p, w, h).any(|nb| self.labels[nb] < QUEUED) {
                    self.labels[p] = QUEUED;
                    self.fifo[tail] = p as u32;
                    tail += 1;
                }
            }
            for idx in start..=end {
                // Pixels no basin reaches start their own (a new peak), then spread the same way.
                while head < tail {
                    let p = self.fifo[head] as usize;
                    head += 1;
                    self.settle(p, cfg);
                    for nb in neighbours4(p, w, h) {
                        if self.labels[nb] == NONE && mask[nb] != 0 && q(self.dist[nb]) == k {
                            self.labels[nb] = QUEUED;
                            self.fifo[tail] = nb as u32;
                            tail += 1;
                        }
                    }
                }
                if idx < end {
                    let p = self.order[idx] as usize;
                    if self.labels[p] == NONE {
                        self.labels[p] = QUEUED;
                        self.fifo[tail] = p as u32;
                        tail += 1;
                    }
                }
            }
            start = end;
        }
        debug_assert_eq!(start, fg);
        for i in 0..n {
            if self.labels[i] != NONE {
                let r = self.find(self.labels[i]);
                self.labels[i] = r;
            }
        }
    }

    /// Merges the basins around foreground pixel `p` whose lower peak is within the dynamics
    /// threshold of `p`'s level, then gives `p` to the basin of its highest labelled neighbour;
    /// with no labelled neighbour, `p` starts a basin of its own.
    fn settle(&mut self, p: usize, cfg: &InstanceConfig) {
        let (w, h) = (self.width, self.height);
        let level = self.dist[p];
        let mut best = NONE;
        for nb in neighbours4(p, w, h) {
            if self.labels[nb] >= QUEUED {
                continue;
            }
            let r = self.find(self.labels[nb]);
            if best == NONE {
                best = r;
                continue;
            }
            if r == best {
                continue;
            }
            let (pa, pb) = (self.peak[best as usize], self.peak[r as usize]);
            let low = pa.min(pb);
            let (aa, ab) = (self.area[best as usize], self.area[r as usize]);
            let shallow = low - level < cfg.h_abs.max(cfg.h_rel * low);
            let tiny = (aa.min(ab) as usize) < cfg.min_area / 3;
            if shallow || tiny {
                // Merge the lower basin into the higher one.
                let (hi, lo) = if pa >= pb { (best, r) } else { (r, best) };
                self.parent[lo as usize] = hi;
                self.area[hi as usize] += self.area[lo as usize];
                best = hi;
            } else if pb > pa {
                best = r;
            }
        }
        if best == NONE {
            let id = p as u32;
            self.parent[p] = id;
            self.peak[p] = level;
            self.area[p] = 1;
            self.labels[p] = id;
        } else {
            // Two basins that stay apart share their contact by steepest ascent: `p` joins the
            // basin of its highest neighbour. Giving every contested pixel to the deeper basin
            // instead lets that basin creep one pixel into its neighbour at each level below the
            // saddle, which cuts the shallower nucleus with straight lines.
            let mut top = best;
            let mut top_level = f32::NEG_INFINITY;
            for nb in neighbours4(p, w, h) {
                if self.labels[nb] < QUEUED && self.dist[nb] > top_level {
                    top_level = self.dist[nb];
                    top = self.labels[nb];
                }
            }
            let root = self.find(top);
            self.labels[p] = root;
            self.area[root as usize] += 1;
        }
    }

    /// Grows every basin by one pixel (4-neighbours) into the background; a background pixel
    /// whose labelled neighbours belong to two basins stays background. `order` holds each
    /// pixel's claim for the pass, so a pixel taken in this pass does not spread further in it.
    /// Basin areas (and so the minimum-size filter) stay those of the mask.
    fn grow_once(&mut self) {
        const CONTESTED: u32 = NONE - 1;
        let (w, h) = (self.width, self.height);
        for p in 0..w * h {
            let mut claim = NONE;
            if self.labels[p] == NONE {
                for nb in neighbours4(p, w, h) {
                    let l = self.labels[nb];
                    if l == NONE || l == claim {
                        continue;
                    }
                    claim = if claim == NONE { l } else { CONTESTED };
                }
            }
            self.order[p] = claim;
        }
        for (l, &c) in self.labels.iter_mut().zip(&self.order) {
            if c != NONE && c != CONTESTED {
                *l = c;
            }
        }
    }

    /// Renumbers basins 1..=count (dropping small ones) and measures each.
    fn measure(&mut self, intensity: &[f32], min_area: usize) {
        let (w, h) = (self.width, self.height);
        self.nuclei.clear();
        self.moments.clear();
        for r in self.remap.iter_mut() {
            *r = 0;
        }
        for (i, &value) in intensity.iter().enumerate().take(w * h) {
            let root = self.labels[i];
            if root == NONE {
                self.labels[i] = 0;
                continue;
            }
            let slot = root as usize + 1;
            if self.remap[slot] == 0 {
                if (self.area[root as usize] as usize) < min_area {
                    self.remap[slot] = NONE;
                } else {
                    let id = self.nuclei.len() as u32 + 1;
                    self.remap[slot] = id;
                    self.nuclei.push(Nucleus {
                        id,
                        cx: 0.0,
                        cy: 0.0,
                        area: 0,
                        mean_intensity: 0.0,
                        bbox: [u32::MAX, u32::MAX, 0, 0],
                        touches_border: false,
                        major_axis: 0.0,
                        minor_axis: 0.0,
                        orientation_deg: 0.0,
                    });
                    // Moments about the nucleus's first pixel keep the sums small.
                    let (x0, y0) = ((i % w) as f64, (i / w) as f64);
                    self.moments.push([x0, y0, 0.0, 0.0, 0.0]);
                }
            }
            let id = self.remap[slot];
            if id == NONE {
                self.labels[i] = 0;
                continue;
            }
            self.labels[i] = id;
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            let n = &mut self.nuclei[id as usize - 1];
            n.area += 1;
            n.cx += x as f32;
            n.cy += y as f32;
            n.mean_intensity += value;
            n.bbox = [
                n.bbox[0].min(x),
                n.bbox[1].min(y),
                n.bbox[2].max(x),
                n.bbox[3].max(y),
            ];
            if x == 0 || y == 0 || x as usize + 1 == w || y as usize + 1 == h {
                n.touches_border = true;
            }
            let m = &mut self.moments[id as usize - 1];
            let (dx, dy) = (x as f64 - m[0], y as f64 - m[1]);
            m[2] += dx * dx;
            m[3] += dy * dy;
            m[4] += dx * dy;
        }
        for (n, m) in self.nuclei.iter_mut().zip(&self.moments) {
            let a = n.area as f32;
            n.cx /= a;
            n.cy /= a;
            n.mean_intensity /= a;
            // Central second moments from the sums about the first pixel; a pixel is a unit
            // square, hence the 1/12 (a 1-px line gets a minor axis of 1, not 0).
            let af = f64::from(n.area);
            let (mx, my) = (f64::from(n.cx) - m[0], f64::from(n.cy) - m[1]);
            let cxx = m[2] / af - mx * mx + 1.0 / 12.0;
            let cyy = m[3] / af - my * my + 1.0 / 12.0;
            let cxy = m[4] / af - mx * my;
            let mean = (cxx + cyy) / 2.0;
            let half = (((cxx - cyy) / 2.0).powi(2) + cxy * cxy).sqrt();
            n.major_axis = (4.0 * (mean + half).max(0.0).sqrt()) as f32;
            n.minor_axis = (4.0 * (mean - half).max(0.0).sqrt()) as f32;
            let mut deg = (0.5 * (2.0 * cxy).atan2(cxx - cyy)).to_degrees() as f32;
            if deg <= -90.0 {
                deg += 180.0;
            }
            n.orientation_deg = deg;
        }
    }
}

/// The 4-neighbours of pixel `p` inside a `w`x`h` frame.
#[inline]
pub fn neighbours4(p: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (p % w, p / w);
    [
        (x > 0).then(|| p - 1),
        (x + 1 < w).then(|| p + 1),
        (y > 0).then(|| p - w),
        (y + 1 < h).then(|| p + w),
    ]
    .into_iter()
    .flatten()
}

/// 4-connected components of a binary mask, labelled 1..=n in raster order of first pixel.
pub fn connected_components(fg: &[bool], w: usize, h: usize) -> Vec<u32> {
    let mut labels = vec![0u32; w * h];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !fg[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            for j in neighbours4(i, w, h) {
                if fg[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            }
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(mask: &mut [u8], w: usize, cx: f32, cy: f32, r: f32) {
        for (i, m) in mask.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            if (x - cx).powi(2) + (y - cy).powi(2) <= r * r {
                *m = 1;
            }
        }
    }

    #[test]
    fn components_split_by_gap() {
        let fg = [true, true, false, true, false, false, true, false, true];
        assert_eq!(
            connected_components(&fg, 3, 3),
            vec![1, 1, 0, 1, 0, 0, 1, 0, 2]
        );
    }

    #[test]
    fn distance_transform_is_euclidean() {
        let (w, h) = (21, 21);
        let mut mask = vec![1u8; w * h];
        mask[10 * w + 10] = 0;
        let mut inst = Instances::new();
        inst.prepare(w, h);
        inst.edt(&mask);
        assert_eq!(inst.dist[10 * w + 13], 3.0);
        assert!((inst.dist[13 * w + 14] - 5.0).abs() < 1e-6);
        assert!((inst.dist[11 * w + 11] - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn touching_disks_split_and_single_ellipse_does_not() {
        let (w, h) = (80, 40);
        let mut mask = vec![0u8; w * h];
        disk(&mut mask, w, 25.0, 20.0, 11.0);
        disk(&mut mask, w, 45.0, 20.0, 11.0);
        let intensity = vec![1.0; w * h];
        let mut inst = Instances::new();
        let n = inst.run(
            &mask,
            Guide::Mask,
            &intensity,
            w,
            h,
            &InstanceConfig::default(),
        );
        assert_eq!(n, 2, "two overlapping disks are two nuclei");
        let l = inst.labels();
        assert_ne!(l[20 * w + 20], l[20 * w + 50]);
        let mut single = vec![0u8; w * h];
        for (i, m) in single.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            if ((x - 40.0) / 25.0).powi(2) + ((y - 20.0) / 10.0).powi(2) <= 1.0 {
                *m = 1;
            }
        }
        assert_eq!(
            inst.run(
                &single,
                Guide::Mask,
                &intensity,
                w,
                h,
                &InstanceConfig::default()
            ),
            1
        );
    }

    /// Regression: the deeper basin took every pixel it shared with a shallower one, so it crept
    /// into it level by level and cut it with straight lines (seen on real nuclei as
    /// rectangular pieces). The cut between two touching disks must follow their contact.
    #[test]
    fn touching_nuclei_of_unequal_size_are_cut_along_their_contact() {
        let (w, h) = (56, 56);
        let a = (20.0, 20.0, 11.0);
        // The old rule gave 72 and 114 pixels of these pairs to the wrong nucleus.
        for b in [(32.0, 32.0, 9.0), (30.0, 34.0, 10.0)] {
            let mut mask = vec![0u8; w * h];
            disk(&mut mask, w, a.0, a.1, a.2);
            disk(&mut mask, w, b.0, b.1, b.2);
            let mut inst = Instances::new();
            let cfg = InstanceConfig::default();
            assert_eq!(
                inst.run(&mask, Guide::Mask, &vec![1.0; w * h], w, h, &cfg),
                2
            );
            let l = inst.labels();
            let (la, lb) = (l[20 * w + 20], l[b.1 as usize * w + b.0 as usize]);
            assert_ne!(la, lb);
            // Each pixel belongs to the disk whose rim is farther away (the distance
            // transform's own partition); pixels near that partition's line may go either way.
            let mut wrong = 0;
            for (i, &m) in mask.iter().enumerate() {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                let depth =
                    |d: (f32, f32, f32)| d.2 - ((x - d.0).powi(2) + (y - d.1).powi(2)).sqrt();
                let (da, db) = (depth(a), depth(b));
                if m != 0 && (da - db).abs() > 1.5 && l[i] != if da > db { la } else { lb } {
                    wrong += 1;
                }
            }
            assert!(wrong <= 8, "{wrong} pixels given to the wrong nucleus");
        }
    }

    #[test]
    fn growing_adds_a_rim_without_merging_neighbours() {
        // Two disks 1 px apart (one background column between them) and a lone one.
        let (w, h) = (90, 40);
        let mut mask = vec![0u8; w * h];
        disk(&mut mask, w, 12.0, 20.0, 8.0);
        disk(&mut mask, w, 30.0, 20.0, 8.0);
        disk(&mut mask, w, 65.0, 20.0, 8.0);
        assert!((0..h).all(|y| mask[y * w + 21] == 0) && mask[20 * w + 20] != 0);
        let intensity = vec![1.0; w * h];
        let mut inst = Instances::new();
        let plain = InstanceConfig::default();
        assert_eq!(inst.run(&mask, Guide::Mask, &intensity, w, h, &plain), 3);
        let before: Vec<u32> = inst.nuclei().iter().map(|n| n.area).collect();
        let grown = InstanceConfig { grow: 1, ..plain };
        assert_eq!(inst.run(&mask, Guide::Mask, &intensity, w, h, &grown), 3);
        let after: Vec<u32> = inst.nuclei().iter().map(|n| n.area).collect();
        let l = inst.labels();
        // The lone disk gains its whole 4-connected rim: about 2 pi r more pixels.
        let lone = (after[2] - before[2]) as f32;
        assert!((40.0..70.0).contains(&lone), "{before:?} -> {after:?}");
        // The pair gains less (the pixels between them are contested) and stays two nuclei.
        assert!(after[0] > before[0] && after[1] > before[1]);
        assert_ne!(l[20 * w + 12], l[20 * w + 30]);
        assert_eq!(
            l[20 * w + 21],
            0,
            "the pixel between the two stays background"
        );
        // Every grown pixel was background next to the mask; the mask itself is unchanged.
        for (i, (&m, &lab)) in mask.iter().zip(l).enumerate() {
            if m != 0 {
                assert_ne!(lab, 0, "pixel {i} of the mask lost its label");
            }
        }
        // Growing twice reaches further; growing never relabels a mask pixel.
        let twice = InstanceConfig { grow: 2, ..plain };
        inst.run(&mask, Guide::Mask, &intensity, w, h, &twice);
        assert!(inst.nuclei()[2].area > after[2]);
    }

    #[test]
    fn core_channel_splits_what_the_mask_alone_cannot() {
        // Two heavily overlapping disks: the union is nearly convex, so the mask's own distance
        // transform has one peak and they merge.
        let (w, h) = (80, 40);
        let mut mask = vec![0u8; w * h];
        disk(&mut mask, w, 35.0, 20.0, 11.0);
        disk(&mut mask, w, 45.0, 20.0, 11.0);
        let intensity = vec![1.0; w * h];
        let mut inst = Instances::new();
        let cfg = InstanceConfig::default();
        assert_eq!(inst.run(&mask, Guide::Mask, &intensity, w, h, &cfg), 1);
        // The core channel a model gives them: the inner half of each disk's own part.
        let mut labels = vec![0u32; w * h];
        for (i, l) in labels.iter_mut().enumerate() {
            if mask[i] != 0 {
                *l = if i % w < 40 { 1 } else { 2 };
            }
        }
        let core = crate::post::targets::core_target(&labels, w, h);
        assert_eq!(
            inst.run(&mask, Guide::Core(&core), &intensity, w, h, &cfg),
            2
        );
        let l = inst.labels();
        assert_ne!(l[20 * w + 30], l[20 * w + 48]);
        // A flat channel changes nothing.
        assert_eq!(
            inst.run(
                &mask,
                Guide::Core(&vec![1.0; w * h]),
                &intensity,
                w,
                h,
                &cfg
            ),
            1
        );
    }

    #[test]
    fn measurements_and_small_objects() {
        let (w, h) = (30, 20);
        let mut mask = vec![0u8; w * h];
        for y in 2..6 {
            for x in 0..5 {
                mask[y * w + x] = 1;
            }
        }
        mask[15 * w + 20] = 1; // one-pixel speck, below min_area
        let intensity: Vec<f32> = (0..w * h).map(|i| (i % w) as f32).collect();
        let mut inst = Instances::new();
        assert_eq!(
            inst.run(
                &mask,
                Guide::Mask,
                &intensity,
                w,
                h,
                &InstanceConfig::default()
            ),
            1
        );
        let n = inst.nuclei()[0];
        assert_eq!(n.area, 20);
        assert_eq!(n.bbox, [0, 2, 4, 5]);
        assert!((n.cx - 2.0).abs() < 1e-6 && (n.cy - 3.5).abs() < 1e-6);
        assert!((n.mean_intensity - 2.0).abs() < 1e-6);
        assert!(n.touches_border);
        assert_eq!(inst.labels()[15 * w + 20], 0);
        // The only nucleus is cut by the border: counted, but not whole.
        let sm = inst.summary();
        assert_eq!((sm.count, sm.whole, sm.mean_area), (1, 0, 0.0));
        // A 5x4 block: wider than tall, axis along x; pixels count as unit squares.
        assert!((n.major_axis - 4.0 * (25.0f32 / 12.0).sqrt()).abs() < 1e-4);
        assert!((n.minor_axis - 4.0 * (16.0f32 / 12.0).sqrt()).abs() < 1e-4);
        assert_eq!(n.orientation_deg, 0.0);
    }

    #[test]
    fn shape_of_a_rotated_ellipse() {
        let (w, h) = (64, 64);
        let mut mask = vec![0u8; w * h];
        let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
        for (i, m) in mask.iter_mut().enumerate() {
            let (dx, dy) = ((i % w) as f32 - 31.5, (i / w) as f32 - 30.0);
            let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
            if (u / 12.0).powi(2) + (v / 6.0).powi(2) <= 1.0 {
                *m = 1;
            }
        }
        let mut inst = Instances::new();
        let intensity = vec![1.0; w * h];
        assert_eq!(
            inst.run(
                &mask,
                Guide::Mask,
                &intensity,
                w,
                h,
                &InstanceConfig::default()
            ),
            1
        );
        let n = inst.nuclei()[0];
        assert!((n.major_axis - 24.0).abs() < 0.5, "{}", n.major_axis);
        assert!((n.minor_axis - 12.0).abs() < 0.5, "{}", n.minor_axis);
        // y points down, so +30 degrees turns the axis from +x towards +y.
        assert!(
            (n.orientation_deg - 30.0).abs() < 1.5,
            "{}",
            n.orientation_deg
        );
        assert!((n.eccentricity() - 0.866).abs() < 0.02);
        assert!(!n.touches_border);
        let sm = inst.summary();
        assert_eq!((sm.count, sm.whole), (1, 1));
        assert_eq!((sm.mean_area, sm.mean_intensity), (n.area as f32, 1.0));
        // Moments do not depend on where in the frame the nucleus sits.
        let mut shifted = vec![0u8; w * h];
        for y in 0..h - 2 {
            shifted[(y + 2) * w + 1..(y + 3) * w].copy_from_slice(&mask[y * w..(y + 1) * w - 1]);
        }
        inst.run(
            &shifted,
            Guide::Mask,
            &intensity,
            w,
            h,
            &InstanceConfig::default(),
        );
        let m = inst.nuclei()[0];
        assert!((m.major_axis - n.major_axis).abs() < 1e-4);
        assert!((m.orientation_deg - n.orientation_deg).abs() < 1e-3);
    }
}
