//! Zero heap allocations per frame in the live loop after warm-up, capture thread included,
//! over 110 frames from a fake camera. Alone in its test binary: it counts every thread.

mod util;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use unet_edge::live::{self, LiveConfig};
use util::counting::{self, Counting};
use util::fakes::{camera, no_pins, segmenter};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn loop_allocates_nothing_per_frame_after_warm_up() {
    let mut seg = segmenter();
    let mut log: Vec<u8> = Vec::with_capacity(1 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = LiveConfig {
        max_frames: Some(130),
        summary_every: None,
        ..Default::default()
    };
    let counted = std::cell::Cell::new(0usize);
    let stats = live::run(
        &mut seg,
        camera(10_000, vec![]),
        &mut no_pins(),
        &mut log,
        &cfg,
        &stop,
        |n| {
            if n == 20 {
                counting::start();
            }
            if n == 130 {
                counted.set(counting::stop().0);
            }
        },
    )
    .unwrap();
    counting::stop();
    assert_eq!(stats.processed, 130);
    assert_eq!(
        counted.get(),
        0,
        "the loop allocated {} times over 110 frames",
        counted.get()
    );
    let text = String::from_utf8(log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 130);
    for k in [
        "timestamp",
        "frame",
        "width",
        "height",
        "tiles",
        "ms_per_tile_p50",
        "ms_per_tile_max",
        "latency_ms",
        "nuclei",
        "foreground_fraction",
        "dropped",
    ] {
        assert!(lines[50].get(k).is_some(), "missing {k}: {}", lines[50]);
    }
    assert!(lines.iter().any(|l| l["nuclei"].as_u64().unwrap() > 0));
    // The counter does count in this binary (so the zero above means something).
    counting::start();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(counting::stop().0 >= 1);
    drop(v);
}
