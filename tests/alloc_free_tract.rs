//! Zero calls to the system allocator per frame with the real models, tract included: the tile
//! runners' arenas serve tract's per-run allocations, and the worker threads are started once.
//! Counts every thread, so this test is alone in its binary.

mod util;

use std::path::Path;
use unet_edge::engine::arena::ArenaAlloc;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};
use util::counting::{self, Counting};

#[global_allocator]
static GLOBAL: ArenaAlloc<Counting> = ArenaAlloc(Counting);

fn soak(model: &Model) -> (usize, usize, usize, f32) {
    assert!(unet_edge::engine::arena::installed());
    let mut cfg = SegmentConfig::for_model(model);
    cfg.threads = 2;
    // Two tiles per frame, one per thread.
    let (w, h) = (160, 80);
    let frames: Vec<Vec<f32>> = (0..5)
        .map(|i| generate(&mut Rng::new(50 + i), w, h, &SynthConfig::default()).image)
        .collect();
    let mut seg = Segmenter::new(model, cfg).unwrap();
    for f in &frames[..3] {
        seg.segment(f, w, h).unwrap();
    }
    assert_eq!(seg.grid().unwrap().len(), 2);
    counting::start();
    let mut fg = 0.0;
    for i in 0..50 {
        seg.segment(&frames[i % frames.len()], w, h).unwrap();
        fg += seg.foreground_fraction();
    }
    let (allocs, bytes) = counting::stop();
    (allocs, bytes, counting::frees(), fg / 50.0)
}

#[test]
fn fifty_frames_make_no_system_allocator_call_float_and_int8() {
    let float = Model::load(None).unwrap();
    let int8 = Model::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/unet-nuclei.int8.onnx"),
    )
    .unwrap();
    for (name, model) in [("f32", &float), ("int8", &int8)] {
        let (allocs, bytes, frees, fg) = soak(model);
        assert_eq!(
            (allocs, bytes, frees),
            (0, 0, 0),
            "{name}: 50 frames with 2 threads made {allocs} allocations ({bytes} bytes) and \
             {frees} frees through the system allocator"
        );
        // The model really ran: synthetic frames are 5-40 % nuclei.
        assert!(fg > 0.03 && fg < 0.5, "{name}: foreground {fg}");
    }
}
