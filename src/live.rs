//! The live loop: capture on one thread, inference on another, joined by a single
//! latest-frame-wins slot (two buffers swapped, never a queue), with JSON lines, periodic saves,
//! GPIO and a summary on stderr. After the first frame of a size the loop allocates nothing in
//! the project's code (tests/live_loop.rs counts it).

use crate::engine::segmenter::FrameTiming;
use crate::engine::segmenter::{Segmenter, TileBackend};
use crate::io::gpio::Pins;
use crate::io::metrics::LiveMetrics;
use crate::io::mqtt::{RecordQueue, Topic};
use crate::io::record::{FrameRecord, Origin};
use crate::io::source::{FrameBuf, FrameSource, Next, SourceError};
use crate::post::instances::{InstanceConfig, Instances, Summary};
use anyhow::Result;
use embedded_hal::digital::{InputPin, OutputPin};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub preview: Option<crate::io::preview::Preview>,
    /// Process every frame, even of a live source (a recording piped on stdin): capture waits
    /// for the loop instead of replacing an untaken frame.
    pub every_frame: bool,
    /// Counters and latency histograms, read by `/metrics`, `/healthz` and the MQTT publisher.
    pub metrics: Arc<LiveMetrics>,
    /// The MQTT publisher's queue: each record is copied into it (saved frames' nuclei too).
    pub mqtt: Option<Arc<RecordQueue>>,
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
            every_frame: false,
            metrics: Default::default(),
            mqtt: None,
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

fn capture<S: FrameSource>(
    mut source: S,
    slot: Arc<(Mutex<Slot>, Condvar)>,
    shared: Arc<LiveMetrics>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    every_frame: bool,
) {
    let mut back = FrameBuf::default();
    let mut backoff = Duration::from_millis(100);
    let live = source.is_live() && !every_frame;
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
                    log::warn!("skipped a corrupt frame: {why}");
                }
            }
            Err(SourceError::Disconnected(why)) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "camera unavailable ({why}); retrying in {:.1} s",
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

/// Where a live run's results go besides the returned counters.
pub struct Sinks<'a, T: InputPin, L: OutputPin, A: OutputPin> {
    /// GPIO: trigger input, busy and alert outputs.
    pub pins: &'a mut Pins<T, L, A>,
    /// The JSON lines, one [`FrameRecord`] per processed frame.
    pub log: &'a mut dyn Write,
}

/// The capture thread's hand-over: one frame buffer, swapped with the loop's.
type SlotPair = Arc<(Mutex<Slot>, Condvar)>;

/// What waiting for the next frame gave.
enum Taken {
    /// A fresh frame is in the loop's buffer.
    Frame,
    /// Nothing yet (trigger not seen, or woken without a frame); ask again.
    Again,
    /// The source ended.
    Ended,
}

/// Runs the live loop until the source ends, `max_frames` is reached or `stop` is set (SIGINT).
/// `on_frame` is called after each processed frame with the count so far. The capture thread is
/// not joined: a source blocked in a read (an idle pipe) must not keep the program from exiting.
pub fn run<B, T, L, A>(
    seg: &mut Segmenter<B>,
    source: impl FrameSource + 'static,
    sinks: Sinks<'_, T, L, A>,
    cfg: &LiveConfig,
    stop: &Arc<AtomicBool>,
    mut on_frame: impl FnMut(u64),
) -> Result<LiveStats>
where
    B: TileBackend,
    T: InputPin,
    L: OutputPin,
    A: OutputPin,
{
    let slot: SlotPair = Arc::new((
        Mutex::new(Slot {
            frame: FrameBuf::default(),
            fresh: false,
            ended: false,
            fatal: None,
        }),
        Condvar::new(),
    ));
    let shared = cfg.metrics.clone();
    start_capture(source, &slot, &shared, stop, cfg)?;
    let mut stats = LiveStats::default();
    let mut front = FrameBuf::default();
    let mut inst = Instances::new();
    let mut line = String::with_capacity(512);
    let mut throughput = Throughput::new();
    let result = (|| -> Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) || cfg.max_frames.is_some_and(|m| stats.processed >= m)
            {
                return Ok(());
            }
            match take_frame(&slot, &mut front, sinks.pins, stop)? {
                Taken::Frame => {}
                Taken::Again => continue,
                Taken::Ended => return Ok(()),
            }
            sinks.pins.busy(true);
            let timing = seg.segment(&front.data, front.width, front.height)?;
            inst.run(
                seg.mask(),
                seg.guide(),
                &front.data,
                front.width,
                front.height,
                &cfg.instances,
            );
            let summary = inst.summary();
            sinks.pins.count(summary.count);
            sinks.pins.busy(false);
            if let Some(p) = &cfg.preview {
                p.publish(seg.normalized(), seg.mask(), front.width, front.height);
            }
            stats.processed += 1;
            shared.frame(
                timing.tiles,
                timing.ms_per_tile,
                timing.frame_ms,
                summary.count,
            );
            record(
                seg,
                &front,
                timing,
                summary,
                &shared,
                cfg.mqtt.is_some(),
                &mut line,
            );
            if let Some(q) = &cfg.mqtt {
                q.push(Topic::Frames, line.trim_end());
            }
            if let Err(e) = sinks
                .log
                .write_all(line.as_bytes())
                .and_then(|_| sinks.log.flush())
            {
                if stats.write_errors == 0 {
                    // At once, not only in the summary; later failures are counted.
                    log::error!("frame records are not being saved: {e} (live processing goes on)");
                }
                stats.write_errors += 1;
                shared.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((every, dir)) = &cfg.save_every {
                if stats.processed % every == 0 {
                    if let Some(q) = &cfg.mqtt {
                        // Saved frames only: a table per frame is too much for every frame, and
                        // saving allocates anyway.
                        let mut table = String::new();
                        crate::io::record::nuclei_json(
                            &mut table,
                            unix_now(),
                            front.index,
                            inst.nuclei(),
                        );
                        q.push(Topic::Nuclei, &table);
                    }
                    if let Err(e) = save_frame(seg, &front, dir) {
                        stats.write_errors += 1;
                        shared.write_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!("{e:#} (live processing goes on)");
                    }
                }
            }
            throughput.frame(
                timing.ms_per_tile,
                cfg.summary_every,
                &shared,
                stats.processed,
            );
            on_frame(stats.processed);
        }
    })();
    // Whatever ended the loop, tell the capture thread to end too.
    stop.store(true, Ordering::Relaxed);
    let _ = sinks.log.flush();
    stats.dropped = shared.dropped.load(Ordering::Relaxed);
    stats.corrupt = shared.corrupt.load(Ordering::Relaxed);
    stats.reconnects = shared.reconnects.load(Ordering::Relaxed);
    result.map(|_| stats)
}

/// Starts the capture thread, which fills the slot until the source ends or `stop` is set.
fn start_capture(
    source: impl FrameSource + 'static,
    slot: &SlotPair,
    shared: &Arc<LiveMetrics>,
    stop: &Arc<AtomicBool>,
    cfg: &LiveConfig,
) -> Result<()> {
    let (slot, shared, stop) = (slot.clone(), shared.clone(), stop.clone());
    let (timeout, every_frame) = (cfg.capture_timeout, cfg.every_frame);
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture(source, slot, shared, stop, timeout, every_frame))?;
    Ok(())
}

/// Waits for the next frame (after a trigger edge when a trigger pin is set) and swaps it into
/// `front`; a capture failure is an error.
fn take_frame<T: InputPin, L: OutputPin, A: OutputPin>(
    slot: &SlotPair,
    front: &mut FrameBuf,
    pins: &mut Pins<T, L, A>,
    stop: &AtomicBool,
) -> Result<Taken> {
    if pins.triggered() {
        if !pins.wait_rising_edge(Duration::from_millis(200), stop) {
            return Ok(Taken::Again);
        }
        // The frame to process is the first one captured after the edge.
        slot.0.lock().expect("slot lock").fresh = false;
    }
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
        return Ok(if s.ended { Taken::Ended } else { Taken::Again });
    }
    std::mem::swap(&mut s.frame, front);
    s.fresh = false;
    // A recording waits for the slot to empty.
    slot.1.notify_all();
    Ok(Taken::Frame)
}

/// Formats the frame's record into `line` (reused: no allocation once it has grown).
fn record<B: TileBackend>(
    seg: &Segmenter<B>,
    front: &FrameBuf,
    timing: FrameTiming,
    summary: Summary,
    shared: &LiveMetrics,
    mqtt: bool,
    line: &mut String,
) {
    let latency_ms = front
        .captured
        .map(|t| t.elapsed().as_secs_f32() * 1e3)
        .unwrap_or(0.0);
    let timestamp = unix_now();
    line.clear();
    FrameRecord {
        origin: Origin::Live {
            timestamp,
            frame: front.index,
            latency_ms,
            dropped: shared.dropped.load(Ordering::Relaxed),
            corrupt: shared.corrupt.load(Ordering::Relaxed),
            mqtt_dropped: mqtt.then(|| shared.mqtt_dropped.load(Ordering::Relaxed)),
        },
        width: front.width,
        height: front.height,
        timing,
        summary,
        foreground_fraction: seg.foreground_fraction(),
    }
    .write_json(line);
}

/// Seconds since the Unix epoch (0 when the clock is before it).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Frames and tile time since the last summary line.
struct Throughput {
    frames: u64,
    ms_per_tile: f32,
    since: Instant,
}

impl Throughput {
    fn new() -> Throughput {
        Throughput {
            frames: 0,
            ms_per_tile: 0.0,
            since: Instant::now(),
        }
    }

    /// Counts a frame; logs the summary line when `every` has passed since the last one.
    fn frame(
        &mut self,
        ms_per_tile: f32,
        every: Option<Duration>,
        shared: &LiveMetrics,
        processed: u64,
    ) {
        self.frames += 1;
        self.ms_per_tile += ms_per_tile;
        let Some(every) = every else { return };
        if self.since.elapsed() < every {
            return;
        }
        let secs = self.since.elapsed().as_secs_f32();
        log::info!(
            "{:.1} fps  {:.1} ms/tile  {} dropped  {} corrupt  {} processed",
            self.frames as f32 / secs,
            self.ms_per_tile / self.frames as f32,
            shared.dropped.load(Ordering::Relaxed),
            shared.corrupt.load(Ordering::Relaxed),
            processed
        );
        *self = Throughput::new();
    }
}

fn save_frame<B: TileBackend>(
    seg: &Segmenter<B>,
    f: &FrameBuf,
    dir: &std::path::Path,
) -> Result<()> {
    use crate::io::imageio;
    let name = format!("frame{:08}", f.index);
    let overlay = imageio::overlay(seg.normalized(), seg.mask(), f.width, f.height);
    let mut files = imageio::OutputSet::default();
    files.stage(
        &dir.join(format!("{name}.overlay.png")),
        &imageio::png_rgb8(overlay)?,
    )?;
    files.stage(
        &dir.join(format!("{name}.mask.png")),
        &imageio::png_mask(f.width, f.height, seg.mask())?,
    )?;
    files.commit()
}
