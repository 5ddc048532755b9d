//! Training targets defined on instance labels, shared by the trainer and the runtime's checks:
//! the normalized interior distance and the `core` channel derived from it.

/// The training target of the `distance` channel from instance labels (0 = background): each
/// pixel's distance to the nearest pixel outside its own nucleus (background or another
/// nucleus), divided by the largest such distance in that nucleus; 0 outside nuclei. Chamfer
/// distances (steps 1 and √2) are close enough for a target; outside the image counts as inside
/// the nucleus, so nuclei cut by the border keep their centre.
pub fn normalized_distance<L: Copy + Into<u32>>(labels: &[L], w: usize, h: usize) -> Vec<f32> {
    assert_eq!(labels.len(), w * h);
    let lab = |i: usize| -> u32 { labels[i].into() };
    let mut d: Vec<f32> = (0..w * h)
        .map(|i| if lab(i) == 0 { 0.0 } else { f32::INFINITY })
        .collect();
    let diag = std::f32::consts::SQRT_2;
    // A neighbour with another label is at distance `step` from the outside; one with ours passes
    // its distance on.
    let relax = |d: &mut Vec<f32>, i: usize, j: usize, step: f32| {
        let v = if lab(j) == lab(i) {
            d[j] + step
        } else {
            step * 0.5
        };
        if v < d[i] {
            d[i] = v;
        }
    };
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if lab(i) == 0 {
                continue;
            }
            if x > 0 {
                relax(&mut d, i, i - 1, 1.0);
            }
            if y > 0 {
                relax(&mut d, i, i - w, 1.0);
                if x > 0 {
                    relax(&mut d, i, i - w - 1, diag);
                }
                if x + 1 < w {
                    relax(&mut d, i, i - w + 1, diag);
                }
            }
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if lab(i) == 0 {
                continue;
            }
            if x + 1 < w {
                relax(&mut d, i, i + 1, 1.0);
            }
            if y + 1 < h {
                relax(&mut d, i, i + w, 1.0);
                if x + 1 < w {
                    relax(&mut d, i, i + w + 1, diag);
                }
                if x > 0 {
                    relax(&mut d, i, i + w - 1, diag);
                }
            }
        }
    }
    let mut peak: std::collections::HashMap<u32, f32> = std::collections::HashMap::new();
    for (i, &v) in d.iter().enumerate() {
        let l = lab(i);
        if l != 0 && v.is_finite() {
            let p = peak.entry(l).or_insert(0.0);
            *p = p.max(v);
        }
    }
    for (i, v) in d.iter_mut().enumerate() {
        let l = lab(i);
        *v = if l == 0 || !v.is_finite() {
            // A nucleus that fills the whole image has no edge: call it all centre.
            if l == 0 {
                0.0
            } else {
                1.0
            }
        } else {
            *v / peak[&l]
        };
    }
    d
}

/// The training target of the `core` channel: 1 where [`normalized_distance`] exceeds one half
/// (the inner half of each nucleus), else 0. A binary target learns like the foreground mask does
/// (BCE + Dice); the continuous distance itself, tried first, stayed nearly flat in training.
pub fn core_target<L: Copy + Into<u32>>(labels: &[L], w: usize, h: usize) -> Vec<f32> {
    let mut d = normalized_distance(labels, w, h);
    d.iter_mut().for_each(|v| *v = f32::from(*v > 0.5));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_distance_peaks_at_each_centre_and_drops_where_nuclei_touch() {
        let (w, h) = (40, 20);
        let mut labels = vec![0u32; w * h];
        for y in 5..15 {
            for x in 5..35 {
                labels[y * w + x] = if x < 20 { 1 } else { 7 };
            }
        }
        let d = normalized_distance(&labels, w, h);
        assert_eq!(d[0], 0.0);
        let max1 = (0..w * h)
            .filter(|&i| labels[i] == 1)
            .map(|i| d[i])
            .fold(0.0, f32::max);
        assert_eq!(max1, 1.0);
        // The touching columns are edges of both nuclei.
        assert!(d[10 * w + 19] < 0.25 && d[10 * w + 20] < 0.25);
        assert!(d[10 * w + 12] > 0.8 && d[10 * w + 27] > 0.8);
        assert!(d.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
