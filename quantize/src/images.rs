//! Image sets for calibration and evaluation: a folder of images (with optional truth), or frames
//! of the runtime's synthetic nuclei generator from a seed range.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use unet_edge::engine::model::Model;
use unet_edge::engine::tiling::TileGrid;
use unet_edge::io::imageio::{find_truth, list_images, load_gray};
use unet_edge::rng::Rng;
use unet_edge::synth::{self, SynthConfig};

/// Side of the synthetic frames.
pub const SYNTH_SIZE: usize = 256;

/// Where images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSet {
    /// `count` synthetic frames; frame i from seed `seed + i`.
    Synth {
        /// Frames.
        count: usize,
        /// First seed.
        seed: u64,
    },
    /// PNG/TIFF/JPEG files of a folder; truth, when present, in `DIR/truth` as `unet-edge eval`
    /// reads it (`STEM.png`/`.tif` label images or `STEM/masks/*.png`).
    Dir(PathBuf),
}

impl fmt::Display for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSet::Synth { count, seed } => write!(f, "synth:{count}@{seed}"),
            ImageSet::Dir(p) => write!(f, "{}", p.display()),
        }
    }
}

impl ImageSet {
    /// Parses `synth[:N]` (seeds from `default_seed`) or a folder path.
    pub fn parse(s: &str, default_count: usize, default_seed: u64) -> Result<ImageSet> {
        if s == "synth" {
            return Ok(ImageSet::Synth {
                count: default_count,
                seed: default_seed,
            });
        }
        if let Some(rest) = s.strip_prefix("synth:") {
            let (n, seed) = match rest.split_once('@') {
                Some((n, seed)) => (n, Some(seed)),
                None => (rest, None),
            };
            let count: usize = n.parse().ok().filter(|&c| c > 0).with_context(|| {
                format!("{s:?}: expected synth:N with N ≥ 1 frames (optionally synth:N@SEED)")
            })?;
            let seed = match seed {
                Some(x) => x
                    .parse()
                    .with_context(|| format!("{s:?}: the seed after @ must be an integer"))?,
                None => default_seed,
            };
            return Ok(ImageSet::Synth { count, seed });
        }
        let p = PathBuf::from(s);
        if !p.is_dir() {
            bail!("{s:?} is neither synth[:N] nor a folder of images");
        }
        Ok(ImageSet::Dir(p))
    }

    /// Loads the images (raw intensities), with truth foreground masks where known.
    pub fn load(&self) -> Result<Vec<Image>> {
        match self {
            ImageSet::Synth { count, seed } => Ok((0..*count)
                .map(|i| {
                    let s = synth::generate(
                        &mut Rng::new(seed + i as u64),
                        SYNTH_SIZE,
                        SYNTH_SIZE,
                        &SynthConfig::default(),
                    );
                    let truth = Some(s.mask());
                    Image {
                        name: format!("synth-{}", seed + i as u64),
                        width: s.width,
                        height: s.height,
                        raw: s.image,
                        truth,
                    }
                })
                .collect()),
            ImageSet::Dir(dir) => {
                let files = list_images(dir)?;
                if files.is_empty() {
                    bail!(
                        "{}: holds no PNG, TIFF or JPEG image; calibration and evaluation need at least one",
                        dir.display()
                    );
                }
                files.iter().map(|f| load_with_truth(dir, f)).collect()
            }
        }
    }
}

/// One image with its optional truth.
#[derive(Clone, Debug)]
pub struct Image {
    /// File stem or synthetic seed.
    pub name: String,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Raw intensities.
    pub raw: Vec<f32>,
    /// Foreground truth (1 = nucleus), when known.
    pub truth: Option<Vec<u8>>,
}

fn load_with_truth(dir: &Path, file: &Path) -> Result<Image> {
    let img = load_gray(file)?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let truth = match find_truth(&dir.join("truth"), &stem)? {
        Some((w, h, labels)) => {
            if (w, h) != (img.width, img.height) {
                bail!(
                    "{}: truth of {stem} is {w}x{h} but the image {} is {}x{}",
                    dir.join("truth").display(),
                    file.display(),
                    img.width,
                    img.height
                );
            }
            Some(labels.iter().map(|&l| u8::from(l > 0)).collect())
        }
        None => None,
    };
    Ok(Image {
        name: stem,
        width: img.width,
        height: img.height,
        raw: img.data,
        truth,
    })
}

/// The tiles the runtime would feed the model for these images (normalized, mirrored borders).
pub fn runtime_tiles(
    model: &Model,
    images: &[Image],
    tile: usize,
    margin: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut scratch = Vec::new();
    let mut tiles = Vec::new();
    for im in images {
        let mut frame = im.raw.clone();
        model
            .meta
            .normalization
            .apply_in_place(&mut frame, &mut scratch);
        let grid = TileGrid::new(im.width, im.height, tile, margin)
            .with_context(|| format!("image {}", im.name))?;
        for k in 0..grid.len() {
            let mut t = vec![0.0; tile * tile];
            grid.gather(&frame, k, &mut t);
            tiles.push(t);
        }
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_parse_with_defaults_and_name_bad_input() {
        assert_eq!(
            ImageSet::parse("synth", 8, 5).unwrap(),
            ImageSet::Synth { count: 8, seed: 5 }
        );
        assert_eq!(
            ImageSet::parse("synth:3@77", 8, 5).unwrap(),
            ImageSet::Synth { count: 3, seed: 77 }
        );
        let e = ImageSet::parse("synth:0", 8, 5).unwrap_err().to_string();
        assert!(e.contains("N ≥ 1"), "{e}");
        let e = ImageSet::parse("/no/such/dir", 8, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither synth"), "{e}");
    }

    #[test]
    fn an_empty_folder_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let e = ImageSet::Dir(d.path().to_path_buf())
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no PNG"), "{e}");
    }

    #[test]
    fn folder_truth_is_found_by_stem_and_checked_for_size() {
        use unet_edge::io::imageio::{save_gray8, save_mask};
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("truth")).unwrap();
        save_gray8(&d.path().join("a.png"), 4, 3, vec![10; 12]).unwrap();
        save_gray8(&d.path().join("b.png"), 4, 3, vec![20; 12]).unwrap();
        let mut labels = vec![0u8; 12];
        labels[5] = 1;
        save_mask(&d.path().join("truth/a.png"), 4, 3, &labels).unwrap();
        let set = ImageSet::Dir(d.path().to_path_buf());
        let images = set.load().unwrap();
        assert_eq!(images[0].truth.as_deref(), Some(&labels[..]));
        assert_eq!(images[1].truth, None, "b has no truth");
        save_mask(&d.path().join("truth/b.png"), 5, 3, &[0; 15]).unwrap();
        let e = set.load().unwrap_err().to_string();
        assert!(e.contains("truth of b is 5x3"), "{e}");
    }

    #[test]
    fn synthetic_frames_are_reproducible_and_carry_truth() {
        let set = ImageSet::Synth { count: 2, seed: 11 };
        let a = set.load().unwrap();
        let b = set.load().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].raw, b[1].raw);
        assert!(a[0].truth.as_ref().unwrap().contains(&1));
        assert_ne!(a[0].raw, a[1].raw);
    }
}
