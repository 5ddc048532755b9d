//! Segmentation metrics: pixel Dice/IoU and instance matching with the 2018 Data Science Bowl
//! score (mean over IoU thresholds 0.50..0.95 of TP / (TP + FP + FN)).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// IoU thresholds of the DSB2018 score.
pub const DSB_THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// Scores of one image, or of a whole set (instance counts summed, pixel counts summed).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Pixel Dice of foreground.
    pub pixel_dice: f64,
    /// Pixel IoU of foreground.
    pub pixel_iou: f64,
    /// Nuclei in the prediction.
    pub n_pred: usize,
    /// Nuclei in the truth.
    pub n_true: usize,
    /// Matches at IoU > 0.5.
    pub tp: usize,
    /// Predicted nuclei without a match at 0.5.
    pub fp: usize,
    /// True nuclei without a match at 0.5.
    pub fn_: usize,
    /// TP / (TP + FP) at 0.5.
    pub precision: f64,
    /// TP / (TP + FN) at 0.5.
    pub recall: f64,
    /// F1 at IoU 0.5.
    #[serde(rename = "f1_at_0.5")]
    pub f1_at_05: f64,
    /// TP / (TP + FP + FN) at 0.5.
    #[serde(rename = "ap_at_0.5")]
    pub ap_at_05: f64,
    /// Mean over the DSB thresholds of TP / (TP + FP + FN).
    pub dsb2018_score: f64,
    /// What became of the true nuclei without a match, and how matched masks compare in size.
    pub errors: ErrorBreakdown,
    #[serde(skip)]
    pixels: PixelOverlap,
    #[serde(skip)]
    tp_at: [usize; 10],
    #[serde(skip)]
    log_area_ratio: f64,
}

/// Why nuclei went unmatched at IoU 0.5, and whether matched masks run inside or outside the
/// annotated outlines: what tells a user which setting to change (`--split` for merges and
/// splits, `--grow` or the threshold for a size bias, the threshold for misses and spurious
/// objects). Counts add up over images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ErrorBreakdown {
    /// True nuclei less than half covered by the prediction's foreground.
    pub missed: usize,
    /// True nuclei mostly covered by one predicted object that also covers most of another.
    pub merged: usize,
    /// True nuclei that hold most of two or more predicted objects.
    pub split: usize,
    /// Other unmatched true nuclei: found, but with IoU 0.5 or less (a poor outline).
    pub poor_outline: usize,
    /// Predicted objects with less than half of their area on annotated nuclei.
    pub spurious: usize,
    /// Matched pairs (IoU > 0.5).
    pub matched: usize,
    /// Geometric mean over matched pairs of predicted area / true area: below 1 the masks run
    /// inside the annotated outlines (a `--grow` or a lower threshold may fit them), above 1
    /// outside; 1 when nothing matched.
    pub matched_area_ratio: f64,
}

/// Foreground pixel counts of a prediction against a reference, pooled over any number of
/// images: the one definition of pixel Dice and IoU (eval, training validation, quantization).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PixelOverlap {
    /// Pixels foreground in both.
    pub both: u64,
    /// Pixels foreground in the prediction.
    pub pred: u64,
    /// Pixels foreground in the reference.
    pub truth: u64,
}

impl PixelOverlap {
    /// Counts pixel pairs (prediction, reference) that are foreground or not.
    pub fn add(&mut self, pairs: impl IntoIterator<Item = (bool, bool)>) {
        for (p, t) in pairs {
            self.both += u64::from(p && t);
            self.pred += u64::from(p);
            self.truth += u64::from(t);
        }
    }

    /// Counts two masks (non-zero = foreground) of equal size.
    pub fn add_masks(&mut self, pred: &[u8], truth: &[u8]) {
        self.add(pred.iter().zip(truth).map(|(&p, &t)| (p != 0, t != 0)));
    }

    /// Adds another set's counts.
    pub fn merge(&mut self, o: &PixelOverlap) {
        self.both += o.both;
        self.pred += o.pred;
        self.truth += o.truth;
    }

    /// 2|P∩T| / (|P|+|T|); 1 when both are empty.
    pub fn dice(&self) -> f64 {
        ratio(2.0 * self.both as f64, (self.pred + self.truth) as f64)
    }

    /// |P∩T| / |P∪T|; 1 when both are empty.
    pub fn iou(&self) -> f64 {
        ratio(
            self.both as f64,
            (self.pred + self.truth - self.both) as f64,
        )
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        1.0
    } else {
        a / b
    }
}

impl Scores {
    /// Scores of a prediction against the truth; both are label images of equal size (0 =
    /// background, any other value one object; ids need not be consecutive).
    pub fn compare(pred: &[u32], truth: &[u32]) -> Scores {
        assert_eq!(pred.len(), truth.len(), "label images differ in size");
        let mut area_p: HashMap<u32, u64> = HashMap::new();
        let mut area_t: HashMap<u32, u64> = HashMap::new();
        let mut inter: HashMap<(u32, u32), u64> = HashMap::new();
        let mut pixels = PixelOverlap::default();
        for (&p, &t) in pred.iter().zip(truth) {
            if p != 0 {
                *area_p.entry(p).or_default() += 1;
            }
            if t != 0 {
                *area_t.entry(t).or_default() += 1;
            }
            if p != 0 && t != 0 {
                *inter.entry((p, t)).or_default() += 1;
            }
        }
        pixels.add(pred.iter().zip(truth).map(|(&p, &t)| (p != 0, t != 0)));
        // IoU > 0.5 makes a pair unique on both sides, so the matching at every DSB threshold is
        // just the pairs above it.
        let mut tp_at = [0usize; 10];
        let mut log_area_ratio = 0.0;
        let mut matched_t: HashSet<u32> = Default::default();
        // Per true nucleus: pixels covered by any prediction, and predicted objects that lie
        // mostly inside it; per predicted object: true nuclei it covers mostly, and its pixels on
        // any true nucleus.
        let mut covered_t: HashMap<u32, u64> = HashMap::new();
        let mut owned_by_t: HashMap<u32, usize> = HashMap::new();
        let mut mostly_covers: HashMap<u32, usize> = HashMap::new();
        let mut on_truth_p: HashMap<u32, u64> = HashMap::new();
        for (&(p, t), &i) in &inter {
            let (ap, at) = (area_p[&p], area_t[&t]);
            let iou = i as f64 / (ap + at - i) as f64;
            for (k, &th) in DSB_THRESHOLDS.iter().enumerate() {
                if iou > th as f64 {
                    tp_at[k] += 1;
                }
            }
            if iou > 0.5 {
                log_area_ratio += (ap as f64 / at as f64).ln();
                matched_t.insert(t);
            }
            *covered_t.entry(t).or_default() += i;
            *on_truth_p.entry(p).or_default() += i;
            if 2 * i >= ap {
                *owned_by_t.entry(t).or_default() += 1;
            }
            if 2 * i >= at {
                *mostly_covers.entry(p).or_default() += 1;
            }
        }
        let merged_t: HashSet<u32> = inter
            .iter()
            .filter(|(&(p, t), &i)| {
                2 * i >= area_t[&t] && mostly_covers.get(&p).copied().unwrap_or(0) >= 2
            })
            .map(|(&(_, t), _)| t)
            .collect();
        let mut errors = ErrorBreakdown::default();
        for (&t, &at) in &area_t {
            if matched_t.contains(&t) {
                continue;
            }
            if 2 * covered_t.get(&t).copied().unwrap_or(0) < at {
                errors.missed += 1;
            } else if merged_t.contains(&t) {
                errors.merged += 1;
            } else if owned_by_t.get(&t).copied().unwrap_or(0) >= 2 {
                errors.split += 1;
            } else {
                errors.poor_outline += 1;
            }
        }
        errors.spurious = area_p
            .iter()
            .filter(|(p, &ap)| 2 * on_truth_p.get(p).copied().unwrap_or(0) < ap)
            .count();
        let mut s = Scores {
            n_pred: area_p.len(),
            n_true: area_t.len(),
            errors,
            pixels,
            tp_at,
            log_area_ratio,
            ..Default::default()
        };
        s.finish();
        s
    }

    /// Adds another image's counts (for the overall scores).
    pub fn accumulate(&mut self, o: &Scores) {
        self.n_pred += o.n_pred;
        self.n_true += o.n_true;
        self.pixels.merge(&o.pixels);
        for k in 0..10 {
            self.tp_at[k] += o.tp_at[k];
        }
        let (e, f) = (&mut self.errors, &o.errors);
        e.missed += f.missed;
        e.merged += f.merged;
        e.split += f.split;
        e.poor_outline += f.poor_outline;
        e.spurious += f.spurious;
        self.log_area_ratio += o.log_area_ratio;
        self.finish();
    }

    fn finish(&mut self) {
        self.pixel_dice = self.pixels.dice();
        self.pixel_iou = self.pixels.iou();
        let (np, nt) = (self.n_pred as f64, self.n_true as f64);
        let ap = |tp: usize| ratio(tp as f64, np + nt - tp as f64);
        self.tp = self.tp_at[0];
        self.fp = self.n_pred - self.tp;
        self.fn_ = self.n_true - self.tp;
        self.precision = ratio(self.tp as f64, np);
        self.recall = ratio(self.tp as f64, nt);
        self.f1_at_05 = ratio(2.0 * self.tp as f64, np + nt);
        self.ap_at_05 = ap(self.tp);
        self.dsb2018_score = self.tp_at.iter().map(|&t| ap(t)).sum::<f64>() / 10.0;
        self.errors.matched = self.tp;
        self.errors.matched_area_ratio = if self.tp > 0 {
            (self.log_area_ratio / self.tp as f64).exp()
        } else {
            1.0
        };
    }
}

/// Unweighted means over images, the way the DSB2018 competition ranked (its score is the mean
/// over test images of each image's score): an image with few nuclei counts as much as a crowded
/// one, whereas the pooled [`Scores`] of a set are dominated by its most crowded images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMean {
    /// Images averaged.
    pub images: usize,
    /// Mean pixel Dice.
    pub pixel_dice: f64,
    /// Mean F1 at IoU 0.5.
    #[serde(rename = "f1_at_0.5")]
    pub f1_at_05: f64,
    /// Mean DSB2018 score: the competition's figure.
    pub dsb2018_score: f64,
}

impl ImageMean {
    /// Means of the per-image scores.
    pub fn of<'a>(scores: impl IntoIterator<Item = &'a Scores>) -> ImageMean {
        let mut m = ImageMean::default();
        for s in scores {
            m.images += 1;
            m.pixel_dice += s.pixel_dice;
            m.f1_at_05 += s.f1_at_05;
            m.dsb2018_score += s.dsb2018_score;
        }
        let n = m.images.max(1) as f64;
        m.pixel_dice /= n;
        m.f1_at_05 /= n;
        m.dsb2018_score /= n;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two 4x4 squares on a 12x6 canvas.
    fn two_squares(a: u32, b: u32) -> Vec<u32> {
        let mut l = vec![0u32; 12 * 6];
        for y in 1..5 {
            for x in 1..5 {
                l[y * 12 + x] = a;
            }
            for x in 7..11 {
                l[y * 12 + x] = b;
            }
        }
        l
    }

    #[test]
    fn perfect_match_with_non_consecutive_ids() {
        let s = Scores::compare(&two_squares(7, 42), &two_squares(1, 2));
        assert_eq!((s.tp, s.fp, s.fn_), (2, 0, 0));
        assert_eq!(s.pixel_dice, 1.0);
        assert_eq!(s.f1_at_05, 1.0);
        assert_eq!(s.dsb2018_score, 1.0);
    }

    #[test]
    fn one_nucleus_split_in_two() {
        let truth = two_squares(1, 2);
        let mut pred = truth.clone();
        // Left square split into two 4x2 halves: each has IoU 0.5 with the truth, not > 0.5.
        for y in 1..5 {
            for x in 3..5 {
                pred[y * 12 + x] = 3;
            }
        }
        let s = Scores::compare(&pred, &truth);
        assert_eq!((s.n_pred, s.tp, s.fp, s.fn_), (3, 1, 2, 1));
        assert_eq!(s.pixel_dice, 1.0);
        assert!((s.f1_at_05 - 2.0 / 5.0).abs() < 1e-12);
        assert!((s.ap_at_05 - 1.0 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn two_merged_into_one() {
        let truth = two_squares(1, 2);
        let pred: Vec<u32> = truth.iter().map(|&l| u32::from(l > 0)).collect();
        let s = Scores::compare(&pred, &truth);
        // One object covering both squares: IoU 0.5 with each, so no match.
        assert_eq!((s.tp, s.fp, s.fn_), (0, 1, 2));
        assert_eq!(s.dsb2018_score, 0.0);
        assert_eq!(
            (s.errors.merged, s.errors.split, s.errors.missed),
            (2, 0, 0)
        );
        assert_eq!((s.errors.matched, s.errors.matched_area_ratio), (0, 1.0));
    }

    #[test]
    fn breakdown_names_each_kind_of_error_and_the_size_bias() {
        // Four true 4x4 squares in a row on a 24x6 canvas (ids 1..=4, 2 px apart).
        let (w, h) = (24, 6);
        let mut truth = vec![0u32; w * h];
        for y in 1..5 {
            for q in 0..4 {
                for x in 0..4 {
                    truth[y * w + 1 + q * 6 + x] = q as u32 + 1;
                }
            }
        }
        let mut pred = vec![0u32; w * h];
        for y in 1..5 {
            // 1: split into two 4x2 halves; 2: only its inner 2x2 found (a quarter covered:
            // missed); 3: missed; 4: matched with one column more (IoU 0.8, area ratio 20/16);
            // plus a spurious one-pixel object in the top-left corner.
            for x in 1..3 {
                pred[y * w + x] = 10;
            }
            for x in 3..5 {
                pred[y * w + x] = 11;
            }
            if (2..4).contains(&y) {
                for x in 8..10 {
                    pred[y * w + x] = 12;
                }
            }
            for x in 19..24 {
                pred[y * w + x] = 13;
            }
        }
        pred[0] = 14;
        let s = Scores::compare(&pred, &truth);
        let e = s.errors;
        assert_eq!(
            (
                e.missed,
                e.merged,
                e.split,
                e.poor_outline,
                e.spurious,
                e.matched
            ),
            (2, 0, 1, 0, 1, 1),
            "{e:?}"
        );
        assert!((e.matched_area_ratio - 1.25).abs() < 1e-12);
        // Nucleus 2 whole inside an object twice its size (IoU 0.5): found, poor outline.
        let mut loose = pred.clone();
        for y in 1..5 {
            for x in 5..13 {
                loose[y * w + x] = 12;
            }
        }
        let e = Scores::compare(&loose, &truth).errors;
        assert_eq!(
            (e.missed, e.poor_outline, e.spurious, e.matched),
            (1, 1, 1, 1),
            "{e:?}"
        );
        // Pooled: counts add, the ratio is the geometric mean over all matches.
        let mut all = Scores::default();
        all.accumulate(&s);
        all.accumulate(&Scores::compare(&truth, &truth));
        assert_eq!((all.errors.split, all.errors.matched), (1, 5));
        assert!((all.errors.matched_area_ratio - 1.25f64.powf(0.2)).abs() < 1e-12);
    }

    #[test]
    fn empty_prediction_and_empty_truth() {
        let truth = two_squares(1, 2);
        let empty = vec![0u32; truth.len()];
        let s = Scores::compare(&empty, &truth);
        assert_eq!((s.tp, s.fp, s.fn_), (0, 0, 2));
        assert_eq!((s.pixel_dice, s.recall, s.dsb2018_score), (0.0, 0.0, 0.0));
        let s = Scores::compare(&truth, &empty);
        assert_eq!((s.tp, s.fp, s.fn_), (0, 2, 0));
        assert_eq!(s.precision, 0.0);
        let s = Scores::compare(&empty, &empty);
        assert_eq!((s.pixel_dice, s.f1_at_05, s.dsb2018_score), (1.0, 1.0, 1.0));
    }

    #[test]
    fn image_mean_weighs_images_equally_where_pooling_weighs_nuclei() {
        let truth = two_squares(1, 2);
        let perfect = Scores::compare(&truth, &truth);
        // A crowded image with one of its ten nuclei found.
        let (w, h) = (40, 4);
        let many: Vec<u32> = (0..w * h).map(|i| (i % w / 4) as u32 + 1).collect();
        let one: Vec<u32> = many.iter().map(|&l| if l == 1 { 1 } else { 0 }).collect();
        let crowded = Scores::compare(&one, &many);
        assert_eq!((crowded.tp, crowded.fn_), (1, 9));
        let m = ImageMean::of([&perfect, &crowded]);
        assert_eq!(m.images, 2);
        assert!((m.f1_at_05 - (1.0 + 2.0 / 11.0) / 2.0).abs() < 1e-12);
        assert!((m.dsb2018_score - (1.0 + 0.1) / 2.0).abs() < 1e-12);
        let mut pooled = perfect.clone();
        pooled.accumulate(&crowded);
        assert!((pooled.f1_at_05 - 6.0 / 15.0).abs() < 1e-12);
        assert_eq!(ImageMean::of([]), ImageMean::default());
    }

    #[test]
    fn thresholds_step_through_iou() {
        let truth = two_squares(1, 2);
        let mut pred = truth.clone();
        // Shrink the right square by one column: IoU 12/16 = 0.75, matched at 0.5..0.70 only.
        for y in 1..5 {
            pred[y * 12 + 10] = 0;
        }
        let s = Scores::compare(&pred, &truth);
        // Left: IoU 1 at all 10 thresholds; right: IoU 0.75 > 0.50..0.70 (5 thresholds).
        let expected = (5.0 + 5.0 / 3.0) / 10.0;
        assert!(
            (s.dsb2018_score - expected).abs() < 1e-12,
            "{}",
            s.dsb2018_score
        );
        let mut all = Scores::default();
        all.accumulate(&s);
        all.accumulate(&Scores::compare(&truth, &truth));
        assert_eq!((all.tp, all.n_true), (4, 4));
    }
}
