//! Measures tiling error against the overlap margin: tiled probability maps vs a whole-frame run,
//! on seam pixels (next to a tile-ownership boundary) and elsewhere.
//!
//! `cargo run --release --example seam_curve -- [MODEL.onnx]` (default: the seed U-Net, random weights,
//! and the shipped model when present).

use anyhow::Result;
use unet_edge::contract::ModelMeta;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

fn main() -> Result<()> {
    let mut models = Vec::new();
    if let Some(p) = std::env::args().nth(1) {
        models.push(Model::from_path(std::path::Path::new(&p))?);
    } else {
        let b = unet_edge::onnx_writer::encode(
            &unet_edge::unet::UNetSpec::default()
                .random_weights(1)
                .to_onnx(&ModelMeta::default())?,
        );
        models.push(Model::from_bytes(&b, "seed-unet-random")?);
        if let Some(e) = unet_edge::engine::model::embedded_model() {
            models.push(Model::from_bytes(e, "embedded")?);
        }
    }
    let (w, h) = (400, 400);
    let frames: Vec<_> = (0..3)
        .map(|i| generate(&mut Rng::new(77 + i), w, h, &SynthConfig::default()))
        .collect();
    for model in &models {
        println!("model {}", model.source);
        println!("margin  tiles  mean|err|  seam mean  other mean  max|err|  mask disagree");
        for margin in [0usize, 8, 16, 24, 32, 40, 48] {
            let cfg = SegmentConfig {
                tile: 128,
                margin,
                batch: 1,
                threads: 2,
                threshold: model.meta.threshold,
                tta: 1,
            };
            let mut seg = Segmenter::new(model, cfg)?;
            let (
                mut all,
                mut seam,
                mut other,
                mut max,
                mut n_seam,
                mut n_other,
                mut dis,
                mut tiles,
            ) = (0.0f64, 0.0f64, 0.0f64, 0.0f32, 0usize, 0usize, 0usize, 0);
            for f in &frames {
                let t = seg.segment(&f.image, w, h)?;
                tiles = t.tiles;
                let reference = model.run_whole(seg.normalized(), w, h, 64, 16)?;
                let g = seg.grid().unwrap().clone();
                for (i, (&p, &r)) in seg.prob().iter().zip(&reference).enumerate() {
                    let e = (p - r).abs();
                    all += e as f64;
                    max = max.max(e);
                    if g.is_seam(i % w, i / w) {
                        seam += e as f64;
                        n_seam += 1
                    } else {
                        other += e as f64;
                        n_other += 1
                    }
                    if (p > cfg.threshold) != (r > cfg.threshold) {
                        dis += 1
                    }
                }
            }
            let n = (w * h * frames.len()) as f64;
            println!(
                "{margin:6}  {tiles:5}  {:9.2e}  {:9.2e}  {:10.2e}  {max:8.2e}  {:12.2e}",
                all / n,
                seam / n_seam.max(1) as f64,
                other / n_other.max(1) as f64,
                dis as f64 / n
            );
        }
    }
    Ok(())
}
