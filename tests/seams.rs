//! No seams: with the default margin, the seed U-Net's tiled probability map is no worse along
//! tile seams than elsewhere (compared with a whole-frame run of the same network).

use unet_edge::contract::ModelMeta;
use unet_edge::engine::model::{embedded_model, Model};
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

/// Mean absolute error on pixels within 1 px of a tile-ownership boundary, and elsewhere.
fn seam_and_other_error(model: &Model) -> (f64, f64, f64) {
    let (w, h) = (300, 260);
    let frame = generate(&mut Rng::new(31), w, h, &SynthConfig::default());
    let mut seg = Segmenter::new(model, SegmentConfig::for_model(model)).unwrap();
    seg.segment(&frame.image, w, h).unwrap();
    let reference = model.run_whole(seg.normalized(), w, h, 64, 16).unwrap();
    let g = seg.grid().unwrap();
    let (mut seam, mut ns, mut other, mut no, mut max) = (0.0, 0usize, 0.0, 0usize, 0.0f64);
    for y in 0..h {
        for x in 0..w {
            let e = (seg.prob()[y * w + x] - reference[y * w + x]).abs() as f64;
            max = max.max(e);
            if g.is_seam(x, y) {
                seam += e;
                ns += 1;
            } else {
                other += e;
                no += 1;
            }
        }
    }
    assert!(ns > 500 && no > 500);
    (seam / ns as f64, other / no as f64, max)
}

#[test]
fn seam_error_is_no_larger_than_elsewhere() {
    let model = match embedded_model() {
        Some(b) => Model::from_bytes(b, "embedded").unwrap(),
        None => {
            let spec = unet_edge::unet::UNetSpec::default();
            let b = unet_edge::onnx_writer::encode(
                &spec
                    .random_weights(5)
                    .to_onnx(&ModelMeta::default())
                    .unwrap(),
            );
            Model::from_bytes(&b, "seed-random").unwrap()
        }
    };
    let (seam, other, max) = seam_and_other_error(&model);
    println!(
        "{}: seam mean |err| {seam:.2e}, elsewhere {other:.2e}, max {max:.2e}",
        model.source
    );
    assert!(
        seam <= 1.5 * other + 1e-4,
        "seams are visible: {seam:.2e} on seams vs {other:.2e} elsewhere"
    );
}
