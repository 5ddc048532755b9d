//! `unet-edge eval`: pixel and instance metrics of predictions against ground truth.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use unet_edge::io::imageio::{find_truth, labels_of, load_gray, LABEL_EXTENSIONS};
use unet_edge::post::instances::connected_components;
use unet_edge::post::metrics::{ImageMean, Scores};

/// Options of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Predictions: `X.labels.png` (preferred) or `X.mask.png` (split into connected components),
    /// as written by `segment`.
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,
    /// Ground truth: label images `X.png`/`X.tif` (0 = background), or DSB2018 folders `X/masks/*.png`
    /// (one mask per nucleus).
    #[arg(long, value_name = "DIR")]
    truth: PathBuf,
    /// Print one JSON object (`overall`, `image_mean` and `images`, each score with its `errors`
    /// breakdown) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Predictions by stem: labels beat masks when both exist.
fn predictions(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("--pred {}: cannot list directory", dir.display()))?;
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".labels.png") {
            out.insert(stem.to_string(), p);
        } else if let Some(stem) = name.strip_suffix(".mask.png") {
            out.entry(stem.to_string()).or_insert(p);
        }
    }
    if out.is_empty() {
        bail!(
            "--pred {}: no X.labels.png or X.mask.png files",
            dir.display()
        );
    }
    Ok(out)
}

fn load_pred(p: &Path) -> Result<(usize, usize, Vec<u32>)> {
    let img = load_gray(p)?;
    let labels = if p.to_string_lossy().ends_with(".mask.png") {
        let fg: Vec<bool> = img.data.iter().map(|v| *v > 0.0).collect();
        connected_components(&fg, img.width, img.height)
    } else {
        labels_of(&img)
    };
    Ok((img.width, img.height, labels))
}

fn load_truth(dir: &Path, stem: &str) -> Result<(usize, usize, Vec<u32>)> {
    match find_truth(dir, stem)? {
        Some(t) => Ok(t),
        None => bail!(
            "no ground truth for {stem:?} in {}: expected {stem}.png, {stem}.tif or {stem}/masks/*.png",
            dir.display()
        ),
    }
}

/// The images `--truth` holds: label images `X.png`/`X.tif`/`X.tiff` and DSB2018 folders
/// `X/masks/`, by stem.
fn truth_stems(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("--truth {}: cannot list directory", dir.display()))?;
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let label_image = p.is_file()
            && p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| LABEL_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()));
        if label_image || p.join("masks").is_dir() {
            if let Some(stem) = p.file_stem() {
                out.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn row(name: &str, s: &Scores) -> String {
    format!(
        "{name:<28} {:>6.3} {:>6.3} {:>5} {:>5} {:>4} {:>4} {:>4} {:>6.3} {:>6.3}",
        s.pixel_dice,
        s.pixel_iou,
        s.n_pred,
        s.n_true,
        s.tp,
        s.fp,
        s.fn_,
        s.f1_at_05,
        s.dsb2018_score
    )
}

/// Scores every prediction that has a ground truth; a missing or mismatched one is an error that
/// does not stop the others (exit code 1).
pub fn run(a: EvalArgs) -> Result<i32> {
    if !a.truth.is_dir() {
        bail!("--truth {}: not a directory", a.truth.display());
    }
    let preds = predictions(&a.pred)?;
    let mut overall = Scores::default();
    let mut images = Vec::new();
    let mut failures = 0;
    for (stem, path) in &preds {
        let result = (|| -> Result<Scores> {
            let (pw, ph, pred) = load_pred(path)?;
            let (tw, th, truth) = load_truth(&a.truth, stem)?;
            if (pw, ph) != (tw, th) {
                bail!(
                    "{}: prediction is {pw}x{ph} but its ground truth is {tw}x{th}",
                    path.display()
                );
            }
            Ok(Scores::compare(&pred, &truth))
        })();
        match result {
            Ok(s) => {
                overall.accumulate(&s);
                images.push((stem.clone(), s));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failures += 1;
            }
        }
    }
    // A ground-truth image without a prediction counts as all misses: leaving it out would
    // score a run that skipped its hardest images as if it had done them.
    let mut missing = Vec::new();
    for stem in truth_stems(&a.truth)? {
        if preds.contains_key(&stem) {
            continue;
        }
        match load_truth(&a.truth, &stem) {
            Ok((_, _, truth)) => {
                let s = Scores::compare(&vec![0; truth.len()], &truth);
                overall.accumulate(&s);
                images.push((stem.clone(), s));
                missing.push(stem);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failures += 1;
            }
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "error: {} ground-truth image(s) have no prediction in {} and are scored as all \
             misses: {}",
            missing.len(),
            a.pred.display(),
            missing.join(", ")
        );
        failures += missing.len();
    }
    if images.is_empty() {
        bail!("no prediction in {} could be scored", a.pred.display());
    }
    let mean = ImageMean::of(images.iter().map(|(_, s)| s));
    if a.json {
        let imgs: Vec<serde_json::Value> = images
            .iter()
            .map(|(n, s)| {
                let mut v = serde_json::to_value(s).expect("serializable");
                v["name"] = serde_json::Value::String(n.clone());
                if missing.contains(n) {
                    v["missing_prediction"] = serde_json::Value::Bool(true);
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"overall": overall, "image_mean": mean, "images": imgs})
        );
    } else {
        println!(
            "{:<28} {:>6} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>6} {:>6}",
            "image", "dice", "iou", "pred", "true", "tp", "fp", "fn", "f1@.5", "dsb"
        );
        for (n, s) in &images {
            println!("{}", row(n, s));
        }
        println!("{}", row("OVERALL (pooled)", &overall));
        println!(
            "{:<28} {:>6.3} {:>6} {:>5} {:>5} {:>4} {:>4} {:>4} {:>6.3} {:>6.3}",
            "MEAN OF IMAGES",
            mean.pixel_dice,
            "",
            "",
            "",
            "",
            "",
            "",
            mean.f1_at_05,
            mean.dsb2018_score
        );
        let e = &overall.errors;
        println!(
            "unmatched true nuclei: {} missed, {} merged with a neighbour, {} split, {} poor \
             outline (IoU <= 0.5); {} spurious objects; matched masks' area {:.2}x the truth's \
             (geometric mean of {} matches)",
            e.missed,
            e.merged,
            e.split,
            e.poor_outline,
            e.spurious,
            e.matched_area_ratio,
            e.matched
        );
    }
    Ok(if failures > 0 { 1 } else { 0 })
}
