//! Zero heap allocations per frame in the live loop after warm-up, capture thread included,
//! over 110 frames from a fake camera whose frames are cropped and rescaled (`--roi`,
//! `--scale`), published to the preview server and handed to the MQTT queue. Alone in its test binary: it counts every
//! thread.

mod util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use unet_edge::io::metrics::LiveMetrics;
use unet_edge::io::mqtt::RecordQueue;
use unet_edge::io::preview::{parse_addr, Preview};
use unet_edge::io::reframe::{Reframe, Reframed};
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
    let metrics = Arc::new(LiveMetrics::default());
    // The MQTT hand-over without the network: a consumer that takes records and hands their
    // strings back, as the publisher does before it copies them out (on its own thread).
    let queue = Arc::new(RecordQueue::new(8, 1024, metrics.clone()));
    let (q, taken) = (queue.clone(), Arc::new(AtomicU64::new(0)));
    let t = taken.clone();
    let consumer = std::thread::spawn(move || {
        while !q.is_closed() || !q.is_empty() {
            if let Some((_, rec)) = q.pop(std::time::Duration::from_millis(5)) {
                t.fetch_add(1, Ordering::Relaxed);
                // Slower than the loop now and then, so the queue fills and drops.
                if t.load(Ordering::Relaxed) % 10 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                q.recycle(rec);
            }
        }
    });
    let cfg = LiveConfig {
        max_frames: Some(130),
        summary_every: None,
        preview: Some(Preview::start(parse_addr("0").unwrap(), metrics.clone()).unwrap()),
        metrics: metrics.clone(),
        mqtt: Some(queue.clone()),
        ..Default::default()
    };
    let counted = std::cell::Cell::new(0usize);
    let stats = live::run(
        &mut seg,
        Reframed::new(
            camera(10_000, vec![]),
            Reframe::new("8,4,140,100".parse().ok(), 0.8).unwrap(),
        ),
        live::Sinks {
            pins: &mut no_pins(),
            log: &mut log,
        },
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
    queue.close();
    consumer.join().unwrap();
    assert_eq!(stats.processed, 130);
    let dropped = metrics.mqtt_dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "the queue never filled");
    assert_eq!(taken.load(Ordering::Relaxed) + dropped, 130);
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
    assert_eq!(
        (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
        (Some(112), Some(80))
    );
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
        "nuclei_whole",
        "mean_area_px",
        "mean_intensity",
        "foreground_fraction",
        "dropped",
    ] {
        assert!(lines[50].get(k).is_some(), "missing {k}: {}", lines[50]);
    }
    assert!(lines.iter().any(|l| l["nuclei"].as_u64().unwrap() > 0));
    // Whole nuclei are a subset, and their mean area is that of real objects when there are any.
    for l in &lines {
        let (n, whole) = (
            l["nuclei"].as_u64().unwrap(),
            l["nuclei_whole"].as_u64().unwrap(),
        );
        assert!(whole <= n, "{l}");
        let area = l["mean_area_px"].as_f64().unwrap();
        assert!(if whole > 0 { area >= 1.0 } else { area == 0.0 }, "{l}");
    }
    // The counter does count in this binary (so the zero above means something).
    counting::start();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(counting::stop().0 >= 1);
    drop(v);
}
