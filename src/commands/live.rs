//! `unet-edge --camera DEV` / `--input SRC`: the live loop on a camera, a frame directory or raw
//! frames on stdin.

use crate::RunArgs;
use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser as _;
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use unet_edge::engine::segmenter::Segmenter;
use unet_edge::io::camera::CamFormat;
#[cfg(target_os = "linux")]
use unet_edge::io::camera::Request;
#[cfg(not(target_os = "linux"))]
use unet_edge::io::gpio::NoPin;
use unet_edge::io::gpio::{PinSpec, Pins};
use unet_edge::io::preview::{self, Preview};
use unet_edge::io::reframe::{Reframe, Reframed, Roi};
use unet_edge::io::source::{FileSource, FrameSource, PixFmt, RawSource, SynthSource};
use unet_edge::live::{self, LiveConfig};

/// Options of the live loop (used when no subcommand is given).
#[derive(Args, Debug)]
pub struct LiveArgs {
    /// V4L2 camera device, e.g. /dev/video0 (mmap streaming; GREY, Y16, Y10, Y12, YUYV or MJPEG).
    #[arg(long, value_name = "DEV", conflicts_with = "input")]
    pub camera: Option<PathBuf>,
    /// List V4L2 cameras with their formats, sizes and frame rates, then exit.
    #[arg(long, conflicts_with_all = ["camera", "input"])]
    pub list_cameras: bool,
    /// Frames from a directory, a file pattern (`dir/frame*.png`), `-` for raw frames on stdin,
    /// or `synth[:WxH]` for the built-in synthetic nuclei camera (demos, soak tests).
    #[arg(long, value_name = "SRC")]
    pub input: Option<String>,
    /// Frame rate: asked of the camera, or the pace a directory or `synth` is played at
    /// (0 = the camera's own rate / as fast as frames decode).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fps: f32,
    /// Frame width: asked of the camera (nearest offered size), required for raw stdin frames.
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Frame height: asked of the camera (nearest offered size), required for raw stdin frames.
    #[arg(long, value_name = "H")]
    pub height: Option<usize>,
    /// Camera pixel format; `auto` prefers GREY, then Y16/Y12/Y10, then YUYV, then MJPEG.
    #[arg(long, value_name = "FMT", default_value = "auto", value_parser = parse_format)]
    pub format: FormatArg,
    /// Pixel format of raw stdin frames.
    #[arg(long, default_value = "gray8", value_parser = clap::builder::PossibleValuesParser::new(
        PixFmt::NAMES.map(|(n, _)| n)).map(|s| s.parse::<PixFmt>().expect("a listed name")))]
    pub pixfmt: PixFmt,
    /// Process only this rectangle of each frame, in source pixels: x,y,w,h.
    #[arg(long, value_name = "X,Y,W,H")]
    pub roi: Option<Roi>,
    /// Resize frames (after --roi) by this factor before segmentation, so nuclei match the size
    /// the model was trained for (`unet-edge info` shows its nucleus diameter range): 0.5 when
    /// nuclei look twice as large as that, 2 when half as large. Outputs are in the resized frame.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub scale: f32,
    /// Serve the latest overlay over HTTP: PORT (on 127.0.0.1) or ADDR:PORT (e.g. 0.0.0.0:8080 to
    /// reach it from the network). Pages: / (viewer), /stream (MJPEG), /snapshot.jpg.
    #[arg(long, value_name = "ADDR:PORT")]
    pub preview: Option<String>,
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
    /// Process every frame instead of the latest one: for a recording piped on stdin
    /// (`ffmpeg -i run.avi -f rawvideo - | unet-edge --input - --every-frame ...`), which then
    /// waits for the loop instead of losing the frames that arrive during inference.
    #[arg(long)]
    pub every_frame: bool,
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
    pub nuclei: super::segment::NucleiArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `--format`: `auto` or one camera format.
#[derive(Clone, Copy, Debug)]
pub struct FormatArg(pub Option<CamFormat>);

fn parse_format(s: &str) -> Result<FormatArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(FormatArg(None));
    }
    s.parse::<CamFormat>()
        .map(|f| FormatArg(Some(f)))
        .map_err(|e| format!("{e} (or auto)"))
}

impl LiveArgs {
    /// Whether any source was named (otherwise the CLI prints help).
    pub fn has_source(&self) -> bool {
        self.camera.is_some() || self.input.is_some() || self.list_cameras
    }
}

/// `--list-cameras`.
#[cfg(target_os = "linux")]
fn list_cameras() -> Result<i32> {
    use unet_edge::io::camera::v4l2;
    let nodes = v4l2::list_devices();
    if nodes.is_empty() {
        eprintln!(
            "no V4L2 devices (/dev/video*): is the camera plugged in and its driver loaded? \
             (Raspberry Pi CSI cameras need libcamera; pipe `rpicam-vid` into --input -)"
        );
        return Ok(1);
    }
    for node in nodes {
        match v4l2::describe(&node) {
            Ok(info) => print!("{info}"),
            Err(e) => println!("{node}: {e}"),
        }
    }
    Ok(0)
}

#[cfg(not(target_os = "linux"))]
fn list_cameras() -> Result<i32> {
    bail!("--list-cameras needs Linux (V4L2)")
}

fn open_source(a: &LiveArgs) -> Result<Box<dyn FrameSource>> {
    let src: Box<dyn FrameSource> = if let Some(cam) = &a.camera {
        open_camera(cam, a)?
    } else {
        let input = a.input.as_deref().expect("checked by has_source");
        if input == "-" {
            let (Some(w), Some(h)) = (a.width, a.height) else {
                bail!("--input - (raw frames on stdin) needs --width and --height");
            };
            Box::new(RawSource::new(
                std::io::stdin(),
                a.pixfmt,
                w,
                h,
                a.run.max_pixels,
            )?)
        } else if let Some(size) = SynthSource::parse_spec(input) {
            let (w, h) = size?;
            Box::new(SynthSource::new(w, h, 0x5EED, a.fps))
        } else {
            Box::new(FileSource::open(std::path::Path::new(input), a.fps)?)
        }
    };
    let reframe = Reframe::new(a.roi, a.scale)?;
    Ok(if reframe.is_identity() {
        src
    } else {
        Box::new(Reframed::new(src, reframe))
    })
}

#[cfg(target_os = "linux")]
fn open_camera(cam: &std::path::Path, a: &LiveArgs) -> Result<Box<dyn FrameSource>> {
    let to_u32 = |v: Option<usize>| v.map(|v| v.min(u32::MAX as usize) as u32);
    let request = Request {
        format: a.format.0,
        width: to_u32(a.width),
        height: to_u32(a.height),
        fps: (a.fps > 0.0).then_some(a.fps),
    };
    Ok(Box::new(unet_edge::io::camera::v4l2::Camera::open(
        cam, request,
    )?))
}

#[cfg(not(target_os = "linux"))]
fn open_camera(cam: &std::path::Path, _a: &LiveArgs) -> Result<Box<dyn FrameSource>> {
    bail!("--camera {}: V4L2 capture needs Linux", cam.display())
}

/// Runs the live loop; exit code 0 after a clean end or SIGINT/SIGTERM.
pub fn run(a: LiveArgs) -> Result<i32> {
    if a.list_cameras {
        return list_cameras();
    }
    if !(a.fps.is_finite() && a.fps >= 0.0) {
        bail!(
            "--fps {}: expected 0 (the camera's own rate, or as fast as frames decode) or a \
             positive frame rate",
            a.fps
        );
    }
    let instances = a.nuclei.config()?;
    let (model, cfg) = super::load(&a.run, a.threshold)?;
    let mut seg = Segmenter::new(&model, cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let mut out: Box<dyn std::io::Write> = match &a.log {
        Some(p) => Box::new(unet_edge::io::record::LineLog::open(p)?),
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
    let preview = match &a.preview {
        Some(spec) => {
            let p = Preview::start(preview::parse_addr(spec)?)?;
            eprintln!(
                "preview: http://{}/  (MJPEG /stream, still /snapshot.jpg)",
                p.addr()
            );
            Some(p)
        }
        None => None,
    };
    let lcfg = LiveConfig {
        max_frames: a.max_frames,
        every_frame: a.every_frame,
        save_every,
        preview,
        instances,
        ..Default::default()
    };
    let mut pins = open_pins(&a)?;
    let src = open_source(&a)?;
    let sinks = live::Sinks {
        pins: &mut pins,
        log: &mut out,
    };
    let stats = live::run(&mut seg, src, sinks, &lcfg, &stop, |_| {})?;
    eprintln!(
        "processed {} frames, {} dropped, {} corrupt, {} reconnects, {} write errors",
        stats.processed, stats.dropped, stats.corrupt, stats.reconnects, stats.write_errors
    );
    // Results that could not be written are a failed run, whatever else went well.
    Ok(if stats.write_errors > 0 { 1 } else { 0 })
}

#[cfg(target_os = "linux")]
type BoardPin = linux_embedded_hal::CdevPin;

#[cfg(target_os = "linux")]
fn open_pins(a: &LiveArgs) -> Result<Pins<BoardPin, BoardPin, BoardPin>> {
    use unet_edge::io::gpio::board;
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
