//! `unet-quantize`: float U-Net ONNX + calibration images → int8 ONNX that tract runs on integer
//! convolution kernels, with its accuracy against the float model measured on held-out images.

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::SegmentConfig;
use unet_edge::io::imageio::write_atomic;
use unet_edge::onnx_writer;
use unet_quantize::calibrate::{Calibration, Method};
use unet_quantize::evaluate::{compare, Comparison};
use unet_quantize::graph::FloatGraph;
use unet_quantize::images::{runtime_tiles, Image, ImageSet};
use unet_quantize::rewrite::{quantize, Options, Summary};

/// First seed of synthetic calibration frames (the trainer uses seeds from 2018, its validation
/// set from 1_000_000; these ranges do not meet).
const CALIB_SEED: u64 = 700_000;
/// First seed of synthetic evaluation frames, disjoint from calibration.
const EVAL_SEED: u64 = 800_000;

/// Post-training static int8 quantization of a unet-edge U-Net.
///
/// Weights are quantized per output channel (symmetric int8), activations per tensor with ranges
/// from calibration images run through the float model as the runtime tiles them. The result
/// uses ONNX QLinearConv, which tract executes with integer matmul kernels; between
/// convolutions the tensors stay int8 (ReLU folded into the conv's saturation, Concat inputs
/// sharing one scale). The int8 model's masks are compared with the float model's on held-out
/// images, and with truth where it is known.
#[derive(Parser, Debug)]
#[command(name = "unet-quantize", version)]
struct Cli {
    /// Float32 U-Net ONNX to quantize [default: the model unet-edge embeds]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Where to write the int8 ONNX (written atomically)
    #[arg(long, value_name = "PATH", required_unless_present = "list_layers")]
    out: Option<PathBuf>,
    /// Calibration images: `synth[:N[@SEED]]` (synthetic 256x256 frames, seeds from 700000) or a
    /// folder of PNG/TIFF/JPEG images
    #[arg(long, value_name = "SRC", default_value = "synth:32")]
    calib: String,
    /// Held-out evaluation images (repeatable): `synth[:N[@SEED]]` (seeds from 800000) or a
    /// folder; a folder's truth is read from FOLDER/truth when present (STEM.png or STEM.tif
    /// label images, or STEM/masks/*.png, as `unet-edge eval` reads it)
    #[arg(long, value_name = "SRC", default_value = "synth:16")]
    eval: Vec<String>,
    /// Activation range method: `auto` tries minmax, percentile:99.99 and mse and keeps the one
    /// whose masks agree best with the float model's on the evaluation images
    #[arg(long, default_value = "auto", value_name = "METHOD")]
    method: String,
    /// Convolution layers to keep in float32, comma-separated (`first` and `last` are aliases;
    /// see --list-layers); costs speed, buys accuracy
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    keep_f32: Vec<String>,
    /// Print the model's convolution layers and exit
    #[arg(long)]
    list_layers: bool,
    /// Also write the measurements as JSON to this file
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
}

#[derive(Serialize)]
struct Candidate {
    method: String,
    evaluations: Vec<(String, Comparison)>,
    mean_agreement_dice: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    out: String,
    calibration: String,
    calibration_tiles: usize,
    chosen_method: String,
    keep_f32: Vec<String>,
    int8_convs: usize,
    quantize_boundaries: usize,
    f32_bytes: usize,
    int8_bytes: usize,
    size_ratio: f64,
    candidates: Vec<Candidate>,
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let model = Model::load(cli.model.as_deref())?;
    let graph = FloatGraph::new(model.clone())?;
    let layers: Vec<String> = graph.conv_layers().iter().map(|s| s.to_string()).collect();
    if cli.list_layers {
        for l in &layers {
            println!("{l}");
        }
        return Ok(());
    }
    let out = cli.out.clone().expect("clap requires --out");
    let keep_f32 = resolve_layers(&cli.keep_f32, &layers)?;
    let methods: Vec<Method> = if cli.method == "auto" {
        vec![Method::MinMax, Method::Percentile(99.99), Method::Mse]
    } else {
        vec![cli.method.parse()?]
    };
    let calib_set = ImageSet::parse(&cli.calib, 32, CALIB_SEED).context("--calib")?;
    let eval_sets: Vec<ImageSet> = cli
        .eval
        .iter()
        .map(|s| ImageSet::parse(s, 16, EVAL_SEED).context("--eval"))
        .collect::<Result<_>>()?;
    let cfg = SegmentConfig::for_model(&model);

    eprintln!("calibration images: {calib_set}");
    let calib_images = calib_set.load().context("loading calibration images")?;
    let tiles = runtime_tiles(&model, &calib_images, cfg.tile, cfg.margin)?;
    let bar = bar(2 * tiles.len() as u64, "calibrating");
    let calib = Calibration::collect(&graph, &tiles, cfg.tile, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "calibrated on {} tiles of {} image(s)",
        calib.tiles,
        calib_images.len()
    );
    let evals: Vec<(String, Vec<Image>)> = eval_sets
        .iter()
        .map(|s| {
            Ok((
                s.to_string(),
                s.load()
                    .with_context(|| format!("loading evaluation images {s}"))?,
            ))
        })
        .collect::<Result<_>>()?;

    let mut candidates = Vec::new();
    let mut best: Option<(f64, Method, Vec<u8>, Summary)> = None;
    for &method in &methods {
        let opts = Options {
            method,
            keep_f32: keep_f32.clone(),
        };
        let (proto, summary) = quantize(&graph, &calib, &opts)?;
        let bytes = onnx_writer::encode(&proto);
        let int8 = Model::from_bytes(&bytes, &format!("<int8 {method}>"))?;
        let mut evaluations = Vec::new();
        for (name, images) in &evals {
            let sp = spinner(&format!("evaluating {method} on {name}"));
            let c = compare(&model, &int8, images)?;
            sp.finish_and_clear();
            eprintln!("  {method:<16} {name:<24} {}", describe(&c));
            evaluations.push((name.clone(), c));
        }
        let mean = evaluations
            .iter()
            .map(|(_, c)| c.agreement_dice)
            .sum::<f64>()
            / evaluations.len().max(1) as f64;
        if best.as_ref().is_none_or(|b| mean > b.0) {
            best = Some((mean, method, bytes, summary));
        }
        candidates.push(Candidate {
            method: method.to_string(),
            evaluations,
            mean_agreement_dice: mean,
        });
    }
    let (mean, method, bytes, summary) = best.expect("at least one method");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
    }
    write_atomic(&out, &bytes)?;
    let f32_bytes = onnx_writer::encode(model.proto()).len();
    println!(
        "wrote {} ({} bytes, {:.2}x the float model's {} bytes): method {method}, mean mask agreement Dice {mean:.4}, {} QLinearConv, float32 layers: {}",
        out.display(),
        bytes.len(),
        bytes.len() as f64 / f32_bytes as f64,
        f32_bytes,
        summary.int8_convs,
        if summary.f32_convs.is_empty() { "none".into() } else { summary.f32_convs.join(",") }
    );
    if let Some(path) = &cli.report {
        let report = Report {
            model: model.source.clone(),
            out: out.display().to_string(),
            calibration: calib_set.to_string(),
            calibration_tiles: calib.tiles,
            chosen_method: method.to_string(),
            keep_f32: keep_f32.into_iter().collect(),
            int8_convs: summary.int8_convs,
            quantize_boundaries: summary.boundaries,
            f32_bytes,
            int8_bytes: bytes.len(),
            size_ratio: bytes.len() as f64 / f32_bytes as f64,
            candidates,
        };
        let json = serde_json::to_string_pretty(&report)?;
        write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

/// `first`/`last` → the first/last convolution; every name must be one of the model's layers.
fn resolve_layers(asked: &[String], layers: &[String]) -> Result<BTreeSet<String>> {
    let mut set = BTreeSet::new();
    for a in asked.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let name = match a {
            "first" => layers.first(),
            "last" => layers.last(),
            _ => layers.iter().find(|l| *l == a),
        };
        match name {
            Some(n) => {
                set.insert(n.clone());
            }
            None => bail!(
                "--keep-f32 {a:?}: the model has no such convolution; its layers are {} (or first, last)",
                layers.join(", ")
            ),
        }
    }
    Ok(set)
}

fn describe(c: &Comparison) -> String {
    let mut s = format!(
        "agreement Dice {:.4}, |Δp| mean {:.4} max {:.3}",
        c.agreement_dice, c.mean_prob_diff, c.max_prob_diff
    );
    if let (Some(f), Some(q)) = (c.f32_dice, c.int8_dice) {
        s += &format!(
            ", Dice vs truth f32 {f:.4} int8 {q:.4} (drop {:+.4})",
            f - q
        );
    }
    s
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

fn spinner(what: &str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(what.to_string());
    s.enable_steady_tick(std::time::Duration::from_millis(200));
    s
}
