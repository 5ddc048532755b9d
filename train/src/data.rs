//! Training data: one interface over the synthetic generator, DSB2018 folders and image/mask pairs,
//! plus crops, resizes and augmentation (flips, 90° turns, gamma, noise, elastic deformation).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use unet_edge::engine::normalize::Normalization;
use unet_edge::engine::tiling::reflect;
use unet_edge::io::imageio::{list_images, load_gray, load_instance_masks};
use unet_edge::post::distance::Edt;
use unet_edge::post::instances::{connected_components, neighbours4};
use unet_edge::rng::Rng;
use unet_edge::synth::{self, relabel_dense, Sample, SynthConfig};

/// Where training images come from.
pub enum Dataset {
    /// Endless synthetic nuclei; sample `i` is generated from seed `seed + i`.
    Synthetic {
        /// Generator ranges.
        cfg: SynthConfig,
        /// Seed offset; validation uses a disjoint range.
        seed: u64,
        /// Side of each generated image before cropping.
        size: usize,
    },
    /// Real images mixed with the generator: each draw is synthetic with probability `ratio`.
    Mixed {
        /// The real images.
        real: Vec<Sample>,
        /// Running totals of the real images' draw weights (see [`DrawBy`]); empty draws
        /// every image alike.
        cumulative: Vec<f64>,
        /// The generator's settings, as in [`Dataset::Synthetic`].
        cfg: SynthConfig,
        /// Seed offset of the synthetic draws.
        seed: u64,
        /// Side of each generated image.
        size: usize,
        /// Probability that a draw is synthetic.
        ratio: f32,
    },
}

/// How likely each real training image is to be drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DrawBy {
    /// Every image alike, whatever its size (runs before this option).
    #[default]
    Image,
    /// In proportion to its pixels, so every pixel of the set is as likely to be in a crop: a
    /// 520x696 field is 5.5 times as likely as a 256x256 one.
    Area,
}

impl DrawBy {
    /// Running totals of the images' weights, as [`Dataset::Mixed`] keeps them.
    pub fn cumulative(self, real: &[Sample]) -> Vec<f64> {
        match self {
            DrawBy::Image => Vec::new(),
            DrawBy::Area => real
                .iter()
                .scan(0.0, |t, s| {
                    *t += (s.width * s.height) as f64;
                    Some(*t)
                })
                .collect(),
        }
    }
}

/// An image from disk with its labels and name (the file stem), kept whole for validation.
#[derive(Clone)]
pub struct Named {
    /// File stem (DSB2018: the image id).
    pub name: String,
    /// Image and instance labels.
    pub sample: Sample,
}

impl Dataset {
    /// Draws training image `i` with `rng`: a random disk image, or (mixed) a synthetic one with
    /// probability `ratio`.
    pub fn draw(&self, i: u64, rng: &mut Rng) -> Sample {
        match self {
            Dataset::Mixed {
                real,
                cumulative,
                cfg,
                seed,
                size,
                ratio,
            } => {
                if real.is_empty() || rng.uniform() < *ratio {
                    synth::generate(&mut Rng::new(seed.wrapping_add(i)), *size, *size, cfg)
                } else if let Some(&total) = cumulative.last() {
                    let u = rng.uniform() as f64 * total;
                    let k = cumulative.partition_point(|&c| c <= u);
                    real[k.min(real.len() - 1)].clone()
                } else {
                    real[rng.below(real.len())].clone()
                }
            }
            Dataset::Synthetic { .. } => self.get(i),
        }
    }

    /// Image `i` (modulo the dataset size).
    pub fn get(&self, i: u64) -> Sample {
        match self {
            Dataset::Synthetic { cfg, seed, size } => {
                synth::generate(&mut Rng::new(seed.wrapping_add(i)), *size, *size, cfg)
            }
            Dataset::Mixed { real, .. } => real[(i % real.len() as u64) as usize].clone(),
        }
    }
}

/// The labelled images of a DSB2018 stage-1 folder (`ID/images/ID.png`, `ID/masks/*.png`) or a
/// pairs folder (`images/X.png` + `masks/X.png` or `labels/X.png`, binary or label image), whichever
/// `root` is, with their names, sorted by name.
pub fn load_named(root: &Path) -> Result<Vec<Named>> {
    if !root.is_dir() {
        bail!(
            "{}: not a directory (expected a DSB2018 folder or images/ + masks/ pairs)",
            root.display()
        );
    }
    let samples = match pairs_dir(root) {
        Some(masks) => load_pairs(root, &masks)?,
        None => load_dsb2018(root)?,
    };
    if samples.is_empty() {
        bail!(
                "{}: no training images found; expected ID/images/ID.png with ID/masks/*.png, or images/X.png with masks/X.png or labels/X.png",
                root.display()
            );
    }
    Ok(samples)
}

/// The mask folder of a pairs layout: `masks/` or `labels/` beside `images/`.
fn pairs_dir(root: &Path) -> Option<PathBuf> {
    if !root.join("images").is_dir() {
        return None;
    }
    ["masks", "labels"]
        .into_iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
}

/// Experiment groups of a DSB2018 subset's `index.csv` (columns `id12` and `group`), by image
/// name; empty when the folder has no index.
pub fn read_groups(root: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let path = root.join("index.csv");
    let mut out = std::collections::BTreeMap::new();
    if !path.is_file() {
        return Ok(out);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| {
                format!(
                    "{}: no column {name:?} (header: {})",
                    path.display(),
                    header.join(",")
                )
            })
    };
    let (id, group) = (col("id12")?, col("group")?);
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        match (f.get(id), f.get(group)) {
            (Some(i), Some(g)) => {
                out.insert(i.trim().to_string(), g.trim().to_string());
            }
            _ if line.trim().is_empty() => {}
            _ => bail!("{}: line {} has too few columns", path.display(), n + 2),
        }
    }
    Ok(out)
}

fn load_dsb2018(root: &Path) -> Result<Vec<Named>> {
    let mut ids: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("{}: cannot list", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("images").is_dir())
        .collect();
    ids.sort();
    let mut out = Vec::new();
    for dir in ids {
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let images = list_images(&dir.join("images"))?;
        let img_path = images
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == id))
            .or(images.first())
            .with_context(|| format!("{}: no image in images/", dir.display()))?;
        let img = load_gray(img_path)?;
        let masks_dir = dir.join("masks");
        if !masks_dir.is_dir() || list_images(&masks_dir)?.is_empty() {
            bail!(
                "{}: missing masks (expected {}/*.png, one per nucleus)",
                img_path.display(),
                masks_dir.display()
            );
        }
        let (mw, mh, ids) = load_instance_masks(&masks_dir)?;
        if (mw, mh) != (img.width, img.height) {
            bail!(
                "{}: masks are {mw}x{mh} but the image {} is {}x{}",
                masks_dir.display(),
                img_path.display(),
                img.width,
                img.height
            );
        }
        let labels: Vec<u16> = ids
            .into_iter()
            .map(|l| l.min(u16::MAX as u32) as u16)
            .collect();
        out.push(Named {
            name: id,
            sample: Sample {
                width: img.width,
                height: img.height,
                image: img.data,
                labels,
            },
        });
    }
    Ok(out)
}

fn load_pairs(root: &Path, masks: &Path) -> Result<Vec<Named>> {
    let mut out = Vec::new();
    let mask_files = list_images(masks)?;
    for img_path in list_images(&root.join("images"))? {
        let stem = img_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mask_path = mask_files
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == stem))
            .with_context(|| {
                format!(
                    "{}: missing mask {}/{stem}.png",
                    img_path.display(),
                    masks.display()
                )
            })?;
        let img = load_gray(&img_path)?;
        let m = load_gray(mask_path)?;
        if (m.width, m.height) != (img.width, img.height) {
            bail!(
                "{}: mask is {}x{}, image is {}x{}",
                mask_path.display(),
                m.width,
                m.height,
                img.width,
                img.height
            );
        }
        let distinct: std::collections::BTreeSet<u32> = m.data.iter().map(|v| *v as u32).collect();
        let labels = if distinct.len() <= 2 {
            let fg: Vec<bool> = m.data.iter().map(|v| *v > 0.0).collect();
            connected_components(&fg, m.width, m.height)
                .into_iter()
                .map(|l| l.min(u16::MAX as u32) as u16)
                .collect()
        } else {
            let mut l: Vec<u16> = m.data.iter().map(|v| v.min(65535.0) as u16).collect();
            relabel_dense(&mut l);
            l
        };
        out.push(Named {
            name: stem,
            sample: Sample {
                width: img.width,
                height: img.height,
                image: img.data,
                labels,
            },
        });
    }
    Ok(out)
}

/// Augmentation and crop settings.
#[derive(Clone, Debug)]
pub struct Augment {
    /// Output side.
    pub tile: usize,
    /// Random isotropic rescale range (output px per input px).
    pub scale: (f32, f32),
    /// Elastic deformation: probability and displacement sigma in px.
    pub elastic: (f32, f32),
    /// Gaussian blur (defocus): probability and largest sigma in px.
    pub blur: (f32, f32),
    /// Additive Gaussian noise after normalization: probability and largest sd.
    pub noise: (f32, f32),
    /// Normalize with the whole source image's percentiles (as the runtime does a frame) instead
    /// of the crop's.
    pub frame_norm: bool,
    /// Sample on the source's own pixel grid: no zoom, no elastic warp and whole-pixel crop
    /// positions, so images are not resampled (flips and turns are exact) and the labels' outlines
    /// stay where the annotators drew them, as the runtime sees a frame.
    pub native_grid: bool,
    /// Whether to augment at all (off for validation).
    pub enabled: bool,
}

impl Augment {
    /// No augmentation: centred crops at scale 1, as validation cuts them.
    pub fn none(tile: usize, frame_norm: bool) -> Augment {
        Augment {
            tile,
            scale: (1.0, 1.0),
            elastic: (0.0, 0.0),
            blur: (0.0, 0.0),
            noise: (0.0, 0.0),
            frame_norm,
            native_grid: false,
            enabled: false,
        }
    }
}

/// One training example: normalized input, targets, per-pixel loss weight.
pub struct Example {
    /// Normalized image, `tile`x`tile`.
    pub x: Vec<f32>,
    /// Foreground target (0/1).
    pub y: Vec<f32>,
    /// Core-channel target (see `unet_edge::post::targets::core_target`).
    pub c: Vec<f32>,
    /// Loss weight of the foreground.
    pub w: Vec<f32>,
    /// Loss weight of the core channel's BCE (see [`TargetSpec`]).
    pub cw: Vec<f32>,
    /// Instance labels of the crop before any `gap` (0 = background), for targets derived on
    /// demand such as the star rays.
    pub labels: Vec<u16>,
}

/// How a crop's targets and loss weights follow from its labels, as a run's options set them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TargetSpec {
    /// (w0, sigma) of Ronneberger's separation weight on the foreground; `None` for uniform.
    pub border: Option<(f32, f32)>,
    /// Pixels where two nuclei touch are background in the foreground target
    /// (see [`separate_touching`]).
    pub gap: bool,
    /// The core's BCE carries the foreground's border weight map as well.
    pub core_border: bool,
    /// Peak extra weight of the core's BCE on the ridge between two nuclei's cores
    /// (see [`core_ridge_weights`]); 0 = none.
    pub core_ridge: f32,
}

impl TargetSpec {
    /// The targets a run's configuration asks for.
    pub fn of(cfg: &crate::training::TrainConfig) -> TargetSpec {
        TargetSpec {
            border: (cfg.border_w0 > 0.0).then_some((cfg.border_w0, cfg.border_sigma)),
            gap: cfg.gap,
            core_border: cfg.core_border,
            core_ridge: cfg.core_ridge,
        }
    }
}

/// Cuts and augments a `tile`x`tile` example from `s`, its targets and weights made as `spec` says.
pub fn make_example(s: &Sample, aug: &Augment, rng: &mut Rng, spec: &TargetSpec) -> Example {
    let t = aug.tile;
    let (w, h) = (s.width as f32, s.height as f32);
    let scale = if aug.enabled && !aug.native_grid {
        (rng.range(aug.scale.0.ln(), aug.scale.1.ln())).exp()
    } else {
        1.0
    };
    // Source window side in input pixels; centre it randomly (images smaller than it are mirrored).
    let span = t as f32 / scale;
    let cx = if w > span {
        rng.range(span / 2.0, w - span / 2.0)
    } else {
        w / 2.0
    };
    let cy = if h > span {
        rng.range(span / 2.0, h - span / 2.0)
    } else {
        h / 2.0
    };
    // Whole-pixel centres put every sample of an even tile on a source pixel's centre.
    let (cx, cy) = if aug.native_grid {
        (cx.round(), cy.round())
    } else {
        (cx, cy)
    };
    let turns = if aug.enabled { rng.below(4) } else { 0 };
    let (flip_x, flip_y) = if aug.enabled {
        (rng.uniform() < 0.5, rng.uniform() < 0.5)
    } else {
        (false, false)
    };
    let disp = if aug.enabled && !aug.native_grid && rng.uniform() < aug.elastic.0 {
        Some(displacement(rng, t, aug.elastic.1))
    } else {
        None
    };

    let mut img = vec![0.0f32; t * t];
    let mut labels = vec![0u16; t * t];
    for v in 0..t {
        for u in 0..t {
            let (mut a, mut b) = (
                u as f32 + 0.5 - t as f32 / 2.0,
                v as f32 + 0.5 - t as f32 / 2.0,
            );
            for _ in 0..turns {
                (a, b) = (-b, a);
            }
            if flip_x {
                a = -a;
            }
            if flip_y {
                b = -b;
            }
            if let Some(d) = &disp {
                a += d.0[v * t + u];
                b += d.1[v * t + u];
            }
            let (sx, sy) = (cx + a / scale - 0.5, cy + b / scale - 0.5);
            img[v * t + u] = bilinear(&s.image, s.width, s.height, sx, sy);
            let (nx, ny) = (
                reflect(sx.round() as isize, s.width),
                reflect(sy.round() as isize, s.height),
            );
            labels[v * t + u] = s.labels[ny * s.width + nx];
        }
    }
    relabel_dense(&mut labels);
    if aug.frame_norm {
        // Gamma over the whole source image's range, then the normalization the runtime applies
        // to a whole frame: its percentiles come from the whole (gamma-mapped) image, not from
        // this crop, so a crop of few or dim nuclei looks as it will in a frame at inference.
        let gamma = if aug.enabled {
            rng.range(0.6, 1.6)
        } else {
            1.0
        };
        let max = s.image.iter().copied().fold(1e-6, f32::max);
        let curve = |v: f32| max * (v / max).max(0.0).powf(gamma);
        let mapped: Vec<f32> = s.image.iter().map(|&v| curve(v)).collect();
        let (offset, scale) = Normalization::default().affine_for(&mapped, &mut Vec::new());
        for p in &mut img {
            *p = curve(*p);
        }
        if aug.enabled && rng.uniform() < aug.blur.0 {
            synth::gaussian_blur(&mut img, t, t, rng.range(0.3, aug.blur.1.max(0.3)));
        }
        for p in &mut img {
            *p = (*p - offset) * scale;
        }
    } else {
        if aug.enabled {
            // Gamma on the crop's own range, then percentile normalization of the crop.
            let max = img.iter().copied().fold(1e-6, f32::max);
            let gamma = rng.range(0.6, 1.6);
            for p in &mut img {
                *p = max * (*p / max).max(0.0).powf(gamma);
            }
        }
        if aug.enabled && rng.uniform() < aug.blur.0 {
            synth::gaussian_blur(&mut img, t, t, rng.range(0.3, aug.blur.1.max(0.3)));
        }
        Normalization::default().apply_in_place(&mut img, &mut Vec::new());
    }
    if aug.enabled && rng.uniform() < aug.noise.0 {
        let sd = rng.range(0.0, aug.noise.1);
        for p in &mut img {
            *p += sd * rng.normal();
        }
    }
    let c = unet_edge::post::targets::core_target(&labels, t, t);
    let whole = labels.clone();
    if spec.gap {
        separate_touching(&mut labels, t, t);
    }
    let y: Vec<f32> = labels.iter().map(|&l| f32::from(l > 0)).collect();
    let wts = match spec.border {
        Some((w0, sigma)) => border_weights(&labels, t, t, w0, sigma),
        None => vec![1.0; t * t],
    };
    let mut cw = if spec.core_border {
        wts.clone()
    } else {
        vec![1.0; t * t]
    };
    if spec.core_ridge > 0.0 {
        let ridge = core_ridge_weights(&whole, &c, t, t, spec.core_ridge, RIDGE_SIGMA);
        cw.iter_mut().zip(&ridge).for_each(|(w, r)| *w += r);
    }
    Example {
        x: img,
        y,
        c,
        w: wts,
        cw,
        labels: whole,
    }
}

fn bilinear(d: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: isize, yi: isize| d[reflect(yi, h) * w + reflect(xi, w)];
    let (xi, yi) = (x0 as isize, y0 as isize);
    let top = at(xi, yi) * (1.0 - fx) + at(xi + 1, yi) * fx;
    let bot = at(xi, yi + 1) * (1.0 - fx) + at(xi + 1, yi + 1) * fx;
    top * (1.0 - fy) + bot * fy
}

/// A smooth random displacement field: a coarse 5x5 grid of Gaussian offsets, bilinearly upsampled
/// (the elastic deformation of Ronneberger 2015).
fn displacement(rng: &mut Rng, t: usize, sigma: f32) -> (Vec<f32>, Vec<f32>) {
    const G: usize = 5;
    let gx: Vec<f32> = (0..G * G).map(|_| sigma * rng.normal()).collect();
    let gy: Vec<f32> = (0..G * G).map(|_| sigma * rng.normal()).collect();
    let up = |g: &[f32]| -> Vec<f32> {
        let mut out = vec![0.0; t * t];
        for v in 0..t {
            for u in 0..t {
                let (x, y) = (
                    u as f32 / (t - 1) as f32 * (G - 1) as f32,
                    v as f32 / (t - 1) as f32 * (G - 1) as f32,
                );
                let (x0, y0) = (
                    (x.floor() as usize).min(G - 2),
                    (y.floor() as usize).min(G - 2),
                );
                let (fx, fy) = (x - x0 as f32, y - y0 as f32);
                let a = g[y0 * G + x0] * (1.0 - fx) + g[y0 * G + x0 + 1] * fx;
                let b = g[(y0 + 1) * G + x0] * (1.0 - fx) + g[(y0 + 1) * G + x0 + 1] * fx;
                out[v * t + u] = a * (1.0 - fy) + b * fy;
            }
        }
        out
    };
    (up(&gx), up(&gy))
}

/// Ronneberger's separation of touching objects: every pixel with a 4-neighbour of another
/// nucleus becomes background, a 2-px gap along each contact. Without it the border weight has no
/// background pixel to act on where nuclei touch, and the net learns to merge them.
pub fn separate_touching(labels: &mut [u16], w: usize, h: usize) {
    let touching = |i: usize| {
        let l = labels[i];
        l != 0 && neighbours4(i, w, h).any(|j| labels[j] != 0 && labels[j] != l)
    };
    let seam: Vec<usize> = (0..w * h).filter(|&i| touching(i)).collect();
    for i in seam {
        labels[i] = 0;
    }
}

/// Ronneberger's weight map: `1 + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))` on background pixels,
/// where d1, d2 are the distances to the nearest and second-nearest nucleus. Distances come from the
/// runtime's Euclidean transform of each nucleus inside a window of 3 sigma around it.
pub fn border_weights(labels: &[u16], w: usize, h: usize, w0: f32, sigma: f32) -> Vec<f32> {
    let (d1, d2) = nearest_two(labels, w, h, (3.0 * sigma).ceil() as usize + 1);
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l > 0 || !d2[i].is_finite() {
                1.0
            } else {
                let s = d1[i] + d2[i];
                1.0 + w0 * (-(s * s) / (2.0 * sigma * sigma)).exp()
            }
        })
        .collect()
}

/// Width (sigma, px) of the core ridge's weight across the line between two cores.
const RIDGE_SIGMA: f32 = 2.0;

/// How far (px) from a core its ridge weight reaches: half the gap between the cores of two
/// touching nuclei of the largest zoomed size (~86 px across, cores half their radius).
const RIDGE_REACH: usize = 24;

/// Extra weight of the core channel's BCE where merged predictions join two cores: on nucleus
/// pixels outside every core, `w0 * exp(-(d2 - d1)^2 / (2 sigma^2))`, d1 and d2 the distances to
/// the nearest and second-nearest nucleus's core (both within [`RIDGE_REACH`]). That is the line
/// between two nuclei's cores, i.e. their contact; the border map, which lives on background
/// pixels, weighs only the 2-px gap there, and plain BCE weighs the contact like any rim pixel.
pub fn core_ridge_weights(
    labels: &[u16],
    core: &[f32],
    w: usize,
    h: usize,
    w0: f32,
    sigma: f32,
) -> Vec<f32> {
    let cores: Vec<u16> = labels
        .iter()
        .zip(core)
        .map(|(&l, &c)| if c > 0.5 { l } else { 0 })
        .collect();
    let (d1, d2) = nearest_two(&cores, w, h, RIDGE_REACH);
    (0..w * h)
        .map(|i| {
            if labels[i] == 0 || cores[i] > 0 || !d2[i].is_finite() {
                0.0
            } else {
                let s = d2[i] - d1[i];
                w0 * (-(s * s) / (2.0 * sigma * sigma)).exp()
            }
        })
        .collect()
}

/// For every unlabelled pixel, the Euclidean distances to the nearest and second-nearest labelled
/// object within `reach` px of the object's bounding box (infinite beyond). Each object gets the
/// runtime's transform inside its own window, so the cost follows the objects, not the crop.
fn nearest_two(labels: &[u16], w: usize, h: usize, reach: usize) -> (Vec<f32>, Vec<f32>) {
    let n = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut d1 = vec![f32::INFINITY; w * h];
    let mut d2 = vec![f32::INFINITY; w * h];
    let mut bbox = vec![(usize::MAX, usize::MAX, 0usize, 0usize); n + 1];
    for (i, &l) in labels.iter().enumerate() {
        if l > 0 {
            let (x, y) = (i % w, i / w);
            let b = &mut bbox[l as usize];
            *b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
        }
    }
    let mut dist = Vec::new();
    let mut edt = Edt::default();
    for (l, &(bx0, by0, bx1, by1)) in bbox.iter().enumerate().skip(1) {
        if bx0 == usize::MAX {
            continue;
        }
        let (x0, y0) = (bx0.saturating_sub(reach), by0.saturating_sub(reach));
        let (x1, y1) = ((bx1 + reach + 1).min(w), (by1 + reach + 1).min(h));
        let (ww, hh) = (x1 - x0, y1 - y0);
        dist.clear();
        let far = ((ww + hh) * (ww + hh)) as f32;
        dist.resize(ww * hh, far);
        for y in 0..hh {
            for x in 0..ww {
                if labels[(y + y0) * w + x + x0] as usize == l {
                    dist[y * ww + x] = 0.0;
                }
            }
        }
        edt.euclidean_in_place(&mut dist, ww, hh);
        for y in 0..hh {
            for x in 0..ww {
                let i = (y + y0) * w + x + x0;
                let d = dist[y * ww + x];
                if labels[i] == 0 {
                    if d < d1[i] {
                        d2[i] = d1[i];
                        d1[i] = d;
                    } else if d < d2[i] {
                        d2[i] = d;
                    }
                }
            }
        }
    }
    (d1, d2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws by area follow the images' pixels (a 4x larger image four times as often); draws
    /// by image take each image alike.
    #[test]
    fn draws_by_area_follow_pixels_and_by_image_take_each_alike() {
        let blank = |w: usize, h: usize| Sample {
            width: w,
            height: h,
            image: vec![0.0; w * h],
            labels: vec![0; w * h],
        };
        let real = vec![blank(8, 8), blank(16, 16)];
        let share_of_large = |by: DrawBy| {
            let set = Dataset::Mixed {
                cumulative: by.cumulative(&real),
                real: real.clone(),
                cfg: SynthConfig::default(),
                seed: 0,
                size: 16,
                ratio: 0.0,
            };
            let mut rng = Rng::new(7);
            let n = 4000;
            let large = (0..n)
                .filter(|&i| set.draw(i, &mut rng).width == 16)
                .count();
            large as f64 / n as f64
        };
        let by_area = share_of_large(DrawBy::Area);
        assert!((by_area - 0.8).abs() < 0.03, "by area: {by_area}");
        let by_image = share_of_large(DrawBy::Image);
        assert!((by_image - 0.5).abs() < 0.03, "by image: {by_image}");
    }

    #[test]
    fn touching_nuclei_get_a_two_pixel_gap_and_lone_ones_stay_whole() {
        let (w, h) = (20, 8);
        let mut l = vec![0u16; w * h];
        for y in 2..6 {
            for x in 2..8 {
                l[y * w + x] = 1;
            }
            for x in 8..12 {
                l[y * w + x] = 2;
            }
            for x in 15..18 {
                l[y * w + x] = 3;
            }
        }
        separate_touching(&mut l, w, h);
        for y in 2..6 {
            assert_eq!(
                &l[y * w..y * w + 13],
                &[0, 0, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 0]
            );
            assert_eq!(&l[y * w + 15..y * w + 18], &[3, 3, 3]);
        }
    }

    #[test]
    fn border_weights_peak_between_touching_nuclei() {
        // Two squares two pixels apart: the gap gets a high weight, far background ~1.
        let (w, h) = (20, 10);
        let mut l = vec![0u16; w * h];
        for y in 3..7 {
            for x in 3..8 {
                l[y * w + x] = 1
            }
            for x in 10..15 {
                l[y * w + x] = 2
            }
        }
        let wt = border_weights(&l, w, h, 10.0, 3.0);
        assert!(wt[5 * w + 9] > 5.0, "{}", wt[5 * w + 9]);
        assert_eq!(wt[5 * w + 4], 1.0);
        assert!(wt[5 * w + 19] < wt[5 * w + 9]);
    }

    #[test]
    fn core_ridge_weighs_the_contact_of_touching_nuclei_not_lone_rims() {
        // Two touching squares (x 2..12 and 12..22) and a lone one far away (x 30..40).
        let (w, h) = (44, 14);
        let mut l = vec![0u16; w * h];
        for y in 2..12 {
            for x in 2..22 {
                l[y * w + x] = if x < 12 { 1 } else { 2 };
            }
            for x in 30..40 {
                l[y * w + x] = 3;
            }
        }
        let core = unet_edge::post::targets::core_target(&l, w, h);
        let r = core_ridge_weights(&l, &core, w, h, 10.0, 2.0);
        // On the contact, whose two columns lie half a pixel either side of the line between
        // the cores (d2 - d1 = 1), nearly the full weight, the same on both sides; none off the
        // nuclei or inside a core.
        assert!(r[7 * w + 11] > 8.5, "{}", r[7 * w + 11]);
        assert!((r[7 * w + 11] - r[7 * w + 12]).abs() < 1e-4);
        assert_eq!(r[7 * w + 7], 0.0, "core pixel");
        assert_eq!(r[0], 0.0, "background");
        // The outer rims of the pair: far from the line between the cores.
        assert!(r[7 * w + 2] < 0.1 && r[7 * w + 21] < 0.1);
        // The lone square's right rim: its own core is 3 px off, the next one 20.
        assert!(r[7 * w + 39] < 1e-6, "{}", r[7 * w + 39]);
        // Its left rim has core 2 within reach, but much farther than its own: next to nothing.
        assert!(r[7 * w + 30] < 0.1, "{}", r[7 * w + 30]);
    }

    #[test]
    fn example_without_augmentation_keeps_labels_aligned() {
        let s = synth::generate(&mut Rng::new(5), 128, 128, &SynthConfig::default());
        let aug = Augment::none(128, false);
        let e = make_example(&s, &aug, &mut Rng::new(0), &TargetSpec::default());
        let same =
            e.y.iter()
                .zip(&s.labels)
                .filter(|(y, l)| (**y > 0.5) == (**l > 0))
                .count();
        assert_eq!(same, 128 * 128);
        // The core target is the runtime's definition on the same labels, inside the foreground.
        assert_eq!(
            e.c,
            unet_edge::post::targets::core_target(&s.labels, 128, 128)
        );
        assert!(e.c.iter().zip(&e.y).all(|(c, y)| *c <= *y));
        let core: f32 = e.c.iter().sum();
        let fg: f32 = e.y.iter().sum();
        assert!(core > 0.1 * fg && core < 0.6 * fg, "core {core} of {fg}");

        // With the gap, exactly the touching pixels leave the foreground, and they weigh most.
        let spec = TargetSpec {
            border: Some((5.0, 3.0)),
            gap: true,
            ..TargetSpec::default()
        };
        let g = make_example(&s, &aug, &mut Rng::new(0), &spec);
        let mut gapped = s.labels.clone();
        separate_touching(&mut gapped, 128, 128);
        let cut: Vec<usize> = (0..128 * 128)
            .filter(|&i| s.labels[i] > 0 && gapped[i] == 0)
            .collect();
        assert!(cut.len() > 20, "seed 5 has touching nuclei: {}", cut.len());
        assert!(g.y.iter().zip(&gapped).all(|(y, l)| (*y > 0.5) == (*l > 0)));
        assert!(cut.iter().all(|&i| g.w[i] > 4.0));
        assert_eq!(g.c, e.c, "the core target keeps the whole nuclei");
    }

    /// A checkerboard keeps exactly two values only when every sample lands on a pixel centre:
    /// any zoom, warp or sub-pixel offset mixes neighbours into values in between.
    #[test]
    fn native_grid_crops_never_resample_the_image() {
        let (w, h) = (200, 170);
        let s = synth::Sample {
            width: w,
            height: h,
            image: (0..w * h).map(|i| ((i % w + i / w) % 2) as f32).collect(),
            labels: vec![0; w * h],
        };
        let distinct = |native_grid: bool, seed: u64| {
            let aug = Augment {
                scale: (0.6, 1.6),
                elastic: (1.0, 4.0),
                native_grid,
                enabled: true,
                ..Augment::none(64, false)
            };
            let e = make_example(&s, &aug, &mut Rng::new(seed), &TargetSpec::default());
            let mut v: Vec<u32> = e.x.iter().map(|p| p.to_bits()).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        for seed in 0..8 {
            assert_eq!(distinct(true, seed), 2, "seed {seed}");
            assert!(distinct(false, seed) > 50, "seed {seed}");
        }
    }

    #[test]
    fn pairs_with_a_labels_folder_and_groups_from_index_csv() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::create_dir_all(dir.path().join("labels")).unwrap();
        for (name, n) in [("aaa", 3u16), ("bbb", 1)] {
            unet_edge::io::imageio::save_gray8(
                &dir.path().join(format!("images/{name}.png")),
                4,
                2,
                vec![9; 8],
            )
            .unwrap();
            let labels: Vec<u16> = (0..8).map(|i| (i as u16) % (n + 1)).collect();
            unet_edge::io::imageio::save_gray16(
                &dir.path().join(format!("labels/{name}.png")),
                4,
                2,
                labels,
            )
            .unwrap();
        }
        let named = load_named(dir.path()).unwrap();
        assert_eq!(named.len(), 2);
        assert_eq!(named[0].name, "aaa");
        assert_eq!(
            named[0].sample.labels.iter().max(),
            Some(&3),
            "label image kept as labels"
        );
        assert!(read_groups(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join("index.csv"),
            "id12,x,group\naaa,1,g1\nbbb,2,g2\n",
        )
        .unwrap();
        let g = read_groups(dir.path()).unwrap();
        assert_eq!(g["aaa"], "g1");
        assert_eq!(g["bbb"], "g2");
        std::fs::write(dir.path().join("index.csv"), "id,x\naaa,1\n").unwrap();
        let e = read_groups(dir.path()).unwrap_err().to_string();
        assert!(e.contains("id12"), "{e}");
    }

    #[test]
    fn folder_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_named(dir.path()).err().unwrap().to_string();
        assert!(e.contains("no training images"), "{e}");
        let id = dir.path().join("abc");
        std::fs::create_dir_all(id.join("images")).unwrap();
        unet_edge::io::imageio::save_gray8(&id.join("images/abc.png"), 4, 4, vec![0; 16]).unwrap();
        let e = format!("{:#}", load_named(dir.path()).err().unwrap());
        assert!(e.contains("missing masks") && e.contains("abc.png"), "{e}");
        std::fs::create_dir_all(id.join("masks")).unwrap();
        unet_edge::io::imageio::save_gray8(&id.join("masks/m1.png"), 5, 4, vec![255; 20]).unwrap();
        let e = format!("{:#}", load_named(dir.path()).err().unwrap());
        assert!(e.contains("masks") && e.contains("5x4"), "{e}");
    }
}
