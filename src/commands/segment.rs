//! `unet-edge segment`: image files in, masks, probabilities and overlays out.

use crate::RunArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use unet_edge::contract::{grow_parser, parse_threshold, ModelMeta};
use unet_edge::engine::segmenter::Segmenter;
use unet_edge::io::imageio;
use unet_edge::io::record::{nuclei_csv, FrameRecord, Origin};
use unet_edge::post::instances::{InstanceConfig, Instances};

/// Options of `segment`.
#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// Image files or directories of images (PNG, TIFF, JPEG).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Output directory (created if missing); for `X.png` writes `X.mask.png`, `X.prob.png`,
    /// `X.overlay.png`, `X.labels.png` (16-bit nucleus ids), `X.nuclei.csv` and, for a model with
    /// a core channel (the default), `X.core.png` (its probability, 0-255).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Foreground threshold on the probability, strictly between 0 and 1; defaults to the
    /// model's.
    #[arg(long, value_name = "T", value_parser = parse_threshold)]
    threshold: Option<f32>,
    /// Also segment the images in subfolders of an input folder; results keep the subfolder
    /// (`IN/a/x.png` → `OUT/a/x.mask.png`). Without it subfolders are skipped with a warning.
    #[arg(long, short = 'r')]
    recursive: bool,
    #[command(flatten)]
    nuclei: NucleiArgs,
    #[command(flatten)]
    run: RunArgs,
}

/// How touching nuclei are split and small objects dropped.
#[derive(Args, Debug, Clone)]
pub struct NucleiArgs {
    /// Objects smaller than this many pixels are dropped.
    #[arg(long, value_name = "PX", default_value_t = InstanceConfig::default().min_area)]
    pub min_area: usize,
    /// Split touching nuclei only where each is at least this fraction of its own radius thicker
    /// than the neck between them (higher = fewer splits).
    #[arg(long, value_name = "F", default_value_t = InstanceConfig::default().h_rel)]
    pub split: f32,
    /// ... and at least this many pixels thicker (the floor that keeps small nuclei, whose radius
    /// is a few pixels, from splitting on noise).
    #[arg(long, value_name = "PX", default_value_t = InstanceConfig::default().h_abs)]
    pub split_px: f32,
    /// Grow each nucleus by this many pixels into the background after the split, never into
    /// a neighbour (0..=8). Defaults to the model's boundary correction (metadata
    /// `unet_edge.grow_px`, chosen on validation images; the shipped model's is in its card),
    /// or 0.
    #[arg(long, value_name = "PX", value_parser = grow_parser())]
    pub grow: Option<usize>,
}

impl NucleiArgs {
    /// The instance-separation settings for `model` (whose metadata gives the default growth).
    pub fn config(&self, model: &ModelMeta) -> anyhow::Result<InstanceConfig> {
        if !(0.0..=1.0).contains(&self.split) {
            bail!("--split {} is outside 0..1", self.split);
        }
        if !(0.0..=100.0).contains(&self.split_px) {
            bail!("--split-px {} is outside 0..100 px", self.split_px);
        }
        // The flag's parser and the metadata reader both hold it to 0..=MAX_GROW.
        let grow = self.grow.unwrap_or(model.grow);
        Ok(InstanceConfig {
            min_area: self.min_area,
            h_rel: self.split,
            h_abs: self.split_px,
            grow,
        })
    }
}

/// One image to segment and the folder under `--out` its results go to.
struct Job {
    path: PathBuf,
    sub: PathBuf,
}

/// Expands directories (sorted; subfolders with `recursive`, else reported) into image files;
/// plain files pass as given.
fn expand(inputs: &[PathBuf], recursive: bool) -> Vec<Result<Job>> {
    let mut out = Vec::new();
    for p in inputs {
        if !p.is_dir() {
            out.push(Ok(Job {
                path: p.clone(),
                sub: PathBuf::new(),
            }));
            continue;
        }
        match imageio::walk_images(p, recursive) {
            Ok((files, skipped)) => {
                for s in &skipped {
                    log::warn!(
                        "skipped subfolder {} (give --recursive to segment it too)",
                        p.join(s).display()
                    );
                }
                if files.is_empty() {
                    out.push(Err(anyhow::anyhow!(
                        "{}: directory holds no .png, .tif, .tiff, .jpg or .jpeg files{}",
                        p.display(),
                        if skipped.is_empty() {
                            ""
                        } else {
                            " (its subfolders need --recursive)"
                        }
                    )));
                }
                out.extend(files.into_iter().map(|rel| {
                    Ok(Job {
                        path: p.join(&rel),
                        sub: rel.parent().map(Path::to_path_buf).unwrap_or_default(),
                    })
                }));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

/// Segments every input; a bad input is reported and the rest still run (exit code 1 then).
pub fn run(a: SegmentArgs) -> Result<i32> {
    let (model, cfg) = super::load(&a.run, a.threshold)?;
    let icfg = a.nuclei.config(&model.meta)?;
    let mut seg = Segmenter::new(&model, cfg)?;
    let mut inst = Instances::new();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating output directory {}", a.out.display()))?;
    for stale in imageio::remove_stale_temps(&a.out)? {
        log::warn!(
            "removed {}, left by an earlier run that was killed",
            stale.display()
        );
    }
    let mut failures = 0;
    let mut written: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    for item in expand(&a.inputs, a.recursive) {
        let result = item.and_then(|Job { path, sub }| {
            // Outputs are named by the input's stem: a second input with the same stem would
            // silently overwrite the first one's results.
            let name = sub.join(stem(&path)).display().to_string();
            if let Some(first) = written.get(&name) {
                bail!(
                    "{}: its outputs would overwrite those of {} (same name {:?}); rename one, \
                     or segment them into separate --out folders",
                    path.display(),
                    first.display(),
                    name
                );
            }
            written.insert(name, path.clone());
            let out = a.out.join(&sub);
            if !sub.as_os_str().is_empty() {
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("creating output directory {}", out.display()))?;
            }
            segment_one(&mut seg, &mut inst, &icfg, &path, &out, a.run.max_pixels)
        });
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            failures += 1;
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

fn segment_one(
    seg: &mut Segmenter,
    inst: &mut Instances,
    icfg: &InstanceConfig,
    path: &Path,
    out: &Path,
    max_pixels: usize,
) -> Result<()> {
    let img = imageio::load_gray_limited(path, max_pixels)?;
    let (w, h) = (img.width, img.height);
    let timing = seg
        .segment(&img.data, w, h)
        .with_context(|| format!("{}: segmentation failed", path.display()))?;
    let count = inst.run(seg.mask(), seg.guide(), &img.data, w, h, icfg);
    if count > u16::MAX as usize {
        // labels.png holds 16-bit ids; clamping would merge the extra nuclei into one.
        bail!(
            "{}: {count} nuclei, more than the 65,535 a 16-bit labels.png can number; \
             segment it in parts (crop it) or at a coarser scale",
            path.display()
        );
    }
    let summary = inst.summary();
    let name = stem(path);
    let to_u8 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    };
    let prob = to_u8(seg.prob());
    let mask_path = out.join(format!("{name}.mask.png"));
    let labels: Vec<u16> = inst.labels().iter().map(|&l| l as u16).collect();
    // All the files or none: a disk that fills midway leaves no image with part of its results
    // (which `eval` would score). The labels, what `eval` reads first, go into place last.
    let mut files = imageio::OutputSet::default();
    files.stage(
        &out.join(format!("{name}.prob.png")),
        &imageio::png_gray8(w, h, prob)?,
    )?;
    if let Some(core) = seg.core() {
        // Where the network sees nucleus interiors: the seeds of the split, so merged nuclei
        // show here whether the network joined them or the flood did.
        files.stage(
            &out.join(format!("{name}.core.png")),
            &imageio::png_gray8(w, h, to_u8(core))?,
        )?;
    }
    let mut csv = String::new();
    nuclei_csv(&mut csv, inst.nuclei());
    files.stage(&out.join(format!("{name}.nuclei.csv")), csv.as_bytes())?;
    files.stage(
        &out.join(format!("{name}.overlay.png")),
        &imageio::png_rgb8(imageio::overlay(seg.normalized(), seg.mask(), w, h))?,
    )?;
    files.stage(&mask_path, &imageio::png_mask(w, h, seg.mask())?)?;
    files.stage(
        &out.join(format!("{name}.labels.png")),
        &imageio::png_gray16(w, h, labels)?,
    )?;
    files.commit()?;
    let (input, mask) = (path.display().to_string(), mask_path.display().to_string());
    let mut line = String::with_capacity(512);
    FrameRecord {
        origin: Origin::File {
            input: &input,
            mask: &mask,
        },
        width: w,
        height: h,
        timing,
        summary,
        foreground_fraction: seg.foreground_fraction(),
    }
    .write_json(&mut line);
    print!("{line}");
    Ok(())
}
