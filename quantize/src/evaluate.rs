//! Accuracy of an int8 model against its float original, through the runtime's own frame engine
//! (normalization, overlap tiles, stitching, threshold): mask agreement, and Dice against truth.

use crate::images::Image;
use anyhow::{Context, Result};
use serde::Serialize;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::post::metrics::PixelOverlap as Overlap;

/// How the int8 model compares with the float one on a set of images.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    /// Images compared.
    pub images: usize,
    /// Images with truth.
    pub with_truth: usize,
    /// Dice between the float and the int8 masks (pooled over all pixels).
    pub agreement_dice: f64,
    /// Dice of the float masks against truth (images with truth only).
    pub f32_dice: Option<f64>,
    /// Dice of the int8 masks against truth.
    pub int8_dice: Option<f64>,
    /// Largest absolute probability difference seen.
    pub max_prob_diff: f32,
    /// Mean absolute probability difference.
    pub mean_prob_diff: f64,
}

impl Comparison {
    /// Float Dice minus int8 Dice against truth (positive = int8 is worse).
    pub fn dice_drop(&self) -> Option<f64> {
        Some(self.f32_dice? - self.int8_dice?)
    }
}

/// Segments every image with both models (default tiling of the float model) and compares.
pub fn compare(float: &Model, int8: &Model, images: &[Image]) -> Result<Comparison> {
    let cfg = SegmentConfig::for_model(float);
    let mut sf = Segmenter::new(float, cfg).context("float model")?;
    let mut sq = Segmenter::new(int8, cfg).context("int8 model")?;
    let (mut agree, mut tf, mut tq) = (Overlap::default(), Overlap::default(), Overlap::default());
    let mut c = Comparison::default();
    let (mut diff_sum, mut diff_n) = (0.0f64, 0u64);
    for im in images {
        sf.segment(&im.raw, im.width, im.height)
            .with_context(|| format!("float model on {}", im.name))?;
        sq.segment(&im.raw, im.width, im.height)
            .with_context(|| format!("int8 model on {}", im.name))?;
        agree.add_masks(sf.mask(), sq.mask());
        for (a, b) in sf.prob().iter().zip(sq.prob()) {
            let d = (a - b).abs();
            c.max_prob_diff = c.max_prob_diff.max(d);
            diff_sum += d as f64;
            diff_n += 1;
        }
        if let Some(t) = &im.truth {
            tf.add_masks(sf.mask(), t);
            tq.add_masks(sq.mask(), t);
            c.with_truth += 1;
        }
        c.images += 1;
    }
    c.agreement_dice = agree.dice();
    c.mean_prob_diff = diff_sum / diff_n.max(1) as f64;
    if c.with_truth > 0 {
        c.f32_dice = Some(tf.dice());
        c.int8_dice = Some(tq.dice());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_of_pooled_counts() {
        let mut o = Overlap::default();
        o.add_masks(&[1, 1, 0, 0], &[1, 0, 1, 0]);
        assert_eq!((o.both, o.pred, o.truth), (1, 2, 2));
        assert!((o.dice() - 0.5).abs() < 1e-12);
        assert_eq!(Overlap::default().dice(), 1.0);
    }
}
