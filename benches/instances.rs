//! Instance step (distance transform, flooding split, measurements) on the shipped model's mask
//! and core channel, per frame: the real sample (`samples/dsb2018-nuclei.tif`) and a synthetic
//! 512x512 frame. `cargo bench --bench instances`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::time::Duration;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::io::imageio::load_gray;
use unet_edge::post::instances::{InstanceConfig, Instances};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};

fn instances(c: &mut Criterion) {
    let model = Model::load(None).unwrap();
    let mut seg = Segmenter::new(&model, SegmentConfig::for_model(&model)).unwrap();
    let real = load_gray(&Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/dsb2018-nuclei.tif"))
        .unwrap();
    let synth = generate(&mut Rng::new(9), 512, 512, &SynthConfig::default());
    let frames = [
        ("real-sample", real.data, real.width, real.height),
        ("synthetic-512", synth.image, 512, 512),
    ];
    let mut g = c.benchmark_group("instances");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    let cfg = InstanceConfig::default();
    for (name, image, w, h) in frames {
        seg.segment(&image, w, h).unwrap();
        let (mask, core) = (seg.mask().to_vec(), seg.core().map(<[f32]>::to_vec));
        let mut inst = Instances::new();
        g.bench_function(name, |b| {
            b.iter(|| inst.run(&mask, core.as_deref().into(), &image, w, h, &cfg))
        });
    }
    g.finish();
}

criterion_group!(benches, instances);
criterion_main!(benches);
