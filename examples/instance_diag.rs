//! Where instance errors come from, on held-out synthetic frames: the separation step alone (true
//! binary mask in) against the whole pipeline (model mask in), with recall and precision by
//! nucleus size.
//!
//! `cargo run --example instance_diag -- [MODEL.onnx] [COUNT] [FIRST_SEED]` (default: the
//! embedded model, 40 frames of 256x256 from seed 900000 — the trainer's `synth` defaults).

use anyhow::Result;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::post::instances::{InstanceConfig, Instances};
use unet_edge::post::metrics::Scores;
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

const BUCKETS: [(u32, u32); 7] = [
    (0, 12),
    (12, 25),
    (25, 50),
    (50, 100),
    (100, 200),
    (200, 500),
    (500, u32::MAX),
];

/// Per size bucket of the true nuclei: (matched, total); and of predicted: (matched, total).
fn by_size(pred: &[u32], truth: &[u32], rec: &mut [(usize, usize)], prec: &mut [(usize, usize)]) {
    use std::collections::HashMap;
    let mut ap: HashMap<u32, u32> = HashMap::new();
    let mut at: HashMap<u32, u32> = HashMap::new();
    let mut inter: HashMap<(u32, u32), u32> = HashMap::new();
    for (&p, &t) in pred.iter().zip(truth) {
        if p > 0 {
            *ap.entry(p).or_default() += 1;
        }
        if t > 0 {
            *at.entry(t).or_default() += 1;
        }
        if p > 0 && t > 0 {
            *inter.entry((p, t)).or_default() += 1;
        }
    }
    let mut mp = std::collections::HashSet::new();
    let mut mt = std::collections::HashSet::new();
    for (&(p, t), &i) in &inter {
        if i as f64 / (ap[&p] + at[&t] - i) as f64 > 0.5 {
            mp.insert(p);
            mt.insert(t);
        }
    }
    let bucket = |a: u32| {
        BUCKETS
            .iter()
            .position(|&(lo, hi)| a >= lo && a < hi)
            .unwrap()
    };
    for (&t, &a) in &at {
        let b = bucket(a);
        rec[b].1 += 1;
        rec[b].0 += mt.contains(&t) as usize;
    }
    for (&p, &a) in &ap {
        let b = bucket(a);
        prec[b].1 += 1;
        prec[b].0 += mp.contains(&p) as usize;
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(
        args.get(1)
            .filter(|a| a.as_str() != "-")
            .map(std::path::Path::new),
    )?;
    let count: u64 = args.get(2).map_or(Ok(40), |s| s.parse())?;
    let seed: u64 = args.get(3).map_or(Ok(900_000), |s| s.parse())?;
    let cfg = SegmentConfig {
        threads: 2,
        ..SegmentConfig::for_model(&model)
    };
    let mut seg = Segmenter::new(&model, cfg)?;
    let icfg = InstanceConfig::default();
    let mut inst = Instances::new();
    let mut scores = [
        Scores::default(),
        Scores::default(),
        Scores::default(),
        Scores::default(),
    ];
    let mut rec = [[(0usize, 0usize); BUCKETS.len()]; 4];
    let mut core_err = 0.0f64;
    let (mut at_touch, mut at_centre) = ((0.0f64, 0usize), (0.0f64, 0usize));
    let mut prec = [[(0usize, 0usize); BUCKETS.len()]; 4];
    for i in 0..count {
        let s = generate(&mut Rng::new(seed + i), 256, 256, &SynthConfig::default());
        let truth: Vec<u32> = s.labels.iter().map(|&l| l as u32).collect();
        let true_core = unet_edge::post::targets::core_target(&truth, 256, 256);
        seg.segment(&s.image, 256, 256)?;
        let mask = s.mask();
        if let Some(pd) = seg.core() {
            let (mut err, mut n) = (0.0f64, 0usize);
            for i in 0..truth.len() {
                if truth[i] > 0 {
                    err += (pd[i] - true_core[i]).abs() as f64;
                    n += 1;
                }
            }
            core_err += err / n.max(1) as f64 / count as f64;
            // Where nuclei touch (a 4-neighbour has another label) vs their centres.
            for y in 1..255 {
                for x in 1..255 {
                    let i = y * 256 + x;
                    let l = truth[i];
                    if l == 0 {
                        continue;
                    }
                    let touch = [i - 1, i + 1, i - 256, i + 256]
                        .iter()
                        .any(|&j| truth[j] != 0 && truth[j] != l);
                    if touch {
                        at_touch.0 += pd[i] as f64;
                        at_touch.1 += 1;
                    } else if true_core[i] > 0.5 {
                        at_centre.0 += pd[i] as f64;
                        at_centre.1 += 1;
                    }
                }
            }
        }
        let runs: [(&[u8], Option<&[f32]>); 4] = [
            (&mask, None),
            (&mask, Some(&true_core)),
            (seg.mask(), Some(&true_core)),
            (seg.mask(), seg.core()),
        ];
        for (k, (m, d)) in runs.into_iter().enumerate() {
            inst.run(m, d.into(), &s.image, 256, 256, &icfg);
            scores[k].accumulate(&Scores::compare(inst.labels(), &truth));
            by_size(inst.labels(), &truth, &mut rec[k], &mut prec[k]);
        }
    }
    if seg.core().is_some() {
        println!(
            "core channel: mean |predicted - true| inside nuclei {core_err:.3}; mean predicted where nuclei touch {:.3}, at true cores {:.3}",
            at_touch.0 / at_touch.1.max(1) as f64,
            at_centre.0 / at_centre.1.max(1) as f64
        );
    }
    let names = [
        "true mask -> instances",
        "true mask + true core -> instances",
        "model mask + true core -> instances",
        "model -> instances",
    ];
    for (k, (name, sc)) in names.iter().zip(&scores).enumerate() {
        println!(
            "{name}: pixel Dice {:.3}  F1@0.5 {:.3} (P {:.3} R {:.3}; {} true, {} found)  DSB {:.3}",
            sc.pixel_dice, sc.f1_at_05, sc.precision, sc.recall, sc.n_true, sc.n_pred, sc.dsb2018_score
        );
        for (b, &(lo, hi)) in BUCKETS.iter().enumerate() {
            let (m, n) = rec[k][b];
            let (pm, pn) = prec[k][b];
            println!(
                "   area {lo:>4}..{:<5} recall {:.2} ({m}/{n})  precision {:.2} ({pm}/{pn})",
                if hi == u32::MAX {
                    "".into()
                } else {
                    hi.to_string()
                },
                m as f64 / n.max(1) as f64,
                pm as f64 / pn.max(1) as f64
            );
        }
    }
    Ok(())
}
