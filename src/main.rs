//! The `unet-edge` command line.

mod commands;
mod config_file;
mod logger;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// Read the live loop's options from a TOML file (keys are the long option names, e.g.
    /// `camera = "/dev/video0"`, `fps = 10`); options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the live loop's effective settings (defaults, --config file, command line) as TOML,
    /// each with where it came from, and exit.
    #[arg(long)]
    print_config: bool,
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
    /// Test-time augmentation: run each frame 1, 2 (also mirrored left-right) or 4 times (also
    /// top-bottom and both) and average the probabilities; N times the compute, smoother
    /// outlines (figures in the model card). `bench` refuses it: it times single model runs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tta: usize,
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
    /// Check a --config file: every unknown key and bad value is reported by name, with what is
    /// accepted; exit code 0 when the file is good.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Which keys the command line and the config file set, for `--print-config`.
struct Provenance {
    cli: Vec<String>,
    file: Vec<String>,
    path: Option<PathBuf>,
}

/// The command line with a `--config` file's settings put before the user's arguments, parsed
/// with later values winning; exits with a message naming the file and key on a bad config.
fn parse_cli() -> (Cli, clap::ArgMatches, Provenance) {
    let fail = |msg: String| -> ! {
        eprintln!("error: {msg}");
        std::process::exit(2);
    };
    let (args, config) = config_file::expand_args(std::env::args_os().collect())
        .unwrap_or_else(|e| fail(format!("{e:#}")));
    let mut argv = args[..1].to_vec();
    let (mut keys, mut path) = (vec![], None);
    if let Some(file) = config {
        let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
        if let Some(sub) = first.filter(|f| Cli::command().find_subcommand(f).is_some()) {
            fail(format!(
                "--config sets the live loop's options; it does not apply to `{sub}`"
            ));
        }
        let settings = config_file::read::<Cli>(&file).unwrap_or_else(|e| fail(format!("{e:#}")));
        let problems = config_file::check::<Cli>(&settings);
        if !problems.is_empty() {
            fail(format!(
                "config file {}:\n  {}",
                file.display(),
                problems.join("\n  ")
            ));
        }
        for s in settings {
            argv.extend(s.args.iter().map(Into::into));
            keys.push(s.key);
        }
        path = Some(file);
    }
    let cli_keys = config_file::set_by(Cli::command(), &args);
    if let Some(k) = cli_keys
        .iter()
        .find(|k| config_file::SECRET_KEYS.contains(&k.as_str()))
    {
        fail(format!(
            "--{k} on the command line is readable by every user of this machine (ps, shell \
             history); put `{k} = \"...\"` in the --config file or set UNET_EDGE_MQTT_PASSWORD"
        ));
    }
    argv.extend(args.into_iter().skip(1));
    let matches = Cli::command()
        .args_override_self(true)
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let provenance = Provenance {
        cli: cli_keys,
        file: keys,
        path,
    };
    (cli, matches, provenance)
}

/// `check-config FILE`: 0 when good, 2 with every problem listed.
fn check_config(file: &std::path::Path) -> anyhow::Result<i32> {
    let settings = config_file::read::<Cli>(file)?;
    let problems = config_file::check::<Cli>(&settings);
    if problems.is_empty() {
        println!("{}: ok ({} settings)", file.display(), settings.len());
        return Ok(0);
    }
    for p in &problems {
        eprintln!("{}: {p}", file.display());
    }
    Ok(2)
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
    let (cli, matches, from) = parse_cli();
    logger::init(cli.verbose, cli.quiet);
    if cli.print_config {
        print!(
            "{}",
            config_file::print_effective(
                &matches,
                &Cli::command(),
                &from.cli,
                &from.file,
                from.path.as_deref()
            )
        );
        std::process::exit(0);
    }
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
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
