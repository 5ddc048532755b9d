//! The ceiling of each instance step on real annotations: the true foreground mask split by the
//! watershed guided by the true core target, and by star-convex polygons built from the exact ray
//! targets (scored by the true normalized distance). What is lost here is the representation's
//! and the decoding's own loss, before any network error.
//!
//! `cargo run --release --example star_bound -- TRUTH_DIR [IDS.txt] [RAYS]`: every label image in
//! `TRUTH_DIR` (or those whose stems `IDS.txt` lists, one per line); 32 rays by default.

use anyhow::{Context, Result};
use std::path::Path;
use unet_edge::io::imageio::{find_truth, list_images};
use unet_edge::post::instances::{Guide, InstanceConfig, Instances};
use unet_edge::post::metrics::{ImageMean, Scores};
use unet_edge::post::star::{ray_targets, StarMaps};
use unet_edge::post::targets::{core_target, normalized_distance};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(
        args.first()
            .context("usage: star_bound TRUTH_DIR [IDS.txt] [RAYS]")?,
    );
    let stems: Vec<String> = match args.get(1) {
        Some(list) => std::fs::read_to_string(list)?
            .lines()
            .map(|l| l.trim().trim_end_matches(".png").to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => list_images(dir)?
            .iter()
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect(),
    };
    let rays: usize = args.get(2).map_or(Ok(32), |r| r.parse())?;
    let (mut watershed, mut star) = (Vec::new(), Vec::new());
    let mut inst = Instances::new();
    let cfg = InstanceConfig::default();
    for stem in &stems {
        let (w, h, truth) =
            find_truth(dir, stem)?.with_context(|| format!("no label image for {stem}"))?;
        let mask: Vec<u8> = truth.iter().map(|&l| u8::from(l > 0)).collect();
        let intensity = vec![1.0; w * h];
        inst.run(
            &mask,
            Guide::Core(&core_target(&truth, w, h)),
            &intensity,
            w,
            h,
            &cfg,
        );
        watershed.push(Scores::compare(inst.labels(), &truth));
        let score = normalized_distance(&truth, w, h);
        let (mut d, mut known) = (vec![0.0; rays * w * h], vec![0.0; rays * w * h]);
        ray_targets(&truth, w, h, rays, &mut d, &mut known);
        let maps = StarMaps {
            core: &score,
            rays: &d,
            n_rays: rays,
        };
        inst.run(&mask, Guide::Star(maps), &intensity, w, h, &cfg);
        star.push(Scores::compare(inst.labels(), &truth));
    }
    for (name, s) in [
        ("watershed, true core", &watershed),
        ("star polygons, true rays", &star),
    ] {
        let m = ImageMean::of(s.iter());
        println!(
            "{name:<26} {} images: F1@0.5 {:.3}  DSB2018 {:.3}  pixel Dice {:.3}",
            m.images, m.f1_at_05, m.dsb2018_score, m.pixel_dice
        );
    }
    Ok(())
}
