//! `unet-edge info`: what a model is and how tract runs it.

use crate::RunArgs;
use anyhow::Result;
use clap::Args;

/// Options of `info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// Prints the model report.
pub fn run(a: InfoArgs) -> Result<i32> {
    let (model, cfg) = super::load(&a.run, None)?;
    let plan = model.plan(cfg.batch, cfg.tile)?;
    let t = cfg.tile;
    println!("model:       {}", model.source);
    println!("input:       f32 [{}, 1, {t}, {t}]", cfg.batch);
    println!(
        "output:      f32 [{}, {}, {t}, {t}] ({:?}; channels: {}{})",
        cfg.batch,
        model.meta.output_channels(),
        model.meta.output,
        model.meta.channels.join(", "),
        if model.meta.star_rays > 0 {
            format!(" and {} star rays", model.meta.star_rays)
        } else {
            String::new()
        }
    );
    println!("parameters:  {}", model.parameters());
    let macs = model.macs_per_tile(t)?;
    println!("MACs/tile:   {} ({:.1} M)", macs, macs as f64 / 1e6);
    println!(
        "tiling:      tile {t}, margin {}, threshold {}",
        cfg.margin, cfg.threshold
    );
    println!("metadata:");
    for (k, v) in &model.meta.props {
        println!("  {k} = {v}");
    }
    let (int, float) = plan.kernel_precision();
    println!(
        "kernels:     {} convolution/matmul nodes on integer kernels, {} in float{}",
        int.len(),
        float.len(),
        if !int.is_empty() && !float.is_empty() {
            format!(" ({})", float.join(", "))
        } else {
            String::new()
        }
    );
    println!("{}", unet_edge::engine::cpu::CpuReport::probe());
    println!("optimized plan operators (count, op, output type):");
    for (op, dt, n) in plan.op_census() {
        println!("  {n:4}  {op:<28} {dt}");
    }
    Ok(0)
}
