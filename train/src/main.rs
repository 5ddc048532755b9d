//! `unet-train`: trains the unet-edge U-Net on burn (flex CPU backend) and exports ONNX.

mod data;
mod loss;
mod model;
mod training;

use anyhow::Result;
use clap::{Parser, Subcommand};
use data::DrawBy;
use std::path::PathBuf;
use training::TrainConfig;
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

/// Train the nuclei U-Net, export it to ONNX, or look at the synthetic data.
#[derive(Parser, Debug)]
#[command(name = "unet-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (or resume) a run; the best checkpoint is exported to RUN/best.onnx as it improves.
    Train {
        /// Run directory: config.json, state.json, checkpoints, best.onnx.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// `synthetic`, a DSB2018 stage-1 folder (ID/images, ID/masks) or a pairs folder (images/
        /// with masks/ or labels/, e.g. ../shared/dsb2018-fluo).
        #[arg(long, default_value = "synthetic")]
        data: String,
        /// Folder data: experiment groups of the folder's index.csv to hold out whole for
        /// validation (comma-separated); without it the last fifth of the images by name.
        #[arg(long, value_name = "G1,G2", value_delimiter = ',')]
        val_groups: Vec<String>,
        /// Folder data: share of training draws taken from the synthetic generator (0 = real only).
        #[arg(long, value_name = "R", default_value_t = 0.0)]
        synthetic_ratio: f32,
        /// Stop after this many validations without a better selection score (0 = run all steps).
        #[arg(long, value_name = "N", default_value_t = 0)]
        patience: usize,
        /// Normalize each training crop with its whole source image's percentiles, as the runtime
        /// normalizes a frame, instead of with the crop's own.
        #[arg(long)]
        frame_normalization: bool,
        /// Optimisation steps in total.
        #[arg(long, default_value_t = 6000)]
        steps: usize,
        /// Steps between validation and checkpoint.
        #[arg(long, default_value_t = 250)]
        epoch_steps: usize,
        /// Examples per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Peak learning rate (Adam; linear warm-up, cosine decay).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Filters at full resolution (16 gives the seed 16-32-64-128-256).
        #[arg(long, default_value_t = 16)]
        base: usize,
        /// Down-sampling levels.
        #[arg(long, default_value_t = 4)]
        depth: usize,
        /// Tile side in px (multiple of 2^depth).
        #[arg(long, default_value_t = 128)]
        tile: usize,
        /// Weight of a soft-Dice term added to the BCE loss (0 = BCE only).
        #[arg(long, default_value_t = 0.5, value_parser = loss_weight)]
        dice_weight: f32,
        /// Ronneberger border weight w0 separating touching nuclei (0 = off).
        #[arg(long, default_value_t = 5.0, value_parser = loss_weight)]
        border_w0: f32,
        /// Sigma of the border weight in px.
        #[arg(long, default_value_t = 3.0)]
        border_sigma: f32,
        /// Validation images.
        #[arg(long, default_value_t = 96)]
        val_images: usize,
        /// Random seed.
        #[arg(long, default_value_t = 2018)]
        seed: u64,
        /// Output channels: 1 is the seed's foreground-only net; 2 adds the core channel (inner
        /// half of each nucleus) that separates touching nuclei, as the shipped model has.
        #[arg(long, default_value_t = 1)]
        outputs: usize,
        /// Weight of the core channel's loss (BCE + soft Dice).
        #[arg(long, default_value_t = 1.0, value_parser = loss_weight)]
        core_weight: f32,
        /// Ronneberger's separation: pixels where two nuclei touch are background in the
        /// foreground target (a 2-px gap), so the border weight acts there and the net learns to
        /// cut touching nuclei apart (see the model card for what it measured so far).
        #[arg(long)]
        gap: bool,
        /// Weight the core channel's BCE with the border weight map as well (--border-w0,
        /// --border-sigma), so the core learns to stop short of where two nuclei touch.
        #[arg(long)]
        core_border: bool,
        /// Extra weight of the core channel's BCE on the line between two nuclei's cores (where
        /// they touch): W * exp(-(d2 - d1)^2 / 8) on nucleus pixels outside every core, d1, d2
        /// the distances to the nearest and second-nearest core. Aims the core at the merges,
        /// where it runs across the contact. 0 = off.
        #[arg(long, value_name = "W", default_value_t = 0.0, value_parser = loss_weight)]
        core_ridge: f32,
        /// Dropout between the two convolutions of each level, as a multiple of the Keras
        /// DSB2018 tutorial's rates (0.1 on the upper levels, 0.2 on the lower, 0.3 at the
        /// bottleneck): 1 is the tutorial's, 0 none. Training only; the exported model has none.
        #[arg(long, value_name = "SCALE", default_value_t = 0.0, value_parser = dropout_scale)]
        dropout: f32,
        /// Weight of the Lovász hinge on the foreground, a convex surrogate of each crop's
        /// 1 - IoU (Berman et al. 2018), added to BCE and soft Dice: it aims the training at
        /// the outlines' overlap, which the DSB2018 score measures. 0 = off.
        #[arg(long, value_name = "W", default_value_t = 0.0, value_parser = loss_weight)]
        lovasz_weight: f32,
        /// Cut training crops on the images' own pixel grid: no zoom, no elastic warp, whole-pixel
        /// positions (flips, turns, gamma, blur and noise stay), so neither the image nor the
        /// annotated outlines are resampled; meant for fine-tuning a net trained with zoom.
        #[arg(long)]
        native_grid: bool,
        /// Add this many star-convex ray channels after the core (StarDist, Schmidt et al.
        /// 2018): each nucleus pixel learns its distance to the outline along N evenly spaced
        /// directions, and the runtime splits the mask among the best non-overlapping polygons
        /// instead of the watershed. Needs --outputs 2; 32 is usual. 0 = off.
        #[arg(long, value_name = "N", default_value_t = 0)]
        star_rays: usize,
        /// Weight of the star rays' mean absolute error, per px of error.
        #[arg(long, value_name = "W", default_value_t = 0.1, value_parser = loss_weight)]
        star_weight: f32,
        /// Batch normalization between every convolution (but the head's) and its ReLU while
        /// training (Ioffe & Szegedy 2015); the export folds it into the convolutions, so the
        /// model the runtime runs has the same graph and cost. Trains from scratch or from a
        /// --batch-norm run (an ONNX model has it folded away already).
        #[arg(long)]
        batch_norm: bool,
        /// Folder data: how likely each real image is to be drawn for a crop. `image`: every
        /// image alike, so a 256x256 field gives as many crops as a 1040x1388 one; `area`: in
        /// proportion to its pixels, so crowded large fields are seen as often per nucleus.
        #[arg(long, value_enum, default_value_t = DrawBy::Image)]
        draw_by: DrawBy,
        /// Start from the best weights of another run, or from an ONNX model this project
        /// exported (a path ending in .onnx, e.g. models/unet-nuclei.onnx); same base/depth, the
        /// head grows to --outputs (to fine-tune a foreground net for the core channel).
        #[arg(long, value_name = "RUN|FILE.onnx", conflicts_with = "resume")]
        init_from: Option<PathBuf>,
        /// Continue the run in --run from its last checkpoint (same options required).
        #[arg(long)]
        resume: bool,
    },
    /// Export a run's best checkpoint to an ONNX file.
    Export {
        /// Run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Output ONNX path.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Export the last checkpoint instead of the best.
        #[arg(long)]
        last: bool,
        /// The instance step's default growth (px, 0..=8) to write into the model
        /// (`unet_edge.grow_px`) instead of the one the run chose on its validation images.
        #[arg(long, value_name = "PX", value_parser = unet_edge::contract::grow_parser())]
        grow: Option<usize>,
        /// The foreground threshold (0..1) to write into the model (`unet_edge.threshold`)
        /// instead of the one the run chose on its validation images.
        #[arg(long, value_name = "P", value_parser = unet_edge::contract::parse_threshold)]
        threshold: Option<f32>,
    },
    /// Average the weights of several exported checkpoints of one network (e.g. a run's last
    /// validations, exported with `export --last`) into one ONNX model: checkpoint averaging,
    /// which evens out the noise between checkpoints. Validate the result like any model.
    Average {
        /// Output ONNX path.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Two or more ONNX models exported by this trainer with the same architecture.
        #[arg(value_name = "IN.onnx", required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
    },
    /// Write synthetic images and masks as one PNG sheet (images on top, masks below).
    Sheet {
        /// Output PNG.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 8)]
        count: usize,
        /// Side of each sample.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write synthetic images (and their label images) to a folder, e.g. as test or calibration data.
    Synth {
        /// Output folder: images/X.png and masks/X.png (16-bit labels).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Number of images.
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Side of each image.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// First seed.
        #[arg(long, default_value_t = 900_000)]
        seed: u64,
    },
}

/// `--dropout`: a scale that keeps every rate (at most 0.3 x scale) below 0.9.
fn dropout_scale(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=3.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a dropout scale in 0..=3 (1 = the tutorial's rates)"
        )),
    }
}

/// `--dice-weight`, `--border-w0`, `--core-weight`, `--lovasz-weight`, `--star-weight`: a finite weight of 0 (off) or more.
fn loss_weight(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "{s:?} is not a loss weight: expected 0 (off) or more, e.g. 1"
        )),
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            run,
            data,
            val_groups,
            synthetic_ratio,
            patience,
            frame_normalization,
            steps,
            epoch_steps,
            batch,
            lr,
            base,
            depth,
            tile,
            dice_weight,
            border_w0,
            border_sigma,
            val_images,
            seed,
            outputs,
            core_weight,
            gap,
            core_border,
            core_ridge,
            dropout,
            lovasz_weight,
            native_grid,
            star_rays,
            star_weight,
            batch_norm,
            draw_by,
            init_from,
            resume,
        } => {
            let cfg = TrainConfig {
                data,
                base,
                depth,
                tile,
                batch,
                steps,
                epoch_steps,
                lr,
                dice_weight,
                border_w0,
                border_sigma,
                val_images,
                seed,
                outputs,
                core_weight,
                gap,
                val_groups,
                synthetic_ratio,
                patience,
                frame_normalization,
                core_border,
                core_ridge,
                dropout,
                lovasz_weight,
                native_grid,
                star_rays,
                star_weight,
                batch_norm,
                draw_by,
            };
            let state = training::train(cfg, &run, resume, init_from.as_deref())?;
            println!(
                "{}",
                serde_json::json!({
                    "steps": state.step,
                    "seconds": state.seconds,
                    "best_step": state.best_step,
                    "val_dice": state.best_dice,
                    "val_iou": state.best_iou,
                    "onnx": training::RunDir(run.clone()).best_onnx(),
                })
            );
            Ok(())
        }
        Command::Export {
            run,
            out,
            last,
            grow,
            threshold,
        } => training::export_run(&run, &out, last, grow, threshold),
        Command::Average { out, inputs } => training::average_files(&inputs, &out),
        Command::Sheet {
            out,
            count,
            size,
            seed,
        } => {
            let cfg = SynthConfig::default();
            let (w, h) = (count * size, 2 * size);
            let mut sheet = vec![0u8; w * h];
            let mut scratch = Vec::new();
            for k in 0..count {
                let mut s = generate(&mut Rng::new(seed + k as u64), size, size, &cfg);
                unet_edge::engine::normalize::Normalization::Percentile {
                    low: 0.5,
                    high: 99.9,
                }
                .apply_in_place(&mut s.image, &mut scratch);
                for y in 0..size {
                    for x in 0..size {
                        let i = y * size + x;
                        sheet[y * w + k * size + x] = (s.image[i].clamp(0.0, 1.0) * 255.0) as u8;
                        // Labels as grey levels so touching nuclei stay distinguishable.
                        let l = s.labels[i];
                        sheet[(y + size) * w + k * size + x] = if l == 0 {
                            0
                        } else {
                            60 + ((l as u32 * 47) % 196) as u8
                        };
                    }
                }
            }
            unet_edge::io::imageio::save_gray8(&out, w, h, sheet)
        }
        Command::Synth {
            out,
            count,
            size,
            seed,
        } => {
            std::fs::create_dir_all(out.join("images"))?;
            std::fs::create_dir_all(out.join("masks"))?;
            let cfg = SynthConfig::default();
            for k in 0..count {
                let s = generate(&mut Rng::new(seed + k as u64), size, size, &cfg);
                let name = format!("synth{:04}.png", k);
                let img: Vec<u16> = s
                    .image
                    .iter()
                    .map(|v| v.clamp(0.0, 65535.0) as u16)
                    .collect();
                unet_edge::io::imageio::save_gray16(
                    &out.join("images").join(&name),
                    size,
                    size,
                    img,
                )?;
                unet_edge::io::imageio::save_gray16(
                    &out.join("masks").join(&name),
                    size,
                    size,
                    s.labels,
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_weights_must_be_finite_and_not_negative() {
        assert_eq!(loss_weight("0"), Ok(0.0));
        assert_eq!(loss_weight("1.5"), Ok(1.5));
        for bad in ["-1", "NaN", "inf", "one"] {
            let e = loss_weight(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("0 (off) or more"), "{e}");
        }
        // Every loss weight goes through it: a NaN used to surface only as "loss became NaN;
        // lower --lr", which blamed the wrong option.
        for flag in [
            "--dice-weight",
            "--border-w0",
            "--core-weight",
            "--lovasz-weight",
            "--star-weight",
        ] {
            let e = Cli::try_parse_from(["unet-train", "train", "--run", "r", flag, "NaN"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(flag) && e.contains("0 (off) or more"),
                "{flag}: {e}"
            );
        }
    }
}
