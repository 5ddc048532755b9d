//! The training loss: weighted BCE and soft Dice on the foreground, the core channel's terms, and
//! the Lovász hinge that optimizes each crop's foreground IoU directly.

use crate::training::TrainConfig;
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};

/// The loss terms and their weights, as a run's options set them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossSpec {
    /// Weight of the foreground's soft Dice (the core's is at least 0.5).
    pub dice_weight: f32,
    /// Output channels: 1 (foreground) or 2 (foreground, core).
    pub outputs: usize,
    /// Weight of the core channel's terms.
    pub core_weight: f32,
    /// Weight of the foreground's Lovász hinge (0 = off).
    pub lovasz_weight: f32,
    /// Star-convex ray channels after the core (0 = none).
    pub star_rays: usize,
    /// Weight of the rays' mean absolute error in px.
    pub star_weight: f32,
}

impl LossSpec {
    /// The loss a run's configuration asks for.
    pub fn of(cfg: &TrainConfig) -> LossSpec {
        LossSpec {
            dice_weight: cfg.dice_weight,
            outputs: cfg.outputs,
            core_weight: cfg.core_weight,
            lovasz_weight: cfg.lovasz_weight,
            star_rays: cfg.star_rays,
            star_weight: cfg.star_weight,
        }
    }
}

/// Binary cross-entropy on logits (numerically stable) per pixel; soft targets allowed.
fn bce(z: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    z.clone().clamp_min(0.0) - z.clone() * y + (z.abs().neg().exp() + 1.0).log()
}

/// BCE on logits averaged with per-pixel weights `w` (their weighted mean).
fn weighted_bce(z: Tensor<4>, y: Tensor<4>, w: Tensor<4>) -> Tensor<1> {
    (bce(z, y) * w.clone()).sum() / w.sum()
}

/// Soft Dice loss (1 - Dice) of logits against 0/1 targets.
fn dice_loss(z: Tensor<4>, y: Tensor<4>) -> Tensor<1> {
    let p = sigmoid(z);
    let inter = (p.clone() * y.clone()).sum();
    let dice = (inter * 2.0 + 1.0) / (p.sum() + y.sum() + 1.0);
    dice.neg() + 1.0
}

/// Per-pixel weights of the Lovász hinge for one crop (Berman et al., CVPR 2018): with the hinge
/// errors sorted from the largest, each pixel's weight is how much the Jaccard loss grows when it
/// joins the set of errors. The hinge summed with these weights is the tight convex surrogate of
/// 1 - IoU, and its gradient is the hinge's times these weights, which stay constant as long as
/// the order of the errors does; so they are computed from detached values. `out` has one entry
/// per pixel.
pub fn lovasz_weights(logits: &[f32], truth: &[f32], out: &mut [f32]) {
    let n = logits.len();
    let fg = |i: usize| truth[i] > 0.5;
    let error = |i: usize| 1.0 - logits[i] * if fg(i) { 1.0 } else { -1.0 };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| error(b).total_cmp(&error(a)));
    let positives = (0..n).filter(|&i| fg(i)).count() as f64;
    let (mut missed, mut spurious, mut prev) = (0.0f64, 0.0f64, 0.0f64);
    for &i in &order {
        if fg(i) {
            missed += 1.0;
        } else {
            spurious += 1.0;
        }
        let jaccard = 1.0 - (positives - missed) / (positives + spurious);
        out[i] = (jaccard - prev) as f32;
        prev = jaccard;
    }
}

/// The Lovász hinge of `[N,1,H,W]` foreground logits against 0/1 targets, per crop, averaged.
fn lovasz_hinge(z: Tensor<4>, y: Tensor<4>) -> Tensor<1> {
    let [n, _, h, w] = z.dims();
    // The net's float tensors always convert to f32; nothing a user passes can make this fail.
    let host = |t: Tensor<4>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 tensor data")
    };
    let (zv, yv) = (host(z.clone()), host(y.clone()));
    let px = h * w;
    let mut weights = vec![0.0; n * px];
    for ((zc, yc), out) in zv.chunks(px).zip(yv.chunks(px)).zip(weights.chunks_mut(px)) {
        lovasz_weights(zc, yc, out);
    }
    let device = z.device();
    let wt = Tensor::<4>::from_data(TensorData::new(weights, [n, 1, h, w]), &device);
    let signs = y * 2.0 - 1.0;
    let hinge = relu((z * signs).neg() + 1.0);
    (hinge * wt).sum() / n as f32
}

/// Targets of the star-ray channels: `[N,R,H,W]` distances as fractions of
/// [`unet_edge::post::star::MAX_RAY_PX`], and 1 where each is known (inside a nucleus, the ray
/// ending inside the crop), else 0.
pub struct RayTargets {
    /// Distances.
    pub dist: Tensor<4>,
    /// Where they are known.
    pub known: Tensor<4>,
}

/// Mean absolute error in px of the ray channels' distances (sigmoid outputs, as the exported
/// graph gives them) over the known ones.
fn ray_error(z: Tensor<4>, t: RayTargets) -> Tensor<1> {
    let err = (sigmoid(z) - t.dist).abs() * t.known.clone();
    err.sum() * unet_edge::post::star::MAX_RAY_PX / (t.known.sum() + 1.0)
}

/// Foreground: BCE weighted per pixel with `w` plus soft Dice (plus the Lovász hinge when asked
/// for). Core channel (when the net has one): BCE weighted per pixel with `cw` (the data's
/// [`crate::data::TargetSpec`] makes it) plus soft Dice against the core target, times
/// `core_weight`.
#[allow(clippy::too_many_arguments)]
pub fn loss(
    logits: Tensor<4>,
    y: Tensor<4>,
    c: Tensor<4>,
    w: Tensor<4>,
    cw: Tensor<4>,
    rays: Option<RayTargets>,
    spec: &LossSpec,
) -> Tensor<1> {
    let z = logits.clone().narrow(1, 0, 1);
    let mut l = weighted_bce(z.clone(), y.clone(), w);
    if spec.dice_weight > 0.0 {
        l = l + dice_loss(z.clone(), y.clone()) * spec.dice_weight;
    }
    if spec.lovasz_weight > 0.0 {
        l = l + lovasz_hinge(z, y) * spec.lovasz_weight;
    }
    if let (true, Some(t)) = (spec.star_rays > 0, rays) {
        let zr = logits.clone().narrow(1, spec.outputs, spec.star_rays);
        l = l + ray_error(zr, t) * spec.star_weight;
    }
    if spec.outputs > 1 {
        let z1 = logits.narrow(1, 1, 1);
        let core =
            weighted_bce(z1.clone(), c.clone(), cw) + dice_loss(z1, c) * spec.dice_weight.max(0.5);
        l = l + core * spec.core_weight;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use unet_edge::rng::Rng;

    fn spec() -> LossSpec {
        LossSpec {
            dice_weight: 0.5,
            outputs: 2,
            core_weight: 1.0,
            lovasz_weight: 0.0,
            star_rays: 0,
            star_weight: 0.0,
        }
    }

    #[test]
    fn ray_error_is_the_mean_absolute_error_in_px_over_the_known_rays() {
        let device = Device::flex();
        let t4 = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, 2, 2]), &device);
        let max = unet_edge::post::star::MAX_RAY_PX;
        // Logit 0 is half the longest ray; targets 8 px short of it and 4 px beyond, one
        // unknown (its error must not count) and one known exactly.
        let z = t4(vec![0.0; 4]);
        let dist = t4(vec![0.5 - 8.0 / max, 0.5 + 4.0 / max, 0.0, 0.5]);
        let known = t4(vec![1.0, 1.0, 0.0, 1.0]);
        let e = ray_error(z, RayTargets { dist, known }).into_scalar::<f32>();
        // (8 + 4 + 0) px over 3 known rays, with the +1 that keeps an empty crop finite.
        assert!((e - 12.0 / 4.0).abs() < 1e-4, "{e}");
    }

    #[test]
    fn the_core_weight_map_weights_only_the_core_bce() {
        let device = Device::flex();
        let t4 = |v: Vec<f32>, c: usize| {
            Tensor::<4>::from_data(TensorData::new(v, [1, c, 2, 2]), &device)
        };
        // The core logit is confidently wrong at pixel 3 (the "contact"), right elsewhere.
        let logits = || t4(vec![2.0, 2.0, -2.0, -2.0, 3.0, 3.0, -3.0, 3.0], 2);
        let (y, c) = (
            || t4(vec![1.0, 1.0, 0.0, 0.0], 1),
            || t4(vec![1.0, 1.0, 0.0, 0.0], 1),
        );
        let value = |w: Vec<f32>, cw: Vec<f32>| {
            let l = loss(logits(), y(), c(), t4(w, 1), t4(cw, 1), None, &spec());
            l.into_data().try_to_vec::<f32>().unwrap()[0]
        };
        let flat = vec![1.0; 4];
        let contact = vec![1.0, 1.0, 1.0, 9.0];
        // Weighting the wrong pixel raises the loss only through the core's map; the
        // foreground is right everywhere, so its own weighting changes little.
        let core_weighted = value(flat.clone(), contact.clone());
        let plain = value(flat.clone(), flat.clone());
        let fg_weighted = value(contact, flat);
        assert!(
            core_weighted > plain + 0.5,
            "core {core_weighted} vs plain {plain}"
        );
        assert!(
            (fg_weighted - plain).abs() < 0.1,
            "foreground {fg_weighted} vs {plain}"
        );
    }

    /// Logits 0 on the wrongly predicted pixels (hinge error 1) and ±1 on the right ones (error
    /// 0): the Lovász hinge is then exactly the Jaccard loss 1 - IoU of the prediction.
    #[test]
    fn lovasz_hinge_equals_the_jaccard_loss_on_unit_errors() {
        let device = Device::flex();
        let mut rng = Rng::new(7);
        let (n, side) = (3, 16);
        let mut z = Vec::new();
        let mut y = Vec::new();
        let mut expected = 0.0;
        for crop in 0..n {
            let (mut inter, mut union) = (0.0, 0.0);
            for _ in 0..side * side {
                let truth = rng.uniform() < 0.3;
                // The last crop predicts everything right: its Jaccard loss is 0.
                let pred = if crop == n - 1 {
                    truth
                } else {
                    rng.uniform() < 0.35
                };
                y.push(if truth { 1.0 } else { 0.0 });
                z.push(match (pred == truth, truth) {
                    (false, _) => 0.0,
                    (true, true) => 1.0,
                    (true, false) => -1.0,
                });
                inter += f64::from(u8::from(pred && truth));
                union += f64::from(u8::from(pred || truth));
            }
            expected += 1.0 - inter / union;
        }
        expected /= n as f64;
        let t4 =
            |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [n, 1, side, side]), &device);
        let got = lovasz_hinge(t4(z), t4(y))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0];
        assert!(
            (f64::from(got) - expected).abs() < 1e-5,
            "{got} vs {expected}"
        );
        assert!(
            expected > 0.3,
            "the random crops must have errors: {expected}"
        );
    }

    #[test]
    fn lovasz_weights_sum_to_the_jaccard_loss_of_all_errors_and_are_never_negative() {
        // Every pixel wrong: the weights add up to the Jaccard loss of the whole crop, 1.
        let mut w = vec![0.0; 4];
        lovasz_weights(&[-2.0, 3.0, -0.5, 1.0], &[1.0, 0.0, 1.0, 0.0], &mut w);
        assert!(w.iter().all(|&v| v >= 0.0), "{w:?}");
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{w:?}");
        // The largest error (the confident false positive) weighs most.
        assert_eq!(w.iter().cloned().fold(0.0, f32::max), w[1]);
        // An empty crop: only its single worst false positive counts.
        let mut w = vec![0.0; 3];
        lovasz_weights(&[-3.0, 0.5, -1.0], &[0.0, 0.0, 0.0], &mut w);
        assert_eq!(w, vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn lovasz_term_lowers_when_the_boundary_moves_toward_the_truth() {
        let device = Device::flex();
        let side = 8;
        let t4 =
            |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, side, side]), &device);
        // Truth: columns 2..6. Predictions: columns 2..4 (too tight) and 2..6 (right).
        let cols = |a: usize, b: usize| -> Vec<f32> {
            (0..side * side)
                .map(|i| {
                    if (a..b).contains(&(i % side)) {
                        2.0
                    } else {
                        -2.0
                    }
                })
                .collect()
        };
        let y: Vec<f32> = cols(2, 6).iter().map(|&v| f32::from(v > 0.0)).collect();
        let value = |z: Vec<f32>| {
            lovasz_hinge(t4(z), t4(y.clone()))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()[0]
        };
        let (tight, right) = (value(cols(2, 4)), value(cols(2, 6)));
        assert!(right < 1e-6 && tight > 0.4, "tight {tight}, right {right}");
    }
}
