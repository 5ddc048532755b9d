//! Chooses the instance-separation settings: F1@0.5 over a grid of `h_abs`, `h_rel` and
//! `min_area`, on synthetic frames (model mask, and the true mask as the separation step's own
//! ceiling) and on the shipped real image. Tune on seeds apart from the held-out ones.
//!
//! `cargo run --release --example instance_sweep -- [COUNT] [FIRST_SEED] [MODEL.onnx]` (default
//! 24 frames of 256x256 from seed 950000 and the embedded model; the held-out set of
//! `instance_diag` starts at 900000).

use anyhow::Result;
use std::path::Path;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::io::imageio::{find_truth, load_gray};
use unet_edge::post::instances::{InstanceConfig, Instances};
use unet_edge::post::metrics::Scores;
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

/// One frame to separate: mask, core channel, intensities, truth, size.
struct Case {
    mask: Vec<u8>,
    core: Option<Vec<f32>>,
    image: Vec<f32>,
    truth: Vec<u32>,
    w: usize,
    h: usize,
}

fn f1(cases: &[Case], cfg: &InstanceConfig) -> f64 {
    let mut inst = Instances::new();
    let mut s = Scores::default();
    for c in cases {
        inst.run(&c.mask, c.core.as_deref().into(), &c.image, c.w, c.h, cfg);
        s.accumulate(&Scores::compare(inst.labels(), &c.truth));
    }
    s.f1_at_05
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: u64 = args.get(1).map_or(Ok(24), |s| s.parse())?;
    let seed: u64 = args.get(2).map_or(Ok(950_000), |s| s.parse())?;
    let model = Model::load(args.get(3).map(Path::new))?;
    let cfg = SegmentConfig {
        threads: 2,
        ..SegmentConfig::for_model(&model)
    };
    let mut seg = Segmenter::new(&model, cfg)?;
    let (mut synth_model, mut synth_true) = (Vec::new(), Vec::new());
    for i in 0..count {
        let s = generate(&mut Rng::new(seed + i), 256, 256, &SynthConfig::default());
        let truth: Vec<u32> = s.labels.iter().map(|&l| l as u32).collect();
        seg.segment(&s.image, 256, 256)?;
        let case = |mask: Vec<u8>| Case {
            mask,
            core: seg.core().map(<[f32]>::to_vec),
            image: s.image.clone(),
            truth: truth.clone(),
            w: 256,
            h: 256,
        };
        synth_model.push(case(seg.mask().to_vec()));
        synth_true.push(Case {
            core: None,
            ..case(s.mask())
        });
    }
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let img = load_gray(&samples.join("dsb2018-nuclei.tif"))?;
    let (w, h, truth) = find_truth(&samples.join("truth"), "dsb2018-nuclei")?
        .ok_or_else(|| anyhow::anyhow!("no truth for the real sample"))?;
    seg.segment(&img.data, w, h)?;
    let real = vec![Case {
        mask: seg.mask().to_vec(),
        core: seg.core().map(<[f32]>::to_vec),
        image: img.data.clone(),
        truth,
        w,
        h,
    }];
    println!("h_abs h_rel min_area | synth model | synth true mask | real image");
    let mut rows = Vec::new();
    for h_abs in [0.5f32, 1.0, 1.5, 2.0] {
        for h_rel in [0.0f32, 0.1, 0.2, 0.3, 0.45] {
            for min_area in [6usize, 12, 20] {
                let c = InstanceConfig {
                    h_abs,
                    h_rel,
                    min_area,
                    grow: 0,
                };
                rows.push((c, f1(&synth_model, &c), f1(&synth_true, &c), f1(&real, &c)));
            }
        }
    }
    rows.sort_by(|a, b| (b.1 + b.3).total_cmp(&(a.1 + a.3)));
    for (c, m, t, r) in rows.iter().take(15) {
        println!(
            "{:5.2} {:5.2} {:8} | {m:11.3} | {t:15.3} | {r:10.3}",
            c.h_abs, c.h_rel, c.min_area
        );
    }
    let d = InstanceConfig::default();
    println!(
        "default ({}, {}, {}): synth model {:.3}, synth true mask {:.3}, real {:.3}",
        d.h_abs,
        d.h_rel,
        d.min_area,
        f1(&synth_model, &d),
        f1(&synth_true, &d),
        f1(&real, &d)
    );
    Ok(())
}
