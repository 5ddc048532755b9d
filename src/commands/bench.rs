//! `unet-edge bench`: latency per tile and throughput after warm-up.

use crate::RunArgs;
use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;
use unet_edge::engine::arena::ArenaStats;
use unet_edge::engine::cpu::CpuReport;
use unet_edge::rng::Rng;

/// Options of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Tiles to time after warm-up (split over the threads).
    #[arg(long, value_name = "N", default_value_t = 100)]
    tiles: usize,
    /// Untimed warm-up runs per thread.
    #[arg(long, value_name = "N", default_value_t = 3)]
    warmup: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// After the timing, profile the plan per operator (one thread, --tiles runs) and print
    /// where the time goes: by operator type, then the slowest nodes.
    #[arg(long)]
    profile: bool,
    /// With --profile: how many of the slowest nodes to list.
    #[arg(long, value_name = "N", default_value_t = 12)]
    top: usize,
    /// Let tract allocate from the system on every run instead of from each runner's arena
    /// (for measuring what the arena saves).
    #[arg(long)]
    no_arena: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Latency statistics in ms per tile.
struct Stats {
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Stats {
        min: v[0],
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// Runs the benchmark and prints the figures.
pub fn run(a: BenchArgs) -> Result<i32> {
    if a.tiles == 0 {
        bail!("--tiles must be at least 1");
    }
    let (model, cfg) = super::load(&a.run, None)?;
    if cfg.tta != 1 {
        // Timing N mirrored runs as one "tile" would hide the model's own latency.
        bail!(
            "--tta {}: bench times single model runs per tile; a frame with --tta N costs N of \
             them (live --tta N reports its frame times)",
            cfg.tta
        );
    }
    let plan = model.plan(cfg.batch, cfg.tile)?;
    let threads = cfg.threads;
    let runs_per_thread = a.tiles.div_ceil(cfg.batch * threads).max(1);
    // Threads start timing together so the timed window measures throughput, not warm-up.
    let barrier = std::sync::Barrier::new(threads);
    type Timed = (Vec<f64>, Instant, Instant, Option<ArenaStats>);
    let per_thread: Vec<Result<Timed>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let plan = plan.clone();
                let barrier = &barrier;
                s.spawn(move || -> Result<Timed> {
                    let mut r = plan.runner()?;
                    if a.no_arena {
                        r.disable_arena();
                    }
                    let mut rng = Rng::new(i as u64);
                    for v in r.input_mut() {
                        *v = rng.uniform();
                    }
                    for _ in 0..a.warmup {
                        r.run()?;
                    }
                    let mut lat = Vec::with_capacity(runs_per_thread);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..runs_per_thread {
                        let t = Instant::now();
                        r.run()?;
                        lat.push(t.elapsed().as_secs_f64() * 1e3 / cfg.batch as f64);
                    }
                    Ok((lat, start, Instant::now(), r.arena_stats()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench worker panicked"))
            .collect()
    });
    let mut lat = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut arena = None;
    for r in per_thread {
        let (l, start, end, a) = r?;
        arena = arena.or(a);
        lat.extend(l);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |e| e.max(end)));
    }
    let tiles_done = lat.len() * cfg.batch;
    let window = (last.unwrap() - first.unwrap()).as_secs_f64();
    let tps = tiles_done as f64 / window.max(1e-9);
    let s = stats(lat);
    let cpu = CpuReport::probe();
    if a.json {
        let j = serde_json::json!({
            "model": model.source,
            "cpu": cpu,
            "tile": cfg.tile,
            "threads": threads,
            "batch": cfg.batch,
            "tiles": tiles_done,
            "ms_per_tile": {"min": s.min, "p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean},
            "tiles_per_second": tps,
            "arena": arena.map(|a| serde_json::json!({
                "capacity_bytes": a.capacity, "high_water_bytes": a.high_water, "spilled_bytes": a.spilled,
            })),
        });
        println!("{j}");
    } else {
        println!(
            "model {}  tile {}  batch {}  threads {}  tiles {}",
            model.source, cfg.tile, cfg.batch, threads, tiles_done
        );
        println!("{cpu}");
        println!(
            "ms/tile  min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  mean {:.2}",
            s.min, s.p50, s.p90, s.p99, s.mean
        );
        println!("throughput {tps:.1} tiles/s");
        match arena {
            Some(a) => println!(
                "arena per runner: {:.1} MB reserved, {:.1} MB high water, {} bytes spilled to the system",
                a.capacity as f64 / 1e6,
                a.high_water as f64 / 1e6,
                a.spilled
            ),
            None => println!("arena: off (tract allocates from the system on every run)"),
        }
    }
    if a.profile {
        print_profile(&plan, runs_per_thread.max(5), a.top)?;
    }
    Ok(0)
}

/// Per-operator profile of one runner: totals by (operator, output type), then the slowest nodes.
fn print_profile(plan: &unet_edge::engine::model::TilePlan, runs: usize, top: usize) -> Result<()> {
    let mut r = plan.runner()?;
    let mut rng = Rng::new(7);
    for v in r.input_mut() {
        *v = rng.uniform();
    }
    r.run()?;
    let nodes = r.profile(runs)?;
    let total: f64 = nodes.iter().map(|n| n.ms).sum();
    let mut by_op: std::collections::BTreeMap<(String, String), (f64, usize)> = Default::default();
    for n in &nodes {
        let e = by_op
            .entry((n.op.clone(), n.datum_type.clone()))
            .or_default();
        e.0 += n.ms;
        e.1 += 1;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!(
        "profile over {runs} runs: {total:.2} ms per run in operators (batch {})",
        plan.batch
    );
    println!(
        "  {:>8} {:>6} {:>5}  operator (output type)",
        "ms/run", "share", "nodes"
    );
    for ((op, dt), (ms, n)) in &by_op {
        println!(
            "  {ms:8.3} {:5.1}% {n:5}  {op} ({dt})",
            100.0 * ms / total.max(1e-12)
        );
    }
    let mut slow = nodes.clone();
    slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("  slowest nodes:");
    for n in slow.iter().take(top) {
        let info = if n.info.is_empty() || n.info.len() > 60 {
            String::new()
        } else {
            format!(" {}", n.info)
        };
        println!(
            "  {:8.3} {:5.1}%  {} [{} {}]{info}",
            n.ms,
            100.0 * n.ms / total.max(1e-12),
            n.name,
            n.op,
            n.datum_type
        );
    }
    Ok(())
}
