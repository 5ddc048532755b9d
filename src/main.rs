//! The `unet-edge` command line.

mod commands;
mod logger;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// tract's per-run allocations are served from each tile runner's arena (see `unet_edge::engine::arena`).
#[global_allocator]
static ALLOC: unet_edge::engine::arena::ArenaAlloc =
    unet_edge::engine::arena::ArenaAlloc(std::alloc::System);

/// Nuclei segmentation with an overlap-tile U-Net on tract, for microscope cameras and image files.
///
/// Without a subcommand it runs the live loop: `unet-edge --input frames/ --fps 10`, or raw frames
/// on stdin with `--input - --width W --height H`.
#[derive(Parser, Debug)]
#[command(
    name = "unet-edge",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr: no progress, notes or warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(flatten)]
    live: commands::live::LiveArgs,
}

/// Model and tiling options shared by every command that runs the network.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// U-Net ONNX model; defaults to the model embedded in the binary.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Tile side in pixels; defaults to the model's fixed input size, or its training tile, or 128.
    /// Sizes other than the model's fixed size need a model with dynamic spatial size.
    #[arg(long, value_name = "T")]
    pub tile: Option<usize>,
    /// Context in pixels kept around every output pixel (overlap = 2 x margin); default 24 for
    /// 128-px tiles, scaled with the tile size.
    #[arg(long, value_name = "M")]
    pub margin: Option<usize>,
    /// Tiles per model run.
    #[arg(long, value_name = "B", default_value_t = 1)]
    pub batch: usize,
    /// Worker threads, each running tiles on its own model state.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// Largest frame or image accepted, in pixels; larger ones are refused before memory is
    /// allocated for them (image files by their header, raw stdin by --width x --height).
    #[arg(long, value_name = "PIXELS", default_value_t = unet_edge::limits::DEFAULT_MAX_PIXELS)]
    pub max_pixels: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Segment image files (PNG, TIFF, JPEG; 8/16-bit grey or RGB) and directories of them.
    Segment(commands::segment::SegmentArgs),
    /// Measure latency per tile and throughput of a model after warm-up.
    Bench(commands::bench::BenchArgs),
    /// Score predictions against ground truth: pixel Dice/IoU, instance F1 and the DSB2018 score.
    Eval(commands::eval::EvalArgs),
    /// Show a model's shapes, parameters, cost per tile, metadata and optimized operators.
    Info(commands::info::InfoArgs),
}

fn main() {
    // Rust ignores SIGPIPE, so `unet-edge info | head` panicked on the closed pipe; restore the
    // default (exit quietly) like other Unix filters. The preview server's sockets are
    // unaffected: std sends with MSG_NOSIGNAL.
    #[cfg(target_os = "linux")]
    // SAFETY: called first thing in main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    logger::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        Some(Command::Segment(a)) => commands::segment::run(a),
        Some(Command::Bench(a)) => commands::bench::run(a),
        Some(Command::Info(a)) => commands::info::run(a),
        Some(Command::Eval(a)) => commands::eval::run(a),
        None if cli.live.has_source() => commands::live::run(cli.live),
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            eprintln!("\nerror: give a subcommand, or --camera / --input for the live loop");
            std::process::exit(2);
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
