//! Overlap-tile inference must equal a whole-frame run when the receptive field fits in the
//! margin, whatever the frame size.

mod util;

use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::rng::Rng;

#[test]
fn tiled_equals_whole_frame_for_small_receptive_field() {
    let model = Model::from_bytes(&util::three_conv_onnx(7), "three-conv").unwrap();
    for (batch, threads) in [(1, 1), (3, 2)] {
        let cfg = SegmentConfig {
            tile: 32,
            margin: 4,
            batch,
            threads,
            threshold: 0.5,
            tta: 1,
        };
        let mut seg = Segmenter::new(&model, cfg).unwrap();
        for (w, h) in [(300, 173), (1000, 37), (64, 64), (1, 1), (33, 1)] {
            let mut rng = Rng::new((w * h) as u64);
            let frame: Vec<f32> = (0..w * h).map(|_| rng.uniform() * 2.0 - 0.5).collect();
            seg.segment(&frame, w, h).unwrap();
            let want = util::whole_frame(&model, &frame, w, h, 8, 1);
            let got = seg.prob();
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                max <= 1e-5,
                "{w}x{h} batch {batch} threads {threads}: max diff {max}"
            );
        }
    }
}

#[test]
fn margin_too_small_for_receptive_field_is_detected_by_the_same_check() {
    // With margin 0 the seams lose context, so the comparison above must fail: the test can fail.
    let model = Model::from_bytes(&util::three_conv_onnx(7), "three-conv").unwrap();
    let cfg = SegmentConfig {
        tile: 32,
        margin: 0,
        batch: 1,
        threads: 1,
        threshold: 0.5,
        tta: 1,
    };
    let mut seg = Segmenter::new(&model, cfg).unwrap();
    let (w, h) = (100, 70);
    let mut rng = Rng::new(3);
    let frame: Vec<f32> = (0..w * h).map(|_| rng.uniform()).collect();
    seg.segment(&frame, w, h).unwrap();
    let want = util::whole_frame(&model, &frame, w, h, 8, 1);
    let max = seg
        .prob()
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max > 1e-3, "{max}");
}
