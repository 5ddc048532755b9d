//! `unet-edge --camera DEV` / `--input SRC`: the live loop on a camera, a frame directory or raw
//! frames on stdin.

use crate::RunArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
#[cfg(not(target_os = "linux"))]
use unet_edge::gpio::NoPin;
use unet_edge::gpio::{PinSpec, Pins};
use unet_edge::live::{self, LiveConfig};
use unet_edge::segmenter::Segmenter;
use unet_edge::source::{FileSource, PixFmt, RawSource};

/// Options of the live loop (used when no subcommand is given).
#[derive(Args, Debug)]
pub struct LiveArgs {
    /// V4L2 camera device, e.g. /dev/video0.
    #[arg(long, value_name = "DEV", conflicts_with = "input")]
    pub camera: Option<PathBuf>,
    /// Frames from a directory, a file pattern (`dir/frame*.png`), or `-` for raw frames on stdin.
    #[arg(long, value_name = "SRC")]
    pub input: Option<String>,
    /// Frame rate to play a directory at (0 = as fast as possible).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fps: f32,
    /// Width of raw stdin frames.
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Height of raw stdin frames.
    #[arg(long, value_name = "H")]
    pub height: Option<usize>,
    /// Pixel format of raw stdin frames.
    #[arg(long, value_enum, default_value = "gray8")]
    pub pixfmt: PixFmt,
    /// Write the per-frame JSON lines to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Save mask and overlay PNGs of every N-th frame (needs --out).
    #[arg(long, value_name = "N", requires = "out")]
    pub save_every: Option<u64>,
    /// Directory for --save-every.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Stop after N processed frames.
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
    /// Foreground threshold on the probability; defaults to the model's.
    #[arg(long, value_name = "T")]
    pub threshold: Option<f32>,
    /// Process one frame per rising edge of this GPIO input (CHIP:LINE, e.g. gpiochip0:17).
    #[arg(long, value_name = "CHIP:LINE")]
    pub trigger: Option<PinSpec>,
    /// GPIO output held high while a frame is processed.
    #[arg(long, value_name = "CHIP:LINE")]
    pub busy_led: Option<PinSpec>,
    /// GPIO output held high while the nuclei count is at least --alert-count.
    #[arg(long, value_name = "CHIP:LINE", requires = "alert_count")]
    pub alert: Option<PinSpec>,
    /// Nuclei count that raises --alert.
    #[arg(long, value_name = "N")]
    pub alert_count: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl LiveArgs {
    /// Whether any source was named (otherwise the CLI prints help).
    pub fn has_source(&self) -> bool {
        self.camera.is_some() || self.input.is_some()
    }
}

/// Runs the live loop; exit code 0 after a clean end or SIGINT/SIGTERM.
pub fn run(a: LiveArgs) -> Result<i32> {
    if let Some(cam) = &a.camera {
        bail!(
            "--camera {}: V4L2 capture is not in this build yet; feed the loop with `--input -` from \
             `ffmpeg -f v4l2 -i {} -f rawvideo -pix_fmt gray -` (see README)",
            cam.display(),
            cam.display()
        );
    }
    let (model, cfg) = super::load(&a.run, a.threshold)?;
    let mut seg = Segmenter::new(&model, cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let mut out: Box<dyn std::io::Write> = match &a.log {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--log {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let save_every = match (a.save_every, &a.out) {
        (Some(0), _) => bail!("--save-every must be at least 1"),
        (Some(n), Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
            Some((n, dir.clone()))
        }
        _ => None,
    };
    let lcfg = LiveConfig {
        max_frames: a.max_frames,
        save_every,
        ..Default::default()
    };
    let mut pins = open_pins(&a)?;
    let input = a.input.as_deref().expect("checked by has_source");
    let stats = if input == "-" {
        let (Some(w), Some(h)) = (a.width, a.height) else {
            bail!("--input - (raw frames on stdin) needs --width and --height");
        };
        let src = RawSource::new(std::io::stdin(), a.pixfmt, w, h)?;
        live::run(&mut seg, src, &mut pins, &mut out, &lcfg, &stop, |_| {})?
    } else {
        let src = FileSource::open(std::path::Path::new(input), a.fps)?;
        live::run(&mut seg, src, &mut pins, &mut out, &lcfg, &stop, |_| {})?
    };
    eprintln!(
        "processed {} frames, {} dropped, {} corrupt, {} write errors",
        stats.processed, stats.dropped, stats.corrupt, stats.write_errors
    );
    Ok(0)
}

#[cfg(target_os = "linux")]
type BoardPin = linux_embedded_hal::CdevPin;

#[cfg(target_os = "linux")]
fn open_pins(a: &LiveArgs) -> Result<Pins<BoardPin, BoardPin, BoardPin>> {
    use unet_edge::gpio::board;
    let trigger = a
        .trigger
        .as_ref()
        .map(board::input)
        .transpose()
        .context("--trigger")?;
    let busy = a
        .busy_led
        .as_ref()
        .map(board::output)
        .transpose()
        .context("--busy-led")?;
    let alert = a
        .alert
        .as_ref()
        .map(board::output)
        .transpose()
        .context("--alert")?;
    Ok(Pins::new(
        trigger,
        busy,
        alert,
        a.alert_count.unwrap_or(usize::MAX),
    ))
}

#[cfg(not(target_os = "linux"))]
fn open_pins(a: &LiveArgs) -> Result<Pins<NoPin, NoPin, NoPin>> {
    if a.trigger.is_some() || a.busy_led.is_some() || a.alert.is_some() {
        bail!("GPIO needs Linux GPIO character devices");
    }
    Ok(Pins::new(None, None, None, usize::MAX))
}
