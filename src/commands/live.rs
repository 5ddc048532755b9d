//! `unet-edge --camera DEV` / `--input SRC`: the live loop on a camera, a frame directory or raw
//! frames on stdin.

use crate::RunArgs;
use anyhow::{bail, Context, Result};
use clap::builder::TypedValueParser as _;
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use unet_edge::engine::segmenter::Segmenter;
use unet_edge::io::camera::CamFormat;
#[cfg(target_os = "linux")]
use unet_edge::io::camera::Request;
use unet_edge::io::faults::{FaultRates, Faulty};
#[cfg(not(target_os = "linux"))]
use unet_edge::io::gpio::NoPin;
use unet_edge::io::gpio::{PinSpec, Pins};
use unet_edge::io::metrics::LiveMetrics;
use unet_edge::io::mqtt::{MqttConfig, Publisher, StatusInfo};
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
    /// reach it from the network). Pages: / (viewer), /stream (MJPEG), /snapshot.jpg, /metrics
    /// (Prometheus text) and /healthz (503 after --health-timeout without a frame).
    #[arg(long, value_name = "ADDR:PORT")]
    pub preview: Option<String>,
    /// `/healthz` on the preview answers 503 once no frame was processed for this many seconds
    /// (a stalled camera, a hung pipe); a watchdog or a fleet monitor polls it.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub health_timeout: f64,
    /// Publish each frame's record to an MQTT broker: mqtt://HOST[:PORT] (1883) or
    /// mqtts://HOST[:PORT] (8883, with --mqtt-ca). Topics unet-edge/<device-id>/frames, .../nuclei
    /// (tables of --save-every frames) and the retained .../status (online/offline). The loop never
    /// waits for the network: a missing or lost broker is retried with back-off while records queue.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// CA certificate (PEM) that signed the broker's certificate, for mqtts://.
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_ca: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long, value_name = "USER", requires = "mqtt")]
    pub mqtt_user: Option<String>,
    /// MQTT password: in the --config file (`mqtt-password = "..."`) or the environment variable
    /// UNET_EDGE_MQTT_PASSWORD; refused on the command line, where every user can read it.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "UNET_EDGE_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub mqtt_password: Option<String>,
    /// The device's name in the MQTT topics (one topic level: no / + #); defaults to the host name.
    #[arg(long, value_name = "NAME")]
    pub device_id: Option<String>,
    /// Records held while the broker is slow or away; when full the oldest is dropped (counted in
    /// each record as mqtt_dropped and on /metrics).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub mqtt_queue: u32,
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
    /// Damage the source on purpose, for soak tests of the recovery paths: probabilities per
    /// frame, e.g. `corrupt=0.01,stall=0.001,disconnect=0.001,stall-secs=5` (a stall delivers
    /// nothing for stall-secs; a disconnect fails three reads, as an unplugged camera does).
    #[arg(long, value_name = "SPEC")]
    pub inject_faults: Option<FaultRates>,
    /// Foreground threshold on the probability, strictly between 0 and 1; defaults to the
    /// model's.
    #[arg(long, value_name = "T", value_parser = unet_edge::contract::parse_threshold)]
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
    let src: Box<dyn FrameSource> = match a.inject_faults {
        Some(rates) => Box::new(Faulty::new(src, rates, 0xFA17)),
        None => src,
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
    let (model, cfg) = super::load(&a.run, a.threshold)?;
    let instances = a.nuclei.config(&model.meta)?;
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
    if !(a.health_timeout.is_finite() && a.health_timeout > 0.0) {
        bail!(
            "--health-timeout {}: expected a positive number of seconds",
            a.health_timeout
        );
    }
    let metrics = Arc::new(LiveMetrics::new(Duration::from_secs_f64(a.health_timeout)));
    let preview = match &a.preview {
        Some(spec) => {
            let p = Preview::start(preview::parse_addr(spec)?, metrics.clone())?;
            eprintln!(
                "preview: http://{}/  (MJPEG /stream, still /snapshot.jpg, /metrics, /healthz)",
                p.addr()
            );
            Some(p)
        }
        None => None,
    };
    let publisher = match &a.mqtt {
        Some(url) => Some(start_mqtt(url, &a, metrics.clone())?),
        None => None,
    };
    let lcfg = LiveConfig {
        max_frames: a.max_frames,
        every_frame: a.every_frame,
        save_every,
        preview,
        instances,
        metrics: metrics.clone(),
        mqtt: publisher.as_ref().map(Publisher::queue),
        ..Default::default()
    };
    let mut pins = open_pins(&a)?;
    let src = open_source(&a)?;
    let sinks = live::Sinks {
        pins: &mut pins,
        log: &mut out,
    };
    let result = live::run(&mut seg, src, sinks, &lcfg, &stop, |_| {});
    drop(lcfg);
    if let Some(p) = publisher {
        // Queued records get a moment to leave before the retained `offline` status.
        p.finish(Duration::from_secs(3));
    }
    let stats = result?;
    eprintln!(
        "processed {} frames, {} dropped, {} corrupt, {} reconnects, {} write errors",
        stats.processed, stats.dropped, stats.corrupt, stats.reconnects, stats.write_errors
    );
    if a.mqtt.is_some() {
        use std::sync::atomic::Ordering::Relaxed;
        eprintln!(
            "mqtt: {} records published, {} dropped from the full queue, {} reconnects",
            metrics.mqtt_published.load(Relaxed),
            metrics.mqtt_dropped.load(Relaxed),
            metrics.mqtt_reconnects.load(Relaxed)
        );
    }
    // Results that could not be written are a failed run, whatever else went well.
    Ok(if stats.write_errors > 0 { 1 } else { 0 })
}

/// Starts the MQTT publisher for `--mqtt URL` (connecting in the background).
fn start_mqtt(url: &str, a: &LiveArgs, metrics: Arc<LiveMetrics>) -> Result<Publisher> {
    let device_id = match &a.device_id {
        Some(d) => d.clone(),
        None => default_device_id(),
    };
    let cfg = MqttConfig {
        url: url.to_string(),
        ca: a.mqtt_ca.clone(),
        user: a.mqtt_user.clone(),
        password: a.mqtt_password.clone(),
        device_id,
        queue: a.mqtt_queue as usize,
        record_bytes: 1024,
    };
    let info = StatusInfo {
        model: match &a.run.model {
            Some(m) => m.display().to_string(),
            None => "embedded".to_string(),
        },
        camera: match (&a.camera, &a.input) {
            (Some(c), _) => c.display().to_string(),
            (None, Some(i)) => i.clone(),
            (None, None) => String::new(),
        },
    };
    let p = Publisher::start(&cfg, &info, metrics)?;
    eprintln!(
        "mqtt: publishing to {url} as unet-edge/{}/{{frames,nuclei,status}}",
        cfg.device_id
    );
    Ok(p)
}

/// The host name as one MQTT topic level (`unet-edge` when there is none).
fn default_device_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect();
    if id.is_empty() {
        "unet-edge".to_string()
    } else {
        id
    }
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
