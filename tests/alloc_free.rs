//! A counting global allocator proves the frame loop's own work (normalization, tiling, stitching,
//! thresholding, instance separation) allocates nothing after the first frame of a size; tract's
//! runs are covered by `alloc_free_tract.rs`.

mod util;

use util::counting::{count, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

use unet_edge::contract::ModelMeta;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter, TileBackend};
use unet_edge::rng::Rng;

/// A plain-Rust 3x3 box filter + sigmoid standing in for the network: it allocates nothing, so
/// whatever the counter sees comes from the segmenter.
struct BoxFilter {
    tile: usize,
    batch: usize,
    /// Output channels, each the same filtered tile (a star model's foreground, core and rays).
    channels: usize,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl BoxFilter {
    fn new(tile: usize, batch: usize, channels: usize) -> BoxFilter {
        BoxFilter {
            tile,
            batch,
            channels,
            input: vec![0.0; batch * tile * tile],
            output: vec![0.0; batch * channels * tile * tile],
        }
    }
}

impl TileBackend for BoxFilter {
    fn batch(&self) -> usize {
        self.batch
    }
    fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn run(&mut self) -> anyhow::Result<&[f32]> {
        let (t, c) = (self.tile, self.channels);
        for b in 0..self.batch * c {
            let (i, o) = (
                &self.input[b / c * t * t..(b / c + 1) * t * t],
                &mut self.output[b * t * t..(b + 1) * t * t],
            );
            for y in 0..t {
                for x in 0..t {
                    let mut s = 0.0;
                    for dy in [-1isize, 0, 1] {
                        for dx in [-1isize, 0, 1] {
                            let (yy, xx) = (y as isize + dy, x as isize + dx);
                            if yy >= 0 && xx >= 0 && (yy as usize) < t && (xx as usize) < t {
                                s += i[yy as usize * t + xx as usize];
                            }
                        }
                    }
                    o[y * t + x] = 1.0 / (1.0 + (-(s / 9.0 - 0.5) * 8.0).exp());
                }
            }
        }
        Ok(&self.output)
    }
}

fn frame(seed: u64, w: usize, h: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..w * h).map(|_| rng.uniform() * 4000.0).collect()
}

#[test]
fn frame_loop_allocates_nothing_after_the_first_frame() {
    let _g = LOCK.lock().unwrap();
    // --tta 4 adds a mirrored copy of the frame and two sums: sized once, like the rest. A
    // star model's ray planes are stitched into buffers sized once too.
    let star = ModelMeta {
        channels: vec!["foreground".into(), "core".into()],
        star_rays: 8,
        ..ModelMeta::default()
    };
    for (tta, meta) in [
        (1, ModelMeta::default()),
        (4, ModelMeta::default()),
        (1, star),
    ] {
        let (tile, batch) = (64, 2);
        let backend = BoxFilter::new(tile, batch, meta.output_channels());
        let cfg = SegmentConfig {
            tile,
            margin: 8,
            batch,
            threads: 1,
            threshold: 0.5,
            tta,
        };
        let mut seg = Segmenter::with_backends(meta, cfg, vec![backend]).unwrap();
        let (w, h) = (300, 173);
        let frames: Vec<Vec<f32>> = (0..21).map(|i| frame(i, w, h)).collect();
        seg.segment(&frames[0], w, h).unwrap();
        let (fg, allocs, bytes) = count(|| {
            let mut fg = 0.0;
            for f in &frames[1..] {
                seg.segment(f, w, h).unwrap();
                fg += seg.foreground_fraction();
            }
            fg
        });
        assert_eq!(
            (allocs, bytes),
            (0, 0),
            "the frame loop allocated {allocs} blocks / {bytes} bytes over 20 frames (tta {tta})"
        );
        // The loop did real work: about half the pixels of uniform noise are above the box mean.
        assert!(fg > 1.0 && fg < 19.0, "{fg}");
    }
}

#[test]
fn counter_sees_allocations_when_the_frame_size_changes() {
    let _g = LOCK.lock().unwrap();
    let backend = BoxFilter::new(32, 1, 1);
    let cfg = SegmentConfig {
        tile: 32,
        margin: 4,
        batch: 1,
        threads: 1,
        threshold: 0.5,
        tta: 1,
    };
    let mut seg = Segmenter::with_backends(ModelMeta::default(), cfg, vec![backend]).unwrap();
    seg.segment(&frame(0, 50, 50), 50, 50).unwrap();
    let f = frame(1, 120, 90);
    let (_, allocs, _) = count(|| seg.segment(&f, 120, 90).unwrap());
    assert!(allocs > 0, "a new frame size must size new buffers");
}

#[test]
fn instance_separation_allocates_nothing_after_the_first_frame() {
    let _g = LOCK.lock().unwrap();
    use unet_edge::post::instances::{Guide, InstanceConfig, Instances};
    use unet_edge::post::star::{ray_targets, StarMaps};
    use unet_edge::synth::{generate, SynthConfig};
    let (w, h) = (256, 200);
    let samples: Vec<_> = (0..11)
        .map(|i| generate(&mut Rng::new(i), w, h, &SynthConfig::default()))
        .collect();
    let masks: Vec<Vec<u8>> = samples.iter().map(|s| s.mask()).collect();
    // Frames in turn with the mask alone, a core channel (as a two-channel model gives it), and
    // star rays (here the exact ray targets of the frame's nuclei).
    let rays = 16;
    let guides: Vec<(Vec<f32>, Vec<f32>)> = samples
        .iter()
        .map(|s| {
            let core = unet_edge::post::targets::normalized_distance(&s.labels, w, h);
            let (mut d, mut known) = (vec![0.0; rays * w * h], vec![0.0; rays * w * h]);
            ray_targets(&s.labels, w, h, rays, &mut d, &mut known);
            (core, d)
        })
        .collect();
    let guide = |i: usize| match i % 3 {
        0 => Guide::Mask,
        1 => Guide::Core(&guides[i].0),
        _ => Guide::Star(StarMaps {
            core: &guides[i].0,
            rays: &guides[i].1,
            n_rays: rays,
        }),
    };
    let mut inst = Instances::new();
    let cfg = InstanceConfig::default();
    // Warm up on the most crowded frame so the nuclei table has its largest capacity.
    let busiest = (0..samples.len())
        .max_by_key(|&i| samples[i].count())
        .unwrap();
    for k in 0..3 {
        inst.run(
            &masks[busiest],
            guide(k),
            &samples[busiest].image,
            w,
            h,
            &cfg,
        );
    }
    let (total, allocs, bytes) = count(|| {
        let mut total = 0;
        for (i, (m, s)) in masks.iter().zip(&samples).enumerate().skip(1) {
            total += inst.run(m, guide(i), &s.image, w, h, &cfg);
        }
        total
    });
    assert_eq!(
        (allocs, bytes),
        (0, 0),
        "instance separation allocated {allocs} blocks / {bytes} bytes"
    );
    assert!(total > 20, "{total}");
}
