//! The training loop: batches, loss, Adam with warm-up and cosine decay, validation, checkpoints,
//! resume and ONNX export of the best checkpoint.

use crate::data::{
    load_named, make_example, read_groups, Augment, Dataset, DrawBy, Example, Named, TargetSpec,
};
use crate::loss::{loss, LossSpec, RayTargets};
use crate::model::UNet;
use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use unet_edge::contract::{
    ModelMeta, OutputKind, KEY_DIAMETER, KEY_SEED, KEY_TRAINER, KEY_TRAINING_DATA, KEY_TRAIN_STEPS,
    KEY_VALIDATION,
};
use unet_edge::io::imageio::write_atomic;
use unet_edge::post::metrics::{ImageMean, PixelOverlap as Overlap};
use unet_edge::rng::Rng;
use unet_edge::synth::SynthConfig;
use unet_edge::unet::{UNetSpec, UNetWeights};

/// Everything that defines a run; saved as `config.json` beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// `synthetic` or a folder path.
    pub data: String,
    /// Filters of the first level.
    pub base: usize,
    /// Down-sampling levels.
    pub depth: usize,
    /// Tile side.
    pub tile: usize,
    /// Examples per step.
    pub batch: usize,
    /// Total optimisation steps.
    pub steps: usize,
    /// Steps between validations/checkpoints.
    pub epoch_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight of the soft-Dice term added to BCE (0 = BCE only, as in the seed).
    pub dice_weight: f32,
    /// Ronneberger border weight w0 (0 = off) and its sigma in px.
    pub border_w0: f32,
    /// Sigma of the border weight, px.
    pub border_sigma: f32,
    /// Validation images (synthetic: generated from a disjoint seed range; folder: held-out split).
    pub val_images: usize,
    /// Random seed.
    pub seed: u64,
    /// Output channels: 1 (foreground) or 2 (foreground, core).
    #[serde(default = "one")]
    pub outputs: usize,
    /// Weight of the core channel's loss.
    #[serde(default)]
    pub core_weight: f32,
    /// Where nuclei touch, the foreground target has a background gap (Ronneberger's separation).
    #[serde(default)]
    pub gap: bool,
    /// Folder data: the experiment groups (`index.csv`) held out whole for validation; empty
    /// holds out the last fifth of the images by name.
    #[serde(default)]
    pub val_groups: Vec<String>,
    /// Folder data: the share of training draws that come from the synthetic generator.
    #[serde(default)]
    pub synthetic_ratio: f32,
    /// Validations without a better selection score before the run stops (0 = never).
    #[serde(default)]
    pub patience: usize,
    /// Normalize training crops with their whole source image's percentiles, as the runtime
    /// normalizes a frame (runs before this option normalized each crop by itself).
    #[serde(default)]
    pub frame_normalization: bool,
    /// The core channel's BCE carries the foreground's border weight map too, so the pixels
    /// between touching nuclei (where merged predictions join their cores) weigh more.
    #[serde(default)]
    pub core_border: bool,
    /// Peak extra weight of the core's BCE on the ridge between touching nuclei's cores (0 =
    /// off; runs before this option).
    #[serde(default)]
    pub core_ridge: f32,
    /// Dropout between the two convolutions of each level, as a multiple of the Keras DSB2018
    /// tutorial's rates (0.1 / 0.2, 0.3 at the bottleneck); 0 = none (runs before this option).
    #[serde(default)]
    pub dropout: f32,
    /// Weight of the Lovász hinge on the foreground (per-crop IoU surrogate); 0 = off (runs
    /// before this option).
    #[serde(default)]
    pub lovasz_weight: f32,
    /// Training crops on the images' own pixel grid (no zoom, no elastic warp, whole-pixel
    /// positions); false for runs before this option.
    #[serde(default)]
    pub native_grid: bool,
    /// Star-convex ray-distance channels after the core (0 = none; runs before this option).
    #[serde(default)]
    pub star_rays: usize,
    /// Weight of the rays' mean absolute error in px.
    #[serde(default)]
    pub star_weight: f32,
    /// Batch normalization after every convolution but the head's, folded away at export;
    /// false for runs before this option.
    #[serde(default)]
    pub batch_norm: bool,
    /// Folder data: how likely each real image is to be drawn (every image alike for runs
    /// before this option).
    #[serde(default)]
    pub draw_by: DrawBy,
}

impl TrainConfig {
    /// The network this run trains: its head gives the named outputs, then the star rays.
    pub fn spec(&self) -> UNetSpec {
        UNetSpec {
            base: self.base,
            depth: self.depth,
            outputs: self.outputs + self.star_rays,
        }
    }
}

fn one() -> usize {
    1
}

/// Progress saved with each checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps done.
    pub step: usize,
    /// Best validation Dice so far.
    pub best_dice: f32,
    /// IoU at the best Dice.
    pub best_iou: f32,
    /// Step of the best checkpoint.
    pub best_step: usize,
    /// Selection score of the best checkpoint: on whole images [`checkpoint_score`]; with tiles
    /// only, the mean of the foreground Dice and the core channel's Dice when the net has that
    /// channel (so separation counts too). Runs from before session 16 stored the
    /// group-balanced score here.
    #[serde(default)]
    pub best_score: f32,
    /// Seconds spent training (over all resumes).
    pub seconds: f64,
    /// Validation history: (step, loss, dice, iou).
    pub history: Vec<(usize, f32, f32, f32)>,
    /// Whole validation images through the runtime, per validation: step and the means over
    /// images (folder data only).
    #[serde(default)]
    pub instance_history: Vec<(usize, ImageMean)>,
    /// Per whole-image validation: the instance settings its figures were scored with and
    /// both scores.
    #[serde(default)]
    pub score_history: Vec<Validation>,
    /// The best checkpoint's whole-image figures per validation group.
    #[serde(default)]
    pub best_groups: std::collections::BTreeMap<String, ImageMean>,
    /// The instance step's growth (px) the best checkpoint scored best with; exported as the
    /// model's `unet_edge.grow_px`.
    #[serde(default)]
    pub best_grow: usize,
    /// The foreground threshold the best checkpoint scored best with, exported as the model's
    /// `unet_edge.threshold`; none for runs without whole-image validation and runs from before
    /// session 16, which scored at the contract's default only.
    #[serde(default)]
    pub best_threshold: Option<f32>,
}

/// One whole-image validation of a checkpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Validation {
    /// Step of the checkpoint.
    pub step: usize,
    /// The instance settings its figures were scored with.
    pub post: Post,
    /// [`group_balanced_score`] at those settings.
    pub group_score: f32,
    /// [`checkpoint_score`] at those settings.
    pub checkpoint_score: f32,
}

/// The mask and instance settings chosen on the validation images and written into the model.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Post {
    /// Foreground threshold on the probability.
    pub threshold: f32,
    /// The instance step's growth, px.
    pub grow: usize,
}

impl Default for Post {
    fn default() -> Post {
        Post {
            threshold: ModelMeta::default().threshold,
            grow: 0,
        }
    }
}

impl TrainState {
    /// The settings the best checkpoint was chosen with.
    pub fn best_post(&self) -> Post {
        Post {
            threshold: self.best_threshold.unwrap_or(Post::default().threshold),
            grow: self.best_grow,
        }
    }

    /// The settings checkpoint `step` was scored with at its validation; runs from before
    /// those were recorded per validation knew them for the best checkpoint only.
    pub fn post_at(&self, step: usize) -> Option<Post> {
        self.score_history
            .iter()
            .find(|r| r.step == step)
            .map(|r| r.post)
            .or((step == self.best_step).then(|| self.best_post()))
    }

    /// The settings an export writes into the model: the best checkpoint's, or with `last` the
    /// ones the last checkpoint's own validation chose (until session 26 `--last` wrote the
    /// best's while its metadata quoted the last's figures).
    pub fn export_post(&self, last: bool) -> Post {
        if last {
            self.post_at(self.step).unwrap_or_else(|| self.best_post())
        } else {
            self.best_post()
        }
    }
}

/// A whole validation image with its group.
type Grouped = (String, Named);

/// Whole-image figures over all validation images and per group, with the settings they were
/// scored with.
type WholeImageScores = (
    ImageMean,
    std::collections::BTreeMap<String, ImageMean>,
    Post,
);

/// The instance step's growths each checkpoint is scored with; the best becomes the model's
/// default (`unet_edge.grow_px`), so the boundary correction is chosen on validation images.
const GROWTHS: [usize; 3] = [0, 1, 2];

/// The foreground thresholds each checkpoint is scored with, like [`GROWTHS`]: a net trained with
/// the separation gap and border weights can be conservative at its edges, and lowering the
/// threshold there costs nothing at run time (the runtime model at step 2750 of runs/long-cbd:
/// group score 0.677 at 0.5, 0.687 at 0.4).
const THRESHOLDS: [f32; 3] = [0.5, 0.4, 0.3];

/// How a growth is chosen on whole images: F1 and the DSB2018 score, equally, averaged over the
/// validation groups with each group weighing the same. (A mean over images let the largest
/// group, 47 of the 60 images and one annotation style, decide alone: it preferred a growth that
/// lost on four of the five groups and on the independent sample; see the model card.)
fn group_balanced_score(per_group: &std::collections::BTreeMap<String, ImageMean>) -> f32 {
    let n = per_group.len().max(1) as f64;
    (per_group
        .values()
        .map(|m| 0.5 * (m.f1_at_05 + m.dsb2018_score))
        .sum::<f64>()
        / n) as f32
}

/// How a checkpoint is chosen: the mean of the group-balanced score and the same figure over
/// images. Groups of two or three images swing the group-balanced score alone by several
/// hundredths between neighbouring checkpoints (runs/long-cbd: its step 2000 led on two 2- and
/// 3-image groups while losing on the 47-image group); the image mean steadies it, and the
/// group half keeps the large group from deciding alone.
fn checkpoint_score(
    all: &ImageMean,
    per_group: &std::collections::BTreeMap<String, ImageMean>,
) -> f32 {
    let over_images = 0.5 * (all.f1_at_05 + all.dsb2018_score) as f32;
    0.5 * (group_balanced_score(per_group) + over_images)
}

/// Validation figures.
#[derive(Clone, Copy, Debug)]
pub struct ValScore {
    /// Pixel Dice over the validation set.
    pub dice: f32,
    /// Pixel IoU over the validation set.
    pub iou: f32,
    /// Pixel Dice of the core channel (nets with that channel).
    pub core_dice: Option<f32>,
    /// Mean absolute error in px of the star rays where known (nets with rays).
    pub ray_px: Option<f32>,
}

impl ValScore {
    /// What checkpoint selection maximises.
    pub fn score(&self) -> f32 {
        match self.core_dice {
            Some(c) => 0.5 * (self.dice + c),
            None => self.dice,
        }
    }
}

fn lr_at(cfg: &TrainConfig, step: usize) -> f64 {
    let warm = (cfg.steps / 50).clamp(1, 200);
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (cfg.steps - warm).max(1) as f64;
    let floor = cfg.lr * 0.02;
    floor + (cfg.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
}

fn to_tensor(v: Vec<f32>, n: usize, t: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, [n, 1, t, t]), device)
}

/// A typical ray length of the training crops, as the logit of its fraction of
/// [`unet_edge::post::star::MAX_RAY_PX`]: 8 px, a nucleus of ~16 px diameter.
fn ray_prior_logit() -> f32 {
    let f = 8.0 / unet_edge::post::star::MAX_RAY_PX;
    (f / (1.0 - f)).ln()
}

/// The star-ray targets of a batch (see [`RayTargets`]).
fn ray_batch(examples: &[Example], t: usize, rays: usize, device: &Device) -> RayTargets {
    let (n, plane) = (examples.len(), rays * t * t);
    let (mut dist, mut known) = (vec![0.0; n * plane], vec![0.0; n * plane]);
    for ((e, d), k) in examples
        .iter()
        .zip(dist.chunks_mut(plane))
        .zip(known.chunks_mut(plane))
    {
        unet_edge::post::star::ray_targets(&e.labels, t, t, rays, d, k);
    }
    let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n, rays, t, t]), device);
    RayTargets {
        dist: tensor(dist),
        known: tensor(known),
    }
}

/// Input, foreground target, core target, foreground and core loss weights of a batch.
fn batch(
    examples: &[Example],
    t: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>) {
    let n = examples.len();
    let cat = |f: &dyn Fn(&Example) -> &[f32]| {
        let mut v = Vec::with_capacity(n * t * t);
        for e in examples {
            v.extend_from_slice(f(e));
        }
        to_tensor(v, n, t, device)
    };
    (
        cat(&|e| &e.x),
        cat(&|e| &e.y),
        cat(&|e| &e.c),
        cat(&|e| &e.w),
        cat(&|e| &e.cw),
    )
}

/// The foreground channel of `[N,C,H,W]` logits as plain data.
fn foreground(logits: Tensor<4>) -> Result<Vec<f32>> {
    channel(logits, 0)
}

/// Channel `c` of `[N,C,H,W]` logits as plain data.
fn channel(logits: Tensor<4>, c: usize) -> Result<Vec<f32>> {
    logits
        .narrow(1, c, 1)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Counts logits thresholded at 0 (probability 0.5) against 0/1 targets.
fn add_logits<'a>(o: &mut Overlap, logits: &[f32], targets: impl Iterator<Item = &'a f32>) {
    o.add(
        logits
            .iter()
            .zip(targets)
            .map(|(z, y)| (*z > 0.0, *y > 0.5)),
    );
}

/// Pixel Dice and IoU of `model` on `val` at threshold 0.5.
pub fn validate(model: &UNet, val: &[Example], t: usize, device: &Device) -> Result<ValScore> {
    let model = model.valid();
    let mut overlap = Overlap::default();
    let mut core = Overlap::default();
    let outputs = model.spec().outputs;
    let rays = outputs.saturating_sub(2);
    let (mut ray_err, mut ray_known) = (0.0f64, 0.0f64);
    for chunk in val.chunks(8) {
        let (x, _, _, _, _) = batch(chunk, t, device);
        let out = model.forward(x);
        if rays > 0 {
            let target = ray_batch(chunk, t, rays, device);
            let host = |v: Tensor<4>| v.into_data().convert::<f32>().try_to_vec::<f32>();
            let p = host(burn::tensor::activation::sigmoid(
                out.clone().narrow(1, 2, rays),
            ));
            let (p, d, k) = (p, host(target.dist), host(target.known));
            let (Ok(p), Ok(d), Ok(k)) = (p, d, k) else {
                bail!("ray outputs are not f32 data");
            };
            for ((p, d), k) in p.iter().zip(&d).zip(&k) {
                ray_err += f64::from((p - d).abs() * k);
                ray_known += f64::from(*k);
            }
        }
        if outputs > 1 {
            let z1 = channel(out.clone(), 1)?;
            add_logits(&mut core, &z1, chunk.iter().flat_map(|e| e.c.iter()));
        }
        let logits = foreground(out)?;
        add_logits(&mut overlap, &logits, chunk.iter().flat_map(|e| e.y.iter()));
    }
    let (dice, iou) = (overlap.dice(), overlap.iou());
    Ok(ValScore {
        dice: dice as f32,
        iou: iou as f32,
        core_dice: (outputs > 1).then(|| core.dice() as f32),
        ray_px: (rays > 0)
            .then(|| (ray_err / ray_known.max(1.0)) as f32 * unet_edge::post::star::MAX_RAY_PX),
    })
}

/// Paths inside a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    fn last(&self) -> PathBuf {
        self.0.join("last.bpk")
    }
    fn optim(&self) -> PathBuf {
        self.0.join("optim.bpk")
    }
    /// Best checkpoint's weights.
    pub fn best(&self) -> PathBuf {
        self.0.join("best.bpk")
    }
    /// Best checkpoint exported to ONNX.
    pub fn best_onnx(&self) -> PathBuf {
        self.0.join("best.onnx")
    }
}

/// Training data, validation tiles, and (folder data) the whole validation images with their group.
type Loaded = (Dataset, Vec<Example>, Vec<(String, Named)>);

fn load_data(cfg: &TrainConfig) -> Result<Loaded> {
    let t = cfg.tile;
    let val_aug = Augment::none(t, cfg.frame_normalization);
    let targets = TargetSpec::of(cfg);
    if cfg.data == "synthetic" {
        // 1.5 tiles: context enough for the 0.6x zoom-out of augmentation, at half the cost of 2.
        let train = Dataset::Synthetic {
            cfg: SynthConfig::default(),
            seed: cfg.seed,
            size: t * 3 / 2,
        };
        // Validation seeds live far from training seeds, so no image is shared.
        let val_set = Dataset::Synthetic {
            cfg: SynthConfig::default(),
            seed: cfg.seed ^ 0x5EED_0000_0000,
            size: t,
        };
        let mut rng = Rng::new(cfg.seed ^ 1);
        let val = (0..cfg.val_images as u64)
            .map(|i| make_example(&val_set.get(i), &val_aug, &mut rng, &targets))
            .collect();
        return Ok((train, val, Vec::new()));
    }
    if !(0.0..1.0).contains(&cfg.synthetic_ratio) {
        bail!(
            "--synthetic-ratio {}: expected 0 (real only) up to below 1",
            cfg.synthetic_ratio
        );
    }
    let root = Path::new(&cfg.data);
    let samples = load_named(root)?;
    if samples.len() < 2 {
        bail!(
            "{}: need at least 2 images to hold one out for validation",
            cfg.data
        );
    }
    let (train, val_full) = split_validation(root, samples, cfg)?;
    eprintln!(
        "{}: {} training images, {} validation images{}",
        cfg.data,
        train.len(),
        val_full.len(),
        if cfg.val_groups.is_empty() {
            String::new()
        } else {
            format!(" (groups {})", cfg.val_groups.join(", "))
        }
    );
    let mut rng = Rng::new(cfg.seed ^ 1);
    // Validation tiles for the loss curve: up to four crops of each held-out image.
    let val = val_full
        .iter()
        .flat_map(|(_, n)| std::iter::repeat_n(&n.sample, 4))
        .take(cfg.val_images.max(val_full.len()))
        .map(|s| make_example(s, &val_aug, &mut rng, &targets))
        .collect();
    let real: Vec<_> = train.into_iter().map(|n| n.sample).collect();
    let train = Dataset::Mixed {
        cumulative: cfg.draw_by.cumulative(&real),
        real,
        cfg: SynthConfig::default(),
        seed: cfg.seed,
        size: t * 3 / 2,
        ratio: cfg.synthetic_ratio,
    };
    Ok((train, val, val_full))
}

/// Splits folder images into training and validation: whole `index.csv` groups when
/// `cfg.val_groups` names them, else the last fifth by name.
fn split_validation(
    root: &Path,
    samples: Vec<Named>,
    cfg: &TrainConfig,
) -> Result<(Vec<Named>, Vec<Grouped>)> {
    if cfg.val_groups.is_empty() {
        let mut train = samples;
        let n_val = (train.len() / 5).max(1);
        let val = train.split_off(train.len() - n_val);
        return Ok((train, val.into_iter().map(|n| ("all".into(), n)).collect()));
    }
    let groups = read_groups(root)?;
    if groups.is_empty() {
        bail!(
            "--val-groups needs {}/index.csv with columns id12 and group",
            root.display()
        );
    }
    let known: std::collections::BTreeSet<&String> = groups.values().collect();
    for g in &cfg.val_groups {
        if !known.contains(g) {
            bail!(
                "--val-groups {g:?}: no such group in {}/index.csv; groups are {}",
                root.display(),
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for n in samples {
        match groups.get(&n.name) {
            Some(g) if cfg.val_groups.contains(g) => val.push((g.clone(), n)),
            Some(_) => train.push(n),
            None => bail!(
                "{}: image {:?} has no row in index.csv",
                root.display(),
                n.name
            ),
        }
    }
    if train.is_empty() {
        bail!("--val-groups holds out every image; nothing is left to train on");
    }
    Ok((train, val))
}

/// Segments whole validation images through the runtime (`Segmenter` and the instance step with
/// default settings, as `unet-edge segment` does) with the weights of `model`, and scores them as
/// `unet-edge eval` does: means over all images and per group, at the threshold of
/// [`THRESHOLDS`] and the growth of [`GROWTHS`] that score best (returned with them).
pub fn validate_instances(
    model: &UNet,
    cfg: &TrainConfig,
    val: &[Grouped],
) -> Result<WholeImageScores> {
    use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
    use unet_edge::post::instances::{InstanceConfig, Instances};
    use unet_edge::post::metrics::Scores;
    let bytes = onnx_bytes(model, cfg, &TrainState::default(), Post::default())?;
    let m = unet_edge::engine::model::Model::from_bytes(&bytes, "checkpoint")?;
    let mut seg = Segmenter::new(
        &m,
        SegmentConfig {
            threads: 2,
            ..SegmentConfig::for_model(&m)
        },
    )?;
    let mut inst = Instances::new();
    // One (settings, scores per image) entry per threshold and growth, growths fastest: each
    // chunk of GROWTHS.len() entries shares one threshold, so one mask.
    let mut scores: Vec<(Post, Vec<(&str, Scores)>)> = THRESHOLDS
        .iter()
        .flat_map(|&threshold| {
            GROWTHS
                .iter()
                .map(move |&grow| (Post { threshold, grow }, Vec::with_capacity(val.len())))
        })
        .collect();
    let mut mask = Vec::new();
    for (group, n) in val {
        let s = &n.sample;
        // One network pass per image, one mask per threshold, one instance step per setting.
        seg.segment(&s.image, s.width, s.height)
            .with_context(|| format!("segmenting validation image {}", n.name))?;
        let truth: Vec<u32> = s.labels.iter().map(|&l| u32::from(l)).collect();
        for per_growth in scores.chunks_mut(GROWTHS.len()) {
            seg.mask_at(per_growth[0].0.threshold, &mut mask);
            for (post, scored) in per_growth {
                let icfg = InstanceConfig {
                    grow: post.grow,
                    ..InstanceConfig::default()
                };
                inst.run(&mask, seg.guide(), &s.image, s.width, s.height, &icfg);
                scored.push((group.as_str(), Scores::compare(inst.labels(), &truth)));
            }
        }
    }
    let summarize = |chosen: &[(&str, Scores)], post: Post| -> WholeImageScores {
        let mut per_group = std::collections::BTreeMap::new();
        for (g, _) in val {
            per_group.entry(g.clone()).or_insert_with(|| {
                ImageMean::of(chosen.iter().filter(|(h, _)| h == g).map(|(_, s)| s))
            });
        }
        (
            ImageMean::of(chosen.iter().map(|(_, s)| s)),
            per_group,
            post,
        )
    };
    // Ties keep the earlier setting: the model's own threshold and the smaller growth.
    let best = scores
        .iter()
        .map(|(post, s)| summarize(s, *post))
        .reduce(|a, b| {
            if group_balanced_score(&b.1) > group_balanced_score(&a.1) {
                b
            } else {
                a
            }
        })
        .expect("settings");
    Ok(best)
}

/// Rejects option values no run can use.
fn check_options(cfg: &TrainConfig) -> Result<()> {
    if !cfg.tile.is_multiple_of(1 << cfg.depth) {
        bail!(
            "--tile {} must be a multiple of 2^depth = {}",
            cfg.tile,
            1 << cfg.depth
        );
    }
    if cfg.batch == 0 || cfg.steps == 0 || cfg.epoch_steps == 0 {
        bail!("--batch, --steps and --epoch-steps must be at least 1");
    }
    if !(1..=2).contains(&cfg.outputs) {
        bail!(
            "--outputs {}: expected 1 (foreground) or 2 (foreground, core)",
            cfg.outputs
        );
    }
    if cfg.star_rays > 0
        && (cfg.outputs != 2 || !unet_edge::unet::outputs_have_meaning(2 + cfg.star_rays))
    {
        bail!(
            "--star-rays {} needs --outputs 2 (the core channel ranks the polygons) and 3..={} rays",
            cfg.star_rays,
            unet_edge::post::star::MAX_RAYS
        );
    }
    Ok(())
}

/// Only --steps may change on resume (to extend a run); anything else would mix two runs.
fn check_resume(cfg: &TrainConfig, run: &RunDir) -> Result<()> {
    let saved: TrainConfig = serde_json::from_slice(
        &std::fs::read(run.config())
            .with_context(|| format!("--resume: no {}", run.config().display()))?,
    )?;
    if (TrainConfig {
        steps: cfg.steps,
        ..saved
    }) != *cfg
    {
        bail!(
            "--resume: the options differ from the run's {} (only --steps may change); resume with the same options",
            run.config().display()
        );
    }
    Ok(())
}

/// The training examples of step `step`: a fixed function of the seed and the step, so a resumed
/// run sees what an uninterrupted one would have.
fn batch_of_step(
    cfg: &TrainConfig,
    data: &Dataset,
    aug: &Augment,
    targets: &TargetSpec,
    step: usize,
) -> Vec<Example> {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
    (0..cfg.batch)
        .map(|j| {
            let idx = (step * cfg.batch + j) as u64;
            make_example(&data.draw(idx, &mut rng), aug, &mut rng, targets)
        })
        .collect()
}

/// Trains (or resumes) a run in `dir`, optionally starting from the best weights of run
/// `init` (its head grown to this run's outputs); returns the final state.
pub fn train(
    cfg: TrainConfig,
    dir: &Path,
    resume: bool,
    init: Option<&Path>,
) -> Result<TrainState> {
    check_options(&cfg)?;
    let run = RunDir(dir.to_path_buf());
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating run directory {}", dir.display()))?;
    let device = Device::flex().autodiff();
    let spec = cfg.spec();
    let mut model = UNet::new(spec, &device);
    if cfg.batch_norm {
        model = model.with_batch_norm(&device);
    }
    if cfg.star_rays > 0 {
        model = model.with_head_bias(cfg.outputs, ray_prior_logit());
    }
    if let (Some(from), false) = (init, resume) {
        let start = if from.extension().is_some_and(|e| e == "onnx") {
            UNet::from_weights(&UNetWeights::read_onnx(from)?, &device)?
        } else {
            load_run(from, &device, false)?
        };
        if start.has_batch_norm() != cfg.batch_norm {
            bail!(
                "--init-from {}: {} batch normalization and this run {}; start a --batch-norm \
                 run from scratch or from another --batch-norm run",
                from.display(),
                if start.has_batch_norm() {
                    "has"
                } else {
                    "has no"
                },
                if cfg.batch_norm {
                    "wants it"
                } else {
                    "does not"
                }
            );
        }
        let grown_from = start.spec().outputs;
        model = start.with_outputs(spec.outputs, &device)?;
        if cfg.star_rays > 0 && grown_from <= cfg.outputs {
            model = model.with_head_bias(cfg.outputs, ray_prior_logit());
        }
        if model.spec() != spec {
            bail!(
                "--init-from {}: its network {:?} differs from this run's {:?}",
                from.display(),
                model.spec(),
                spec
            );
        }
        eprintln!("starting from the best weights of {}", from.display());
    }
    let mut optim = AdamConfig::new().with_epsilon(1e-7).init();
    let mut state = TrainState::default();
    if resume {
        check_resume(&cfg, &run)?;
        write_atomic(
            &run.config(),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )?;
        state =
            serde_json::from_slice(&std::fs::read(run.state())?).context("reading state.json")?;
        model = model
            .try_load_file(run.last())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", run.last().display()))?;
        optim = optim
            .load(run.optim())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", run.optim().display()))?;
        eprintln!("resuming {} at step {}", dir.display(), state.step);
    } else {
        write_atomic(
            &run.config(),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )?;
    }
    let (data, val, val_full) = load_data(&cfg)?;
    let aug = Augment {
        tile: cfg.tile,
        scale: (0.6, 1.6),
        elastic: (0.5, 4.0),
        blur: (0.25, 1.5),
        noise: (0.3, 0.08),
        frame_norm: cfg.frame_normalization,
        native_grid: cfg.native_grid,
        enabled: true,
    };
    let targets = TargetSpec::of(&cfg);

    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} step  eta {eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(state.step as u64);
    let mut ema_loss = f32::NAN;
    let mut ema_dice = f32::NAN;
    let t_start = Instant::now();
    let seconds_before = state.seconds;
    let start_step = state.step;
    let loss_spec = LossSpec::of(&cfg);
    while state.step < cfg.steps {
        let step = state.step;
        let examples = batch_of_step(&cfg, &data, &aug, &targets, step);
        let (x, y, c, w, cw) = batch(&examples, cfg.tile, &device);
        let rays =
            (cfg.star_rays > 0).then(|| ray_batch(&examples, cfg.tile, cfg.star_rays, &device));
        let logits = model.forward_dropout(x, cfg.dropout);
        let l = loss(logits.clone(), y, c, w, cw, rays, &loss_spec);
        let loss_v = l.clone().into_scalar::<f32>();
        if !loss_v.is_finite() {
            bail!("loss became {loss_v} at step {step}; lower --lr");
        }
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(lr_at(&cfg, step), model, grads);
        // Training Dice from this batch's predictions, for the progress line.
        let p = foreground(logits).unwrap_or_default();
        let mut overlap = Overlap::default();
        add_logits(&mut overlap, &p, examples.iter().flat_map(|e| e.y.iter()));
        let dice = overlap.dice() as f32;
        ema_loss = if ema_loss.is_nan() {
            loss_v
        } else {
            0.95 * ema_loss + 0.05 * loss_v
        };
        ema_dice = if ema_dice.is_nan() {
            dice
        } else {
            0.95 * ema_dice + 0.05 * dice
        };
        state.step += 1;
        bar.set_position(state.step as u64);
        bar.set_message(format!(
            "loss {ema_loss:.4}  dice {ema_dice:.3}  lr {:.1e}",
            lr_at(&cfg, step)
        ));
        if bar.is_hidden() && state.step % 25 == 0 {
            // No terminal (a log file): plain progress lines instead of the bar.
            eprintln!(
                "step {}/{}  loss {ema_loss:.4}  dice {ema_dice:.3}  lr {:.1e}  {:.2} s/step",
                state.step,
                cfg.steps,
                lr_at(&cfg, step),
                t_start.elapsed().as_secs_f64() / (state.step - start_step) as f64
            );
        }
        if state.step % cfg.epoch_steps == 0 || state.step == cfg.steps {
            state.seconds = seconds_before + t_start.elapsed().as_secs_f64();
            let per_step =
                t_start.elapsed().as_secs_f64() / (state.step - start_step).max(1) as f64;
            let line = validate_and_keep_best(
                &model, &cfg, &run, &mut state, &val, &val_full, ema_loss, &device,
            )?;
            let line = format!("{line}  ({per_step:.2} s/step)");
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            model
                .clone()
                .save_file(run.last())
                .map_err(|e| anyhow::anyhow!("saving checkpoint: {e:?}"))?;
            optim
                .save(run.optim())
                .map_err(|e| anyhow::anyhow!("saving optimizer: {e:?}"))?;
            write_atomic(
                &run.state(),
                serde_json::to_string_pretty(&state)?.as_bytes(),
            )?;
            let since_best = (state.step - state.best_step) / cfg.epoch_steps;
            if cfg.patience > 0 && since_best >= cfg.patience {
                let line = format!(
                    "stopping early: {since_best} validations without a better score than step {}",
                    state.best_step
                );
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                break;
            }
        }
    }
    bar.finish();
    Ok(state)
}

/// Validates `model` at `state.step` (tiles, and whole images through the runtime when there
/// are any), records it in `state`, and saves and exports it as the best checkpoint when its
/// selection score is the best so far; returns the progress line.
#[allow(clippy::too_many_arguments)]
fn validate_and_keep_best(
    model: &UNet,
    cfg: &TrainConfig,
    run: &RunDir,
    state: &mut TrainState,
    val: &[Example],
    val_full: &[(String, Named)],
    ema_loss: f32,
    device: &Device,
) -> Result<String> {
    let v = validate(model, val, cfg.tile, device)?;
    let whole = if val_full.is_empty() {
        None
    } else {
        Some(validate_instances(&model.valid(), cfg, val_full)?)
    };
    state.history.push((state.step, ema_loss, v.dice, v.iou));
    if let Some((m, _, _)) = &whole {
        state.instance_history.push((state.step, *m));
    }
    let line = format!(
        "step {:6}  loss {ema_loss:.4}  val dice {:.4}  val iou {:.4}{}{}",
        state.step,
        v.dice,
        v.iou,
        v.core_dice
            .map(|c| format!("  val core dice {c:.4}"))
            .unwrap_or_default()
            + &v
                .ray_px
                .map(|r| format!("  val ray error {r:.2} px"))
                .unwrap_or_default(),
        whole
            .as_ref()
            .map(|(m, g, post)| format!(
                "  whole images (threshold {}, grow {}): F1 {:.4} DSB {:.4} Dice {:.4}, group-balanced score {:.4}, checkpoint score {:.4}",
                post.threshold,
                post.grow,
                m.f1_at_05,
                m.dsb2018_score,
                m.pixel_dice,
                group_balanced_score(g),
                checkpoint_score(m, g)
            ))
            .unwrap_or_default(),
    );
    let score = whole
        .as_ref()
        .map_or(v.score(), |(m, g, _)| checkpoint_score(m, g));
    if let Some((_, g, post)) = &whole {
        state.score_history.push(Validation {
            step: state.step,
            post: *post,
            group_score: group_balanced_score(g),
            checkpoint_score: score,
        });
    }
    if state.best_step == 0 || score >= state.best_score {
        if let Some((_, g, post)) = &whole {
            state.best_groups = g.clone();
            state.best_grow = post.grow;
            state.best_threshold = Some(post.threshold);
        }
        state.best_score = score;
        state.best_dice = v.dice;
        state.best_iou = v.iou;
        state.best_step = state.step;
        model
            .clone()
            .save_file(run.best())
            .map_err(|e| anyhow::anyhow!("saving best: {e:?}"))?;
        export(model, cfg, state, state.best_post(), &run.best_onnx())?;
    }
    Ok(line)
}

/// Writes `model` as an ONNX file with the contract's metadata and `post` as its default
/// threshold and instance growth.
pub fn export(
    model: &UNet,
    cfg: &TrainConfig,
    state: &TrainState,
    post: Post,
    out: &Path,
) -> Result<()> {
    write_atomic(out, &onnx_bytes(model, cfg, state, post)?)
}

/// `model` as ONNX bytes with the contract's metadata.
fn onnx_bytes(model: &UNet, cfg: &TrainConfig, state: &TrainState, post: Post) -> Result<Vec<u8>> {
    let weights = model.to_weights()?;
    let mut meta = ModelMeta {
        output: OutputKind::Probability,
        tile: Some(cfg.tile),
        grow: post.grow,
        threshold: post.threshold,
        ..Default::default()
    };
    meta.props.insert(KEY_DIAMETER.into(), "5-56".into());
    let data = if cfg.data == "synthetic" {
        cfg.data.clone()
    } else {
        format!(
            "{} (validation groups: {}; synthetic share {})",
            cfg.data,
            cfg.val_groups.join(","),
            cfg.synthetic_ratio
        )
    };
    meta.props.insert(KEY_TRAINING_DATA.into(), data);
    meta.props.insert(
        KEY_TRAINER.into(),
        format!("unet-train {}", env!("CARGO_PKG_VERSION")),
    );
    meta.props
        .insert(KEY_TRAIN_STEPS.into(), state.step.to_string());
    // The figures of the checkpoint being exported (`state.step`), at the settings they were
    // scored with.
    let scored = state.post_at(state.step);
    let tile_dice = state
        .history
        .iter()
        .find(|h| h.0 == state.step)
        .map_or(state.best_dice, |h| h.2);
    let whole = state
        .instance_history
        .iter()
        .find(|(step, _)| *step == state.step)
        .zip(scored)
        .map(|((_, m), scored)| {
            format!(
                "; {} whole validation images, scored with threshold {} and growth {} px: mean F1@0.5 {:.3}, DSB2018 score {:.3}, pixel Dice {:.3}",
                m.images, scored.threshold, scored.grow, m.f1_at_05, m.dsb2018_score, m.pixel_dice
            )
        })
        .unwrap_or_default();
    meta.props.insert(
        KEY_VALIDATION.into(),
        format!("tile Dice {tile_dice:.4}{whole}"),
    );
    meta.props.insert(KEY_SEED.into(), cfg.seed.to_string());
    let proto = weights.to_onnx(&meta)?;
    Ok(unet_edge::onnx_writer::encode(&proto))
}

/// Loads a run's best (or last) checkpoint and exports it; `grow` and `threshold` override the
/// instance growth and foreground threshold the run chose (the model's `unet_edge.grow_px` and
/// `unet_edge.threshold`).
pub fn export_run(
    dir: &Path,
    out: &Path,
    last: bool,
    grow: Option<usize>,
    threshold: Option<f32>,
) -> Result<()> {
    let run = RunDir(dir.to_path_buf());
    let cfg: TrainConfig =
        serde_json::from_slice(&std::fs::read(run.config()).with_context(|| {
            format!("{}: not a run directory (no config.json)", dir.display())
        })?)?;
    let mut state: TrainState = serde_json::from_slice(&std::fs::read(run.state())?)?;
    let chosen = state.export_post(last);
    let post = Post {
        threshold: threshold.unwrap_or(chosen.threshold),
        grow: grow.unwrap_or(chosen.grow),
    };
    if !last {
        // The metadata's step count is the exported checkpoint's, not the run's latest.
        state.step = state.best_step;
    }
    let model = load_run(dir, &Device::flex(), last)?;
    export(&model, &cfg, &state, post, out)
}

/// Averages the weights of exported checkpoints of one network (`unet-train average`) and writes
/// them as one ONNX model. The metadata is the first input's, except that the trainer entry
/// names the averaged steps and the validation entry, which described a single checkpoint, is
/// dropped: an average has to be validated again (`unet-edge segment` + `eval`).
pub fn average_files(inputs: &[PathBuf], out: &Path) -> Result<()> {
    let mut sets = Vec::with_capacity(inputs.len());
    let mut first_meta = None;
    let mut steps = Vec::with_capacity(inputs.len());
    for path in inputs {
        let model = unet_edge::engine::model::Model::from_path(path)?;
        sets.push(
            UNetWeights::from_onnx(model.proto())
                .with_context(|| format!("reading U-Net weights from {}", path.display()))?,
        );
        steps.push(
            model
                .meta
                .props
                .get(KEY_TRAIN_STEPS)
                .cloned()
                .unwrap_or_else(|| "?".into()),
        );
        first_meta.get_or_insert(model.meta);
    }
    let avg = UNetWeights::average(&sets).with_context(|| {
        format!(
            "averaging {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let mut meta = first_meta.unwrap_or_default();
    let trainer = meta
        .props
        .get(KEY_TRAINER)
        .cloned()
        .unwrap_or_else(|| format!("unet-train {}", env!("CARGO_PKG_VERSION")));
    meta.props.insert(
        KEY_TRAINER.into(),
        format!(
            "{trainer}; weights averaged over {} checkpoints (steps {})",
            inputs.len(),
            steps.join(", ")
        ),
    );
    meta.props.remove(KEY_VALIDATION);
    if let Some(last) = steps.iter().filter_map(|s| s.parse::<usize>().ok()).max() {
        meta.props.insert(KEY_TRAIN_STEPS.into(), last.to_string());
    }
    let proto = avg.to_onnx(&meta)?;
    write_atomic(out, &unet_edge::onnx_writer::encode(&proto))
}

/// The best (or last) weights of a run, in the network its config describes.
fn load_run<D: Into<Device> + Clone>(dir: &Path, device: &D, last: bool) -> Result<UNet> {
    let device: Device = device.clone().into();
    let run = RunDir(dir.to_path_buf());
    let cfg: TrainConfig =
        serde_json::from_slice(&std::fs::read(run.config()).with_context(|| {
            format!("{}: not a run directory (no config.json)", dir.display())
        })?)?;
    let net = UNet::new(cfg.spec(), &device);
    let net = if cfg.batch_norm {
        net.with_batch_norm(&device)
    } else {
        net
    };
    net.try_load_file(if last { run.last() } else { run.best() })
        .map_err(|e| anyhow::anyhow!("loading weights from {}: {e:?}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::sigmoid;
    use std::collections::BTreeMap;
    use unet_edge::engine::model::Model;

    fn mean(images: usize, f1: f64, dsb: f64) -> ImageMean {
        ImageMean {
            images,
            pixel_dice: 0.9,
            f1_at_05: f1,
            dsb2018_score: dsb,
        }
    }

    /// Whole-image figures of one checkpoint: a 47-image group and a 2-image group.
    fn checkpoint(big: (f64, f64), tiny: (f64, f64)) -> (ImageMean, BTreeMap<String, ImageMean>) {
        let groups = BTreeMap::from([
            ("big".to_string(), mean(47, big.0, big.1)),
            ("tiny".to_string(), mean(2, tiny.0, tiny.1)),
        ]);
        let all = mean(
            49,
            (47.0 * big.0 + 2.0 * tiny.0) / 49.0,
            (47.0 * big.1 + 2.0 * tiny.1) / 49.0,
        );
        (all, groups)
    }

    #[test]
    fn a_lead_on_a_two_image_group_alone_does_not_choose_the_checkpoint() {
        // A leads only on the tiny group, B on the 47 images: the group-balanced score alone
        // prefers A, the checkpoint score B.
        let (a_all, a) = checkpoint((0.5, 0.3), (0.9, 0.6));
        let (b_all, b) = checkpoint((0.6, 0.4), (0.7, 0.4));
        assert!(group_balanced_score(&a) > group_balanced_score(&b));
        assert!(checkpoint_score(&b_all, &b) > checkpoint_score(&a_all, &a));
        // Equal groups: both halves agree, and the score is their common value.
        let (all, g) = checkpoint((0.8, 0.5), (0.8, 0.5));
        assert!((checkpoint_score(&all, &g) - 0.65).abs() < 1e-6);
    }

    #[test]
    fn average_writes_the_mean_weights_and_says_which_steps() {
        let dir = tempfile::tempdir().unwrap();
        let spec = UNetSpec {
            base: 2,
            depth: 1,
            outputs: 2,
        };
        let mut paths = Vec::new();
        let mut sets = Vec::new();
        for (seed, step) in [(5u64, 250usize), (6, 500)] {
            let w = spec.random_weights(seed);
            let mut meta = ModelMeta::default();
            meta.props.insert(KEY_TRAIN_STEPS.into(), step.to_string());
            meta.props
                .insert(KEY_VALIDATION.into(), "one checkpoint's figures".into());
            let path = dir.path().join(format!("s{step}.onnx"));
            std::fs::write(
                &path,
                unet_edge::onnx_writer::encode(&w.to_onnx(&meta).unwrap()),
            )
            .unwrap();
            paths.push(path);
            sets.push(w);
        }
        let out = dir.path().join("avg.onnx");
        average_files(&paths, &out).unwrap();
        let proto = unet_edge::onnx_writer::decode(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            UNetWeights::from_onnx(&proto).unwrap(),
            UNetWeights::average(&sets).unwrap()
        );
        let prop = |k: &str| {
            proto
                .metadata_props
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let trainer = prop(KEY_TRAINER).unwrap();
        assert!(
            trainer.contains("averaged over 2 checkpoints (steps 250, 500)"),
            "{trainer}"
        );
        assert_eq!(prop(KEY_VALIDATION), None);
        assert_eq!(prop(KEY_TRAIN_STEPS).as_deref(), Some("500"));
        // The averaged model runs in the runtime.
        Model::from_path(&out).unwrap();

        let other = UNetSpec { outputs: 1, ..spec }.random_weights(7);
        let odd = dir.path().join("odd.onnx");
        std::fs::write(
            &odd,
            unet_edge::onnx_writer::encode(&other.to_onnx(&ModelMeta::default()).unwrap()),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            average_files(&[paths[0].clone(), odd], &out).unwrap_err()
        );
        assert!(e.contains("only one architecture"), "{e}");
    }

    fn tiny(steps: usize) -> TrainConfig {
        TrainConfig {
            data: "synthetic".into(),
            base: 4,
            depth: 2,
            tile: 32,
            batch: 2,
            steps,
            epoch_steps: 2,
            lr: 1e-3,
            dice_weight: 0.5,
            border_w0: 5.0,
            border_sigma: 3.0,
            val_images: 4,
            seed: 1,
            outputs: 2,
            core_weight: 1.0,
            gap: false,
            val_groups: Vec::new(),
            synthetic_ratio: 0.0,
            patience: 0,
            frame_normalization: false,
            core_border: false,
            core_ridge: 0.0,
            dropout: 0.0,
            lovasz_weight: 0.0,
            native_grid: false,
            star_rays: 0,
            star_weight: 0.1,
            batch_norm: false,
            draw_by: DrawBy::Image,
        }
    }

    /// A two-level, two-output net with fresh weights and a seeded batch of two 32x32 inputs.
    fn small_net_and_batch(seed: u64) -> (Device, UNet, Vec<f32>, usize, usize) {
        let device = Device::flex();
        let spec = UNetSpec {
            base: 4,
            depth: 2,
            outputs: 2,
        };
        let model = UNet::new(spec, &device);
        let mut rng = Rng::new(seed);
        let (n, t) = (2, 32);
        let x: Vec<f32> = (0..n * t * t).map(|_| rng.normal()).collect();
        (device, model, x, n, t)
    }

    #[test]
    fn dropout_acts_in_training_only_and_keeps_the_scale() {
        let (device, model, x, n, t) = small_net_and_batch(12);
        let run = |scale: f32| {
            channel(
                model.forward_dropout(to_tensor(x.clone(), n, t, &device), scale),
                0,
            )
            .unwrap()
        };
        let plain = foreground(model.forward(to_tensor(x.clone(), n, t, &device))).unwrap();
        assert_eq!(run(0.0), plain);
        let (a, b) = (run(1.0), run(1.0));
        assert_ne!(a, plain);
        assert_ne!(a, b, "each training step draws its own mask");
        // Inverted dropout keeps activations' expected size: the mean logit moves little.
        let mean = |v: &[f32]| v.iter().map(|&z| z as f64).sum::<f64>() / v.len() as f64;
        let spread = plain
            .iter()
            .map(|&z| (z as f64 - mean(&plain)).abs())
            .sum::<f64>()
            / plain.len() as f64;
        assert!(
            (mean(&a) - mean(&plain)).abs() < spread.max(1e-3),
            "{} vs {}",
            mean(&a),
            mean(&plain)
        );
    }

    #[test]
    fn burn_forward_matches_tract_on_the_exported_onnx() {
        let (device, model, x, n, t) = small_net_and_batch(11);
        let burn_out = sigmoid(model.forward(to_tensor(x.clone(), n, t, &device)))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        export(
            &model,
            &tiny(1),
            &TrainState::default(),
            Post::default(),
            &path,
        )
        .unwrap();
        let m = Model::from_path(&path).unwrap();
        let mut r = m.plan(n, t).unwrap().runner().unwrap();
        r.input_mut().copy_from_slice(&x);
        let tract_out = r.run().unwrap();
        let max = burn_out
            .iter()
            .zip(tract_out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 1e-4, "burn vs tract max abs diff {max}");
        let spread = burn_out.iter().copied().fold(f32::MIN, f32::max)
            - burn_out.iter().copied().fold(f32::MAX, f32::min);
        assert!(
            spread > 1e-3,
            "outputs must vary for the comparison to mean anything: {spread}"
        );
    }

    #[test]
    fn a_star_run_trains_the_rays_and_exports_a_model_the_runtime_decodes_with_polygons() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            star_rays: 8,
            ..tiny(2)
        };
        train(cfg.clone(), dir.path(), false, None).unwrap();
        let out = dir.path().join("star.onnx");
        export_run(dir.path(), &out, false, None, None).unwrap();
        let m = Model::from_path(&out).unwrap();
        assert_eq!(m.meta.channels, ["foreground", "core"]);
        assert_eq!(m.meta.star_rays, 8);
        // The new ray channels start at the prior length, not at half the longest ray (two
        // small steps move them little).
        let net = load_run(dir.path(), &Device::flex(), false).unwrap();
        assert_eq!(net.spec().outputs, 10);
        let w = net.to_weights().unwrap();
        let head = w.layers.last().unwrap();
        assert_eq!(head.bias.len(), 10);
        for b in &head.bias[2..] {
            assert!((b - ray_prior_logit()).abs() < 0.05, "{:?}", head.bias);
        }
        for (rays, outputs) in [(8, 1), (2, 2), (unet_edge::post::star::MAX_RAYS + 1, 2)] {
            let bad = TrainConfig {
                star_rays: rays,
                outputs,
                ..tiny(2)
            };
            let e = check_options(&bad).unwrap_err().to_string();
            assert!(e.contains("--star-rays"), "{e}");
        }
    }

    /// Regression (session 26): `export --last` wrote the best checkpoint's threshold and
    /// growth into the last checkpoint's model.
    #[test]
    fn the_last_checkpoint_exports_with_its_own_settings() {
        let post = |threshold, grow| Post { threshold, grow };
        let validation = |step, p| Validation {
            step,
            post: p,
            group_score: 0.0,
            checkpoint_score: 0.0,
        };
        let state = TrainState {
            step: 750,
            best_step: 500,
            best_threshold: Some(0.5),
            best_grow: 1,
            score_history: vec![validation(500, post(0.5, 1)), validation(750, post(0.3, 0))],
            ..TrainState::default()
        };
        assert_eq!(state.export_post(false), post(0.5, 1));
        assert_eq!(state.export_post(true), post(0.3, 0));
        // Without a record of its validation the last checkpoint falls back to the best's.
        let older = TrainState {
            score_history: Vec::new(),
            ..state.clone()
        };
        assert_eq!(older.export_post(true), post(0.5, 1));
        assert_eq!(older.post_at(500), Some(post(0.5, 1)));
        assert_eq!(older.post_at(750), None);
    }

    #[test]
    fn a_batch_norm_run_exports_its_running_statistics_folded_into_the_convolutions() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            batch_norm: true,
            ..tiny(2)
        };
        train(cfg.clone(), dir.path(), false, None).unwrap();
        let net = load_run(dir.path(), &Device::flex(), true).unwrap();
        assert!(net.has_batch_norm());
        let (device, _, x, n, t) = small_net_and_batch(13);
        // Not an autodiff device: burn normalizes with the running statistics, as the export must.
        let burn_out = sigmoid(net.forward(to_tensor(x.clone(), n, t, &device)))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let out = dir.path().join("bn.onnx");
        export_run(dir.path(), &out, true, None, None).unwrap();
        let m = Model::from_path(&out).unwrap();
        let mut r = m.plan(n, t).unwrap().runner().unwrap();
        r.input_mut().copy_from_slice(&x);
        let tract_out = r.run().unwrap();
        let max = burn_out
            .iter()
            .zip(tract_out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 1e-4, "burn vs tract max abs diff {max}");
        // An ONNX model has no statistics left to train: a batch-norm run refuses to start from one.
        let e = train(
            TrainConfig {
                batch_norm: true,
                ..tiny(1)
            },
            &dir.path().join("again"),
            false,
            Some(&out),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("batch normalization"), "{e}");
    }

    #[test]
    fn smoke_train_resume_export_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = train(tiny(2), dir.path(), false, None).unwrap();
        assert_eq!(s.step, 2);
        assert_eq!(s.history.len(), 1);
        let mut other = tiny(4);
        other.lr = 0.1;
        let e = train(other, dir.path(), true, None)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.unwrap().contains("differ"),
            "resume with other options is refused"
        );
        // Resume continues from the checkpoint; --steps may grow to extend the run.
        let s = train(tiny(4), dir.path(), true, None).unwrap();
        assert_eq!(s.step, 4);
        assert_eq!(
            s.history.len(),
            2,
            "one validation per epoch, none repeated"
        );
        let onnx = RunDir(dir.path().to_path_buf()).best_onnx();
        let m = Model::from_path(&onnx).unwrap();
        assert_eq!(m.meta.tile, Some(32));
        let mut r = m.plan(1, 32).unwrap().runner().unwrap();
        let out = r.run().unwrap();
        assert_eq!(out.len(), 2 * 32 * 32);
        assert!(out.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(m.meta.channels, ["foreground", "core"]);
        let out2 = dir.path().join("again.onnx");
        export_run(dir.path(), &out2, false, None, None).unwrap();
        assert_eq!(Model::from_path(&out2).unwrap().meta.threshold, 0.5);
        export_run(dir.path(), &out2, true, Some(1), Some(0.4)).unwrap();
        let meta = Model::from_path(&out2).unwrap().meta;
        assert_eq!((meta.grow, meta.threshold), (1, 0.4));
        assert!(Model::from_path(&out2).is_ok());
    }

    #[test]
    fn folder_runs_choose_checkpoints_by_whole_images_and_record_both_scores() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("images")).unwrap();
        std::fs::create_dir_all(data.join("labels")).unwrap();
        let mut index = String::from("id12,group\n");
        for (i, group) in ["tr", "tr", "tr", "va", "va", "vb"].iter().enumerate() {
            let s = unet_edge::synth::generate(
                &mut Rng::new(i as u64),
                64,
                64,
                &SynthConfig::default(),
            );
            let name = format!("im{i}");
            let gray: Vec<u8> = s.image.iter().map(|v| v.clamp(0.0, 255.0) as u8).collect();
            unet_edge::io::imageio::save_gray8(
                &data.join(format!("images/{name}.png")),
                64,
                64,
                gray,
            )
            .unwrap();
            unet_edge::io::imageio::save_gray16(
                &data.join(format!("labels/{name}.png")),
                64,
                64,
                s.labels,
            )
            .unwrap();
            index.push_str(&format!("{name},{group}\n"));
        }
        std::fs::write(data.join("index.csv"), index).unwrap();
        let cfg = TrainConfig {
            data: data.to_string_lossy().into_owned(),
            val_groups: vec!["va".into(), "vb".into()],
            ..tiny(2)
        };
        let run = dir.path().join("run");
        let s = train(cfg, &run, false, None).unwrap();
        assert_eq!(s.instance_history.len(), 1);
        assert_eq!(s.score_history.len(), 1);
        let Validation {
            step,
            post,
            group_score,
            checkpoint_score: score,
        } = s.score_history[0];
        assert_eq!(step, 2);
        assert_eq!(post, s.best_post());
        assert!(THRESHOLDS.contains(&post.threshold) && GROWTHS.contains(&post.grow));
        assert_eq!(s.best_groups.len(), 2, "both validation groups scored");
        assert!((group_score - group_balanced_score(&s.best_groups)).abs() < 1e-6);
        assert!((score - checkpoint_score(&s.instance_history[0].1, &s.best_groups)).abs() < 1e-6);
        assert_eq!(s.best_score, score, "the checkpoint score chose the best");

        // An exported checkpoint describes its own validation, not the best one's: give the
        // state a best checkpoint at another step with other figures, then export the last.
        let mut state = s.clone();
        let mut other = state.instance_history[0].1;
        other.f1_at_05 = 0.123_4;
        state.instance_history.insert(0, (1, other));
        state.history.insert(0, (1, 0.0, 0.987_6, 0.5));
        state.best_step = 1;
        state.best_dice = 0.987_6;
        std::fs::write(
            RunDir(run.clone()).state(),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        let out = dir.path().join("last.onnx");
        export_run(&run, &out, true, Some(0), None).unwrap();
        let v = Model::from_path(&out).unwrap().meta.props[KEY_VALIDATION].clone();
        let own = &s.instance_history[0].1;
        assert!(
            v.contains(&format!("tile Dice {:.4}", s.history[0].2))
                && v.contains(&format!("F1@0.5 {:.3}", own.f1_at_05))
                && v.contains(&format!(
                    "threshold {} and growth {} px",
                    post.threshold, post.grow
                )),
            "{v}"
        );
        export_run(&run, &out, false, None, None).unwrap();
        let v = Model::from_path(&out).unwrap().meta.props[KEY_VALIDATION].clone();
        assert!(
            v.contains("tile Dice 0.9876") && v.contains("F1@0.5 0.123"),
            "{v}"
        );
    }

    #[test]
    fn init_from_a_one_channel_run_keeps_its_foreground_and_grows_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        let cfg1 = TrainConfig {
            outputs: 1,
            ..tiny(2)
        };
        train(cfg1, &one, false, None).unwrap();
        let device = Device::flex();
        let a = load_run(&one, &device, false).unwrap();
        let b = a.clone().with_outputs(2, &device).unwrap();
        let x = to_tensor(vec![0.3; 32 * 32], 1, 32, &device);
        let fa = foreground(a.forward(x.clone())).unwrap();
        let fb = foreground(b.forward(x)).unwrap();
        assert_eq!(
            fa, fb,
            "the foreground channel is unchanged by growing the head"
        );
        // Training from it with the core channel runs and exports two channels.
        train(tiny(2), &two, false, Some(&one)).unwrap();
        let m = Model::from_path(&RunDir(two.clone()).best_onnx()).unwrap();
        assert_eq!(m.meta.channels.len(), 2);

        // An exported ONNX model is a starting point too: the net read back computes what the
        // run's best checkpoint computes.
        let three = dir.path().join("three");
        train(
            tiny(1),
            &three,
            false,
            Some(&RunDir(two.clone()).best_onnx()),
        )
        .unwrap();
        let best = load_run(&two, &device, false).unwrap();
        let w = UNetWeights::read_onnx(&RunDir(two).best_onnx()).unwrap();
        let read = UNet::from_weights(&w, &device).unwrap();
        let x = to_tensor(vec![0.3; 32 * 32], 1, 32, &device);
        assert_eq!(
            foreground(best.forward(x.clone())).unwrap(),
            foreground(read.forward(x)).unwrap()
        );
    }

    #[test]
    fn lr_schedule_warms_up_and_decays() {
        let c = tiny(1000);
        assert!(lr_at(&c, 0) < lr_at(&c, 19));
        assert!((lr_at(&c, 20) - c.lr).abs() < 1e-6);
        assert!(lr_at(&c, 999) < c.lr * 0.05);
    }
}
