//! Latency per tile and per 512x512 frame of the seed U-Net (random weights), batch 1 and 8.
#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Compare against a saved baseline: `cargo bench --bench tile_latency -- --save-baseline main`
//! then `cargo bench --bench tile_latency -- --baseline main`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use unet_edge::contract::ModelMeta;
use unet_edge::engine::model::Model;
use unet_edge::engine::segmenter::{SegmentConfig, Segmenter};
use unet_edge::rng::Rng;
use unet_edge::synth::{generate, SynthConfig};
use unet_edge::unet::UNetSpec;

// As in the binary: tract's per-run allocations come from each runner's arena.
#[global_allocator]
static ALLOC: unet_edge::engine::arena::ArenaAlloc =
    unet_edge::engine::arena::ArenaAlloc(std::alloc::System);

fn seed_model() -> Model {
    let bytes = unet_edge::onnx_writer::encode(
        &UNetSpec::default()
            .random_weights(1)
            .to_onnx(&ModelMeta::default())
            .unwrap(),
    );
    Model::from_bytes(&bytes, "seed-unet-random").unwrap()
}

fn models() -> Vec<(String, Model)> {
    let mut v = vec![("seed-random-f32".to_string(), seed_model())];
    for (name, path) in [
        ("shipped-f32", "models/unet-nuclei.onnx"),
        ("shipped-int8", "models/unet-nuclei.int8.onnx"),
    ] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if p.exists() {
            v.push((name.to_string(), Model::from_path(&p).unwrap()));
        }
    }
    v
}

fn tile(c: &mut Criterion) {
    let mut g = c.benchmark_group("tile128");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for (name, model) in models() {
        for batch in [1usize, 8] {
            let plan = model.plan(batch, 128).unwrap();
            let mut r = plan.runner().unwrap();
            let mut rng = Rng::new(0);
            r.input_mut().iter_mut().for_each(|v| *v = rng.uniform());
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(&name, format!("batch{batch}")),
                &batch,
                |b, _| {
                    b.iter(|| {
                        r.run().unwrap();
                    })
                },
            );
        }
    }
    g.finish();
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame512");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    let s = generate(&mut Rng::new(9), 512, 512, &SynthConfig::default());
    for (name, model) in models() {
        for (batch, threads) in [(1usize, 1usize), (8, 1), (1, 2)] {
            let mut cfg = SegmentConfig::for_model(&model);
            cfg.batch = batch;
            cfg.threads = threads;
            let mut seg = Segmenter::new(&model, cfg).unwrap();
            g.bench_function(
                BenchmarkId::new(&name, format!("batch{batch}-threads{threads}")),
                |b| b.iter(|| seg.segment(&s.image, 512, 512).unwrap()),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, tile, frame);
criterion_main!(benches);
