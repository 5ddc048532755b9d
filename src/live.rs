//! The live loop: capture on one thread, inference on another, joined by a single
//! latest-frame-wins slot (two buffers swapped, never a queue), with JSON lines, periodic saves,
//! GPIO and a summary on stderr. After the first frame of a size the loop allocates nothing in
//! the project's code (tests/live_loop.rs counts it).

use crate::gpio::Pins;
use crate::instances::{InstanceConfig, Instances};
use crate::segmenter::{Segmenter, TileBackend};
use crate::source::{FrameBuf, FrameSource, Next, SourceError};
use anyhow::Result;
use embedded_hal::digital::{InputPin, OutputPin};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of the live loop.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Save mask and overlay PNGs of every N-th processed frame into `out`.
    pub save_every: Option<(u64, PathBuf)>,
    /// How long capture waits for a frame before polling again.
    pub capture_timeout: Duration,
    /// Interval of the summary line on stderr (`None`: no summary).
    pub summary_every: Option<Duration>,
    /// Instance separation.
    pub instances: InstanceConfig,
    /// Where the latest overlay is served over HTTP.
    pub preview: Option<crate::preview::Preview>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_frames: None,
            save_every: None,
            capture_timeout: Duration::from_secs(2),
            summary_every: Some(Duration::from_secs(5)),
            instances: InstanceConfig::default(),
            preview: None,
        }
    }
}

/// Counters of a live run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Frames segmented.
    pub processed: u64,
    /// Frames captured but replaced by a newer one before inference took them.
    pub dropped: u64,
    /// Frames the source delivered damaged (skipped).
    pub corrupt: u64,
    /// Times the source went away and was retried.
    pub reconnects: u64,
    /// Output files that could not be written (disk full, permissions).
    pub write_errors: u64,
}

struct Slot {
    frame: FrameBuf,
    fresh: bool,
    ended: bool,
    fatal: Option<String>,
}

/// Counters the capture thread updates.
#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    corrupt: AtomicU64,
    reconnects: AtomicU64,
}

fn capture<S: FrameSource>(
    mut source: S,
    slot: Arc<(Mutex<Slot>, Condvar)>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) {
    let mut back = FrameBuf::default();
    let mut backoff = Duration::from_millis(100);
    let live = source.is_live();
    while !stop.load(Ordering::Relaxed) {
        let result = source.next_into(&mut back, timeout);
        let finish = |fatal: Option<String>| {
            let mut s = slot.0.lock().expect("slot lock");
            s.ended = true;
            s.fatal = fatal;
            slot.1.notify_all();
        };
        match result {
            Ok(Next::Frame) => {
                backoff = Duration::from_millis(100);
                let mut s = slot.0.lock().expect("slot lock");
                while !live && s.fresh && !stop.load(Ordering::Relaxed) {
                    s = slot
                        .1
                        .wait_timeout(s, Duration::from_millis(100))
                        .expect("slot lock")
                        .0;
                }
                // A live frame waits for nothing here; a recording's latency starts when the loop
                // can take it.
                back.captured = Some(Instant::now());
                if s.fresh {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                std::mem::swap(&mut s.frame, &mut back);
                s.fresh = true;
                slot.1.notify_all();
            }
            Ok(Next::End) => return finish(None),
            Err(SourceError::Timeout) => {}
            Err(SourceError::Corrupt(why)) => {
                let n = shared.corrupt.fetch_add(1, Ordering::Relaxed);
                if n < 3 {
                    eprintln!("warning: skipped a corrupt frame: {why}");
                }
            }
            Err(SourceError::Disconnected(why)) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "warning: camera unavailable ({why}); retrying in {:.1} s",
                    backoff.as_secs_f32()
                );
                sleep_unless_stopped(backoff, &stop);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(SourceError::Fatal(e)) => return finish(Some(format!("{e:#}"))),
        }
    }
    let mut s = slot.0.lock().expect("slot lock");
    s.ended = true;
    slot.1.notify_all();
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the live loop until the source ends, `max_frames` is reached or `stop` is set (SIGINT).
/// `on_frame` is called after each processed frame with the count so far. The capture thread is
/// not joined: a source blocked in a read (an idle pipe) must not keep the program from exiting.
#[allow(clippy::too_many_arguments)]
pub fn run<B, S, T, L, A, W>(
    seg: &mut Segmenter<B>,
    source: S,
    pins: &mut Pins<T, L, A>,
    log: &mut W,
    cfg: &LiveConfig,
    stop: &Arc<AtomicBool>,
    mut on_frame: impl FnMut(u64),
) -> Result<LiveStats>
where
    B: TileBackend,
    S: FrameSource + 'static,
    T: InputPin,
    L: OutputPin,
    A: OutputPin,
    W: Write,
{
    let slot = Arc::new((
        Mutex::new(Slot {
            frame: FrameBuf::default(),
            fresh: false,
            ended: false,
            fatal: None,
        }),
        Condvar::new(),
    ));
    let shared = Arc::new(Shared::default());
    let mut stats = LiveStats::default();
    let mut front = FrameBuf::default();
    let mut inst = Instances::new();
    let mut line = String::with_capacity(512);
    let (mut window_frames, mut window_ms, mut window_start) = (0u64, 0f32, Instant::now());
    let capture_timeout = cfg.capture_timeout;
    {
        let (slot, shared, stop) = (slot.clone(), shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture(source, slot, shared, stop, capture_timeout))?;
    }
    let result = (|| -> Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) || cfg.max_frames.is_some_and(|m| stats.processed >= m)
            {
                return Ok(());
            }
            if pins.triggered() {
                if !pins.wait_rising_edge(Duration::from_millis(200), stop.as_ref()) {
                    continue;
                }
                // The frame to process is the first one captured after the edge.
                slot.0.lock().expect("slot lock").fresh = false;
            }
            {
                let mut s = slot.0.lock().expect("slot lock");
                while !s.fresh && !s.ended && !stop.load(Ordering::Relaxed) {
                    s = slot
                        .1
                        .wait_timeout(s, Duration::from_millis(100))
                        .expect("slot lock")
                        .0;
                }
                if !s.fresh {
                    if let Some(e) = s.fatal.take() {
                        anyhow::bail!("capture failed: {e}");
                    }
                    if s.ended {
                        return Ok(());
                    }
                    continue;
                }
                std::mem::swap(&mut s.frame, &mut front);
                s.fresh = false;
                // A recording waits for the slot to empty.
                slot.1.notify_all();
            }
            pins.busy(true);
            let timing = seg.segment(&front.data, front.width, front.height)?;
            let nuclei = inst.run(
                seg.mask(),
                seg.core(),
                &front.data,
                front.width,
                front.height,
                &cfg.instances,
            );
            let summary = inst.summary();
            pins.count(nuclei);
            pins.busy(false);
            if let Some(p) = &cfg.preview {
                p.publish(seg.normalized(), seg.mask(), front.width, front.height);
            }
            stats.processed += 1;
            let latency = front
                .captured
                .map(|t| t.elapsed().as_secs_f32() * 1e3)
                .unwrap_or(0.0);
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            line.clear();
            let _ = writeln!(
                    line,
                    "{{\"timestamp\":{ts:.3},\"frame\":{},\"width\":{},\"height\":{},\"tiles\":{},\"ms_per_tile_p50\":{:.3},\"ms_per_tile_max\":{:.3},\"frame_ms\":{:.3},\"latency_ms\":{latency:.3},\"nuclei\":{nuclei},\"nuclei_whole\":{},\"mean_area_px\":{:.1},\"mean_intensity\":{:.3},\"foreground_fraction\":{:.4},\"dropped\":{},\"corrupt\":{}}}",
                    front.index,
                    front.width,
                    front.height,
                    timing.tiles,
                    timing.ms_per_tile_p50,
                    timing.ms_per_tile_max,
                    timing.frame_ms,
                    summary.whole,
                    summary.mean_area,
                    summary.mean_intensity,
                    seg.foreground_fraction(),
                    shared.dropped.load(Ordering::Relaxed),
                    shared.corrupt.load(Ordering::Relaxed),
                );
            if log
                .write_all(line.as_bytes())
                .and_then(|_| log.flush())
                .is_err()
            {
                stats.write_errors += 1;
            }
            if let Some((every, dir)) = &cfg.save_every {
                if stats.processed % every == 0 {
                    if let Err(e) = save_frame(seg, &front, dir) {
                        stats.write_errors += 1;
                        eprintln!("warning: {e:#} (live processing goes on)");
                    }
                }
            }
            window_frames += 1;
            window_ms += timing.ms_per_tile;
            if let Some(every) = cfg.summary_every {
                if window_start.elapsed() >= every {
                    let secs = window_start.elapsed().as_secs_f32();
                    eprintln!(
                        "{:.1} fps  {:.1} ms/tile  {} dropped  {} corrupt  {} processed",
                        window_frames as f32 / secs,
                        window_ms / window_frames as f32,
                        shared.dropped.load(Ordering::Relaxed),
                        shared.corrupt.load(Ordering::Relaxed),
                        stats.processed
                    );
                    (window_frames, window_ms, window_start) = (0, 0.0, Instant::now());
                }
            }
            on_frame(stats.processed);
        }
    })();
    // Whatever ended the loop, tell the capture thread to end too.
    stop.store(true, Ordering::Relaxed);
    let _ = log.flush();
    stats.dropped = shared.dropped.load(Ordering::Relaxed);
    stats.corrupt = shared.corrupt.load(Ordering::Relaxed);
    stats.reconnects = shared.reconnects.load(Ordering::Relaxed);
    result.map(|_| stats)
}

fn save_frame<B: TileBackend>(
    seg: &Segmenter<B>,
    f: &FrameBuf,
    dir: &std::path::Path,
) -> Result<()> {
    let name = format!("frame{:08}", f.index);
    crate::imageio::save_mask(
        &dir.join(format!("{name}.mask.png")),
        f.width,
        f.height,
        seg.mask(),
    )?;
    let overlay = crate::imageio::overlay(seg.normalized(), seg.mask(), f.width, f.height);
    crate::imageio::save_rgb8(&dir.join(format!("{name}.overlay.png")), overlay)
}
